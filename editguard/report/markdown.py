"""The Markdown summary of a run (--editguard-markdown), e.g. for GitHub's $GITHUB_STEP_SUMMARY:
what ran (model, editor, suite, gates), the counts by verdict, the worst cases by perplexity, and
the comparison with a saved report where there is one."""

from __future__ import annotations

import math
from typing import Any

from editguard.report.compare import Comparison
from editguard.report.verdicts import PASSED, summarise, verdict
from editguard.run.records import UPDATE_NORM

WORST_ROWS = 10


def _cell(value: Any) -> str:
    """A table cell: pipes escaped, one line."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _num(value: Any, fmt: str = ".3g") -> str:
    return "–" if value is None else format(value, fmt)


def _worst_first(case: dict[str, Any]) -> float:
    ppl = case.get("ppl")
    return -math.inf if ppl is None or not math.isfinite(ppl) else -ppl


def render_markdown(run: dict[str, Any], cases: list[dict[str, Any]], comparison: Comparison | None = None,
                    completion: dict[str, Any] | None = None, max_rows: int = WORST_ROWS) -> str:
    ppl_max = run["thresholds"]["ppl_max"]
    s = summarise(run, cases)
    failed = s["failed_gate"] + s["collapsed"] + s["error"]
    status = "❌" if failed or (comparison and comparison.failed) else "✅"
    suites = ", ".join(sorted({f.get("suite") or m for m, f in (run.get("suites") or {}).items()})) \
        or run.get("suite") or "cases"
    lines = [f"## {status} editguard: {run['editor']} on {run['model']} ({suites})", ""]
    if "baseline_ppl" in run:
        lines.append(f"Baseline {run.get('ppl_corpus')} perplexity {run['baseline_ppl']:.2f} (BOS: "
                     f"{run.get('ppl_bos', 'never')}). Gates: "
                     + ", ".join(f"`{k}={v:g}`" for k, v in run["thresholds"].items()) + ".")
    else:
        lines.append("Gates: " + ", ".join(f"`{k}={v:g}`" for k, v in run["thresholds"].items()) + ".")
    if completion and not completion.get("complete", True):
        lines += ["", f"**Incomplete run:** {len(completion.get('cases_not_run') or [])} collected edit tests did "
                      f"not run."]
        for death in completion.get("workers_died") or []:
            lines.append(f"Worker {death['worker']} died ({death['exit']})"
                         + (f" while running `{death['case']}`" if death.get("case") else "") + ".")
    if completion and completion.get("empty_shard"):
        lines += ["", f"Shard {completion['empty_shard']['shard']} got no test (more shards than the "
                      f"{completion['empty_shard']['units']} units of work)."]
    lines += ["", "| cases | passed | failed a gate | collapsed | error |", "|---:|---:|---:|---:|---:|",
              f"| {s['cases']} | {s['passed']} | {s['failed_gate']} | {s['collapsed']} | "
              + (f"**❌ {s['error']}** |" if s["error"] else "0 |")]
    if s["failed_gate_by_gate"]:
        lines += ["", "Failed gates (cases not collapsed): "
                  + ", ".join(f"{g}: {n}" for g, n in s["failed_gate_by_gate"].items()) + "."]
    if cases:
        worst = sorted(cases, key=_worst_first)[:max_rows]
        lines += ["", f"### Worst cases by perplexity ({len(worst)} of {len(cases)})", "",
                  f"| case | prompt | → new | verdict | ppl | ×base | {UPDATE_NORM.column} | failed gates |",
                  "|---|---|---|---|---:|---:|---:|---|"]
        for c in worst:
            prompt = str(c.get("prompt", "")).replace("{}", str(c.get("subject", "")))
            v = verdict(c, ppl_max)
            ratio = c["ppl"] / c["ppl_baseline"] if c.get("ppl") is not None and c.get("ppl_baseline") else None
            lines.append("| " + " | ".join(_cell(x) for x in (
                c["case_id"], prompt, c.get("target_new", ""), v if v == PASSED else f"**{v}**",
                _num(c.get("ppl"), ".1f"),
                _num(ratio, ".2f"), _num(c.get(UPDATE_NORM.name)), _failure(c)))
                + " |")
    if comparison is not None:
        lines += ["", *comparison_markdown(comparison)]
    return "\n".join(lines) + "\n"


def _failure(case: dict[str, Any]) -> str:
    error = case.get("error")
    if error:
        return f"❌ error in {error.get('phase')}: {error.get('message')}"
    return ", ".join(case.get("failed_gates") or []) or "–"


def comparison_markdown(comparison: Comparison) -> list[str]:
    c = comparison
    margins = ", ".join(f"`{m}`" for m in c.margins) or "none"
    lines = [f"### Compared with `{c.baseline}` ({c.baseline_editor})", "",
             f"{c.compared} cases compared (fail margins: {margins}): **{len(c.regressions)} regressions**, "
             f"**{len(c.worsenings)} worsened beyond a margin**, {len(c.improvements)} improvements.", ""]
    for title, changes in (("Regressions (passed there, fail now)", c.regressions),
                           ("Worsened beyond a margin", c.worsenings), ("Improvements", c.improvements),
                           ("Worse verdicts of cases already failing there", c.worse_verdicts)):
        if changes:
            lines += [f"**{title}**", ""] + [f"- {_cell(ch.case)}: {_cell(ch.text)}" for ch in changes] + [""]
    for title, ids in (("Only in the saved run", c.only_in_baseline), ("Only in this run", c.only_in_run)):
        if ids:
            lines += [f"{title} (not compared): {len(ids)} cases: " + ", ".join(ids), ""]
    lines += [f"Note: {n}" for n in c.notes]
    return lines
