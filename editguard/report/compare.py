"""The no-regression gate: a run compared case by case with a saved JSON report of the same model
and suite (any editor: "is this editor at least as safe as the saved run?").

A case that passed in the saved run and fails now is a regression; with fail margins
(`ppl:10%`, `update_norm_rel:0.05`, `efficacy`, ... in the style of pytest-benchmark's
`--benchmark-compare-fail`) a case whose number worsened beyond the margin fails the gate too.
Improvements are listed and never fail; cases on one side only are listed, not judged.
The pytest plugin (--editguard-compare) and `editguard compare` both judge with `compare_runs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from editguard.errors import ReportError
from editguard.report.merge import RUN_IDENTITY, TIMING_FIELDS, _short, _where, case_key
from editguard.report.verdicts import PASSED, VERDICTS, verdict
from editguard.run.records import METRICS as RECORD_METRICS
from editguard.run.records import Metric


class CompareError(ReportError, ValueError):
    """Reports that cannot be compared (other model or suite), or a bad fail-margin spec."""


# The per-case numbers a margin can watch (the record schema's comparable metrics).
METRICS: dict[str, Metric] = {m.name: m for m in RECORD_METRICS if m.comparable}


@dataclass(frozen=True)
class FailMargin:
    """Fail when `metric` worsens by more than `value` (a fraction of the saved value when
    `relative`, else in the metric's own unit); a yes/no metric fails on any loss."""
    metric: str
    value: float = 0.0
    relative: bool = False

    def __str__(self) -> str:
        if METRICS[self.metric].higher_is_worse is None:
            return self.metric
        return f"{self.metric}:{self.value * 100:g}%" if self.relative else f"{self.metric}:{self.value:g}"

    def limit(self, before: float) -> float:
        return self.value * abs(before) if self.relative else self.value


def parse_fail_margins(specs: str | list[str] | tuple[str, ...] | None) -> list[FailMargin]:
    """`"ppl:10%,update_norm_rel:0.05"` (or a list of such strings) as FailMargins; CompareError
    names the bad entry and what was expected."""
    if specs is None:
        return []
    entries = [part.strip() for spec in ([specs] if isinstance(specs, str) else specs) for part in spec.split(",")]
    return [_parse_margin(entry) for entry in entries if entry]


def _parse_margin(entry: str) -> FailMargin:
    name, sep, raw = entry.partition(":")
    metric = METRICS.get(name.strip().replace("-", "_"))
    if metric is None:
        raise CompareError(f"fail margin {entry!r}: unknown field {name.strip()!r}; one of "
                           + ", ".join(METRICS) + " (the JSON report's per-case fields)")
    if metric.higher_is_worse is None:
        if sep:
            raise CompareError(f"fail margin {entry!r}: {metric.name} is yes/no, give it without a value "
                               f"({metric.name!r}: fail when a case loses it)")
        return FailMargin(metric.name)
    if not sep:
        raise CompareError(f"fail margin {entry!r}: expected FIELD:VALUE, e.g. {metric.name}:10% (relative to the "
                           f"saved value) or {metric.name}:0.5 (absolute)")
    raw = raw.strip()
    relative = raw.endswith("%")
    try:
        value = float(raw.removesuffix("%"))
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise CompareError(f"fail margin {entry!r}: the margin must be a finite number ≥ 0, optionally with %, "
                           f"e.g. {metric.name}:10% or {metric.name}:0.5; got {raw!r}")
    return FailMargin(metric.name, value / 100 if relative else value, relative)


@dataclass
class Change:
    """One case's change between the saved run and this one, in words."""
    case: str          # the case's label: id (subject), and sequence/step where it has one
    text: str
    metric: str = ""   # the margin's field, or "" for a verdict change

    def to_json(self) -> dict[str, str]:
        return {"case": self.case, "text": self.text, "metric": self.metric}


@dataclass
class Comparison:
    baseline: str                 # the saved report's path (or name)
    baseline_editor: str
    editor: str
    model: str
    margins: list[FailMargin]
    compared: int = 0
    regressions: list[Change] = field(default_factory=list)     # passed there, fails now: fail the run
    worsenings: list[Change] = field(default_factory=list)      # worse beyond a margin: fail the run
    improvements: list[Change] = field(default_factory=list)    # shown, never fail
    worse_verdicts: list[Change] = field(default_factory=list)  # failing there already, worse now: shown
    only_in_baseline: list[str] = field(default_factory=list)
    only_in_run: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.worsenings)

    def headline(self) -> str:
        margins = ", ".join(map(str, self.margins)) or "none"
        return (f"compared with {self.baseline} ({self.baseline_editor} on {self.model}): {self.compared} cases "
                f"compared; {len(self.regressions)} regressions, {len(self.worsenings)} worsened beyond a margin "
                f"(margins: {margins}), {len(self.improvements)} improvements"
                + (f"; {len(self.only_in_baseline)} only in the saved run" if self.only_in_baseline else "")
                + (f"; {len(self.only_in_run)} only in this run" if self.only_in_run else ""))

    def lines(self, max_listed: int = 50) -> list[str]:
        """The comparison as plain lines (terminal and `editguard compare`); failures first."""
        out = [self.headline()]
        out += [f"REGRESSION {c.case}: {c.text}" for c in self.regressions]
        out += [f"WORSE beyond margin {c.case}: {c.text}" for c in self.worsenings]
        out += [f"improved {c.case}: {c.text}" for c in self.improvements[:max_listed]]
        if len(self.improvements) > max_listed:
            out.append(f"... and {len(self.improvements) - max_listed} more improvements")
        out += [f"worse verdict (already failing in the saved run) {c.case}: {c.text}" for c in self.worse_verdicts]
        for label, ids in (("only in the saved run", self.only_in_baseline), ("only in this run", self.only_in_run)):
            if ids:
                shown = ", ".join(ids[:max_listed]) + (f" and {len(ids) - max_listed} more" if len(ids) > max_listed
                                                       else "")
                out.append(f"{label} (not compared): {len(ids)} cases: {shown}")
        out += [f"note: {n}" for n in self.notes]
        verdict_line = (f"editguard compare: FAILED: {len(self.regressions)} regressions, {len(self.worsenings)} "
                        f"worsened beyond a margin against {self.baseline}" if self.failed
                        else f"editguard compare: no regression against {self.baseline}")
        return out + [verdict_line]

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "baseline_editor": self.baseline_editor, "editor": self.editor,
                "model": self.model, "margins": [str(m) for m in self.margins], "compared": self.compared,
                "failed": self.failed, "regressions": [c.to_json() for c in self.regressions],
                "worsenings": [c.to_json() for c in self.worsenings],
                "improvements": [c.to_json() for c in self.improvements],
                "worse_verdicts": [c.to_json() for c in self.worse_verdicts],
                "only_in_baseline": self.only_in_baseline, "only_in_run": self.only_in_run, "notes": self.notes}


