"""The plugin's settings: the option table (editguard.options) read from the command line and ini."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from editguard.catalog import registered_names
from editguard.gates import QualityGates
from editguard.models.registry import ppl_bos_for
from editguard.options import (
    OPTIONS,
    OPTIONS_BY_NAME,
    SEQUENCE_PPL_CORPUS,
    SINGLE_EDIT_PPL_CORPUS,
    data_dir,
)


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


def option_value(config: pytest.Config, name: str) -> Any:
    """Command line, else ini key, else the default; converted to the option's type."""
    option = OPTIONS_BY_NAME[name]
    value = config.getoption(_dest(name))
    source = option.pytest_flag + (f" ({option.short_flag})" if option.short_flag else "")
    if value is None:
        value, source = config.getini(option.ini_key), f"ini key {option.ini_key}"
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
    return config.getoption(_dest(name)) is not None or config.getini(option.ini_key) not in (None, "")


# The gate options and the Thresholds fields they set: given explicitly, they win over a calibration.
THRESHOLD_OPTIONS = {"ppl-threshold": "ppl_max", "ppl-max-ratio": "ppl_max_ratio",
                     "denominator-ratio-min": "denominator_ratio_min", "update-norm-max": "update_norm_rel_max"}


def _check_output_paths(json_path: str | None, plots_dir: str | None, markdown_path: str | None) -> None:
    """Before the first edit, not after the last: an unwritable report path would lose the run."""
    from editguard.cache import output_path_problem

    for name, path, directory in (("json", json_path, False), ("plots", plots_dir, True),
                                  ("markdown", markdown_path, False)):
        problem = output_path_problem(OPTIONS_BY_NAME[name].pytest_flag, path, directory=directory)
        if problem:
            raise pytest.UsageError(problem)


def _saved_report(config: pytest.Config, model: str) -> tuple[str | None, dict | None, list]:
    """--editguard-compare's saved report (read and checked now, before any edit) and the
    --editguard-compare-fail margins."""
    path, specs = option_value(config, "compare"), option_value(config, "compare-fail")
    if specs and not path:
        raise pytest.UsageError("--editguard-compare-fail needs --editguard-compare PATH (the saved report to "
                                "compare with)")
    if not path:
        return None, None, []
    from editguard.report.compare import CompareError, parse_fail_margins
    from editguard.report.json_report import load_report

    try:
        margins = parse_fail_margins(specs)
    except CompareError as err:
        raise pytest.UsageError(f"--editguard-compare-fail: {err}") from None
    try:
        saved = load_report(path)
    except OSError as err:
        raise pytest.UsageError(f"--editguard-compare {path}: cannot read it ({err.strerror or err}); give a "
                                f"JSON report written by --editguard-json") from None
    except ValueError as err:
        raise pytest.UsageError(f"--editguard-compare: {err}") from None
    if saved["run"].get("model") != model:
        raise pytest.UsageError(f"--editguard-compare {path}: it was run on model {saved['run'].get('model')!r}, "
                                f"this run is on {model!r}; compare runs of the same model")
    return path, saved, margins


def _read_hparams(config: pytest.Config, path: str, editor: str) -> dict[str, Any]:
    """The --hparams file's overrides; an EasyEdit file (it has `alg_name`) is translated to
    editguard's names, what it ignores is said in a warning, and its algorithm must be --editor's."""
    from editguard.editors.hparams import HparamsFileError, is_easyedit, load_hparams_file, translate_easyedit

    try:
        data = load_hparams_file(path)
        if not is_easyedit(data):
            return data
        translation = translate_easyedit(data, path)
    except HparamsFileError as err:
        raise pytest.UsageError(f"--hparams {path}: {err}") from None
    if editor not in translation.editors:
        raise pytest.UsageError(f"--hparams {path}: an EasyEdit {translation.algorithm} file (alg_name), but "
                                f"--editor={editor}; use it with --editor={' or '.join(translation.editors)}")
    if translation.ignored or translation.notes:
        config.issue_config_time_warning(pytest.PytestConfigWarning(translation.warning(path)), stacklevel=2)
    return translation.overrides


