"""The plugin's fixtures: the model, the editor, the unedited baselines and `edit_guard`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from pytest_editguard.settings import SETTINGS_KEY, SOURCES_KEY, EditguardSettings, is_sequential, user_errors


def _fail_cleanly(what: str, err: Exception):
    pytest.fail(f"editguard could not {what}: {err}", pytrace=False)


@pytest.fixture(scope="session")
def editguard_settings(request: pytest.FixtureRequest) -> EditguardSettings:
    return request.config.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def model_under_edit(editguard_settings: EditguardSettings):
    """The model, loaded once per session (per xdist worker)."""
    try:
        mue = editguard_settings.load_model()
        warning = editguard_settings.apply_calibration(mue)
    except user_errors() as err:
        _fail_cleanly(f"load --model={editguard_settings.model}", err)
    saved = editguard_settings.compare_saved
    if saved is not None:
        # Other weights than the saved run's: refused now, before any edit, not after the last one.
        there, dtype = saved["run"].get("model_fingerprint"), str(mue.dtype).removeprefix("torch.")
        if there and there != mue.fingerprint and saved["run"].get("dtype") in (None, dtype):
            pytest.exit(f"--editguard-compare {editguard_settings.compare_path}: model {mue.name!r} has other weights "
                        f"there (fingerprint {there} vs {mue.fingerprint} here); compare runs of the same weights",
                        returncode=pytest.ExitCode.USAGE_ERROR)
    if warning:
        from editguard.calibration import CalibrationWarning

        warnings.warn(warning, CalibrationWarning, stacklevel=1)
    return mue


@pytest.fixture(scope="session")
def editor(editguard_settings: EditguardSettings, model_under_edit):
    """The editor under test; its hyperparameters are resolved for the model up front, so a
    bad --hparams key fails here, once, with the list of valid keys."""
    from editguard.editors.api import EditorNotReady, check_batch_size, editor_hparams, prepare_editor
    from editguard.editors.registry import get_editor

    s = editguard_settings
    try:
        editor = get_editor(s.editor, s.hparams, data_dir=s.data_dir)
        check_batch_size(editor, s.batch_size)  # refused once, before any edit
        editor_hparams(editor, model_under_edit)
        prepare_editor(editor, model_under_edit)  # e.g. MEND's trained network: said once, before any edit
        return editor
    except EditorNotReady as err:
        what, problem = f"use --editor={s.editor}", err
    except user_errors() as err:
        what, problem = f"set up --editor={s.editor}", err
    _fail_cleanly(what, problem)  # outside the except block: no "During handling ..." chain in the output


class Baselines:
    """The unedited model's measurements per perplexity corpus, each taken once per session."""

    def __init__(self, model, settings: EditguardSettings):
        self.model, self.settings, self._cache = model, settings, {}
        self._probe = None

    def probe(self):
        """The downstream probe (--downstream): task subsets and the unedited model's scores, taken
        once per session (and cached on disk across workers and sessions)."""
        s = self.settings
        if s.downstream and self._probe is None:
            from editguard.metrics.downstream import prepare_probe

            try:
                self._probe = prepare_probe(self.model, s.downstream, s.downstream_n, s.data_dir,
                                            min_retention=s.downstream_min_retention,
                                            precision=s.downstream_precision)
            except user_errors() as err:
                _fail_cleanly(f"prepare --downstream={','.join(s.downstream)}", err)
        return self._probe

    def get(self, corpus: str):
        from editguard.data import load_ppl_corpus
        from editguard.guard import measure_baseline

        if corpus not in self._cache:
            s = self.settings
            try:
                sentences = load_ppl_corpus(corpus, s.data_dir, download=s.download)
            except user_errors() as err:
                _fail_cleanly(f"read --ppl-corpus={corpus}", err)
            self._cache[corpus] = measure_baseline(self.model, sentences, corpus, shared=True, bos=s.ppl_bos)
            self._cache[corpus].downstream = self.probe()
        return self._cache[corpus]


@pytest.fixture(scope="session")
def editguard_baselines(model_under_edit, editguard_settings) -> Baselines:
    return Baselines(model_under_edit, editguard_settings)


@pytest.fixture(scope="session")
def baseline(editguard_baselines, editguard_settings):
    """The unedited model's perplexity (single-edit corpus) and weight checksums."""
    return editguard_baselines.get(editguard_settings.ppl_corpus_for(sequential=False))


@pytest.fixture(scope="module")
def edit_sequence(request, model_under_edit, editor, editguard_baselines, editguard_settings):
    """The module's edit sequence (sequential mode): edits accumulate across its tests; the model
    is restored and verified when the module is done."""
    from editguard.guard import EditSequence

    s = editguard_settings
    selected = request.config.stash[SOURCES_KEY].get(request.module.__name__, {}).get("cases_selected")
    length = None if selected is None else -(-selected // s.batch_size)   # steps: one edit per --batch-size cases
    sequence = EditSequence(model_under_edit, editor, editguard_baselines.get(s.ppl_corpus_for(sequential=True)),
                            s.thresholds, name=request.module.__name__.rpartition(".")[2].removeprefix("test_"),
                            on_error=s.sequence_on_error, ppl_every=s.ppl_every, length=length,
                            stop_on_collapse=s.sequence_stop_on_collapse,
                            measure_scores=s.quality.measure_scores)
    yield sequence
    sequence.restore()


def suite_name(node) -> str:
    """The suite a test belongs to: its folder (suites/hardcf/...), or its file outside a suite folder."""
    path = Path(str(node.path))
    return path.parent.name if path.parent.name not in ("tests", "") else path.stem


class EditGuard:
    """What tests use: `check(case)` returns a CaseResult; `assert_safe(case)` fails the test
    with the reasons when a gate fails. Every result is recorded for the end-of-run report."""

    def __init__(self, request, model, editor, baselines, settings):
        self._request, self.model, self.editor = request, model, editor
        self.settings = settings
        self.sequential = is_sequential(request.config, request.module)
        self.ppl_corpus = settings.ppl_corpus_for(self.sequential)
        self.baseline = baselines.get(self.ppl_corpus)
        self.module_path = request.node.nodeid.split("::")[0]

    def run_info(self) -> dict[str, Any]:
        from editguard.report.json_report import SUITE_FIELDS
        from editguard.runinfo import edit_run_info

        request = self._request
        info = edit_run_info(
            self.model, self.editor, self.baseline, self.settings.thresholds, suite=suite_name(request.node),
            calibration=self.settings.calibration,
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
                result = check(self.model, self.editor, case, self.baseline, self.settings.thresholds,
                               measure_scores=self.settings.quality.measure_scores)
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
def edit_guard(request, model_under_edit, editor, editguard_baselines, editguard_settings) -> EditGuard:
    return EditGuard(request, model_under_edit, editor, editguard_baselines, editguard_settings)
