"""The plugin's side of a run's results: records arrive in test reports (so that xdist workers'
results reach the controller) and go to the library's Recorder (editguard.run.recorder), which
journals them and writes the reports; this module shows the collapse report in the terminal and
turns the run's outcome into pytest's exit status."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
from io import StringIO
from typing import Any

import pytest

from pytest_editguard.settings import EMPTY_SHARD_KEY, SETTINGS_KEY, SOURCES_KEY

# What a worker tells the controller when it finishes (config.workeroutput): its edit tests (the
# controller collects nothing under xdist) and, for a shard that got no test, records.EmptyShard.
EDIT_TESTS_OUTPUT, EMPTY_SHARD_OUTPUT = "editguard_edit_tests", "editguard_empty_shard"


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
        # Under xdist: the edit tests (from the first worker that finishes), the cases the workers
        # are about to run (from each set-up report), the workers that died (records.WorkerDeath's
        # JSON), and the tests a dead worker was running before its set-up report came.
        self.worker_edit_tests: list[str] | None = None
        self.identities: dict[str, dict[str, Any]] = {}
        self.worker_deaths: list[dict[str, Any]] = []
        self._exits: dict[str, str] = {}
        self._crashed_unknown: list[tuple[str, str]] = []
        self.empty_shard: dict[str, Any] | None = None
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
                                         html=settings.html_path, plots=settings.plots_dir,
                                         lm_eval_json=settings.lm_eval_json),
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
                "shard": s.shard_label,
                "quality": s.quality.to_dict() if s.quality.enabled else None,
                "calibration": "the options' bounds: no edit ran, so the model's calibration was not looked up"}

    @property
    def run(self) -> dict[str, Any]:
        return self.recorder.header

    def _writes_reports(self) -> bool:
        return not is_xdist_worker(self.config) and not self.config.option.collectonly

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.empty_shard = self.config.stash.get(EMPTY_SHARD_KEY, None)
        if is_xdist_worker(self.config):
            self.config.workeroutput[EDIT_TESTS_OUTPUT] = [
                item.nodeid for item in session.items if "edit_guard" in getattr(item, "fixturenames", ())]
            if self.empty_shard:
                self.config.workeroutput[EMPTY_SHARD_OUTPUT] = self.empty_shard
            return
        if session.items:
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
        """Whether every collected edit test ran: {"complete", "cases_done", "cases_not_run"}, and
        "workers_died" when an xdist worker died (the run is then incomplete if it was running a test)."""
        collected = self.collected if self.collected is not None else self.worker_edit_tests
        not_run = [nodeid for nodeid in (collected or []) if nodeid not in self.finished]
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        # Deaths count in a run that edits (another project's crashes are its own business); a worker
        # that died between tests lost nothing (its queued tests went to another worker).
        deaths = self.worker_deaths if (collected or self.results) else []
        lost = any(death["case"] for death in deaths)
        out = {"complete": not (interrupted or not_run or lost), "cases_done": len(self.results),
               "cases_not_run": not_run}
        if deaths:
            out["workers_died"] = deaths
        return out

    # ---- pytest-xdist: what the controller learns of its workers ----

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error: object | None) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if error is None:
            if EDIT_TESTS_OUTPUT in output and self.worker_edit_tests is None:
                self.worker_edit_tests = list(output[EDIT_TESTS_OUTPUT])
            if output.get(EMPTY_SHARD_OUTPUT):
                self.empty_shard = output[EMPTY_SHARD_OUTPUT]
            return
        if error == "keyboard-interrupt":
            return   # not a death: the run was interrupted (it says "complete": false)
        from editguard.run.records import WorkerDeath

        worker = worker_name(node)
        exit_ = self._exits[worker] = worker_exit(node)
        # Its case (if any) is known a moment later, from pytest_handlecrashitem.
        self.worker_deaths.append(WorkerDeath(worker, exit_, str(error)).to_json())

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched) -> None:
        """The test a dead worker was running: an error record (when it is an edit test) that says
        which worker died and how; the tests its death leaves unrun come from the scheduler."""
        worker = worker_name(getattr(report, "node", None))
        death = next((d for d in reversed(self.worker_deaths) if d["worker"] == worker and d["case"] is None), None)
        if death is None:
            return   # not a death: the worker stopped on a keyboard interrupt (the run is incomplete)
        exit_ = self._exits.get(worker, "unknown")
        not_run = list(getattr(sched, "not_run_after_crash", {}).get(crashitem, []))
        death.update(case=crashitem, not_run=not_run)
        message = (f"worker {worker} died while running this case ({exit_}); the case is not run again"
                   + (f"; {len(not_run)} later steps of its sequence are not run" if not_run else ""))
        identity = self.identities.get(crashitem)
        if crashitem in self.finished:
            return   # it died after the test had its outcome (in its teardown)
        if identity is None:
            # Died before the set-up report: an edit test or not is known once a worker finishes
            # (xdist's own message stays: it may be another project's test).
            self._crashed_unknown.append((crashitem, message))
            return
        report.longrepr = f"editguard: {crashitem}: {message}"
        self.finished.add(crashitem)
        self._add_record(worker_death_record(crashitem, identity, self.config.stash[SETTINGS_KEY], message))

    def _record_crashes_before_setup(self) -> None:
        """The edit tests whose worker died before their set-up report: error records with the test
        id's parameter as the case id (the case itself never reached the controller)."""
        for crashitem, message in self._crashed_unknown:
            if crashitem in (self.worker_edit_tests or ()) and crashitem not in self.finished:
                self.finished.add(crashitem)
                self._add_record(worker_death_record(crashitem, None, self.config.stash[SETTINGS_KEY], message))
        self._crashed_unknown = []

    def _add_record(self, record: dict[str, Any], header: dict[str, Any] | None = None) -> None:
        if not self.results and not is_xdist_worker(self.config):
            self.invocation()   # under xdist the controller collects nothing: look it up now
        if self._writes_reports():
            self._start()
            self.recorder.add_case(record, header)
        else:
            self.recorder.cases.append(record)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.finished.add(report.nodeid)
        if report.when == "teardown":
            self.identities.pop(report.nodeid, None)   # its worker is past it
        if report.when not in ("setup", "call"):
            return
        props = dict(report.user_properties)
        if "editguard_identity" in props:
            self.identities[report.nodeid] = json.loads(props["editguard_identity"])
        if "editguard_not_run" in props and report.when == "call":
            self.recorder.add_step_not_run(json.loads(props["editguard_not_run"]))
        if "editguard_case" in props and props.get("editguard_case_phase", "call") == report.when:
            header = json.loads(props["editguard_run"]) if "editguard_run" in props else None
            self._add_record(json.loads(props["editguard_case"]), header)

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int) -> None:
        if is_xdist_worker(self.config):
            return
        self._record_crashes_before_setup()
        completion = self.completion(exitstatus)
        json_path = self.config.stash[SETTINGS_KEY].json_path
        for death in completion.get("workers_died", []):
            terminalreporter.write_line(
                f"editguard: worker {death['worker']} died ({death['exit']})"
                + (f" while running {death['case']}" if death["case"] else "")
                + (f"; {len(death['not_run'])} tests not run because of it" if death["not_run"] else ""),
                red=True, bold=True)
        if not completion["complete"] and (self.results or completion["cases_not_run"]):
            terminalreporter.write_line(
                f"editguard: INCOMPLETE run: {completion['cases_done']} cases reported, "
                f"{len(completion['cases_not_run'])} collected edit tests did not run"
                + (f"; {json_path} says \"complete\": false" if json_path else ""), red=True, bold=True)
        if self.empty_shard:
            terminalreporter.write_line(
                f"editguard: shard {self.empty_shard['shard']} got no test (the run has {self.empty_shard['units']} "
                f"unit{'' if self.empty_shard['units'] == 1 else 's'} of work, fewer than its shards)"
                + (f"; {json_path} says so, for editguard merge" if json_path else ""))
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
        self._record_crashes_before_setup()
        completion = self.completion(exitstatus)
        empty = {module: source["empty_reason"] for module, source in self.config.stash[SOURCES_KEY].items()
                 if source.get("empty_reason")}
        if empty:
            completion["empty_suites"] = empty
        if self.empty_shard:
            completion["empty_shard"] = self.empty_shard
            if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
                session.exitstatus = pytest.ExitCode.OK   # a shard with nothing to do did its part
        if not (self.results or not completion["complete"] or empty or self.empty_shard or self.recorder.started):
            return   # nothing edited here: a foreign project's run writes no report
        outcome = self.recorder.finish(completion)
        # Judged here, from every worker's results: a suite-level gate or a regression fails the run
        # even where every test passed.
        if outcome.comparison_error and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        elif (outcome.quality_failed or outcome.comparison_failed) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def worker_name(node) -> str:
    """An xdist worker's id (gw0, gw1, ...)."""
    return str(getattr(getattr(node, "gateway", None), "id", node))


