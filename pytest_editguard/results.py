"""The plugin's side of a run's results: records arrive in test reports (so that xdist workers'
results reach the controller) and go to the library's Recorder (editguard.run.recorder), which
journals them and writes the reports; this module shows the collapse report in the terminal and
turns the run's outcome into pytest's exit status."""

from __future__ import annotations

import datetime
import json
import signal
import sys
from io import StringIO
from typing import Any

import pytest

from pytest_editguard.settings import SETTINGS_KEY, SOURCES_KEY


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _terminate_as_interrupt(signum, frame):
    # A CI cancel (SIGTERM) ends the run like Ctrl-C: pytest then finishes the session, and the
    # report says "complete": false with every case that finished.
    raise KeyboardInterrupt(f"editguard: signal {signum} (SIGTERM): the run stops, its report is written")


class ResultCollector:
    """Registered per pytest config (nested pytester sessions get their own)."""

    def __init__(self, config: pytest.Config):
        from editguard.run.recorder import Outputs, Recorder

        self.config = config
        settings = config.stash[SETTINGS_KEY]
        # Edit tests collected (None under xdist, where the controller collects nothing) and those
        # that ran to an outcome: the difference is what an interrupted run did not get to.
        self.collected: list[str] | None = None
        self.finished: set[str] = set()
        # How this run was started (the controller's, not a worker's): taken now; the git commit is
        # looked up once the run is known to edit, not in every pytest run of a foreign project.
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.argv, self.cwd = list(sys.argv), str(config.invocation_params.dir)
        self._invocation: dict[str, Any] | None = None
        self._previous_sigterm: Any = None
        compare = None
        if settings.compare_saved is not None:
            compare = (settings.compare_saved, settings.compare_path, settings.compare_margins)
        self.recorder = Recorder(Outputs(json=settings.json_path, markdown=settings.markdown_path,
                                         html=settings.html_path, plots=settings.plots_dir),
                                 self._fallback_header, self.invocation, compare)

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.recorder.cases

    def invocation(self) -> dict[str, Any]:
        """argv, cwd, git commit and start time; the commit looked up on the first call."""
        if self._invocation is None:
            from editguard.report.json_report import invocation

            self._invocation = invocation(self.argv, self.started, self.cwd)
        return self._invocation

    def _fallback_header(self) -> dict[str, Any]:
        # Nothing was measured (interrupted first, every case errored, or every suite empty on
        # purpose): the settings say what would have run.
        s = self.config.stash[SETTINGS_KEY]
        return {"editor": s.editor, "model": s.model, "thresholds": s.thresholds.to_dict(), "ppl_bos": s.ppl_bos,
                "quality": s.quality.to_dict() if s.quality.enabled else None,
                "calibration": "the options' bounds: no edit ran, so the model's calibration was not looked up"}

    @property
    def run(self) -> dict[str, Any]:
        return self.recorder.header

    def _writes_reports(self) -> bool:
        return not is_xdist_worker(self.config) and not self.config.option.collectonly

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not is_xdist_worker(self.config) and session.items:
            self.collected = [item.nodeid for item in session.items
                              if "edit_guard" in getattr(item, "fixturenames", ())]
            if self.collected:
                self.invocation()   # the commit the run starts from
                self._check_saved_suite(session)
                if self._writes_reports():
                    self._start()

    def _check_saved_suite(self, session: pytest.Session) -> None:
        """A saved report (--editguard-compare) of another suite is refused now, before any edit
        (under xdist the controller collects nothing: then the comparison refuses it at the end)."""
        settings = self.config.stash[SETTINGS_KEY]
        if settings.compare_saved is None:
            return
        from editguard.report.compare import saved_suites
        from pytest_editguard.fixtures import suite_name

        there = saved_suites(settings.compare_saved["run"])
        here = {suite_name(item) for item in session.items if "edit_guard" in getattr(item, "fixturenames", ())}
        if there and here and not there & here:
            raise pytest.UsageError(f"--editguard-compare {settings.compare_path}: it ran suite "
                                    f"{', '.join(sorted(there))}, this run {', '.join(sorted(here))}; compare runs "
                                    f"of the same suite")

    def _start(self) -> None:
        """The run edits: begin the journal and the incomplete report, and let SIGTERM end the run
        like Ctrl-C (only now, so that a foreign project's runs keep their own handling)."""
        self.recorder.start()
        if self._previous_sigterm is None and self.recorder.outputs.json:
            try:
                self._previous_sigterm = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
            except ValueError:   # not the main thread: leave signals alone
                pass

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def completion(self, exitstatus: int) -> dict[str, Any]:
        """Whether every collected edit test ran: {"complete", "cases_done", "cases_not_run"}."""
        not_run = [nodeid for nodeid in (self.collected or []) if nodeid not in self.finished]
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        return {"complete": not (interrupted or not_run), "cases_done": len(self.results),
                "cases_not_run": not_run}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.finished.add(report.nodeid)
        if report.when not in ("setup", "call"):
            return
        props = dict(report.user_properties)
        if "editguard_not_run" in props and report.when == "call":
            self.recorder.add_step_not_run(json.loads(props["editguard_not_run"]))
        if "editguard_case" in props and props.get("editguard_case_phase", "call") == report.when:
            record = json.loads(props["editguard_case"])
            if not self.results and not is_xdist_worker(self.config):
                self.invocation()   # under xdist the controller collects nothing: look it up now
            header = json.loads(props["editguard_run"]) if "editguard_run" in props else None
            if self._writes_reports():
                self._start()
                self.recorder.add_case(record, header)
            else:
                self.recorder.cases.append(record)

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
        comparison = self.recorder.comparison()
        if self.recorder.comparison_error:
            terminalreporter.write_line(f"editguard: {self.recorder.comparison_error}", red=True, bold=True)
        if comparison is not None:
            terminalreporter.write_sep("-", f"compared with {comparison.baseline}")
            for line in comparison.lines():
                failing = line.startswith(("REGRESSION", "WORSE", "editguard compare: FAILED"))
                terminalreporter.write_line(line, red=failing, bold=failing,
                                            green=line.startswith("improved") or line.endswith("no regression"))
        quality = self.recorder.quality()
        if quality is not None:
            from editguard.report.quality import quality_lines

            verdict = "held" if quality["passed"] else "FAILED: the run fails"
            terminalreporter.write_sep("=", f"editguard edit quality: {verdict}")
            for line, held in quality_lines(quality):
                terminalreporter.write_line(("" if held else "FAILED ") + line, red=not held, green=held)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self._writes_reports():
            return   # a worker reports to the controller; --collect-only writes nothing
        completion = self.completion(exitstatus)
        empty = {module: source["empty_reason"] for module, source in self.config.stash[SOURCES_KEY].items()
                 if source.get("empty_reason")}
        if empty:
            completion["empty_suites"] = empty
        if not (self.results or not completion["complete"] or empty or self.recorder.started):
            return   # nothing edited here: a foreign project's run writes no report
        outcome = self.recorder.finish(completion)
        # Judged here, from every worker's results: a suite-level gate or a regression fails the run
        # even where every test passed.
        if outcome.comparison_error and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        elif (outcome.quality_failed or outcome.comparison_failed) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
