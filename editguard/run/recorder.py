"""A run's records as they arrive, kept safe, and the run judged at the end.

Every finished case is appended to a journal beside the JSON report (`<json>.journal.jsonl`,
JSON Lines, fsync'd) and the report itself is rewritten atomically, marked `"complete": false`
until `finish`: a run that is cancelled (SIGTERM), interrupted or killed keeps every case it
finished, and a report is never left half-written or looking like the previous run's.
`recover_report(journal)` (`editguard report --recover`) turns a journal into a report.

    outputs = Outputs(json="r.json", markdown="r.md", html="r.html")
    outputs.prepare()                    # creates them now: an unwritable path fails before any edit
    recorder = Recorder(outputs, fallback_header)
    recorder.start()
    recorder.add_case(record, header)    # for each finished edit (a CaseRecord's JSON)
    outcome = recorder.finish({"complete": True})
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from editguard.cache import output_path_problem
from editguard.errors import ReportError, UsageError
from editguard.report.json_report import combine_runs, write_report
from editguard.run.records import SCHEMA_VERSION, finite_json, restore_non_finite

JOURNAL_SUFFIX = ".journal.jsonl"


def journal_path(json_path: str | os.PathLike) -> Path:
    """Where the journal of the report at `json_path` is written."""
    path = Path(json_path)
    return path.with_name(path.name + JOURNAL_SUFFIX)


def prove_writable(flag: str, path: str | os.PathLike, *, directory: bool = False) -> None:
    """UsageError naming the option when `path` cannot be written; tried for real, not by
    permission bits (editguard.cache.unwritable_reason), and nothing is left behind."""
    problem = output_path_problem(flag, path, directory=directory)
    if problem:
        raise UsageError(problem)


@dataclass(frozen=True)
class Outputs:
    """The files a run writes; `flags` names the option of each for error messages."""
    json: str | None = None
    markdown: str | None = None
    html: str | None = None
    plots: str | None = None
    junit: str | None = None
    lm_eval_json: str | None = None     # downstream scores in lm-evaluation-harness's layout
    flags: dict[str, str] = field(default_factory=dict)

    @property
    def journal(self) -> Path | None:
        return journal_path(self.json) if self.json else None

    def prepare(self) -> None:
        """Prove every output writable (by creating it, then removing it) before the first edit."""
        for name, path, directory in (("json", self.json, False), ("journal", self.journal, False),
                                      ("markdown", self.markdown, False), ("html", self.html, False),
                                      ("plots", self.plots, True),
                                      ("junit", self.junit, False), ("lm_eval_json", self.lm_eval_json, False)):
            if path:
                prove_writable(self.flags.get(name, name), path, directory=directory)


@dataclass
class Outcome:
    """How the run ends, beyond its tests' own outcomes."""
    quality_failed: bool = False
    comparison_failed: bool = False
    comparison_error: str = ""