def _label(case: dict[str, Any]) -> str:
    text = f"case {case['case_id']}" + (f" ({case['subject']})" if case.get("subject") else "")
    return text + (f" in sequence {case['sequence']}, step {case.get('step')}" if case.get("sequence") else "")


def _suites(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Suite name -> that suite's fields (ppl corpus, ...), from the header's modules."""
    by_name = {fields.get("suite") or module: fields for module, fields in (run.get("suites") or {}).items()}
    if not by_name and run.get("suite"):
        by_name[run["suite"]] = run
    return by_name


def saved_suites(run: dict[str, Any]) -> set[str]:
    """The names of the suites a report's run header says it ran."""
    return set(_suites(run))


def duplicate_cases(cases: list[dict[str, Any]]) -> list[str]:
    """The cases that appear more than once under one identity (case id, sequence, step), as
    "label ×count"."""
    counts: dict[tuple, int] = {}
    for case in cases:
        counts[case_key(case)] = counts.get(case_key(case), 0) + 1
    return [f"{_label(case)} ×{counts.pop(case_key(case))}" for case in cases if counts.get(case_key(case), 0) > 1]


def check_usable(doc: dict[str, Any], name: str) -> None:
    """CompareError unless `doc` (a loaded report) can serve as one side of a comparison: complete
    (an interrupted run would hide its missing cases) and without duplicate cases (one of two
    records with the same identity would hide the other from the gate)."""
    if doc.get("complete") is False:
        not_run = len(doc.get("cases_not_run") or [])
        raise CompareError(f"cannot compare with {name}: it is an incomplete run (\"complete\": false"
                           + (f", {not_run} collected cases did not run" if not_run else "")
                           + "); compare complete runs only")
    duplicates = duplicate_cases(doc["cases"])
    if duplicates:
        raise CompareError(f"cannot compare with {name}: {len(duplicates)} of its cases appear more than once ("
                           + ", ".join(duplicates[:5]) + "); one record would hide the other from the gate")


def check_comparable(saved: dict[str, Any], run: dict[str, Any], name: str) -> list[str]:
    """CompareError when the saved run is of another model, weights, suite, perplexity corpus or
    BOS rule; else the differences worth a note (gates, dtype, edit precision)."""
    where = f"cannot compare with {name}"
    if saved.get("model") != run.get("model"):
        raise CompareError(f"{where}: it was run on model {saved.get('model')!r}, this run on {run.get('model')!r}; "
                           f"compare runs of the same model")
    fingerprints = saved.get("model_fingerprint"), run.get("model_fingerprint")
    if all(fingerprints) and fingerprints[0] != fingerprints[1] and saved.get("dtype") == run.get("dtype"):
        raise CompareError(f"{where}: model {run.get('model')!r} has other weights there (fingerprint "
                           f"{fingerprints[0]} vs {fingerprints[1]} here)")
    saved_suites, run_suites = _suites(saved), _suites(run)
    if saved_suites and run_suites and not saved_suites.keys() & run_suites.keys():
        raise CompareError(f"{where}: it ran suite {', '.join(sorted(saved_suites))}, this run "
                           f"{', '.join(sorted(run_suites))}; compare runs of the same suite")
    for suite in sorted(saved_suites.keys() & run_suites.keys()):
        there, here = saved_suites[suite].get("ppl_corpus"), run_suites[suite].get("ppl_corpus")
        if there and here and there != here:
            raise CompareError(f"{where}: suite {suite} measured perplexity on {there} there and on {here} here; "
                               f"perplexities of different corpora are not comparable")
    if saved.get("ppl_bos", "never") != run.get("ppl_bos", "never"):
        raise CompareError(f"{where}: its perplexities used the BOS rule {saved.get('ppl_bos', 'never')!r}, this "
                           f"run {run.get('ppl_bos', 'never')!r} (--ppl-bos); they are not comparable")
    notes = []
    if saved.get("thresholds") != run.get("thresholds"):
        notes.append(f"the gates differ ({_gates(saved)} there, {_gates(run)} here): passed/failed is each run's "
                     f"own verdict")
    if saved.get("dtype") != run.get("dtype"):
        notes.append(f"dtype {saved.get('dtype')} there, {run.get('dtype')} here")
    if saved.get("edit_precision", "float32") != run.get("edit_precision", "float32"):
        notes.append(f"edit precision {saved.get('edit_precision', 'float32')} there, "
                     f"{run.get('edit_precision', 'float32')} here (v* and perplexity)")
    return notes


def _gates(run: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in (run.get("thresholds") or {}).items()) or "none recorded"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value: float) -> str:
    return format(value, ".4g")


