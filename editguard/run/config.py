"""What a run is asked to do, read once from the option table and then frozen: `RunConfig`.

Both front ends build it with `RunConfig.from_options`: the plugin from pytest's command line and
ini keys, a CLI command from its arguments. Bad input is a UsageError naming the option as the
front end spells it (`flag(name)`); nothing here imports pytest, loads a model or touches a GPU
beyond counting them. The gate bounds a model's calibration sets are resolved by `open_run`
(editguard.run.session), which returns them: this object never changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from editguard.errors import EditguardError, UsageError
from editguard.gates import QualityGates, Thresholds
from editguard.models.registry import ppl_bos_for
from editguard.models.sources import parse_model_spec
from editguard.options import OPTIONS_BY_NAME, SEQUENCE_PPL_CORPUS, SINGLE_EDIT_PPL_CORPUS, data_dir

# The gate options and the Thresholds fields they set: given explicitly, they win over a calibration.
THRESHOLD_OPTIONS = {"ppl-threshold": "ppl_max", "ppl-max-ratio": "ppl_max_ratio",
                     "denominator-ratio-min": "denominator_ratio_min", "update-norm-max": "update_norm_rel_max"}


def _pytest_flag(name: str) -> str:
    return OPTIONS_BY_NAME[name].pytest_flag


@dataclass(frozen=True)
class RunConfig:
    editor: str
    model: str
    device: str
    dtype: str
    edit_layer: int | None
    hparams: dict[str, Any]
    data_dir: str | None
    download: bool
    ppl_corpus: str | None   # None: the mode's default (see ppl_corpus_for)
    # The bounds the options give (defaults, explicit values); a model's calibration may replace the
    # ones not given explicitly: open_run returns the resolved bounds.
    thresholds: Thresholds
    max_cases: int | None
    json_path: str | None
    sequential: bool = False
    plots_dir: str | None = None
    devices: tuple[str, ...] | None = None
    shard: tuple[int, int] | None = None
    downstream: tuple[str, ...] | None = None     # task names (--downstream); None: no probes
    downstream_n: int = 200
    downstream_limit: int | None = None     # first N items (lm-eval's --limit) instead of the seeded subset
    lm_eval_json: str | None = None         # --editguard-lm-eval-json
    downstream_min_retention: float | None = None
    downstream_precision: str = "auto"
    edit_precision: str = "float32"         # v* and the perplexity probe (--editguard-edit-precision)
    ppl_bos: str = "never"                  # BOS rule of every perplexity (--ppl-bos)
    # Gate options the user gave (Thresholds field -> value): they win over the model's calibration.
    explicit_thresholds: dict[str, float] = field(default_factory=dict)
    sequence_on_error: str = "stop"
    markdown_path: str | None = None
    html_path: str | None = None
    compare_path: str | None = None         # the saved report to compare with (--editguard-compare)
    compare_saved: dict | None = None       # its content, read and checked at start-up
    compare_margins: tuple = ()             # --editguard-compare-fail, as editguard.report.compare.FailMargin
    quality: QualityGates = field(default_factory=QualityGates)   # quality mode's suite-level gates (off)
    sequence_length: int | None = None      # None: each sequential suite's default
    ppl_every: int = 1
    sequence_stop_on_collapse: bool = True
    batch_size: int = 1                     # cases per edit (--batch-size)
    # The families an EasyEdit --hparams file's module templates name (() : any); open_run refuses a
    # model of another family unless hparams_any_family.
    hparams_families: tuple[str, ...] = ()
    hparams_any_family: bool = False
    trust_remote_code: bool = False         # --editguard-trust-remote-code: never implied
    # torch's CPU threads in this process (--editguard-threads, or this process's share of the CPUs
    # under pytest -n N: see threads_per_worker); None: torch's own.
    threads: int | None = None

    def ppl_corpus_for(self, sequential: bool) -> str:
        if self.ppl_corpus:
            return self.ppl_corpus
        return SEQUENCE_PPL_CORPUS if sequential else SINGLE_EDIT_PPL_CORPUS

    @property
    def shard_label(self) -> str:
        return f"{self.shard[0]}/{self.shard[1]}" if self.shard else ""

    def load_model(self):
        """The model under test (loaded once per process; every caller gets the same object)."""
        from editguard.models import load_model

        return load_model(self.model, self.device, self.dtype, self.edit_layer, download=self.download,
                          trust_remote_code=self.trust_remote_code)

    @classmethod
    def from_options(cls, value: Callable[[str], Any], given: Callable[[str], bool] = lambda name: False, *,
                     flag: Callable[[str], str] = _pytest_flag, worker_index: int | None = None,
                     worker_count: int | None = None,
                     warn: Callable[[str], None] = lambda message: None) -> "RunConfig":
        """Read every option through `value(name)` (typed, default applied) and `given(name)` (set by
        the user); `flag(name)` spells an option in errors; `worker_index` and `worker_count` say which
        of how many pytest-xdist processes this is (None: the only one); `warn` says what a translated
        EasyEdit hparams file ignores."""
        from editguard.sharding import parse_shard

        editor, model = value("editor"), value("model")
        parse_model_spec(model, flag("model"))   # a malformed ORG/NAME@REVISION fails here, before any work
        hparams: dict[str, Any] = {}
        families: tuple[str, ...] = ()
        if value("hparams"):
            hparams, families = read_hparams(value("hparams"), editor, flag("hparams"), warn)
        stats_dir = value("stats-dir")
        if stats_dir:
            if not Path(stats_dir).is_dir():
                raise UsageError(f"{flag('stats-dir')} {stats_dir}: not a directory")
            # The editors that use C read it from there (an editor without C says it has no such key).
            hparams = {**hparams, "mom2_stats_dir": str(Path(stats_dir).resolve())}
        explicit = {fld: value(name) for name, fld in THRESHOLD_OPTIONS.items() if given(name)}
        thresholds = Thresholds(**{fld: value(name) for name, fld in THRESHOLD_OPTIONS.items()
                                   if value(name) is not None})
        quality = QualityGates.mode(value("quality"), value("min-efficacy"), value("min-generalization"),
                                    value("min-locality"))
        shard = value("shard")
        try:
            shard = parse_shard(shard) if shard else None
        except ValueError as err:
            raise UsageError(f"{flag('shard')}: {err}") from None
        devices = tuple(d.strip() for d in (value("devices") or "").split(",") if d.strip()) or None
        downstream = value("downstream")
        if downstream:
            from editguard.tasks import parse_task_list

            try:
                downstream = tuple(parse_task_list(downstream))
            except ValueError as err:
                raise UsageError(f"{flag('downstream')}: {err}") from None
        compare_path, compare_saved, margins = read_saved_report(value("compare"), value("compare-fail"), model, flag)
        device = value("device")
        if devices or (device == "auto" and worker_index is not None):
            import torch

            from editguard.models.loading import worker_device

            cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            device = worker_device(device, list(devices) if devices else None, worker_index, cuda_count)
        return cls(
            editor=editor, model=model, device=device, dtype=value("dtype"), devices=devices, shard=shard,
            edit_layer=value("edit-layer"), hparams=hparams, data_dir=data_dir(value("data")),
            download=value("download"), ppl_corpus=value("ppl-corpus"), thresholds=thresholds,
            max_cases=value("max-cases"), json_path=value("json"), sequential=value("sequential"),
            plots_dir=value("plots"), downstream=downstream or None, downstream_n=value("downstream-n"),
            downstream_min_retention=value("downstream-min-retention"), downstream_limit=value("downstream-limit"),
            lm_eval_json=value("lm-eval-json"),
            downstream_precision=value("downstream-precision"), edit_precision=value("edit-precision"),
            ppl_bos=ppl_bos_for(model, value("ppl-bos")),
            sequence_on_error=value("sequence-on-error"), markdown_path=value("markdown"), html_path=value("html"),
            compare_path=compare_path, compare_saved=compare_saved, compare_margins=tuple(margins), quality=quality,
            sequence_length=value("sequence-length"), ppl_every=value("ppl-every"),
            sequence_stop_on_collapse=value("sequence-stop-on-collapse") == "on", batch_size=value("batch-size"),
            explicit_thresholds=explicit, hparams_families=families, hparams_any_family=value("hparams-any-family"),
            trust_remote_code=value("trust-remote-code"),
            threads=value("threads") or threads_per_worker(worker_count, os.environ, available_cpus()),
        )


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one: a container's or
    taskset's limit, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(worker_count: int | None, environ: Mapping[str, str], cpus: int) -> int | None:
    """torch threads for one of `worker_count` processes sharing `cpus`: each its share, at least one.
    Left to torch (None) in a single process, or where OMP_NUM_THREADS says it already: each worker
    would otherwise start one thread per core, and N workers' threads contending for the same cores
    run several times slower than one process (docs/guides/scale.md, "One machine")."""
    if not worker_count or worker_count < 2 or environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, cpus // worker_count)


def read_hparams(path: str, editor: str, flag: str,
                 warn: Callable[[str], None]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The --hparams file's overrides and the model families it is for (() : any); an EasyEdit file
    (it has `alg_name`) is translated to editguard's names, what it ignores is said through `warn`,
    and its algorithm must be --editor's. With --editor=easyedit:ALG the file is EasyEdit's own, for
    the adapter (its alg_name must be ALG)."""
    from editguard.editors.hparams import HparamsFileError, is_easyedit, load_hparams_file, translate_easyedit
    from editguard.editors.registry import EASYEDIT_PREFIX

    if editor.startswith(EASYEDIT_PREFIX):   # EasyEdit's own file, read by EasyEdit's class in the adapter
        from editguard.editors.easyedit import EasyEditError, read_hparams_file

        try:
            read_hparams_file(path, editor[len(EASYEDIT_PREFIX):])
        except EasyEditError as err:
            raise UsageError(f"{flag} {path}: {err}") from None
        return {"hparams_file": str(Path(path).resolve())}, ()
    try:
        data = load_hparams_file(path)
        if not is_easyedit(data):
            return data, ()
        if data.get("alg_name") == "MEND":
            from editguard.editors.mend.easyedit import translate_easyedit_mend

            translation = translate_easyedit_mend(data, path)
        else:
            translation = translate_easyedit(data, path)
    except HparamsFileError as err:
        raise UsageError(f"{flag} {path}: {err}") from None
    if editor not in translation.editors:
        raise UsageError(f"{flag} {path}: an EasyEdit {translation.algorithm} file (alg_name), but "
                         f"--editor={editor}; use it with --editor={' or '.join(translation.editors)}")
    if translation.ignored or translation.notes:
        warn(translation.warning(path))
    return translation.overrides, translation.families


def read_saved_report(path: str | None, specs: Any, model: str,
                      flag: Callable[[str], str] = _pytest_flag) -> tuple[str | None, dict | None, list]:
    """The saved report to compare with (read and checked now, before any edit: complete, no
    duplicate cases, numeric gate thresholds, the same model) and the fail margins."""
    if specs and not path:
        raise UsageError(f"{flag('compare-fail')} needs {flag('compare')} PATH (the saved report to compare with)")
    if not path:
        return None, None, []
    from editguard.report.compare import check_usable, parse_fail_margins
    from editguard.report.json_report import load_report

    try:
        margins = parse_fail_margins(specs)
    except (EditguardError, ValueError) as err:
        raise UsageError(f"{flag('compare-fail')}: {err}") from None
    try:
        saved = load_report(path)
        check_usable(saved, path)
    except (EditguardError, ValueError) as err:
        raise UsageError(f"{flag('compare')} {err}" if str(err).startswith(path)
                         else f"{flag('compare')}: {err}") from None
    if saved["run"].get("model") != model:
        raise UsageError(f"{flag('compare')} {path}: it was run on model {saved['run'].get('model')!r}, "
                         f"this run is on {model!r}; compare runs of the same model")
    return path, saved, margins
