"""The option table (editguard.options) is what the plugin and the CLI register."""

import argparse
import re
import subprocess
import sys

import pytest

from editguard.catalog import registered_names
from editguard.options import (
    COLLAPSE_PPL,
    DEFAULT_EDITOR,
    DEFAULT_MODEL,
    OPTIONS,
    OPTIONS_BY_NAME,
    add_cli_options,
)

# Every option string and ini key the plugin has accepted: they stay valid.
PLUGIN_FLAGS = {
    "--editor", "--model", "--device", "--devices", "--dtype", "--edit-layer", "--hparams", "--editguard-data",
    "--editguard-download", "--ppl-corpus", "--sequential", "--ppl-threshold", "--ppl-max-ratio",
    "--denominator-ratio-min", "--update-norm-max", "--max-cases", "--editguard-shard", "--editguard-json",
    "--fuzz-examples", "--editguard-plots", "--downstream", "--downstream-n", "--downstream-min-retention",
    "--downstream-precision", "--ppl-bos", "--sequence-on-error", "--editguard-markdown", "--editguard-html",
    "--editguard-compare", "--editguard-compare-fail", "--editguard-quality", "--editguard-min-efficacy",
    "--editguard-min-generalization", "--editguard-min-locality", "--editguard-stats-dir",
    "--editguard-hparams-any-family",
    "--sequence-length", "--ppl-every", "--sequence-stop-on-collapse", "--batch-size",
    "--downstream-limit", "--editguard-lm-eval-json", "--editguard-trust-remote-code", "--editguard-edit-precision",
    "--editguard-threads",
}


def test_every_option_has_an_editguard_name_and_the_old_strings_stay_valid():
    """`--editguard-NAME` for every option; the strings the plugin accepted before (short forms where
    free, and the namespaced ones) all still exist; ini keys unchanged."""
    assert all(o.pytest_flag == f"--editguard-{o.name}" for o in OPTIONS)
    assert {o.short_flag or o.pytest_flag for o in OPTIONS} == PLUGIN_FLAGS
    for option in OPTIONS:
        assert option.ini_key == "editguard_" + option.name.replace("-", "_")


def test_every_table_option_is_registered_by_the_plugin(pytester):
    result = pytester.runpytest_subprocess("--help")
    help_text = result.stdout.str()
    for option in OPTIONS:
        assert option.pytest_flag in help_text, option.name
        assert option.ini_key in help_text, option.name
        if option.short_flag:   # nobody else defines it here, so the short form is registered too
            assert f"  {option.short_flag}" in help_text, option.name


def test_defaults_are_the_library_ones():
    from editguard.editors.registry import BUILTIN_EDITORS
    from editguard.gates import Thresholds
    from editguard.models.registry import DEFAULT_MODEL as REGISTRY_DEFAULT_MODEL
    from editguard.models.registry import MODELS

    assert COLLAPSE_PPL == Thresholds().ppl_max == OPTIONS_BY_NAME["ppl-threshold"].default
    assert DEFAULT_MODEL == REGISTRY_DEFAULT_MODEL in MODELS
    assert DEFAULT_EDITOR in BUILTIN_EDITORS
    assert OPTIONS_BY_NAME["ppl-max-ratio"].default == Thresholds().ppl_max_ratio
    assert OPTIONS_BY_NAME["denominator-ratio-min"].default == Thresholds().denominator_ratio_min


# Where a command's default differs from the plugin's, on purpose.
OWN_DEFAULTS = {(command, "ppl-corpus") for command in ("ppl", "mine", "filter", "analyze", "eval")} | {
    ("analyze", "max-cases"), ("eval", "max-cases"), ("analyze", "editor"), ("eval", "editor"),
    ("train-mend", "threads")}


def _cli_actions(*command):
    """option string -> argparse action of an `editguard` subcommand."""
    from editguard.cli import main

    seen = {}
    original = argparse.ArgumentParser.parse_args

    def capture(parser, args=None, namespace=None):
        seen["parser"] = parser
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            main(list(command))
    finally:
        argparse.ArgumentParser.parse_args = original
    sub = next(a for a in seen["parser"]._actions if isinstance(a, argparse._SubParsersAction))
    return {s: a for a in sub.choices[command[0]]._actions for s in a.option_strings}


@pytest.mark.parametrize("command", ["ppl", "stats", "screen", "mine", "filter", "analyze", "train-mend", "eval"])
def test_cli_shares_names_help_and_defaults_with_the_plugin(command):
    actions = _cli_actions(command)
    shared = [o for o in OPTIONS if o.cli_flag in actions]
    assert {"model", "device", "dtype", "data"} <= {o.name for o in shared}
    for option in shared:
        action = actions[option.cli_flag]
        if option.name in ("json", "sequential"):   # one name everywhere; each command says what it writes/does
            continue
        if (command, option.name) == ("screen", "batch-size"):   # the screen's own: prompts per forward pass
            continue
        assert action.help.startswith(option.help_text(registered_names())), (command, option.name)
        if (command, option.name) not in OWN_DEFAULTS:
            assert action.default == option.default, (command, option.name)


