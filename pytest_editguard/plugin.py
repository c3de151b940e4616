"""pytest plugin (entry point `pytest11: editguard`): hooks only. Options come from
editguard.options (settings.py), fixtures from fixtures.py, the report from results.py.

A suite module declares where its cases come from with a function

    def edit_cases(settings: EditguardSettings) -> list[EditCase]: ...

and its tests ask for `edit_case` and `edit_guard`:

    def test_edit_keeps_model_intact(edit_case, edit_guard):
        edit_guard.assert_safe(edit_case)
"""

from __future__ import annotations

import json
import re

import pytest

# pytest collects fixtures from a plugin module's namespace: importing them here registers them.
from pytest_editguard.fixtures import (  # noqa: F401
    EditGuard,
    baseline,
    edit_guard,
    edit_sequence,
    editguard_baselines,
    editguard_run,
    editguard_settings,
    editor,
    model_under_edit,
)
from pytest_editguard.results import ResultCollector
from pytest_editguard.scheduling import step_id, work_unit
from pytest_editguard.settings import (
    EMPTY_SHARD_KEY,
    SETTINGS_KEY,
    SHORT_FORMS_LEFT,
    SOURCES_KEY,
    EditguardSettings,
    add_options,
    add_short_forms,
    is_sequential,
    option_value,
    read_settings,
    sequence_name,
    user_errors,
    xdist_workers,
)

__all__ = ["EditGuard", "EditguardSettings"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]):
    """After the project's own conftests have registered their options, add editguard's short
    forms (--model, --editor, ...) where they are still free; `--editguard-NAME` always works."""
    result = yield
    early_config.stash[SHORT_FORMS_LEFT] = add_short_forms(parser)
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.stash[SETTINGS_KEY] = read_settings(config)
    fuzz_examples = option_value(config, "fuzz-examples")
    from editguard.strategies import register_ci_profile

    register_ci_profile(max_examples=fuzz_examples)
    config.stash[SOURCES_KEY] = {}
    config.pluginmanager.register(ResultCollector(config), f"editguard-results-{id(config)}")
    config.addinivalue_line("markers", "editguard: a test that edits a model through editguard")


def _case_id(case) -> str:
    subject = re.sub(r"[^\w.-]+", "_", case.subject).strip("_")
    return f"{case.case_id}-{subject}"


def batch_id(case_ids: list[str]) -> str:
    """The id of a batched edit: its size and first and last cases."""
    if len(case_ids) == 1:
        return f"batch1-{case_ids[0]}"
    return f"batch{len(case_ids)}-{case_ids[0]}-to-{case_ids[-1]}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edit_case" not in metafunc.fixturenames:
        return
    source = getattr(metafunc.module, "edit_cases", None)
    if not callable(source):
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} asks for edit_case, but its module defines no "
            f"edit_cases(settings) function returning the cases to test"
        )
    settings = metafunc.config.stash[SETTINGS_KEY]
    try:
        loaded = source(settings)
    except user_errors() as err:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: cannot load its cases: {err}") from None
    cases = list(loaded)
    empty_reason = getattr(loaded, "empty_reason", "")
    if not cases and empty_reason:
        # Empty on purpose: one skipped test says why, and the JSON report records it.
        metafunc.config.stash[SOURCES_KEY][metafunc.module.__name__] = {
            "suite_source": getattr(loaded, "description", "") or "", "cases_total": 0, "cases_selected": 0,
            "empty_reason": empty_reason}
        metafunc.parametrize("edit_case", [pytest.param(None, marks=pytest.mark.skip(reason=empty_reason))],
                             ids=["no-cases"])
        return
    if not cases:
        # Zero tests would pass silently and write no report.
        source = getattr(loaded, "description", "") or f"{metafunc.module.__name__}.edit_cases(settings)"
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: its case source ({source}) gave no cases; "
                                f"point the suite at a non-empty case file or source")
    _refuse_duplicate_ids(metafunc.definition.nodeid, cases)
    total = len(cases)
    if settings.max_cases is not None:
        cases = cases[: settings.max_cases]
    # A suite may say where its cases came from (editguard.suites.CaseList); the report shows it,
    # with how many cases the source holds and how many were selected (--max-cases).
    metafunc.config.stash[SOURCES_KEY][metafunc.module.__name__] = {
        "suite_source": getattr(loaded, "description", "") or "", "cases_total": total, "cases_selected": len(cases)}
    ids = [_case_id(c) for c in cases]
    if settings.batch_size > 1:
        # --batch-size B: one test (one edit, one verdict) per B consecutive cases.
        b = settings.batch_size
        ids = [batch_id(ids[i:i + b]) for i in range(0, len(cases), b)]
        cases = [tuple(cases[i:i + b]) for i in range(0, len(cases), b)]
    if is_sequential(metafunc.config, metafunc.module):
        # One sequence per module: its step ids keep it on one xdist worker, in order (scheduling.py).
        ids = [step_id(i, case_id, len(cases)) for i, case_id in enumerate(ids, 1)]
    metafunc.parametrize("edit_case", cases, ids=ids)


