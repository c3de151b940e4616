"""The plugin's results: collected from test reports (so that xdist workers' results reach the
controller), shown as the collapse report, written as the JSON report and plots; junit properties."""

from __future__ import annotations

import datetime
import json
import sys
from io import StringIO
from typing import Any

import pytest

from pytest_editguard.settings import SETTINGS_KEY, SOURCES_KEY

_JUNIT_FIELDS = ("passed", "ppl", "ppl_baseline", "corpus_ppl", "denominator_ratio", "key_cosine",
                 "update_norm_rel", "blast_radius", "efficacy", "sequence", "step", "peak_memory_mb")


def junit_properties(record: dict[str, Any]) -> list[tuple[str, str]]:
    """A case's numbers as (name, value) pairs, named editguard.<field>; gates as one line each."""
    props = [(f"editguard.{f}", str(record[f])) for f in _JUNIT_FIELDS if record.get(f) is not None]
    props.append(("editguard.failed_gates", ",".join(record["failed_gates"])))
    for task, scores in (record.get("downstream") or {}).items():
        props.append((f"editguard.downstream.{task}", str(scores["accuracy"])))
    props.append(("editguard.reason", record["reason"]))
    diag = record.get("diagnostics") or {}
    for name in ("denominator", "denominator_kbar", "key_rel_distance", "update_norm", "numerator_norm",
                 "v_star_norm", "layer"):
        if isinstance(diag.get(name), (int, float)):
            props.append((f"editguard.{name}", str(diag[name])))
    return props


