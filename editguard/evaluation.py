"""`editguard eval`: score a model, unedited or after edits, on downstream tasks.

With an editor the edits are applied (one after another with `sequential`, else in one
`editor.apply` call), the tasks are scored, and the weights are restored and verified bit for
bit however the run ends.
"""

from __future__ import annotations

import time
from typing import Any

from editguard.metrics.downstream import SCORER_VERSION, evaluate, pick_items
from editguard.metrics.lm_eval import PER_ITEM_KEYS, TaskScore, lm_eval_metrics, original_sizes
from editguard.models.precision import resolve_precision
from editguard.runinfo import model_fields
from editguard.stats import Z_TWO_SIDED_95
from editguard.tasks import get_task


def score_tasks(mue, tasks: list[str], n: int | None, data_dir=None, seed: int = 0,
                progress: bool = True, on_task=None, precision: str = "auto", limit: int | None = None,
                originals: dict | None = None) -> dict[str, TaskScore]:
    """Each task's items, scored on the model as it is now: the first `limit` (lm-eval's --limit,
    per MMLU subject) when given, else a seeded subset of n items (all with n=None). `originals`,
    when given, receives each task's full size (per subject) for lm-eval's n-samples."""
    from editguard.progress import progress_bar

    scores = {}
    for name in tasks:
        everything = get_task(name).load(data_dir)
        if originals is not None:
            originals[name] = original_sizes(everything)
        items = [everything[i] for i in pick_items(everything, name, None if limit is not None else n, seed, limit)]
        with progress_bar(f"{name} ({len(items)} items)", len(items), enabled=progress) as bar:
            scores[name] = evaluate(mue, name, items, progress=bar.advance, precision=precision)
        if on_task is not None:
            on_task(scores[name])
    return scores


def apply_edits(mue, editor, cases, baseline, sequential: bool, thresholds=None):
    """Apply the edits; returns (restore, per-step records). `restore()` puts the unedited weights
    back and verifies them against the baseline's checksums."""
    from editguard.gates import Thresholds
    from editguard.guard import EditSequence
    from editguard.restore import RestorePoint, put_back_state

    thresholds = thresholds or Thresholds()
    if sequential:
        sequence = EditSequence(mue, editor, baseline, thresholds, name="eval")
        try:
            steps = []
            for case in cases:
                r = sequence.apply(case)
                steps.append({"step": r.step, "case_id": case.case_id, "subject": case.subject, "ppl": r.ppl,
                              "efficacy": r.efficacy, "passed": r.passed, "reason": r.verdict.explain()})
        except BaseException:
            sequence.restore()
            raise
        return sequence.restore, steps
    point = RestorePoint(mue, editor, editor.touched_parameters(mue, cases), baseline.pristine)
    restore = point.restore
    try:
        t = time.perf_counter()
        report = editor.apply(mue, list(cases))
        put_back_state(mue, point.state, editor.name, "in apply()")   # before the downstream scores
    except BaseException:
        restore()
        raise
    return restore, [{"cases": [c.case_id for c in cases], "seconds": time.perf_counter() - t,
                      "diagnostics": {k: v for k, v in report.diagnostics.items() if isinstance(v, (int, float, str))}}]


def score_row(score: TaskScore) -> dict[str, Any]:
    low, high = score.interval(Z_TWO_SIDED_95)
    row = {**score.to_dict(), "ci95_low": low, "ci95_high": high, **lm_eval_metrics(score)}
    row["extra"] = {k: v for k, v in score.extra.items() if k not in PER_ITEM_KEYS or k == "examples"}
    return row


def render_table(title: str, scores: dict[str, TaskScore]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("task", "n", "metric", "accuracy", "95% CI (Wilson)", "random", "seconds"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for name, s in scores.items():
        low, high = s.interval(Z_TWO_SIDED_95)
        metric = s.metric + (f" (F1 {s.extra['f1']:.3f})" if "f1" in s.extra else "")
        table.add_row(name, str(s.n), metric, f"{s.accuracy:.4f}", f"{low:.3f}–{high:.3f}", f"{s.random:.3g}",
                      f"{s.seconds:.0f}")
    return table


def run_header(mue, tasks, n, seed, precision: str = "auto") -> dict[str, Any]:
    return {**model_fields(mue), "precision": resolve_precision(mue, precision, "downstream precision"),
            "tasks": tasks, "n": n if n is not None else "full", "seed": seed, "scorer_version": SCORER_VERSION}