def _refuse_duplicate_ids(nodeid: str, cases: list) -> None:
    """Two cases under one id would share one identity in the report, and one would hide the other
    from the no-regression gate: refused at collection, naming both."""
    first_seen: dict[str, int] = {}
    for index, case in enumerate(cases):
        case_id = str(getattr(case, "case_id", ""))
        if case_id in first_seen:
            earlier = cases[first_seen[case_id]]
            raise pytest.UsageError(
                f"{nodeid}: its cases {first_seen[case_id]} ({earlier.subject!r}: {earlier.prompt!r}) and {index} "
                f"({case.subject!r}: {case.prompt!r}) share the case id {case_id!r}; give every case its own id")
        first_seen[case_id] = index


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[SETTINGS_KEY]
    if settings.shard is None:
        return
    from editguard.sharding import shard_members

    # A sequence's steps build on each other: the whole module is one unit of work (the same unit
    # as xdist's scheduling, from the step ids the plugin gives).
    units = [work_unit(i.nodeid) for i in items]
    keep = shard_members(units, *settings.shard)
    if items and not any(keep) and any("edit_guard" in getattr(i, "fixturenames", ()) for i in items):
        # More shards than units of work: this shard's job still ends well and writes its (empty)
        # report, so that `editguard merge` gets every shard.
        from editguard.run.records import EmptyShard

        config.stash[EMPTY_SHARD_KEY] = EmptyShard(settings.shard_label, len(set(units))).to_json()
    deselected = [item for item, k in zip(items, keep) if not k]
    if deselected:
        items[:] = [item for item, k in zip(items, keep) if k]
        config.hook.pytest_deselected(items=deselected)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """An edit that fails a gate is reported without a traceback (the reasons say it all), which
    drops the notes Hypothesis attaches to the exception: the failing example and how to
    reproduce it. Keep them, as a section of the failure."""
    report = yield
    if report.failed and report.when in ("setup", "call") and "edit_guard" in getattr(item, "fixturenames", ()):
        _record_unrecorded_error(item, call, report)
    if report.when == "setup" and hasattr(item.config, "workerinput"):
        identity = case_identity(item)
        if identity is not None:
            # Should this worker die during the test, the controller still knows which case it was
            # (results.py records it as an error); on the set-up report only, so not in junit XML.
            report.user_properties.append(("editguard_identity", json.dumps(identity)))
    exc = call.excinfo.value if call.excinfo is not None else None
    notes = getattr(exc, "__notes__", None)
    if (report.failed and notes and "edit_guard" in getattr(item, "fixturenames", ())
            and isinstance(exc, pytest.fail.Exception) and not exc.pytrace):
        report.sections.append(("Hypothesis", "\n".join(notes)))
    return report


