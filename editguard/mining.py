"""Mining hard cases: full guarded edits on the riskiest screened cases and a random control
sample, resumable, written as a suite file with every measured value.

HardCF for a model is the set of mined cases whose edit fails the collapse gate (perplexity
above `Thresholds.ppl_max`); every mined case keeps its degradation level.

Progress is appended to a JSONL file (one line per finished case, after a header line that
pins the model, editor and hyperparameters), so an interrupted run resumes where it stopped.

Where suite files live (and where `editguard mine` writes by default) is editguard/suite_files.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

from editguard.cases import EditCase, write_cases
from editguard.editors.api import editor_hparams
from editguard.gates import Thresholds, is_collapsed
from editguard.guard import Baseline, check
from editguard.models.loading import ModelUnderEdit
from editguard.options import UPDATE_NORM_REL
from editguard.report.json_report import versions
from editguard.stats import spearman
from editguard.suite_files import refuse_installed_path

__all__ = ["degradation", "mine", "pick_candidates", "write_mined_suite"]

def degradation(ppl: float, baseline_ppl: float, thresholds: Thresholds) -> str:
    """collapsed (above the collapse line, or NaN/Inf), degraded (above the ratio bound), or intact."""
    if is_collapsed(ppl, thresholds.ppl_max):
        return "collapsed"
    if ppl > thresholds.ppl_max_ratio * baseline_ppl:
        return "degraded"
    return "intact"


def pick_candidates(screen_rows: list[dict], cases: dict[str, EditCase], top: int, control: int,
                    seed: int = 0) -> list[tuple[EditCase, str]]:
    """The `top` riskiest screened cases, then `control` others drawn at random (seeded)."""
    ranked = [row["case_id"] for row in screen_rows]
    missing = [cid for cid in ranked[:top] if cid not in cases]
    if missing:
        raise ValueError(f"screened case ids {missing[:5]} are not among the loaded cases: "
                         f"was the screen run on another case source?")
    chosen = [(cases[cid], "top-risk") for cid in ranked[:top]]
    rest = ranked[top:]
    for cid in random.Random(seed).sample(rest, min(control, len(rest))):
        chosen.append((cases[cid], "control"))
    return chosen


def _read_progress(path: Path, header: dict) -> dict[str, dict]:
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    if not lines:
        return {}
    found = json.loads(lines[0]).get("header")
    # The weights (fingerprint) identify the model: the same weights under another name resume.
    diff = sorted(k for k in set(found or {}) | set(header)
                  if k != "model" and (found or {}).get(k) != header.get(k))
    if diff:
        raise ValueError(f"{path} was written by another mining run (differs in {diff}); "
                         f"remove it or choose another --progress file")
    done = {}
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # cut off mid-write when the run was killed: redo that case
                break
            raise ValueError(f"{path}: line {number} is not JSON; the log is damaged") from None
        done[record["case_id"]] = record
    if lines and lines[-1].strip() and lines[-1] not in {json.dumps(r, ensure_ascii=False) for r in done.values()}:
        path.write_text("\n".join(lines[:-1]) + "\n")  # drop the cut-off line before appending
    return done


def mine(mue: ModelUnderEdit, editor, candidates: list[tuple[EditCase, str]], baseline: Baseline,
         thresholds: Thresholds, progress_path: str | Path, risk: dict[str, dict] | None = None,
         on_case: Callable[[dict], None] | None = None) -> list[dict]:
    """Guarded single edits of every candidate; returns one record per case (resumed ones too)."""
    path = Path(progress_path)
    header = {"model": mue.name, "fingerprint": mue.fingerprint, "editor": editor.name,
              "hparams": json.loads(json.dumps(editor_hparams(editor, mue), default=str)),
              "thresholds": thresholds.to_dict(), "ppl_corpus": baseline.corpus}
    done = _read_progress(path, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or not path.read_text().strip():
        path.write_text(json.dumps({"header": header}) + "\n")
    records = []
    with open(path, "a", encoding="utf-8") as log:
        for case, group in candidates:
            if case.case_id in done:
                record = done[case.case_id]
            else:
                result = check(mue, editor, case, baseline, thresholds)
                record = {**result.to_json(), "group": group,
                          "degradation": degradation(result.ppl, baseline.ppl.ppl, thresholds),
                          "screen": (risk or {}).get(case.case_id)}
                log.write(json.dumps(record, ensure_ascii=False) + "\n")
                log.flush()
            records.append(record)
            if on_case:
                on_case(record)
    return records


def risk_correlation(records: list[dict]) -> dict[str, Any]:
    """Spearman correlation of the screen's risk with post-edit perplexity (and of cos(k̄,kᵘ))."""
    scored = [r for r in records if r.get("screen")]
    if len(scored) < 3:
        return {"n": len(scored)}
    ppl = [r["ppl"] for r in scored]
    return {
        "n": len(scored),
        "spearman_risk_vs_ppl": spearman([r["screen"]["risk"] for r in scored], ppl),
        "spearman_neg_cosine_vs_ppl": spearman([-r["screen"]["key_cosine"] for r in scored], ppl),
    }