def sequence_stops(results: list[dict[str, Any]], not_run: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite module whose sequence stopped early (a collapse, or a failed step): the step, why,
    and the steps not run."""
    stops: dict[str, Any] = {}
    for s in sorted(not_run, key=lambda s: s["step"]):
        stop = stops.setdefault(s["suite_module"], {"sequence": s["sequence"], "step": s["stopped_at"],
                                                    "message": s["reason"], "steps_not_run": []})
        stop["steps_not_run"].append({"step": s["step"], "case_id": s["case_id"]})
    for record in results:
        if record.get("sequence_stop"):
            stop = stops.setdefault(record["suite_module"], {"sequence": record["sequence"], "steps_not_run": []})
            stop.update(record["sequence_stop"])
    return dict(sorted(stops.items()))


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class ResultCollector:
    """Registered per pytest config (nested pytester sessions get their own)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.results: list[dict[str, Any]] = []
        self.runs: dict[str, dict[str, Any]] = {}  # one run header per suite module
        # Edit tests collected (None under xdist, where the controller collects nothing) and those
        # that ran to an outcome: the difference is what an interrupted run did not get to.
        self.collected: list[str] | None = None
        self.finished: set[str] = set()
        self.quality: dict[str, Any] | None = None  # the run's quality summary, judged at session end
        self.not_run_steps: list[dict[str, Any]] = []   # sequence steps skipped after the sequence stopped
        self._comparison: Any = None          # editguard.report.compare.Comparison, once judged
        self.comparison_error = ""            # why the saved report could not be compared
        # How this run was started (the controller's, not a worker's): taken now; the git commit is
        # looked up once the run is known to edit (collected edit tests, or the first result), not
        # in every pytest run of a foreign project.
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.argv, self.cwd = list(sys.argv), str(config.invocation_params.dir)
        self._invocation: dict[str, Any] | None = None

    def invocation(self) -> dict[str, Any]:
        """argv, cwd, git commit and start time; the commit looked up on the first call."""
        if self._invocation is None:
            from editguard.report.json_report import invocation

            self._invocation = invocation(self.argv, self.started, self.cwd)
        return self._invocation
        self.not_run_steps: list[dict[str, Any]] = []   # sequence steps skipped after the sequence stopped

    @property
    def run(self) -> dict[str, Any]:
        from editguard.report.json_report import combine_runs

        if self.runs:
            return {**combine_runs([self.runs[k] for k in sorted(self.runs)]), "invocation": self.invocation()}
        # Nothing was edited (interrupted first, or every suite empty on purpose): the settings say
        # what would have run.
        s = self.config.stash[SETTINGS_KEY]
        return {"editor": s.editor, "model": s.model, "thresholds": s.thresholds.to_dict(), "ppl_bos": s.ppl_bos,
                "invocation": self.invocation(),
                "quality": s.quality.to_dict() if s.quality.enabled else None,
                "calibration": s.calibration}

    def comparison(self):
        """The run judged against --editguard-compare's saved report (None without one, or when
        nothing ran); a report that cannot be compared leaves `comparison_error`."""
        settings = self.config.stash[SETTINGS_KEY]
        if self._comparison is None and settings.compare_saved is not None and self.results \
                and not self.comparison_error:
            from editguard.report.compare import CompareError, compare_runs

            try:
                self._comparison = compare_runs(settings.compare_saved, {"run": self.run, "cases": self.results},
                                                settings.compare_margins, name=settings.compare_path)
            except CompareError as err:
                self.comparison_error = f"--editguard-compare: {err}"
        return self._comparison

    def judge_quality(self) -> dict[str, Any] | None:
        """Quality mode's suite-level verdict over every result of the run (on the controller, all
        workers' results); None when quality mode is off or no edit ran."""
        if self.quality is None and self.results:
            from editguard.report.quality import quality_summary

            self.quality = quality_summary(self.run, self.results)
        return self.quality

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not is_xdist_worker(self.config) and session.items:
            self.collected = [item.nodeid for item in session.items
                              if "edit_guard" in getattr(item, "fixturenames", ())]
            if self.collected:
                self.invocation()   # the commit the run starts from

    def completion(self, exitstatus: int) -> dict[str, Any]:
        """Whether every collected edit test ran: {"complete", "cases_done", "cases_not_run"}."""
        not_run = [nodeid for nodeid in (self.collected or []) if nodeid not in self.finished]
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        return {"complete": not (interrupted or not_run), "cases_done": len(self.results),
                "cases_not_run": not_run}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.finished.add(report.nodeid)
        if report.when != "call":
            return
        props = dict(report.user_properties)
        if "editguard_not_run" in props:
            self.not_run_steps.append(json.loads(props["editguard_not_run"]))
        if "editguard_case" in props:
            record = json.loads(props["editguard_case"])
            if not self.results and not is_xdist_worker(self.config):
                self.invocation()   # under xdist the controller collects nothing: look it up now
            self.results.append(record)
            if record["suite_module"] not in self.runs:
                self.runs[record["suite_module"]] = json.loads(props["editguard_run"])

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int) -> None:
        if is_xdist_worker(self.config):
            return
        completion = self.completion(exitstatus)
        if not completion["complete"] and (self.results or completion["cases_not_run"]):
            json_path = self.config.stash[SETTINGS_KEY].json_path
            terminalreporter.write_line(
                f"editguard: INCOMPLETE run: {completion['cases_done']} cases reported, "
                f"{len(completion['cases_not_run'])} collected edit tests did not run"
                + (f"; {json_path} says \"complete\": false" if json_path else ""), red=True, bold=True)
        if not self.results:
            return
        from rich.console import Console

        from editguard.report import render_report

        buffer = StringIO()
        markup = terminalreporter.hasmarkup
        console = Console(file=buffer, width=max(140, terminalreporter._tw.fullwidth),
                          force_terminal=markup, color_system="standard" if markup else None)
        console.print(render_report(self.run, self.results))
        terminalreporter.write_sep("=", "editguard collapse report")
        terminalreporter.write(buffer.getvalue())
        comparison = self.comparison()
        if self.comparison_error:
            terminalreporter.write_line(f"editguard: {self.comparison_error}", red=True, bold=True)
        if comparison is not None:
            terminalreporter.write_sep("-", f"compared with {comparison.baseline}")
            for line in comparison.lines():
                failing = line.startswith(("REGRESSION", "WORSE", "editguard compare: FAILED"))
                terminalreporter.write_line(line, red=failing, bold=failing,
                                            green=line.startswith("improved") or line.endswith("no regression"))
        quality = self.judge_quality()
        if quality is not None:
            from editguard.report.quality import quality_lines

            verdict = "held" if quality["passed"] else "FAILED: the run fails"
            terminalreporter.write_sep("=", f"editguard edit quality: {verdict}")
            for line, held in quality_lines(quality):
                terminalreporter.write_line(("" if held else "FAILED ") + line, red=not held, green=held)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        settings = self.config.stash[SETTINGS_KEY]
        if is_xdist_worker(self.config):
            return
        completion = self.completion(exitstatus)
        quality = self.judge_quality()
        if quality is not None and not quality["passed"] and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED   # a suite-level gate: no single test fails
        empty = {module: source["empty_reason"] for module, source in self.config.stash[SOURCES_KEY].items()
                 if source.get("empty_reason")}
        if empty:
            completion["empty_suites"] = empty
        stops = sequence_stops(self.results, self.not_run_steps)
        if stops:
            completion["sequences_stopped"] = stops
        # Also written when interrupted (Ctrl-C), when nothing ran, or when a suite was empty on
        # purpose, so that it says so.
        comparison = self.comparison()
        if settings.json_path and (self.results or not completion["complete"] or empty):
            from editguard.report import write_report

            judged = {"comparison": comparison.to_json()} if comparison is not None else {}
            write_report(settings.json_path, self.run, self.results, {**completion, **judged})
        if settings.plots_dir and self.results:
            from editguard.report.plots import write_report_plots

            write_report_plots([{"run": self.run, "cases": self.results}], settings.plots_dir)
        if settings.markdown_path and (self.results or not completion["complete"] or empty):
            from pathlib import Path

            from editguard.report.markdown import render_markdown

            Path(settings.markdown_path).parent.mkdir(parents=True, exist_ok=True)
            Path(settings.markdown_path).write_text(
                render_markdown(self.run, self.results, comparison, completion), encoding="utf-8")
        # Judged here, from every worker's results: a regression fails the run even where every test passed.
        if self.comparison_error and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        elif comparison is not None and comparison.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