def test_cli_ppl_corpus_default_is_the_single_edit_corpus():
    from editguard.options import SINGLE_EDIT_PPL_CORPUS

    for command in ("ppl", "mine", "filter", "eval"):
        assert _cli_actions(command)["--ppl-corpus"].default == SINGLE_EDIT_PPL_CORPUS


def test_add_cli_options_refuses_defaults_for_options_it_did_not_add():
    with pytest.raises(TypeError, match="max_cases"):
        add_cli_options(argparse.ArgumentParser(), "model", max_cases=3)


@pytest.mark.parametrize("command", ["", "ppl", "stats", "screen", "mine", "filter", "plot", "report", "merge",
                                     "compare", "analyze", "train-mend", "eval"])
def test_cli_help_imports_no_torch(command):
    argv = [command, "--help"] if command else ["--help"]
    code = ("import sys\nfrom editguard.cli import main\n"
            f"try:\n    main({argv})\nexcept SystemExit as e:\n    assert not e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'numpy', 'rich') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_plugin_import_imports_no_torch():
    code = ("import sys\nimport pytest_editguard.plugin\n"
            "heavy = [m for m in ('torch', 'transformers', 'numpy', 'rich') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_a_foreign_pytest_run_imports_no_torch(tmp_path):
    """The plugin loads in every pytest run of whoever installs editguard: configuring it (options,
    help texts with the registered names, settings) must not import torch."""
    (tmp_path / "test_foreign.py").write_text(
        "import sys\n\ndef test_start_up_is_light():\n    assert 'torch' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_foreign.py"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_texts_list_the_registered_names():
    names = registered_names()
    assert "mend" in names["editors"] and "smollm2-135m" in names["models"] and "piqa" in names["tasks"]
    assert "mend" in OPTIONS_BY_NAME["editor"].help_text(names)
    assert "{" not in OPTIONS_BY_NAME["downstream"].help_text()


@pytest.mark.parametrize("name, raw, message", [
    ("ppl-max-ratio", "nan", "expected a finite number > 0, got 'nan'"),
    ("ppl-threshold", "-5", "expected a finite number > 0, got '-5'"),
    ("max-cases", "0", "expected an integer ≥ 1, got '0'"),
    ("downstream-min-retention", "1.5", "expected a finite number > 0 and ≤ 1, got '1.5'"),
    ("downstream-precision", "fp8", "expected one of auto, float32, bfloat16, got 'fp8'"),
])
def test_option_values_are_checked_against_their_range(name, raw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OPTIONS_BY_NAME[name].parse(raw)
    assert OPTIONS_BY_NAME["ppl-threshold"].parse("5") == 5.0


@pytest.mark.parametrize("argv, message", [
    (["mine", "--top", "-1"], "--top: expected an integer ≥ 0, got '-1'"),
    (["stats", "--tokens", "0"], "--tokens: expected an integer ≥ 1, got '0'"),
    (["eval", "--n", "0"], "--n: expected an integer ≥ 1 or 'full', got '0'"),
    (["ppl", "--dtype", "float8"], "--dtype: expected one of float32, bfloat16, float16, got 'float8'"),
    (["mine", "--ppl-threshold", "nan"], "--ppl-threshold: expected a finite number > 0, got 'nan'"),
])
def test_cli_refuses_out_of_range_numbers_before_running(argv, message, capsys):
    from editguard.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_shows_readable_metavars_and_every_default(pytester):
    from editguard.gates import Thresholds
    from editguard.models.registry import MODELS
    from editguard.options import CALIBRATION_MODEL, UPDATE_NORM_MAX

    help_text = pytester.runpytest_subprocess("--help").stdout.str()
    assert "EDITGUARD_OPT_" not in help_text and "see README" not in help_text
    assert "--editguard-editor=NAME" in help_text and "--editguard-hparams=PATH" in help_text
    assert "--editguard-max-cases=N" in help_text and "--max-cases=N" in help_text
    for option in OPTIONS:
        assert "(default: " in option.help_with_default(option.default), option.name
    assert UPDATE_NORM_MAX == Thresholds().update_norm_rel_max == OPTIONS_BY_NAME["update-norm-max"].default
    assert CALIBRATION_MODEL in MODELS


def test_cli_version_and_dtype_choices(capsys):
    from editguard.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("editguard ")
    actions = _cli_actions("ppl")
    assert tuple(actions["--dtype"].choices) == ("float32", "bfloat16", "float16")
    assert actions["--device"].help and actions["--dtype"].help
