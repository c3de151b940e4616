"""The end-of-run collapse report: counts by verdict (passed / failed a gate / collapsed), what was
selected and what ran, the baseline and thresholds, a table of the failed cases sorted by
perplexity with their anatomy and next step, and a legend of the table's abbreviations."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from editguard.report.verdicts import COLLAPSED, ERROR, FAILED_GATE, PASSED, legend_text, next_step, summarise, verdict
from editguard.run.records import ANATOMY_COLUMNS


def _num(value: Any, fmt: str = ".3g") -> str:
    return "–" if value is None else format(value, fmt)


def _ratio(ppl: float | None, baseline: float | None) -> float | None:
    return None if ppl is None or not baseline else ppl / baseline


def _cases_line(fields: dict[str, Any], ran: int, label: str) -> str:
    """What a suite module selected and what ran: "3 of 100 ran (the first 3, --max-cases); source: ..."."""
    source = fields.get("suite_source") or ""
    total, selected = fields.get("cases_total"), fields.get("cases_selected")
    if total is None:  # a report written before the counts were recorded
        return f"\n{label}: {source}" if source else ""
    text = f"\n{label}: {ran} of {total} ran"
    if selected is not None and selected < total:
        text += f" (the first {selected} selected by --max-cases)"
    if selected is not None and ran < selected:
        text += f"; {selected - ran} selected but not in this report (deselected, sharded or not run)"
    return text + (f"; source: {source}" if source else "")


def _verdict_counts(run: dict[str, Any], cases: list[dict[str, Any]]) -> list[Any]:
    s = summarise(run, cases)
    gates = s["failed_gate_by_gate"]
    which = f" ({', '.join(f'{g}: {n}' for g, n in gates.items())})" if gates else ""
    failed = s["failed_gate"] + s["collapsed"] + s["error"]
    errors = [", ", (f"{s['error']} errors (the edit or a probe raised)", "bold red")] if s["error"] else []
    return [(f"{s['passed']} passed", "green"), ", ", (f"{failed} failed", "red" if failed else "green"), ": ",
            (f"{s['failed_gate']} failed a gate without collapsing{which}", "yellow" if s["failed_gate"] else "green"),
            ", ", (f"{s['collapsed']} collapsed", "red" if s["collapsed"] else "green"),
            f" (ppl > {run['thresholds']['ppl_max']:g} or NaN)", *errors]


def render_report(run: dict[str, Any], cases: list[dict[str, Any]], max_rows: int = 50) -> Group:
    ppl_max = run["thresholds"]["ppl_max"]
    failed = sorted((c for c in cases if verdict(c, ppl_max) != PASSED), key=lambda c: -_ppl_key(c["ppl"]))
    suites = run.get("suites", {})
    ran = {m: sum(1 for c in cases if c.get("suite_module") == m) for m in suites}
    if len(suites) < 2:
        cases_lines = _cases_line({**run, **next(iter(suites.values()), {})}, len(cases), "cases")
    else:
        cases_lines = "".join(
            _cases_line(f, ran[module], module)
            + f"; {'sequential, ' if f.get('sequential') else ''}baseline {f['ppl_corpus']} {f['baseline_ppl']:.2f}"
            for module, f in suites.items())
    header = Text.assemble(
        ("editguard ", "bold"),
        f"{run['editor']} on {run['model']} ({run.get('suite') or 'cases'}): ",
        *_verdict_counts(run, cases), "\n",
        (f"baseline {run['ppl_corpus']} perplexity {run['baseline_ppl']:.2f} "
         f"(token-weighted {run['baseline_corpus_ppl']:.2f}; BOS: {run.get('ppl_bos', 'never')}); "
         if run.get("baseline_ppl") is not None else "no baseline measured (no edit got that far); ")
        + "gates: "
        + ", ".join(f"{k}={v:.4g}" for k, v in run["thresholds"].items())
        + (f" ({run['calibration']})" if run.get("calibration") else "")
        + (f"\nprepared: {run['prepared']}" if run.get("prepared") else "")
        + cases_lines,
    )
    sequences = _sequence_tables(cases, ppl_max)
    if not failed:
        return Group(header, *sequences)
    table = Table(title="failed edits, worst perplexity first", title_justify="left", show_lines=False)
    for col, justify in [("case", "left"), ("prompt", "left"), ("→ new", "left"), ("verdict", "left"),
                         ("ppl", "right"), ("×base", "right"), *((m.column, "right") for m in ANATOMY_COLUMNS),
                         ("eff", "center"), ("failed gates", "left")]:
        numeric = justify != "left"
        table.add_column(col, justify=justify, overflow="fold", no_wrap=numeric,
                         min_width=12 if col == "prompt" else None)
    for c in failed[:max_rows]:
        prompt = c["prompt"].replace("{}", c["subject"])
        eff = {True: "✓", False: "✗", None: "–"}[c.get("efficacy")]
        v = verdict(c, ppl_max)
        table.add_row(
            str(c["case_id"]), prompt, c.get("target_new", ""), Text(v, style=VERDICT_STYLE[v]), _num(c["ppl"], ".1f"),
            _num(_ratio(c["ppl"], c["ppl_baseline"]), ".2f"), *(_num(c.get(m.name), m.fmt) for m in ANATOMY_COLUMNS),
            eff, _gates_text(c),
        )
    parts = [header, *sequences, table]
    if len(failed) > max_rows:
        parts.append(Text(f"... and {len(failed) - max_rows} more failed cases (see the JSON report)"))
    steps: dict[str, list[str]] = {}
    for c in failed[:max_rows]:
        if step := next_step(c, run):
            steps.setdefault(step, []).append(str(c["case_id"]))
    for step, ids in steps.items():
        shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
        parts.append(Text(f"next step for case{'s' if len(ids) > 1 else ''} {shown}: {step}"))
    parts.append(Text(legend_text(), style="dim"))
    return Group(*parts)


VERDICT_STYLE = {PASSED: "green", FAILED_GATE: "yellow", COLLAPSED: "red", ERROR: "bold red"}


def _gates_text(case: dict[str, Any]) -> str:
    """The failed gates, or for an error record what raised and where."""
    error = case.get("error")
    if error:
        return f"error in {error.get('phase')}: {error.get('message')}"
    return ", ".join(case["failed_gates"])


def _ppl_key(ppl: float) -> float:
    """Sort key for worst-first: NaN/Inf are the worst perplexities."""
    return math.inf if ppl is None or not math.isfinite(ppl) else ppl


def _sequence_tables(cases: list[dict[str, Any]], ppl_max: float) -> list[Table]:
    """Perplexity after each step of every sequence (sequential editing)."""
    names = sorted({c["sequence"] for c in cases if c.get("sequence")})
    tables = []
    for name in names:
        steps = sorted((c for c in cases if c.get("sequence") == name), key=lambda c: c["step"])
        table = Table(title=f"sequence {name}: perplexity after each edit", title_justify="left")
        for col in ("step", "case", "subject", "ppl", "×base", "eff", "gates"):
            table.add_column(col, justify="right" if col in ("step", "ppl", "×base") else "left")
        for c in steps:
            eff = {True: "✓", False: "✗", None: "–"}[c.get("efficacy")]
            table.add_row(str(c["step"]), str(c["case_id"]), c["subject"], _num(c["ppl"], ".1f"),
                          _num(_ratio(c["ppl"], c["ppl_baseline"]), ".2f"), eff,
                          Text(_gates_cell(c, ppl_max), style=VERDICT_STYLE[verdict(c, ppl_max)]))
        tables.append(table)
    return tables


def _gates_cell(case: dict[str, Any], ppl_max: float) -> str:
    v = verdict(case, ppl_max)
    return "ok" if v == PASSED else f"{v}: {_gates_text(case)}"