@dataclass
class EditguardSettings:
    editor: str
    model: str
    device: str
    dtype: str
    edit_layer: int | None
    hparams: dict[str, Any]
    data_dir: str | None
    download: bool
    ppl_corpus: str | None   # None: the mode's default (see ppl_corpus_for)
    thresholds: Any
    max_cases: int | None
    json_path: str | None
    sequential: bool = False
    plots_dir: str | None = None
    devices: list[str] | None = None
    shard: tuple[int, int] | None = None
    downstream: list[str] | None = None     # task names (--downstream); None: no probes
    downstream_n: int = 200
    downstream_min_retention: float | None = None
    downstream_precision: str = "auto"
    ppl_bos: str = "never"                  # BOS rule of every perplexity (--ppl-bos)
    # Gate options the user gave (Thresholds field -> value): they win over the model's calibration.
    explicit_thresholds: dict[str, float] | None = None
    # Where the gate bounds come from (the report header), set with the calibration when the model loads.
    calibration: str = ""
    sequence_on_error: str = "stop"
    markdown_path: str | None = None
    compare_path: str | None = None         # the saved report to compare with (--editguard-compare)
    compare_saved: dict | None = None       # its content, read at start-up
    compare_margins: list | None = None     # --editguard-compare-fail, as editguard.report.compare.FailMargin
    quality: QualityGates = field(default_factory=QualityGates)   # quality mode's suite-level gates (off)
    sequence_length: int | None = None      # None: each sequential suite's default
    ppl_every: int = 1
    sequence_stop_on_collapse: bool = True
    batch_size: int = 1                     # cases per edit (--batch-size)

    def ppl_corpus_for(self, sequential: bool) -> str:
        if self.ppl_corpus:
            return self.ppl_corpus
        return SEQUENCE_PPL_CORPUS if sequential else SINGLE_EDIT_PPL_CORPUS

    @property
    def shard_label(self) -> str:
        return f"{self.shard[0]}/{self.shard[1]}" if self.shard else ""

    @classmethod
    def from_config(cls, config: pytest.Config) -> "EditguardSettings":
        from editguard.gates import Thresholds
        from editguard.sharding import parse_shard

        hparams: dict[str, Any] = {}
        hparams_file = option_value(config, "hparams")
        if hparams_file:
            hparams = _read_hparams(config, hparams_file, option_value(config, "editor"))
        stats_dir = option_value(config, "stats-dir")
        if stats_dir:
            from pathlib import Path

            if not Path(stats_dir).is_dir():
                raise pytest.UsageError(f"--editguard-stats-dir {stats_dir}: not a directory")
            # The editors that use C read it from there (an editor without C says it has no such key).
            hparams = {**hparams, "mom2_stats_dir": str(Path(stats_dir).resolve())}
        update_max = option_value(config, "update-norm-max")
        thresholds = Thresholds(
            ppl_max=option_value(config, "ppl-threshold"),
            ppl_max_ratio=option_value(config, "ppl-max-ratio"),
            denominator_ratio_min=option_value(config, "denominator-ratio-min"),
            **({"update_norm_rel_max": update_max} if update_max is not None else {}),
        )
        quality = QualityGates.mode(option_value(config, "quality"), option_value(config, "min-efficacy"),
                                    option_value(config, "min-generalization"), option_value(config, "min-locality"))
        max_cases = option_value(config, "max-cases")
        shard = option_value(config, "shard")
        try:
            shard = parse_shard(shard) if shard else None
        except ValueError as err:
            raise pytest.UsageError(f"--editguard-shard: {err}") from None
        devices = [d.strip() for d in (option_value(config, "devices") or "").split(",") if d.strip()] or None
        downstream, downstream_n = option_value(config, "downstream"), option_value(config, "downstream-n")
        if downstream:
            from editguard.tasks import parse_task_list

            try:
                downstream = parse_task_list(downstream)
            except ValueError as err:
                raise pytest.UsageError(f"--downstream: {err}") from None
        retention = option_value(config, "downstream-min-retention")
        precision = option_value(config, "downstream-precision")
        json_path, plots_dir = option_value(config, "json"), option_value(config, "plots")
        markdown_path = option_value(config, "markdown")
        _check_output_paths(json_path, plots_dir, markdown_path)
        model = option_value(config, "model")
        compare_path, compare_saved, compare_margins = _saved_report(config, model)
        ppl_bos = ppl_bos_for(model, option_value(config, "ppl-bos"))
        on_error = option_value(config, "sequence-on-error")
        worker = config.workerinput["workerid"] if hasattr(config, "workerinput") else None
        worker_index = int(worker.removeprefix("gw")) if worker else None
        device = option_value(config, "device")
        if devices or (device == "auto" and worker_index is not None):
            import torch

            from editguard.models.loading import worker_device

            cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            device = worker_device(device, devices, worker_index, cuda_count)
        return cls(
            editor=option_value(config, "editor"), model=model,
            device=device, dtype=option_value(config, "dtype"), devices=devices, shard=shard,
            edit_layer=option_value(config, "edit-layer"), hparams=hparams,
            data_dir=data_dir(option_value(config, "data")),
            download=option_value(config, "download"), ppl_corpus=option_value(config, "ppl-corpus"),
            thresholds=thresholds, max_cases=max_cases, json_path=json_path,
            sequential=option_value(config, "sequential"), plots_dir=plots_dir,
            downstream=downstream or None, downstream_n=downstream_n, downstream_min_retention=retention,
            downstream_precision=precision, ppl_bos=ppl_bos, sequence_on_error=on_error,
            markdown_path=markdown_path, compare_path=compare_path, compare_saved=compare_saved,
            compare_margins=compare_margins, quality=quality,
            sequence_length=option_value(config, "sequence-length"), ppl_every=option_value(config, "ppl-every"),
            sequence_stop_on_collapse=option_value(config, "sequence-stop-on-collapse") == "on",
            batch_size=option_value(config, "batch-size"),
            explicit_thresholds={field: option_value(config, name) for name, field in THRESHOLD_OPTIONS.items()
                                 if option_given(config, name)},
        )

    def load_model(self):
        """The model under test (loaded once per process; the fixture gets the same object)."""
        from editguard.models import load_model

        return load_model(self.model, self.device, self.dtype, self.edit_layer)

    def apply_calibration(self, mue) -> str:
        """Set the gate bounds to the model's calibration for the editor (where one is stored), the
        explicit options on top; returns a warning when the defaults serve a model they were not
        calibrated on ('' otherwise)."""
        from editguard.calibration import calibrated_thresholds, calibration_note, find_calibration

        # A calibration holds for the editor's default hyperparameters on the model: not for --hparams.
        calibration = None if self.hparams else find_calibration(mue.name, mue.fingerprint, self.editor)
        self.thresholds = calibrated_thresholds(self.thresholds, calibration, self.explicit_thresholds or {})
        self.calibration, warning = calibration_note(mue.name, calibration, hparams_given=bool(self.hparams))
        if self.explicit_thresholds:
            self.calibration += "; given explicitly: " + ", ".join(sorted(self.explicit_thresholds))
        return warning


SHORT_FORMS_LEFT = pytest.StashKey[list]()  # short forms another plugin or conftest owns
SETTINGS_KEY = pytest.StashKey[EditguardSettings]()
# suite module -> {suite_source, cases_total, cases_selected}: where its cases came from (for the report)
SOURCES_KEY = pytest.StashKey[dict]()


def is_sequential(config: pytest.Config, module) -> bool:
    return bool(config.stash[SETTINGS_KEY].sequential or getattr(module, "EDITGUARD_SEQUENTIAL", False))


def user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by bad input or setup, shown without a traceback: every EditguardError, and
    ValueError while library code still raises it for bad input (--device, --dtype, --hparams
    values, --batch-size, report files)."""
    from editguard.errors import EditguardError

    return (EditguardError, ValueError)