class Recorder:
    """The run's records, journaled and written as they arrive; judged at `finish`.

    `fallback_header()` gives the header when no edit produced one (every case errored, or none
    ran); `compare` is (saved report, its name, fail margins) for the no-regression gate."""

    def __init__(self, outputs: Outputs, fallback_header: Callable[[], dict[str, Any]],
                 invocation: Callable[[], dict[str, Any]] = dict,
                 compare: tuple[dict[str, Any], str, list] | None = None):
        self.outputs, self._fallback_header, self._invocation = outputs, fallback_header, invocation
        self.compare = compare
        self.cases: list[dict[str, Any]] = []
        self.headers: dict[str, dict[str, Any]] = {}   # suite module -> its run header
        self.steps_not_run: list[dict[str, Any]] = []
        self._comparison: Any = None
        self.comparison_error = ""
        self._quality: dict[str, Any] | None = None
        self.started = False

    # ---- while the run goes ----

    def start(self) -> None:
        """Begin a fresh journal and replace any earlier report at the JSON path by this run's,
        marked incomplete (a run killed before its first case leaves no stale "complete" report)."""
        if self.started:
            return
        self.started = True
        if self.outputs.journal:
            self.outputs.journal.parent.mkdir(parents=True, exist_ok=True)
            self.outputs.journal.write_text("", encoding="utf-8")
            self._journal({"kind": "start", "schema": SCHEMA_VERSION, "invocation": self._invocation()})
        self._write_json({"complete": False})

    def add_case(self, record: dict[str, Any], header: dict[str, Any] | None) -> None:
        self.start()
        module = record.get("suite_module", "")
        entry: dict[str, Any] = {"kind": "case", "record": record}
        if header is not None and module not in self.headers:
            self.headers[module] = header
            entry["header"] = header
        self.cases.append(record)
        self._comparison, self._quality = None, None
        self._journal(entry)
        self._write_json({"complete": False})

    def add_step_not_run(self, step: dict[str, Any]) -> None:
        self.start()
        self.steps_not_run.append(step)
        self._journal({"kind": "not_run", "step": step})

    def _journal(self, entry: dict[str, Any]) -> None:
        if not self.outputs.journal:
            return
        line = json.dumps(finite_json(entry), ensure_ascii=False, allow_nan=False)
        with open(self.outputs.journal, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _write_json(self, completion: dict[str, Any]) -> None:
        if self.outputs.json:
            write_report(self.outputs.json, self.header, self.cases,
                         {**completion, **self._stops(), **({"steps_not_run": self.steps_not_run}
                                                            if self.steps_not_run else {})})

    # ---- what the run amounts to ----

    @property
    def header(self) -> dict[str, Any]:
        if self.headers:
            return {**combine_runs([self.headers[k] for k in sorted(self.headers)]), "invocation": self._invocation()}
        return {**self._fallback_header(), "invocation": self._invocation()}

    def _stops(self) -> dict[str, Any]:
        stops = sequence_stops(self.cases, self.steps_not_run)
        return {"sequences_stopped": stops} if stops else {}

    def comparison(self):
        """The run judged against the saved report (None without one, or before any case)."""
        if self.compare is not None and self._comparison is None and self.cases and not self.comparison_error:
            from editguard.report.compare import CompareError, compare_runs

            saved, name, margins = self.compare
            try:
                self._comparison = compare_runs(saved, {"run": self.header, "cases": self.cases}, margins, name=name)
            except CompareError as err:
                self.comparison_error = f"--editguard-compare: {err}"
        return self._comparison

    def quality(self) -> dict[str, Any] | None:
        """Quality mode's suite-level verdict (None when it is off or nothing ran)."""
        if self._quality is None and self.cases:
            from editguard.report.quality import quality_summary

            self._quality = quality_summary(self.header, self.cases)
        return self._quality

    def finish(self, completion: dict[str, Any]) -> Outcome:
        """Write the final report (JSON, Markdown, plots) with `completion` ("complete",
        "cases_not_run", "empty_suites", ...) and judge the run."""
        comparison = self.comparison()
        quality = self.quality()
        completion = {**completion, **self._stops(),
                      **({"steps_not_run": self.steps_not_run} if self.steps_not_run else {}),
                      **({"comparison": comparison.to_json()} if comparison is not None else {})}
        if self.outputs.json:
            self._journal({"kind": "end", "complete": bool(completion.get("complete"))})
            write_report(self.outputs.json, self.header, self.cases, completion)
        if self.outputs.plots and self.cases:
            from editguard.report.plots import write_report_plots

            write_report_plots([{"run": self.header, "cases": self.cases}], self.outputs.plots)
        if self.outputs.lm_eval_json:
            from editguard.metrics.lm_eval import lm_eval_json_from_records

            lm_eval_json_from_records(self.outputs.lm_eval_json, self.cases,
                                      {k: self.header.get(k) for k in ("model", "editor", "suite") if k in self.header})
        if self.outputs.markdown:
            from editguard.cache import write_atomic
            from editguard.report.markdown import render_markdown

            write_atomic(Path(self.outputs.markdown),
                         render_markdown(self.header, self.cases, comparison, completion).encode("utf-8"))
        if self.outputs.html:
            from editguard.report.html import write_html

            write_html(self.outputs.html, self.header, self.cases, comparison, completion)
        return Outcome(quality_failed=quality is not None and not quality["passed"],
                       comparison_failed=comparison is not None and comparison.failed,
                       comparison_error=self.comparison_error)


def sequence_stops(cases: list[dict[str, Any]], not_run: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite module whose sequence stopped early (a collapse, or a failed step): the step, why,
    and the steps not run."""
    stops: dict[str, Any] = {}
    for s in sorted(not_run, key=lambda s: s["step"]):
        stop = stops.setdefault(s["suite_module"], {"sequence": s["sequence"], "step": s["stopped_at"],
                                                    "message": s["reason"], "steps_not_run": []})
        stop["steps_not_run"].append({"step": s["step"], "case_id": s["case_id"]})
    for record in cases:
        if record.get("sequence_stop"):
            stop = stops.setdefault(record["suite_module"], {"sequence": record["sequence"], "steps_not_run": []})
            stop.update(record["sequence_stop"])
    return dict(sorted(stops.items()))


def recover_report(journal: str | os.PathLike, json_path: str | os.PathLike | None = None) -> Path:
    """Rebuild the report of a run from its journal (a run killed before it could write its end):
    every case the journal holds, marked `"complete": false` unless the journal records a complete
    end. A torn last line (the process died mid-write) is ignored; any other bad line is an error.
    Writes `json_path` (default: the journal's report path) and returns it."""
    journal = Path(journal)
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ReportError(f"{journal}: cannot read the journal ({err.strerror or err})") from None
    headers: dict[str, dict[str, Any]] = {}
    cases, not_run, invocation, end = [], [], {}, None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break   # torn by the kill: every earlier line is whole (each was fsync'd)
            raise ReportError(f"{journal}:{number}: not a journal line (invalid JSON)") from None
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind == "start":
            invocation = entry.get("invocation") or {}
        elif kind == "case":
            record = restore_non_finite(entry["record"])
            if "header" in entry:
                headers.setdefault(record.get("suite_module", ""), entry["header"])
            cases.append(record)
        elif kind == "not_run":
            not_run.append(entry["step"])
        elif kind == "end":
            end = entry
        else:
            raise ReportError(f"{journal}:{number}: unknown journal entry {kind!r}")
    if not headers:
        raise ReportError(f"{journal}: the journal holds no finished case, so there is no report to recover")
    name = journal.name
    target = Path(json_path) if json_path else journal.with_name(name[: -len(JOURNAL_SUFFIX)]
                                                                 if name.endswith(JOURNAL_SUFFIX) else name + ".json")
    header = {**combine_runs([headers[k] for k in sorted(headers)]), "invocation": invocation}
    stops = sequence_stops(cases, not_run)
    completion = {"complete": bool(end and end.get("complete")), "recovered_from": str(journal),
                  **({"sequences_stopped": stops} if stops else {}),
                  **({"steps_not_run": not_run} if not_run else {})}
    return write_report(target, header, cases, completion)
