"""The analyses of "The Fall of ROME", measured on any model.

Positions: for subject-first cases, is ROME's blow-up about the subject's *position*? Each case is
edited three ways: as it is (subject = the prompt's first token), with the subject moved later by a
short natural lead-in, and with only the end-of-text token put in front (the first position is
taken by a token without content, so nothing is added but the shift). Key divergence
(cos(k̄, kᵘ)), ROME's denominator ratio and the edited model's perplexity are recorded for each.

Prefix cure: C-ROME edits a case once and is scored (efficacy, generalization, locality) with and
without its context-template prefix in front of the test prompts.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from editguard.cases import EditCase
from editguard.editors.api import Editor
from editguard.gates import Thresholds, is_collapsed
from editguard.guard import UPCOMING_CASES, Baseline, EditSequence, check
from editguard.metrics.efficacy import edit_scores
from editguard.models.loading import ModelUnderEdit
from editguard.options import COLLAPSE_PPL, UPDATE_NORM_REL

LEAD_IN = "In fact, "


def position_variants(mue: ModelUnderEdit, case: EditCase) -> dict[str, EditCase]:
    """The case as it is, with the subject moved later, and with the first position swapped."""
    eos = mue.tokenizer.eos_token or mue.tokenizer.bos_token
    if not case.subject_first:
        raise ValueError(f"case {case.case_id}: the position analysis needs a subject-first prompt, "
                         f"got {case.text!r}")
    return {
        "subject first": case,
        f"moved later ({LEAD_IN.strip()!r} in front)": replace(case, prompt=LEAD_IN + case.prompt),
        f"first position swapped ({eos} in front)": replace(case, prompt=eos + case.prompt),
    }


def analyze_positions(mue: ModelUnderEdit, editor: Editor, cases: Sequence[EditCase], baseline: Baseline,
                      thresholds: Thresholds = Thresholds(),
                      on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One guarded edit per (case, variant); a row of measurements each. Every case is checked
    before the first edit (a case whose subject is not first is refused up front)."""
    edits = [(case, condition, variant) for case in cases
             for condition, variant in position_variants(mue, case).items()]
    variants = [variant for _, _, variant in edits]
    rows = []
    for edited, (case, condition, variant) in enumerate(edits, 1):
        result = check(mue, editor, variant, baseline, thresholds,
                       upcoming=variants[edited : edited + UPCOMING_CASES])
        row = {"case_id": case.case_id, "condition": condition, "text": variant.text,
               "subject_first": variant.subject_first, "ppl": result.ppl, "passed": result.passed,
               "key_cosine": result.diagnostics.get("key_cosine"),
               "denominator_ratio": result.diagnostics.get("denominator_ratio"),
               UPDATE_NORM_REL: result.diagnostics.get(UPDATE_NORM_REL), "efficacy": result.efficacy}
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def analyze_prefix_cure(mue: ModelUnderEdit, editor: Editor, groups: dict[str, Sequence[EditCase]],
                        baseline: Baseline, thresholds: Thresholds = Thresholds(),
                        on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One edit per case (restored after), scored without and with the editor's test-time prefix
    (EditReport.test_prefix; an editor without one is scored with an empty prefix both times)."""
    rows = []
    for group, cases in groups.items():
        for case in cases:
            with EditSequence(mue, editor, baseline, thresholds, name="prefix-cure") as sequence:
                result = sequence.apply(case)
                plain = edit_scores(mue, case, "")
                prefixed = edit_scores(mue, case, result.test_prefix)
            row = {"group": group, "case_id": case.case_id, "text": case.text, "ppl": result.ppl,
                   "test_prefix": result.test_prefix,
                   **{f"{k}_plain": getattr(plain, k) for k in ("efficacy", "generalization", "locality")},
                   **{f"{k}_prefixed": getattr(prefixed, k) for k in ("efficacy", "generalization", "locality")}}
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def summarize_positions(rows: list[dict[str, Any]], ppl_max: float = COLLAPSE_PPL) -> list[dict[str, Any]]:
    """Per condition: n, median cos(k̄,kᵘ), median |denominator ratio|, median and max perplexity,
    how many edits collapse the model."""
    out = []
    for condition in dict.fromkeys(r["condition"] for r in rows):
        group = [r for r in rows if r["condition"] == condition]
        out.append({
            "condition": condition, "n": len(group),
            "key_cosine_median": _median([r["key_cosine"] for r in group]),
            "denominator_ratio_median": _median([abs(r["denominator_ratio"]) if r["denominator_ratio"] is not None
                                                 else None for r in group]),
            "ppl_median": _median([r["ppl"] for r in group]), "ppl_max": max(r["ppl"] for r in group),
            "collapsed": sum(is_collapsed(r["ppl"], ppl_max) for r in group),
        })
    return out


def summarize_prefix_cure(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group and test mode: mean efficacy, generalization, locality (the "enhanced C-ROME" table)."""
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        for mode in ("plain", "prefixed"):
            out.append({"group": group, "test": "no prefix" if mode == "plain" else "with prefix", "n": len(members),
                        **{k: _mean([r[f"{k}_{mode}"] for r in members])
                           for k in ("efficacy", "generalization", "locality")}})
    return out
