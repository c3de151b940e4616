"""One case's verdict as every report shows it (terminal, JSON, plots): passed, failed a gate
(which), collapsed (perplexity above the collapse line, NaN/Inf included), or error (the edit or
a probe raised); the counts; the
next step a failure suggests; the legend of the table's abbreviations."""

from __future__ import annotations

from collections import Counter
from typing import Any

from editguard.gates import is_collapsed
from editguard.options import CALIBRATION_MODEL
from editguard.run.records import COLLAPSED, ERROR, FAILED_GATE, PASSED, VERDICTS

__all__ = ["COLLAPSED", "ERROR", "FAILED_GATE", "PASSED", "VERDICTS", "verdict", "summarise", "next_step"]

# Editors whose update is ROME's rank-one one, with its denominator (the papers' collapse mechanism).
ROME_FAMILY = ("rome", "r-rome", "memit", "alphaedit")


def verdict(case: dict[str, Any], ppl_max: float) -> str:
    """passed / failed gate / collapsed; a collapsed case is not counted as a mere gate failure. A
    sequence step whose perplexity was not measured (--ppl-every: "ppl_probed" false) is judged by
    the gates it had. A record with an `error` is an error, whatever else it says."""
    if case.get("error"):
        return ERROR
    if case.get("ppl_probed", True) and is_collapsed(case.get("ppl"), ppl_max):
        return COLLAPSED
    return PASSED if case["passed"] else FAILED_GATE


def summarise(run: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per verdict, and per gate how many non-collapsed cases failed it."""
    ppl_max = run["thresholds"]["ppl_max"]
    by_verdict = Counter(verdict(c, ppl_max) for c in cases)
    gates = Counter(g for c in cases if verdict(c, ppl_max) == FAILED_GATE for g in c["failed_gates"])
    return {"cases": len(cases), **{v.replace(" ", "_"): by_verdict[v] for v in VERDICTS},
            "failed_gate_by_gate": dict(sorted(gates.items()))}


def next_step(case: dict[str, Any], run: dict[str, Any]) -> str:
    """What to do about a failure, where editguard knows it; "" otherwise."""
    if case.get("error"):
        return "the edit raised (see `error`: its type, message and phase); run this case alone to see the traceback"
    steps = []
    gates = case.get("failed_gates") or []
    editor = str(run.get("editor") or case.get("editor") or "")
    if "denominator_ratio" in gates:
        if str(case.get("prompt", "")).startswith("{}"):
            steps.append("the subject starts the prompt; C-ROME (--editor=c-rome) or a prefix before the subject "
                         "avoids this")
        else:
            steps.append("the key used differs from the averaged key k̄; C-ROME (--editor=c-rome) uses one key "
                         "for both")
    model = str(run.get("model") or case.get("model") or "")
    if "update_norm" in gates and model != CALIBRATION_MODEL:
        steps.append(f"the update-norm bound was calibrated on {CALIBRATION_MODEL} (docs: concepts/gates.md), not on "
                     f"{model}; set the bound for this model with --update-norm-max")
    elif "update_norm" in gates and editor in ROME_FAMILY and not steps:
        steps.append("C-ROME (--editor=c-rome) keeps the update within the bound on the calibration model")
    return "; ".join(steps)


LEGEND = (
    ("×base", "edited perplexity / unedited perplexity"),
    ("denom ratio", "ROME's denominator (C⁻¹k̄)ᵀkᵘ with the key used, over (C⁻¹k̄)ᵀk̄; near 0 the update explodes"),
    ("k̄", "the subject's key averaged over context templates (what ROME's update is built for)"),
    ("kᵘ", "the key actually used for the edited prompt"),
    ("‖ΔW‖/‖W‖", "Frobenius norm of the update relative to the edited matrix (largest touched matrix)"),
    ("blast", "blast radius: mean over normal-text keys k of ‖ΔW k‖/‖W k‖, how much the edit moves other inputs"),
    ("eff", "efficacy: the new target is more likely than the true one after the edit"),
)


def legend_text() -> str:
    return "legend: " + "; ".join(f"{term}: {meaning}" for term, meaning in LEGEND)
