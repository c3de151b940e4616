"""pytest plugin (entry point `pytest11: editguard`): hooks only. Options come from
editguard.options (settings.py), fixtures from fixtures.py, the report from results.py.

A suite module declares where its cases come from with a function

    def edit_cases(settings: EditguardSettings) -> list[EditCase]: ...

and its tests ask for `edit_case` and `edit_guard`:

    def test_edit_keeps_model_intact(edit_case, edit_guard):
        edit_guard.assert_safe(edit_case)
"""

from __future__ import annotations

import re

import pytest

# pytest collects fixtures from a plugin module's namespace: importing them here registers them.
from pytest_editguard.fixtures import (  # noqa: F401
    EditGuard,
    baseline,
    edit_guard,
    edit_sequence,
    editguard_baselines,
    editguard_settings,
    editor,
    model_under_edit,
)
from pytest_editguard.results import ResultCollector
from pytest_editguard.settings import (
    SETTINGS_KEY,
    SOURCES_KEY,
    EditguardSettings,
    add_options,
    is_sequential,
    option_value,
    user_errors,
)

__all__ = ["EditGuard", "EditguardSettings"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # A sequence's steps must run on one xdist worker, in order: they carry an xdist_group mark,
    # which only --dist loadgroup honours (for unmarked tests it distributes like load).
    if getattr(config.option, "dist", "no") in ("load", "worksteal"):
        config.option.dist = "loadgroup"
    if hasattr(config, "workerinput") and config.workerinput.get("editguard_loadgroup"):
        config.option.loadgroup = True  # workers re-parse the command line; tell them too
    config.stash[SETTINGS_KEY] = EditguardSettings.from_config(config)
    fuzz_examples = option_value(config, "fuzz-examples")
    if fuzz_examples < 1:
        raise pytest.UsageError(f"--fuzz-examples must be at least 1, got {fuzz_examples}")
    from editguard.strategies import register_ci_profile

    register_ci_profile(max_examples=fuzz_examples)
    config.stash[SOURCES_KEY] = {}
    config.pluginmanager.register(ResultCollector(config), f"editguard-results-{id(config)}")
    config.addinivalue_line("markers", "editguard: a test that edits a model through editguard")


def _case_id(case) -> str:
    subject = re.sub(r"[^\w.-]+", "_", case.subject).strip("_")
    return f"{case.case_id}-{subject}"


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
    if settings.max_cases is not None:
        cases = cases[: settings.max_cases]
    # A suite may say where its cases came from (editguard.suites.CaseList); the report shows it.
    metafunc.config.stash[SOURCES_KEY][metafunc.module.__name__] = getattr(loaded, "description", "") or ""
    if is_sequential(metafunc.config, metafunc.module):
        # One sequence per module: keep it on one xdist worker, in this order.
        marks = [pytest.mark.xdist_group(f"editguard-sequence-{metafunc.module.__name__}")]
        params = [pytest.param(c, marks=marks, id=f"step{i:02d}-{_case_id(c)}") for i, c in enumerate(cases, 1)]
        metafunc.parametrize("edit_case", params)
    else:
        metafunc.parametrize("edit_case", cases, ids=[_case_id(c) for c in cases])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[SETTINGS_KEY]
    if settings.shard is None:
        return
    from editguard.sharding import shard_members

    def unit(item: pytest.Item) -> str:
        # A sequence's steps build on each other: the whole module is one unit of work.
        module = getattr(item, "module", None)
        if module is not None and "edit_case" in getattr(item, "fixturenames", ()) and is_sequential(config, module):
            return item.nodeid.split("::")[0]
        return item.nodeid

    keep = shard_members([unit(i) for i in items], *settings.shard)
    deselected = [item for item, k in zip(items, keep) if not k]
    if deselected:
        items[:] = [item for item, k in zip(items, keep) if k]
        config.hook.pytest_deselected(items=deselected)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    node.workerinput["editguard_loadgroup"] = node.config.getoption("dist", "no") == "loadgroup"


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash[SETTINGS_KEY]
    corpus = s.ppl_corpus or f"{s.ppl_corpus_for(sequential=False)} (sequences: {s.ppl_corpus_for(sequential=True)})"
    mode = " sequential" if s.sequential else ""
    extra = (f" devices={','.join(s.devices)}" if s.devices else "") + (f" shard={s.shard_label}" if s.shard else "")
    if s.downstream:
        extra += f" downstream={','.join(s.downstream)} (n={s.downstream_n})"
    return [
        f"editguard: editor={s.editor} model={s.model} device={s.device} dtype={s.dtype}{mode} "
        f"ppl-corpus={corpus} data={s.data_dir or '(unset)'}{extra}"
    ]
