"""The end-of-run collapse report: counts, the baseline and thresholds, and a table of the
failed cases sorted by perplexity with their anatomy."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from editguard.gates import is_collapsed


def _num(value: Any, fmt: str = ".3g") -> str:
    return "–" if value is None else format(value, fmt)


def render_report(run: dict[str, Any], cases: list[dict[str, Any]], max_rows: int = 50) -> Group:
    failed = sorted((c for c in cases if not c["passed"]), key=lambda c: -c["ppl"])
    n_collapsed = sum(1 for c in cases if is_collapsed(c["ppl"], run["thresholds"]["ppl_max"]))
    header = Text.assemble(
        ("editguard ", "bold"),
        f"{run['editor']} on {run['model']} ({run.get('suite') or 'cases'}): ",
        (f"{len(cases) - len(failed)} passed", "green"), ", ",
        (f"{len(failed)} failed", "red" if failed else "green"),
        f", {n_collapsed} collapsed (ppl > {run['thresholds']['ppl_max']:g})\n",
        f"baseline {run['ppl_corpus']} perplexity {run['baseline_ppl']:.2f} "
        f"(token-weighted {run['baseline_corpus_ppl']:.2f}); gates: "
        + ", ".join(f"{k}={v:g}" for k, v in run["thresholds"].items())
        + (f"\ncases: {run['suite_source']}" if run.get("suite_source") and len(run.get("suites", {})) < 2 else "")
        + "".join(f"\n{module}: {f.get('suite_source') or 'cases'}; {'sequential, ' if f.get('sequential') else ''}"
                  f"baseline {f['ppl_corpus']} {f['baseline_ppl']:.2f}"
                  for module, f in run.get("suites", {}).items() if len(run["suites"]) > 1),
    )
    sequences = _sequence_tables(cases)
    if not failed:
        return Group(header, *sequences)
    table = Table(title="failed edits, worst perplexity first", title_justify="left", show_lines=False)
    for col, justify in [("case", "left"), ("prompt", "left"), ("→ new", "left"), ("ppl", "right"),
                         ("×base", "right"), ("denom ratio", "right"), ("cos(k̄,kᵘ)", "right"),
                         ("‖ΔW‖/‖W‖", "right"), ("blast", "right"), ("eff", "center"), ("failed gates", "left")]:
        numeric = justify != "left"
        table.add_column(col, justify=justify, overflow="fold", no_wrap=numeric,
                         min_width=12 if col == "prompt" else None)
    for c in failed[:max_rows]:
        prompt = c["prompt"].replace("{}", c["subject"])
        eff = {True: "✓", False: "✗", None: "–"}[c.get("efficacy")]
        table.add_row(
            str(c["case_id"]), prompt, c.get("target_new", ""), _num(c["ppl"], ".1f"),
            _num(c["ppl"] / c["ppl_baseline"], ".2f"), _num(c.get("denominator_ratio")),
            _num(c.get("key_cosine"), ".2f"), _num(c.get("update_norm_rel")), _num(c.get("blast_radius")), eff,
            ", ".join(c["failed_gates"]),
        )
    parts = [header, *sequences, table]
    if len(failed) > max_rows:
        parts.append(Text(f"... and {len(failed) - max_rows} more failed cases (see the JSON report)"))
    return Group(*parts)


def _sequence_tables(cases: list[dict[str, Any]]) -> list[Table]:
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
                          _num(c["ppl"] / c["ppl_baseline"], ".2f"), eff,
                          "ok" if c["passed"] else ", ".join(c["failed_gates"]))
        tables.append(table)
    return tables