# Where no mined edit collapses the model, the suite keeps this many of the worst intact ones.
WORST_INTACT_KEPT = 10


def hardest_records(records: list[dict], run: dict) -> tuple[list[dict], str]:
    """The records a mined suite keeps, in mining order, and what they are: the collapsing ones;
    on a model where none collapses (the subject-first collapse need not reproduce everywhere),
    the degraded ones (ME-PPL above the ratio bound); where none degrades either, the
    WORST_INTACT_KEPT with the highest perplexity. The description says which."""
    editor, line = run["editor"], run["thresholds"]["ppl_max"]
    collapsed = [r for r in records if r["degradation"] == "collapsed"]
    if collapsed:
        return collapsed, f"mined cases whose single {editor} edit pushes ME-PPL above {line:g}"
    degraded = [r for r in records if r["degradation"] == "degraded"]
    if degraded:
        return degraded, (f"no mined {editor} edit pushes ME-PPL above {line:g} on this model; these degrade it "
                          f"(ME-PPL above {run['thresholds']['ppl_max_ratio']:g}x its baseline)")
    worst = sorted(records, key=lambda r: -r["ppl"] if r["ppl"] == r["ppl"] else float("-inf"))[:WORST_INTACT_KEPT]
    chosen = {id(r) for r in worst}
    return [r for r in records if id(r) in chosen], (
        f"no mined {editor} edit collapses or degrades this model; these are the {len(worst)} with the "
        f"highest ME-PPL after the edit")


def write_mined_suite(path: str | Path, records: list[dict], cases: dict[str, EditCase], run: dict) -> Path:
    """The suite file: the hard cases (hardest_records) in mining order, plus every mined
    case's measurements, the run's settings and the risk correlation."""
    refuse_installed_path(path)
    kept, what = hardest_records(records, run)
    hard = [cases[r["case_id"]] for r in kept]
    levels = {level: sum(r["degradation"] == level for r in records) for level in ("collapsed", "degraded", "intact")}
    extra = {
        "description": f"HardCF for {run['model']}: {what}",
        "run": {**run, "versions": versions()},
        "summary": {"mined": len(records), **levels,
                    "by_group": {g: {level: sum(r["degradation"] == level for r in records if r["group"] == g)
                                     for level in levels} for g in sorted({r["group"] for r in records})},
                    "risk_correlation": risk_correlation(records)},
        "measurements": records,
    }
    return write_cases(path, hard, extra)


def record_filter(case_file: str | Path, records: list[dict], run: dict) -> Path:
    """Write a filter's outcome into a case file, beside its cases: which cases pass (their
    single edit collapses the model, as HardEdit was filtered) and why, per model and editor.
    Called after every case, so an interrupted filter leaves its partial outcome: the cases
    not yet edited are listed under `pending` (a rerun resumes and completes it)."""
    from editguard.cases import read_cases

    path = Path(case_file)
    refuse_installed_path(path)
    doc = _case_file_doc(path)
    key = f"{run['model']}/{run['editor']}"
    line = run["thresholds"]["ppl_max"]
    done = {str(r["case_id"]) for r in records}
    # read_cases normalises the ids (CounterFact-style integers become strings), as the records hold them.
    pending = [c.case_id for c in read_cases(path) if c.case_id not in done]
    doc.setdefault("filters", {})[key] = {
        "rule": f"kept when the single {run['editor']} edit pushes {run['ppl_corpus']} perplexity above {line:g}",
        "run": {**run, "versions": versions()},
        "complete": not pending,
        "pending": pending,
        "kept": [r["case_id"] for r in records if r["degradation"] == "collapsed"],
        "results": {r["case_id"]: {"kept": r["degradation"] == "collapsed", "degradation": r["degradation"],
                                   "ppl": r["ppl"], "reason": r["reason"], "denominator_ratio": r["denominator_ratio"],
                                   "key_cosine": r["key_cosine"], UPDATE_NORM_REL: r[UPDATE_NORM_REL],
                                   "efficacy": r["efficacy"]} for r in records},
    }
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _case_file_doc(path: Path) -> dict:
    """A case file as a dict: a top-level list of cases becomes {"cases": [...]} (so that a filter
    can be recorded beside them; read_cases reads both)."""
    doc = json.loads(path.read_text())
    return doc if isinstance(doc, dict) else {"cases": doc}


def filtered_cases(case_file: str | Path, model: str, editor: str = "rome") -> tuple[list[EditCase], dict | None]:
    """The cases of a case file that passed its filter for (model, editor), and the filter;
    all cases and None when the file has no such filter. While a filter is incomplete, its
    pending cases are kept too: only cases known not to collapse the model are dropped."""
    from editguard.cases import read_cases

    cases = read_cases(case_file)
    flt = _case_file_doc(Path(case_file)).get("filters", {}).get(f"{model}/{editor}")
    if flt is None:
        return cases, None
    kept = {str(case_id) for case_id in (*flt["kept"], *flt.get("pending", ()))}
    return [c for c in cases if c.case_id in kept], flt
