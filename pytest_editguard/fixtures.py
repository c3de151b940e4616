"""The plugin's fixtures: the model, the editor, the unedited baselines and `edit_guard`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from editguard.errors import UsageError
from pytest_editguard.settings import (
    SETTINGS_KEY,
    SOURCES_KEY,
    EditguardSettings,
    is_sequential,
    sequence_name,
    user_errors,
)


def _fail_cleanly(what: str, err: Exception):
    pytest.fail(f"editguard could not {what}: {err}", pytrace=False)


@pytest.fixture(scope="session")
def editguard_settings(request: pytest.FixtureRequest) -> EditguardSettings:
    return request.config.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def editguard_run(editguard_settings: EditguardSettings):
    """The opened run (editguard.run.session.Run): the model, loaded once per session (per xdist
    worker), its gate bounds resolved once (the calibration's, the explicit options on top)."""
    from editguard.run.session import open_run

    s = editguard_settings
    try:
        run = open_run(s)
    except UsageError as err:   # the run's options contradict the model (an --hparams file of another family)
        pytest.exit(str(err), returncode=pytest.ExitCode.USAGE_ERROR)
    except user_errors() as err:
        _fail_cleanly(f"load --model={s.model}", err)
    saved, mue = s.compare_saved, run.model
    if saved is not None:
        # Other weights than the saved run's: refused now, before any edit, not after the last one.
        there, dtype = saved["run"].get("model_fingerprint"), str(mue.dtype).removeprefix("torch.")
        if there and there != mue.fingerprint and saved["run"].get("dtype") in (None, dtype):
            pytest.exit(f"--editguard-compare {s.compare_path}: model {mue.name!r} has other weights "
                        f"there (fingerprint {there} vs {mue.fingerprint} here); compare runs of the same weights",
                        returncode=pytest.ExitCode.USAGE_ERROR)
    if run.gates.warning:
        from editguard.calibration import CalibrationWarning

        warnings.warn(run.gates.warning, CalibrationWarning, stacklevel=1)
    return run


@pytest.fixture(scope="session")
def model_under_edit(editguard_run):
    """The model under test (editguard.models.ModelUnderEdit)."""
    return editguard_run.model


@pytest.fixture(scope="session")
def editor(editguard_settings: EditguardSettings, editguard_run):
    """The editor under test; its hyperparameters are resolved for the model up front, so a
    bad --hparams key fails here, once, with the list of valid keys."""
    from editguard.editors.api import EditorNotReady

    try:
        return editguard_run.editor
    except EditorNotReady as err:
        what, problem = f"use --editor={editguard_settings.editor}", err
    except user_errors() as err:
        what, problem = f"set up --editor={editguard_settings.editor}", err
    _fail_cleanly(what, problem)  # outside the except block: no "During handling ..." chain in the output


class Baselines:
    """The unedited model's measurements per perplexity corpus, each taken once per session; bad
    data fails the test cleanly, naming the option."""

    def __init__(self, run):
        self.run = run

    def get(self, corpus: str):
        s = self.run.config
        try:
            self.run.probe()
        except user_errors() as err:
            _fail_cleanly(f"prepare --downstream={','.join(s.downstream)}", err)
        try:
            return self.run.baseline(corpus)
        except user_errors() as err:
            _fail_cleanly(f"read --ppl-corpus={corpus}", err)


@pytest.fixture(scope="session")
def editguard_baselines(editguard_run) -> Baselines:
    return Baselines(editguard_run)


@pytest.fixture(scope="session")
def baseline(editguard_baselines, editguard_settings):
    """The unedited model's perplexity (single-edit corpus) and weight checksums."""
    return editguard_baselines.get(editguard_settings.ppl_corpus_for(sequential=False))


@pytest.fixture(scope="module")
def edit_sequence(request, editguard_run, editor, editguard_baselines, editguard_settings):
    """The module's edit sequence (sequential mode): edits accumulate across its tests; the model
    is restored and verified when the module is done."""
    from editguard.guard import EditSequence

    s = editguard_settings
    selected = request.config.stash[SOURCES_KEY].get(request.module.__name__, {}).get("cases_selected")
    length = None if selected is None else -(-selected // s.batch_size)   # steps: one edit per --batch-size cases
    name = sequence_name(request.module)
    sequence = EditSequence(editguard_run.model, editor, editguard_baselines.get(s.ppl_corpus_for(sequential=True)),
                            editguard_run.gates.thresholds, name=name,
                            on_error=s.sequence_on_error, ppl_every=s.ppl_every, length=length,
                            stop_on_collapse=s.sequence_stop_on_collapse,
                            measure_scores=s.quality.measure_scores)
    yield sequence
    sequence.restore()


def suite_name(node) -> str:
    """The suite a test belongs to: its folder (suites/hardcf/...), or its file outside a suite folder."""
    path = Path(str(node.path))
    return path.parent.name if path.parent.name not in ("tests", "") else path.stem


UPCOMING_KEY = pytest.StashKey[tuple]()


def upcoming_cases(request: pytest.FixtureRequest) -> list:
    """The cases the next single-edit tests of this process will edit, in run order (told to an
    editor that searches ahead: ROME searches their v* with this edit's). None under xdist, whose
    workers do not know their next tests ahead, and none in a sequence."""
    config = request.config
    if hasattr(config, "workerinput"):
        return []
    if UPCOMING_KEY not in config.stash:
        single = [(item.nodeid, case) for item in request.session.items
                  if (case := getattr(getattr(item, "callspec", None), "params", {}).get("edit_case")) is not None
                  and not isinstance(case, (tuple, list)) and "edit_guard" in getattr(item, "fixturenames", ())
                  and not is_sequential(config, getattr(item, "module", None))]
        config.stash[UPCOMING_KEY] = ([case for _, case in single],
                                      {nodeid: position for position, (nodeid, _) in enumerate(single)})
    cases, position_of = config.stash[UPCOMING_KEY]
    position = position_of.get(request.node.nodeid)
    if position is None:
        return []
    from editguard.guard import UPCOMING_CASES

    return cases[position + 1 : position + 1 + UPCOMING_CASES]


class EditGuard:
    """What tests use: `check(case)` returns a CaseResult; `assert_safe(case)` fails the test
    with the reasons when a gate fails. Every result is recorded for the end-of-run report."""

    def __init__(self, request, run, editor, baselines, settings):
        self._request, self.model, self.editor = request, run.model, editor
        self.settings, self.gates, self.prepared = settings, run.gates, run.prepared
        self.sequential = is_sequential(request.config, request.module)
        self.ppl_corpus = settings.ppl_corpus_for(self.sequential)
        self.baseline = baselines.get(self.ppl_corpus)
        self.module_path = request.node.nodeid.split("::")[0]

    def run_info(self) -> dict[str, Any]:
        from editguard.report.json_report import SUITE_FIELDS
        from editguard.runinfo import edit_run_info

        request = self._request
        info = edit_run_info(
            self.model, self.editor, self.baseline, self.gates.thresholds, suite=suite_name(request.node),
            calibration=self.gates.calibration, prepared=self.prepared,
            sequential=self.sequential, shard=self.settings.shard_label,
            quality=self.settings.quality.to_dict() if self.settings.quality.enabled else None,
            **request.config.stash[SOURCES_KEY].get(request.module.__name__, {}),
        )
        info.suites = {self.module_path: {f: getattr(info, f) for f in SUITE_FIELDS}}
        return info.to_json()

    def check(self, case):
        """`case`: an EditCase, or a batch of them (--batch-size) edited in one call. An edit that
        raises is recorded as a case with verdict `error` before the test fails."""
        from editguard.cases import EditCase
        from editguard.guard import check

        sequence = None
        if self.sequential:
            sequence = self._request.getfixturevalue("edit_sequence")
            if sequence.stopped_reason:
                not_run = {**sequence.skip(case), "suite_module": self.module_path}
                self._request.node.user_properties.append(("editguard_not_run", json.dumps(not_run)))
                pytest.skip(sequence.stopped_reason)
            try:
                result = sequence.apply(case)
            except Exception as err:
                self._record_error(case, err, sequence=sequence.name, step=sequence.steps_taken)
                raise
        else:
            try:
                result = check(self.model, self.editor, case, self.baseline, self.gates.thresholds,
                               measure_scores=self.settings.quality.measure_scores,
                               upcoming=upcoming_cases(self._request) if isinstance(case, EditCase) else ())
            except Exception as err:
                self._record_error(case, err)
                if not isinstance(err, user_errors()):
                    raise   # an unexpected crash keeps its traceback
                # a case too long, an editor returning no EditReport, ...: the message says it all
                first = case if isinstance(case, EditCase) else case[0]
                pytest.fail(f"{first.case_id}{'' if first is case else f' (batch of {len(case)})'}: {err}",
                            pytrace=False)
        record = {**result.to_json(), "suite_module": self.module_path}
        if sequence is not None and sequence.stop and sequence.stop["step"] == result.step:
            record["sequence_stop"] = sequence.stop   # the step that ended the sequence says so
        self._attach(record)
        return result

    def _attach(self, record: dict[str, Any]) -> None:
        """Hand the record to the run's recorder (through the test report, so that xdist workers'
        records reach the controller), with flat numbers for junit XML (--junitxml)."""
        from editguard.run.records import junit_properties

        node = self._request.node
        node.user_properties.append(("editguard_case", json.dumps(record)))
        node.user_properties.append(("editguard_run", json.dumps(self.run_info())))
        node.user_properties.extend(junit_properties(record))

    def _record_error(self, case, err: BaseException, sequence: str | None = None, step: int | None = None) -> None:
        from editguard.run.records import error_record

        phase = getattr(err, "editguard_phase", None) or getattr(err.__cause__, "editguard_phase", None) or "edit"
        self._attach(error_record(case, self.editor.name, self.model.name, err, phase, suite_module=self.module_path,
                                  sequence=sequence, step=step).to_json())

    def assert_safe(self, case):
        """Fail the test with the gates' reasons and, where one is known, the next step."""
        result = self.check(case)
        if not result.passed:
            from editguard.report.verdicts import next_step

            step = next_step(result.to_json(), {"editor": self.editor.name, "model": self.model.name})
            pytest.fail(result.explanation + (f"\n  next step: {step}" if step else ""), pytrace=False)
        return result


@pytest.fixture
def edit_guard(request, editguard_run, editor, editguard_baselines, editguard_settings) -> EditGuard:
    return EditGuard(request, editguard_run, editor, editguard_baselines, editguard_settings)
