"""The plugin's settings: the option table (editguard.options) read from the command line and ini
into the library's frozen RunConfig."""

from __future__ import annotations

from typing import Any

import pytest

from editguard.catalog import registered_names
from editguard.options import OPTIONS, OPTIONS_BY_NAME
from editguard.run.config import RunConfig

# The settings suites receive (`edit_cases(settings)`) and fixtures read: the library's frozen
# RunConfig, under the plugin's historical name.
EditguardSettings = RunConfig


def _dest(name: str) -> str:
    # Prefixed, so that a bare option such as --model cannot clash with another plugin's dest.
    return "editguard_opt_" + OPTIONS_BY_NAME[name].dest


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("editguard", "editguard: safety checks for LLM knowledge edits")
    names = registered_names()
    for option in OPTIONS:
        if option.is_flag:
            group.addoption(option.pytest_flag, action="store_true", default=None, dest=_dest(option.name),
                            help=option.argparse_help(False, names=names))
            parser.addini(option.ini_key, option.help_text(names), type="bool", default=option.default)
        else:
            help_text = option.help_with_default(option.default, names=names)
            action = "append" if option.repeatable else "store"
            group.addoption(option.pytest_flag, action=action, default=None, dest=_dest(option.name),
                            help=option.argparse_help(option.default, names=names),
                            metavar=option.metavar or option.name.upper().replace("-", "_"))
            parser.addini(option.ini_key, help_text, default=None)


def registered_flags(parser: pytest.Parser) -> set[str]:
    """Every option string registered on pytest's parser so far, by any plugin or conftest."""
    groups = [getattr(parser, "_anonymous", None), *getattr(parser, "_groups", [])]
    return {flag for group in groups if group is not None for argument in group.options for flag in argument.names()}


def add_short_forms(parser: pytest.Parser) -> list[str]:
    """Register the short forms (`--model` for `--editguard-model` ...) that nobody else registered;
    called once the project's initial conftests have added their options. Returns the short forms
    left to their owners."""
    taken = registered_flags(parser)
    group = parser.getgroup("editguard")
    left = []
    for option in OPTIONS:
        short = option.short_flag
        if short is None:
            continue
        if short in taken:
            left.append(short)
            continue
        if option.is_flag:
            group.addoption(short, action="store_true", default=None, dest=_dest(option.name),
                            help=f"short for {option.pytest_flag}")
        else:
            action = "append" if option.repeatable else "store"
            group.addoption(short, action=action, default=None, dest=_dest(option.name),
                            metavar=option.metavar or option.name.upper().replace("-", "_"),
                            help=f"short for {option.pytest_flag}")
    return left


def _ini(config: pytest.Config, option) -> Any:
    """The option's ini value; a flag's that is not a truth value (`editguard_quality = maybe`) is a
    usage error naming the ini key (pytest's own error, a ValueError or UsageError by version, does not)."""
    try:
        return config.getini(option.ini_key)
    except (ValueError, pytest.UsageError) as err:
        raise pytest.UsageError(f"ini key {option.ini_key}: expected a boolean (true/false, yes/no, on/off, 1/0): "
                                f"{str(err)[:200]}") from None


def option_value(config: pytest.Config, name: str) -> Any:
    """Command line, else ini key, else the default; converted to the option's type."""
    option = OPTIONS_BY_NAME[name]
    value = config.getoption(_dest(name))
    source = option.pytest_flag + (f" ({option.short_flag})" if option.short_flag else "")
    if value is None:
        value, source = _ini(config, option), f"ini key {option.ini_key}"
    if isinstance(value, list):   # a repeatable option given several times
        value = ",".join(value)
    if value in (None, ""):
        return option.default
    if option.is_flag:
        return bool(value)
    try:
        return option.parse(value)
    except ValueError as err:
        raise pytest.UsageError(f"{source}: {err}") from None


def option_given(config: pytest.Config, name: str) -> bool:
    """Whether the user set option `name` (command line or ini key), rather than its default."""
    option = OPTIONS_BY_NAME[name]
    return config.getoption(_dest(name)) is not None or _ini(config, option) not in (None, "")


def _check_output_paths(config: pytest.Config, json_path: str | None, plots_dir: str | None,
                        markdown_path: str | None, html_path: str | None = None,
                        lm_eval_json: str | None = None) -> None:
    """Before the first edit, not after the last: every output (and the journal beside the JSON, and
    pytest's own --junitxml) is created now, so that an unwritable path cannot lose the run.
    --collect-only writes nothing."""
    if config.option.collectonly or hasattr(config, "workerinput"):
        return
    from editguard.errors import UsageError
    from editguard.run.recorder import Outputs

    flags = {name: OPTIONS_BY_NAME[name].pytest_flag for name in ("json", "plots", "markdown", "html")}
    flags["lm_eval_json"] = OPTIONS_BY_NAME["lm-eval-json"].pytest_flag
    flags.update(journal=f"{flags['json']} (its journal)", junit="--junitxml")
    try:
        Outputs(json=json_path, markdown=markdown_path, html=html_path, plots=plots_dir, lm_eval_json=lm_eval_json,
                junit=getattr(config.option, "xmlpath", None), flags=flags).prepare()
    except UsageError as err:
        raise pytest.UsageError(str(err)) from None


def xdist_workers(config: pytest.Config) -> int | None:
    """How many pytest-xdist workers this run has (on a worker and on their controller); None without -n."""
    if hasattr(config, "workerinput"):
        return int(config.workerinput["workercount"])
    count = getattr(config.option, "numprocesses", None)
    return count if isinstance(count, int) and count > 0 and getattr(config.option, "dist", "no") != "no" else None


def read_settings(config: pytest.Config) -> EditguardSettings:
    """The run's frozen settings from the command line and ini keys (editguard.run.config.RunConfig);
    bad input is a pytest usage error naming the option. Outputs are proven writable now."""
    from editguard.errors import UsageError

    worker = config.workerinput["workerid"] if hasattr(config, "workerinput") else None

    def warn(message: str) -> None:
        config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)

    try:
        settings = RunConfig.from_options(lambda name: option_value(config, name),
                                          lambda name: option_given(config, name),
                                          worker_index=int(worker.removeprefix("gw")) if worker else None,
                                          worker_count=xdist_workers(config), warn=warn)
    except UsageError as err:
        raise pytest.UsageError(str(err)) from None
    _check_output_paths(config, settings.json_path, settings.plots_dir, settings.markdown_path,
                        settings.html_path, settings.lm_eval_json)
    return settings


SHORT_FORMS_LEFT = pytest.StashKey[list]()  # short forms another plugin or conftest owns
SETTINGS_KEY = pytest.StashKey[EditguardSettings]()
# suite module -> {suite_source, cases_total, cases_selected}: where its cases came from (for the report)
SOURCES_KEY = pytest.StashKey[dict]()
# Set when --editguard-shard gives this shard no test: records.EmptyShard's fields.
EMPTY_SHARD_KEY = pytest.StashKey[dict]()


def is_sequential(config: pytest.Config, module) -> bool:
    return bool(config.stash[SETTINGS_KEY].sequential or getattr(module, "EDITGUARD_SEQUENTIAL", False))


def sequence_name(module) -> str:
    """The name of a suite module's edit sequence: the module's name without `test_`."""
    return module.__name__.rpartition(".")[2].removeprefix("test_")


def user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by bad input or setup, shown without a traceback: every EditguardError, and
    ValueError while library code still raises it for bad input (--device, --dtype, --hparams
    values, --batch-size, report files)."""
    from editguard.errors import EditguardError

    return (EditguardError, ValueError)