def case_identity(item: pytest.Item) -> dict | None:
    """What the controller needs to write an edit test's error record without its worker: the
    case (or batch), its suite module and, in a sequence, its name and step. None: not an edit test."""
    case = getattr(getattr(item, "callspec", None), "params", {}).get("edit_case")
    if case is None or "edit_guard" not in getattr(item, "fixturenames", ()):
        return None
    cases = list(case) if isinstance(case, (tuple, list)) else [case]
    identity = {"cases": [{"case_id": str(c.case_id), "subject": c.subject, "prompt": c.prompt,
                           "target_new": c.target_new, "target_true": c.target_true} for c in cases],
                "suite_module": item.nodeid.split("::")[0], "sequence": None, "step": None}
    step = re.search(r"\[step(\d+)-", item.nodeid)
    if step and is_sequential(item.config, item.module):
        identity["sequence"], identity["step"] = sequence_name(item.module), int(step.group(1))
    return identity


def _record_unrecorded_error(item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport) -> None:
    """An edit test that failed before its edit was recorded (a fixture's set-up raised: the model,
    the editor, the baseline; or the test crashed outside the guard) is still a case of the run:
    an error record, so that no case goes missing from the report."""
    if any(name == "editguard_case" for name, _ in item.user_properties):
        return
    case = getattr(getattr(item, "callspec", None), "params", {}).get("edit_case")
    if case is None:
        return
    from editguard.run.records import error_record, junit_properties

    settings = item.config.stash[SETTINGS_KEY]
    err = call.excinfo.value if call.excinfo is not None else "failed"
    if isinstance(err, pytest.fail.Exception):
        err = err.msg or "failed"
    record = error_record(case, settings.editor, settings.model, err,
                          "setup" if report.when == "setup" else "test",
                          suite_module=item.nodeid.split("::")[0]).to_json()
    props = [("editguard_case", json.dumps(record)), ("editguard_case_phase", report.when),
             *junit_properties(record)]
    item.user_properties.extend(props)
    report.user_properties.extend(props)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under -n N with --dist load/loadgroup/worksteal (xdist's default is load), schedule so that
    a sequence is never split across workers; loadscope and loadfile keep their units (modules
    and files whole already). All of them handle a dead worker without hanging (scheduling.py);
    each is left to xdist."""
    from pytest_editguard import scheduling

    dist = config.getvalue("dist")
    if dist in ("load", "loadgroup", "worksteal"):
        return scheduling.sequence_aware_scheduler(config, log)
    if dist in ("loadscope", "loadfile"):
        unit = scheduling.file_unit if dist == "loadfile" else scheduling.scope_unit
        return scheduling.sequence_aware_scheduler(config, log, unit)
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash[SETTINGS_KEY]
    corpus = s.ppl_corpus or f"{s.ppl_corpus_for(sequential=False)} (sequences: {s.ppl_corpus_for(sequential=True)})"
    mode = " sequential" if s.sequential else ""
    extra = (f" devices={','.join(s.devices)}" if s.devices else "") + (f" shard={s.shard_label}" if s.shard else "")
    extra += f" threads={s.threads}" + (" per worker" if xdist_workers(config) else "") if s.threads else ""
    if s.downstream:
        picked = f"first {s.downstream_limit}" if s.downstream_limit else f"n={s.downstream_n}"
        extra += f" downstream={','.join(s.downstream)} ({picked})"
    lines = [
        f"editguard: editor={s.editor} model={s.model} device={s.device} dtype={s.dtype}{mode} "
        f"ppl-corpus={corpus} ppl-bos={s.ppl_bos} edit-precision={s.edit_precision} "
        f"data={s.data_dir or '(unset)'}{extra}"
    ]
    left = config.stash.get(SHORT_FORMS_LEFT, [])
    if left:
        lines.append(f"editguard: {', '.join(left)} belong to another plugin or conftest here; use "
                     f"{', '.join('--editguard-' + flag.removeprefix('--') for flag in left)}")
    return lines
