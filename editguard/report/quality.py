"""Edit quality over a whole run (quality mode): efficacy, generalization and locality rates pooled
over every case of the report, their one-sided 95% Wilson lower bounds, and the suite-level gates
(editguard.gates.QualityGates) judged on them. Computed from the JSON records, so the plugin's
controller (all xdist workers' results), `editguard merge` and the report agree."""

from __future__ import annotations

from typing import Any

from editguard.gates import rate_gate
from editguard.stats import wilson_lower_bound

RATES = ("efficacy", "generalization", "locality")


def rate_counts(cases: list[dict[str, Any]], rate: str) -> tuple[int, int]:
    """(hits, n) over the cases: efficacy counts one prompt per case with a true target;
    generalization and locality count every paraphrase / neighbourhood prompt measured."""
    if rate == "efficacy":
        judged = [c["efficacy"] for c in cases if c.get("efficacy") is not None]
        return sum(bool(e) for e in judged), len(judged)
    measured = [c for c in cases if c.get(f"{rate}_n") is not None]
    return sum(c[f"{rate}_hits"] for c in measured), sum(c[f"{rate}_n"] for c in measured)


def quality_summary(run: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{"rates": {rate: {hits, n, rate, wilson_lower}}, "gates": [...], "passed"}; None when the run
    did not ask for quality mode (run["quality"] absent or off)."""
    config = run.get("quality") or {}
    if not (config.get("measure_scores") or config.get("min_efficacy") is not None):
        return None
    rates = {}
    for rate in RATES:
        hits, n = rate_counts(cases, rate)
        if rate != "efficacy" and not config.get("measure_scores"):
            continue
        rates[rate] = {"hits": hits, "n": n, "rate": hits / n if n else None,
                       "wilson_lower": wilson_lower_bound(hits, n) if n else None}
    gates = [rate_gate(rate, rates[rate]["hits"], rates[rate]["n"], config[f"min_{rate}"])
             for rate in RATES if rate in rates and config.get(f"min_{rate}") is not None]
    return {"rates": rates,
            "gates": [{"name": g.name, "passed": g.passed, "wilson_lower": None if g.value != g.value else g.value,
                       "minimum": g.bound, "reason": g.reason} for g in gates],
            "passed": all(g.passed for g in gates)}


def quality_lines(summary: dict[str, Any]) -> list[tuple[str, bool]]:
    """The terminal's lines: each gate's reason (and whether it held), then the rates not gated."""
    lines = [(g["reason"], g["passed"]) for g in summary["gates"]]
    gated = {g["name"] for g in summary["gates"]}
    for rate, r in summary["rates"].items():
        if rate in gated:
            continue
        if r["n"]:
            lines.append((f"{rate} {r['hits']}/{r['n']} = {r['rate']:.2f}, Wilson lower bound "
                          f"{r['wilson_lower']:.2f} (not gated)", True))
        else:
            lines.append((f"{rate}: no case has such prompts (not gated)", True))
    return lines