def _margin_change(margin: FailMargin, before: Any, after: Any) -> tuple[int, str] | None:
    """(+1 worse beyond the margin / -1 better beyond it / 0 within, the change in words); None
    where a side has no value (an editor without ROME's anatomy, say)."""
    metric = METRICS[margin.metric]
    if metric.higher_is_worse is None:
        if not isinstance(before, bool) or not isinstance(after, bool):
            return None
        if before == after:
            return 0, ""
        return (-1, f"{metric.name} regained") if after else (1, f"{metric.name} lost (margin {margin})")
    before, after = _number(before), _number(after)
    if before is None or after is None:
        return None
    if not math.isfinite(before):
        return (-1, f"{metric.name} {_fmt(before)} → {_fmt(after)}") if math.isfinite(after) else (0, "")
    if not math.isfinite(after):   # NaN/Inf now: worse than any margin
        return 1, f"{metric.name} {_fmt(before)} → {_fmt(after)} (margin {margin})"
    worse_by = (after - before) if metric.higher_is_worse else (before - after)
    change = f"{metric.name} {_fmt(before)} → {_fmt(after)}"
    if before:
        percent = (after - before) / abs(before) * 100
        change += f" ({percent:+.1f}%)" if abs(percent) < 1000 else f" (×{after / before:.3g})"
    limit = margin.limit(before)
    if worse_by > limit:
        return 1, f"{change}, beyond the margin {margin}"
    if -worse_by > limit:
        return -1, f"{change}, better by more than {margin}"
    return 0, ""


