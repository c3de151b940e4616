"""RunConfig (frozen, built from the option table without pytest) and open_run (the model's gate
bounds resolved once and returned, nothing mutated); the gates' defaults in one place; one unit of
work for shards and xdist."""

import dataclasses
import json

import pytest

from editguard.calibration import Calibration, store
from editguard.errors import UsageError
from editguard.gates import Thresholds
from editguard.options import (
    COLLAPSE_PPL,
    DENOMINATOR_RATIO_MIN,
    OPTIONS_BY_NAME,
    PPL_MAX_RATIO,
    UPDATE_NORM_MAX,
)
from editguard.run.config import RunConfig
from editguard.run.session import open_run


def config_from(values=None, given=()):
    values = values or {}

    def value(name):
        return values.get(name, OPTIONS_BY_NAME[name].default)

    return RunConfig.from_options(value, lambda name: name in given)


def test_a_run_config_is_built_without_pytest_and_frozen():
    config = config_from({"model": "tiny-llama", "editor": "c-rome", "max-cases": 3, "downstream": "piqa,lambada"})
    assert (config.model, config.editor, config.max_cases, config.downstream) == ("tiny-llama", "c-rome", 3,
                                                                                  ("piqa", "lambada"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.thresholds = Thresholds(ppl_max=1.0)


@pytest.mark.parametrize("values, message", [
    ({"shard": "3/2"}, "--editguard-shard: "),
    ({"stats-dir": "/no/such/dir"}, "--editguard-stats-dir /no/such/dir: not a directory"),
    ({"compare-fail": "ppl:10%"}, "--editguard-compare-fail needs --editguard-compare PATH"),
    ({"hparams": "/no/such.yaml"}, "/no/such.yaml"),
])
def test_bad_options_are_usage_errors_naming_the_option(values, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        config_from(values)


def test_the_gates_defaults_are_set_in_one_place():
    assert Thresholds() == Thresholds(COLLAPSE_PPL, PPL_MAX_RATIO, DENOMINATOR_RATIO_MIN, UPDATE_NORM_MAX)
    defaults = {name: OPTIONS_BY_NAME[name].default for name in ("ppl-threshold", "ppl-max-ratio",
                                                                 "denominator-ratio-min", "update-norm-max")}
    assert list(defaults.values()) == [COLLAPSE_PPL, PPL_MAX_RATIO, DENOMINATOR_RATIO_MIN, UPDATE_NORM_MAX]
    assert config_from().thresholds == Thresholds()


def test_open_run_returns_the_calibrated_bounds_and_changes_no_config(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    config = config_from({"model": "tiny-llama", "ppl-max-ratio": 3.0}, given={"ppl-max-ratio"})
    model = config.load_model()
    store(Calibration({"model": model.name, "fingerprint": model.fingerprint, "editor": "rome", "n_cases": 20,
                       "date": "2026-12-02", "editguard_version": "test",
                       "bounds": {"update_norm_rel_max": 1.5, "ppl_max_ratio": 2.5}}))
    before = json.dumps(dataclasses.asdict(config), default=str)
    run = open_run(config)
    assert run.model is model
    assert run.gates.thresholds.update_norm_rel_max == 1.5      # the calibration's
    assert run.gates.thresholds.ppl_max_ratio == 3.0            # the explicit option wins
    assert "gates calibrated on 20 normal cases of tiny-llama" in run.gates.calibration
    assert "given explicitly: ppl_max_ratio" in run.gates.calibration and run.gates.warning == ""
    assert json.dumps(dataclasses.asdict(config), default=str) == before   # nothing was rewritten
    assert config.thresholds.update_norm_rel_max == UPDATE_NORM_MAX


def test_an_uncalibrated_model_runs_on_the_defaults_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    run = open_run(config_from({"model": "tiny-gpt2"}))
    assert run.gates.thresholds == Thresholds()
    assert "calibrated on smollm2-135m, not on tiny-gpt2" in run.gates.warning


def test_shards_and_xdist_share_one_unit_of_work():
    from pytest_editguard import plugin
    from pytest_editguard.scheduling import step_id, work_unit

    steps = [f"suites/seq/test_s.py::test_step[{step_id(i, f'c{i}', 12)}]" for i in (1, 2, 12)]
    assert {work_unit(n) for n in steps} == {"suites/seq/test_s.py"}
    assert work_unit("suites/hardcf/test_hardcf.py::test_edit[1-Paris]").endswith("[1-Paris]")
    assert plugin.work_unit is work_unit and not hasattr(plugin, "unit")


def test_open_run_sets_the_threads_the_config_says_for_the_plugin_and_the_cli():
    """One place applies --threads / the xdist share: open_run, which the plugin and every
    model-loading command (editguard.cli.common.open_setup) open their runs with."""
    import argparse

    import torch

    from editguard.cli.common import run_config

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        config = run_config(argparse.Namespace(model="tiny-llama", threads=wanted))
        assert config.threads == wanted
        open_run(config)
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