def worker_exit(node) -> str:
    """How a dead xdist worker's process ended ("exit code 3", "signal SIGKILL"), or "unknown"
    (a remote worker, or one not reaped within 2 s)."""
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    try:
        code = popen.wait(timeout=2)
    except (AttributeError, OSError, subprocess.TimeoutExpired):   # no local process (a remote gateway), or alive
        return "unknown"
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def worker_death_record(nodeid: str, identity: dict[str, Any] | None, settings, message: str) -> dict[str, Any]:
    """The error record of the edit test `nodeid` whose worker died: its case from the worker's
    set-up report, or (when the worker died before that) the test id's parameter as the case id."""
    from types import SimpleNamespace

    from editguard.run.records import WORKER_PHASE, WorkerDied, error_record

    if identity is None:
        param = nodeid.rpartition("[")[2].rstrip("]") if nodeid.endswith("]") else nodeid
        identity = {"cases": [{"case_id": param, "subject": "", "prompt": "", "target_new": "", "target_true": None}],
                    "suite_module": nodeid.split("::")[0], "sequence": None, "step": None}
    cases = [SimpleNamespace(**case) for case in identity["cases"]]
    return error_record(tuple(cases) if len(cases) > 1 else cases[0], settings.editor, settings.model,
                        WorkerDied(message), WORKER_PHASE, suite_module=identity["suite_module"],
                        sequence=identity["sequence"], step=identity["step"]).to_json()