def compare_runs(saved: dict[str, Any], current: dict[str, Any], margins: list[FailMargin] | None = None,
                 name: str = "the saved report") -> Comparison:
    """Judge `current` (a report document: run + cases) against `saved`, case by case."""
    margins = list(margins or [])
    check_usable(saved, name)
    check_usable({**current, "complete": True}, "this run")   # the run itself may still be going
    saved_run, run = saved["run"], current["run"]
    notes = check_comparable(saved_run, run, name)
    comparison = Comparison(baseline=name, baseline_editor=str(saved_run.get("editor")), editor=str(run.get("editor")),
                            model=str(run.get("model")), margins=margins, notes=notes)
    cases_there = {case_key(c): c for c in saved["cases"]}
    cases_here = {case_key(c): c for c in current["cases"]}
    comparison.only_in_baseline = [_label(cases_there[k]) for k in sorted(cases_there.keys() - cases_here.keys())]
    comparison.only_in_run = [_label(cases_here[k]) for k in sorted(cases_here.keys() - cases_there.keys())]
    ppl_max_there = saved_run["thresholds"]["ppl_max"]
    ppl_max_here = run["thresholds"]["ppl_max"]
    rank = {v: i for i, v in enumerate(VERDICTS)}
    for key in sorted(cases_there.keys() & cases_here.keys()):
        there, here = cases_there[key], cases_here[key]
        label = _label(here)
        comparison.compared += 1
        before, after = verdict(there, ppl_max_there), verdict(here, ppl_max_here)
        gates = ", ".join(here.get("failed_gates") or [])
        moved = f"{before} in {name}, {after} now" + (f" ({gates})" if gates and after != PASSED else "")
        if before == PASSED and after != PASSED:
            comparison.regressions.append(Change(label, moved))
        elif rank[after] < rank[before]:
            comparison.improvements.append(Change(label, moved))
        elif rank[after] > rank[before]:
            comparison.worse_verdicts.append(Change(label, moved))
        for margin in margins:
            judged = _margin_change(margin, there.get(margin.metric), here.get(margin.metric))
            if judged is None or judged[0] == 0:
                continue
            target = comparison.worsenings if judged[0] > 0 else comparison.improvements
            target.append(Change(label, judged[1], margin.metric))
    return comparison


# `editguard compare --equal`: the two reports hold the same cases, verdicts and numbers.

def compare_reports(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-4, atol: float = 1e-6) -> list[str]:
    """Differences between two reports of the same cases, ignoring wall-clock fields and where
    the run happened; [] when they agree (same cases, verdicts, gates, numbers within rtol)."""
    problems = []
    for name in RUN_IDENTITY + ("suites",):
        problems += _diff(f"run.{name}", a["run"].get(name), b["run"].get(name), rtol, atol)
    cases_a = {case_key(c): c for c in a["cases"]}
    cases_b = {case_key(c): c for c in b["cases"]}
    for key in sorted(cases_a.keys() - cases_b.keys()):
        problems.append(f"case {key[2]}{_where(key)} only in the first report")
    for key in sorted(cases_b.keys() - cases_a.keys()):
        problems.append(f"case {key[2]}{_where(key)} only in the second report")
    for key in sorted(cases_a.keys() & cases_b.keys()):
        ca, cb = cases_a[key], cases_b[key]
        for name in sorted(set(ca) | set(cb)):
            if name not in TIMING_FIELDS:
                problems += _diff(f"case {key[2]}{_where(key)}: {name}", ca.get(name), cb.get(name), rtol, atol)
    return problems


def _diff(where: str, x: Any, y: Any, rtol: float, atol: float) -> list[str]:
    if isinstance(x, dict) and isinstance(y, dict):
        out = []
        for k in sorted(set(x) | set(y)):
            if k.startswith("seconds") or k in TIMING_FIELDS:
                continue
            out += _diff(f"{where}.{k}", x.get(k), y.get(k), rtol, atol)
        return out
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return [f"{where}: {len(x)} vs {len(y)} items"]
        return [p for i, (u, v) in enumerate(zip(x, y)) for p in _diff(f"{where}[{i}]", u, v, rtol, atol)]
    numeric = (int, float)
    if isinstance(x, numeric) and isinstance(y, numeric) and not isinstance(x, bool) and not isinstance(y, bool):
        if math.isnan(x) and math.isnan(y):
            return []
        if math.isclose(x, y, rel_tol=rtol, abs_tol=atol):
            return []
        return [f"{where}: {x!r} vs {y!r}"]
    return [] if x == y else [f"{where}: {_short(x)} vs {_short(y)}"]
