"""pytest plugin: options -> fixtures, suites' cases -> parametrized tests, results -> one report.

A suite module declares where its cases come from with a function

    def edit_cases(settings: EditguardSettings) -> list[EditCase]: ...

and its tests ask for `edit_case` and `edit_guard`:

    def test_edit_keeps_model_intact(edit_case, edit_guard):
        edit_guard.assert_safe(edit_case)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

# name, ini key, default, type, help
_OPTIONS: list[tuple[str, str, Any, type, str]] = [
    ("--editor", "editguard_editor", "rome", str,
     "editing algorithm under test: a built-in (rome, c-rome, r-rome, memit, alphaedit, ft), an entry point of group "
     "editguard.editors, or package.module:Class"),
    ("--model", "editguard_model", "smollm2-135m", str,
     "model to edit: a registered name (smollm2-135m, tiny-gpt2, tiny-gptj, tiny-llama, gpt2-xl, "
     "gpt-j-6b, llama2-7b), a local directory, or a hub id already in the Hugging Face cache"),
    ("--device", "editguard_device", "auto", str,
     "auto, cpu, cuda or cuda:N (auto: the GPU if there is one; with pytest -n N and several GPUs, worker i "
     "takes cuda:i)"),
    ("--devices", "editguard_devices", None, str,
     "comma-separated devices for pytest-xdist workers, worker i takes the i-th (mod their number), "
     "e.g. cuda:0,cuda:1 or cpu,cpu"),
    ("--dtype", "editguard_dtype", "float32", str, "float32, bfloat16 or float16"),
    ("--edit-layer", "editguard_edit_layer", None, int, "layer to edit (default: the model's registered layer)"),
    ("--hparams", "editguard_hparams", None, str, "editor hyperparameter overrides: a .json, .yaml or .yml file"),
    ("--editguard-data", "editguard_data", None, str,
     "data directory laid out like shared/data (default: env EDITGUARD_DATA)"),
    ("--editguard-download", "editguard_download", False, bool,
     "fetch missing public data files into the cache instead of failing"),
    ("--ppl-corpus", "editguard_ppl_corpus", None, str,
     "perplexity corpus: me-ppl-50, me-ppl-1k, me-ppl, or a path (.json/.txt) (default: me-ppl-50 for "
     "single edits, me-ppl-1k for sequences, as the papers)"),
    ("--sequential", "editguard_sequential", False, bool,
     "apply each suite module's cases as one sequence without restoring in between (the model is "
     "restored and verified after the module); suites/sequential is always sequential"),
    ("--ppl-threshold", "editguard_ppl_threshold", 1000.0, float, "collapse line for perplexity"),
    ("--ppl-max-ratio", "editguard_ppl_max_ratio", 2.0, float, "largest allowed edited/unedited perplexity ratio"),
    ("--denominator-ratio-min", "editguard_denominator_ratio_min", 0.1, float,
     "smallest allowed ROME denominator ratio (key used vs k̄)"),
    ("--update-norm-max", "editguard_update_norm_max", None, float,
     "largest allowed ‖ΔW‖_F/‖W‖_F of a touched matrix (default: calibrated bound, see README)"),
    ("--max-cases", "editguard_max_cases", None, int, "run only the first N cases of each suite (deterministic)"),
    ("--editguard-shard", "editguard_shard", None, str,
     "run only shard i of n (e.g. 2/4) of the collected cases, split deterministically (a sequence stays "
     "whole); merge the shards' JSON reports with `editguard merge`"),
    ("--editguard-json", "editguard_json", None, str, "write the JSON report to this path"),
    ("--fuzz-examples", "editguard_fuzz_examples", 12, int,
     "examples per Hypothesis fuzz test in the derandomized CI profile 'editguard-ci' (suites/fuzz)"),
    ("--editguard-plots", "editguard_plots", None, str,
     "write PNG plots (perplexity per case, perplexity evolution of sequences) into this directory"),
    ("--downstream", "editguard_downstream", None, str,
     "probe every edited model on these downstream tasks and gate on them, comma-separated: piqa, hellaswag, "
     "lambada, mmlu, mmlu-5shot, nq-open, squad2 (default: off)"),
    ("--downstream-n", "editguard_downstream_n", 200, int, "items per downstream task (a seeded, fixed subset)"),
    ("--downstream-min-retention", "editguard_downstream_min_retention", None, float,
     "also require edited accuracy ≥ this × the unedited model's on each downstream task, e.g. 0.9 (default: off)"),
    ("--downstream-precision", "editguard_downstream_precision", "auto", str,
     "precision of the downstream probes: float32, bfloat16 (autocast) or auto (bfloat16 where the CPU/GPU "
     "multiplies it fast, else float32)"),
]

SINGLE_EDIT_PPL_CORPUS, SEQUENCE_PPL_CORPUS = "me-ppl-50", "me-ppl-1k"


def _dest(flag: str) -> str:
    return "editguard_opt_" + flag.lstrip("-").replace("-", "_")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("editguard", "editguard: safety checks for LLM knowledge edits")
    for flag, ini, default, kind, help_text in _OPTIONS:
        shown = f" (default: {default})" if default not in (None, False) else ""
        if kind is bool:
            group.addoption(flag, action="store_true", default=None, dest=_dest(flag), help=help_text)
            parser.addini(ini, help_text, type="bool", default=default)
        else:
            group.addoption(flag, action="store", default=None, dest=_dest(flag), help=help_text + shown)
            parser.addini(ini, help_text + shown, default=None)


def _option(config: pytest.Config, flag: str) -> Any:
    """Command line, else ini key, else the default; converted to the option's type."""
    _, ini, default, kind, _ = next(o for o in _OPTIONS if o[0] == flag)
    value = config.getoption(_dest(flag))
    source = flag
    if value is None:
        value, source = config.getini(ini), f"ini key {ini}"
    if value in (None, ""):
        return default
    if kind is bool:
        return bool(value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"{source}: expected {kind.__name__}, got {value!r}") from None


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
        from editguard.models.loading import worker_device
        from editguard.sharding import parse_shard

        hparams: dict[str, Any] = {}
        hparams_file = _option(config, "--hparams")
        if hparams_file:
            from editguard.editors.hparams import HparamsFileError, load_hparams_file

            try:
                hparams = load_hparams_file(hparams_file)
            except HparamsFileError as err:
                raise pytest.UsageError(f"--hparams {hparams_file}: {err}") from None
        update_max = _option(config, "--update-norm-max")
        thresholds = Thresholds(
            ppl_max=_option(config, "--ppl-threshold"),
            ppl_max_ratio=_option(config, "--ppl-max-ratio"),
            denominator_ratio_min=_option(config, "--denominator-ratio-min"),
            **({"update_norm_rel_max": update_max} if update_max is not None else {}),
        )
        max_cases = _option(config, "--max-cases")
        if max_cases is not None and max_cases < 1:
            raise pytest.UsageError(f"--max-cases must be at least 1, got {max_cases}")
        shard = _option(config, "--editguard-shard")
        try:
            shard = parse_shard(shard) if shard else None
        except ValueError as err:
            raise pytest.UsageError(f"--editguard-shard: {err}") from None
        devices = [d.strip() for d in (_option(config, "--devices") or "").split(",") if d.strip()] or None
        downstream, downstream_n = _option(config, "--downstream"), _option(config, "--downstream-n")
        if downstream:
            from editguard.tasks import parse_task_list

            try:
                downstream = parse_task_list(downstream)
            except ValueError as err:
                raise pytest.UsageError(f"--downstream: {err}") from None
        if downstream_n < 1:
            raise pytest.UsageError(f"--downstream-n must be at least 1, got {downstream_n}")
        retention = _option(config, "--downstream-min-retention")
        if retention is not None and not 0 < retention <= 1:
            raise pytest.UsageError(f"--downstream-min-retention must be in (0, 1], got {retention}")
        precision = _option(config, "--downstream-precision")
        from editguard.metrics.downstream import PRECISIONS

        if precision not in PRECISIONS:
            raise pytest.UsageError(f"--downstream-precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        worker = config.workerinput["workerid"] if hasattr(config, "workerinput") else None
        worker_index = int(worker.removeprefix("gw")) if worker else None
        device = _option(config, "--device")
        if devices or (device == "auto" and worker_index is not None):
            import torch

            cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            device = worker_device(device, devices, worker_index, cuda_count)
        return cls(
            editor=_option(config, "--editor"), model=_option(config, "--model"),
            device=device, dtype=_option(config, "--dtype"), devices=devices, shard=shard,
            edit_layer=_option(config, "--edit-layer"), hparams=hparams,
            data_dir=_option(config, "--editguard-data") or os.environ.get("EDITGUARD_DATA"),
            download=_option(config, "--editguard-download"), ppl_corpus=_option(config, "--ppl-corpus"),
            thresholds=thresholds, max_cases=max_cases, json_path=_option(config, "--editguard-json"),
            sequential=_option(config, "--sequential"), plots_dir=_option(config, "--editguard-plots"),
            downstream=downstream or None, downstream_n=downstream_n, downstream_min_retention=retention,
            downstream_precision=precision,
        )

    def load_model(self):
        """The model under test (loaded once per process; the fixture gets the same object)."""
        from editguard.models import load_model

        return load_model(self.model, self.device, self.dtype, self.edit_layer)

    def tokenizer(self):
        """The model's tokenizer alone, for suites that order cases by token counts."""
        from editguard.models import load_tokenizer

        return load_tokenizer(self.model)


_SETTINGS_KEY = pytest.StashKey[EditguardSettings]()
_SOURCES_KEY = pytest.StashKey[dict]()  # suite module -> where its cases came from (for the report)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # A sequence's steps must run on one xdist worker, in order: they carry an xdist_group mark,
    # which only --dist loadgroup honours (for unmarked tests it distributes like load).
    if getattr(config.option, "dist", "no") in ("load", "worksteal"):
        config.option.dist = "loadgroup"
    if hasattr(config, "workerinput") and config.workerinput.get("editguard_loadgroup"):
        config.option.loadgroup = True  # workers re-parse the command line; tell them too
    config.stash[_SETTINGS_KEY] = EditguardSettings.from_config(config)
    fuzz_examples = _option(config, "--fuzz-examples")
    if fuzz_examples < 1:
        raise pytest.UsageError(f"--fuzz-examples must be at least 1, got {fuzz_examples}")
    from editguard.strategies import register_ci_profile

    register_ci_profile(max_examples=fuzz_examples)
    config.stash[_SOURCES_KEY] = {}
    config.pluginmanager.register(_ResultCollector(config), f"editguard-results-{id(config)}")
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
    settings = metafunc.config.stash[_SETTINGS_KEY]
    try:
        loaded = source(settings)
    except _user_errors() as err:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: cannot load its cases: {err}") from None
    cases = list(loaded)
    if settings.max_cases is not None:
        cases = cases[: settings.max_cases]
    # A suite may say where its cases came from (editguard.suites.CaseList); the report shows it.
    metafunc.config.stash[_SOURCES_KEY][metafunc.module.__name__] = getattr(loaded, "description", "") or ""
    if is_sequential(metafunc.config, metafunc.module):
        # One sequence per module: keep it on one xdist worker, in this order.
        marks = [pytest.mark.xdist_group(f"editguard-sequence-{metafunc.module.__name__}")]
        params = [pytest.param(c, marks=marks, id=f"step{i:02d}-{_case_id(c)}") for i, c in enumerate(cases, 1)]
        metafunc.parametrize("edit_case", params)
    else:
        metafunc.parametrize("edit_case", cases, ids=[_case_id(c) for c in cases])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[_SETTINGS_KEY]
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


def is_sequential(config: pytest.Config, module) -> bool:
    return bool(config.stash[_SETTINGS_KEY].sequential or getattr(module, "EDITGUARD_SEQUENTIAL", False))


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by bad input or setup, shown without a traceback."""
    from editguard.cases import CaseError
    from editguard.data import DataError
    from editguard.editors.api import EditorNotFound
    from editguard.models import ModelLoadError

    return (CaseError, DataError, EditorNotFound, ModelLoadError, ValueError)


def _fail_cleanly(what: str, err: Exception):
    pytest.fail(f"editguard could not {what}: {err}", pytrace=False)


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def editguard_settings(request: pytest.FixtureRequest) -> EditguardSettings:
    return request.config.stash[_SETTINGS_KEY]


@pytest.fixture(scope="session")
def model_under_edit(editguard_settings: EditguardSettings):
    """The model, loaded once per session (per xdist worker)."""
    from editguard.models import load_model

    s = editguard_settings
    try:
        return load_model(s.model, s.device, s.dtype, s.edit_layer)
    except _user_errors() as err:
        _fail_cleanly(f"load --model={s.model}", err)


@pytest.fixture(scope="session")
def editor(editguard_settings: EditguardSettings, model_under_edit):
    """The editor under test; its hyperparameters are resolved for the model up front, so a
    bad --hparams key fails here, once, with the list of valid keys."""
    from editguard.editors.api import editor_hparams
    from editguard.editors.registry import get_editor

    s = editguard_settings
    try:
        editor = get_editor(s.editor, s.hparams, data_dir=s.data_dir)
        editor_hparams(editor, model_under_edit)
        return editor
    except _user_errors() as err:
        _fail_cleanly(f"set up --editor={s.editor}", err)


class _Baselines:
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
            except _user_errors() as err:
                _fail_cleanly(f"prepare --downstream={','.join(s.downstream)}", err)
        return self._probe

    def get(self, corpus: str):
        from editguard.data import load_ppl_corpus
        from editguard.guard import measure_baseline

        if corpus not in self._cache:
            s = self.settings
            try:
                sentences = load_ppl_corpus(corpus, s.data_dir, download=s.download)
            except _user_errors() as err:
                _fail_cleanly(f"read --ppl-corpus={corpus}", err)
            self._cache[corpus] = measure_baseline(self.model, sentences, corpus, shared=True)
            self._cache[corpus].downstream = self.probe()
        return self._cache[corpus]


@pytest.fixture(scope="session")
def editguard_baselines(model_under_edit, editguard_settings) -> _Baselines:
    return _Baselines(model_under_edit, editguard_settings)


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
    sequence = EditSequence(model_under_edit, editor, editguard_baselines.get(s.ppl_corpus_for(sequential=True)),
                            s.thresholds, name=request.module.__name__.rpartition(".")[2].removeprefix("test_"))
    yield sequence
    sequence.restore()


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
        from editguard.editors.api import editor_hparams
        from editguard.report.json_report import SUITE_FIELDS, RunInfo

        s, mue = self.settings, self.model
        hparams = editor_hparams(self.editor, mue)
        info = RunInfo(
            model=mue.name, editor=self.editor.name, hparams=hparams, seed=hparams.get("template_seed", 0),
            thresholds=s.thresholds.to_dict(), baseline_ppl=self.baseline.ppl.ppl,
            baseline_corpus_ppl=self.baseline.ppl.corpus_ppl, ppl_corpus=self.ppl_corpus,
            model_fingerprint=mue.fingerprint, device=str(mue.device), dtype=str(mue.dtype).replace("torch.", ""),
            suite=_suite_name(self._request.node), sequential=self.sequential,
            suite_source=self._request.config.stash[_SOURCES_KEY].get(self._request.module.__name__, ""),
            shard=s.shard_label,
        )
        info.suites = {self.module_path: {f: getattr(info, f) for f in SUITE_FIELDS}}
        return info.to_json()

    def check(self, case):
        from editguard.guard import check

        if self.sequential:
            result = self._request.getfixturevalue("edit_sequence").apply(case)
        else:
            result = check(self.model, self.editor, case, self.baseline, self.settings.thresholds)
        node = self._request.node
        record = {**result.to_json(), "suite_module": self.module_path}
        node.user_properties.append(("editguard_case", json.dumps(record)))
        node.user_properties.append(("editguard_run", json.dumps(self.run_info())))
        # Flat numbers as well, so junit XML (--junitxml) shows them as <property> elements.
        node.user_properties.extend(junit_properties(record))
        return result

    def assert_safe(self, case):
        result = self.check(case)
        if not result.passed:
            pytest.fail(result.explanation, pytrace=False)
        return result


_JUNIT_FIELDS = ("passed", "ppl", "ppl_baseline", "corpus_ppl", "denominator_ratio", "key_cosine",
                 "update_norm_rel", "blast_radius", "efficacy", "sequence", "step", "peak_memory_mb")


def junit_properties(record: dict[str, Any]) -> list[tuple[str, str]]:
    """A case's numbers as (name, value) pairs, named editguard.<field>; gates as one line each."""
    props = [(f"editguard.{f}", str(record[f])) for f in _JUNIT_FIELDS if record.get(f) is not None]
    props.append(("editguard.failed_gates", ",".join(record["failed_gates"])))
    for task, scores in (record.get("downstream") or {}).items():
        props.append((f"editguard.downstream.{task}", str(scores["accuracy"])))
    props.append(("editguard.reason", record["reason"]))
    diag = record.get("diagnostics") or {}
    for name in ("denominator", "denominator_kbar", "key_rel_distance", "update_norm", "numerator_norm",
                 "v_star_norm", "layer"):
        if isinstance(diag.get(name), (int, float)):
            props.append((f"editguard.{name}", str(diag[name])))
    return props


def _suite_name(node) -> str:
    path = Path(str(node.path))
    return path.parent.name if path.parent.name not in ("tests", "") else path.stem


@pytest.fixture
def edit_guard(request, model_under_edit, editor, editguard_baselines, editguard_settings) -> EditGuard:
    return EditGuard(request, model_under_edit, editor, editguard_baselines, editguard_settings)


# --- results: collected from reports, so that xdist workers' results reach the controller ----

class _ResultCollector:
    """Registered per pytest config (nested pytester sessions get their own)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.results: list[dict[str, Any]] = []
        self.runs: dict[str, dict[str, Any]] = {}  # one run header per suite module

    @property
    def run(self) -> dict[str, Any]:
        from editguard.report.json_report import combine_runs

        return combine_runs([self.runs[k] for k in sorted(self.runs)])

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        props = dict(report.user_properties)
        if "editguard_case" in props:
            record = json.loads(props["editguard_case"])
            self.results.append(record)
            if record["suite_module"] not in self.runs:
                self.runs[record["suite_module"]] = json.loads(props["editguard_run"])

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.results or _is_xdist_worker(self.config):
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

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        settings = self.config.stash[_SETTINGS_KEY]
        if _is_xdist_worker(self.config) or not self.results:
            return
        if settings.json_path:
            from editguard.report import write_report

            write_report(settings.json_path, self.run, self.results)
        if settings.plots_dir:
            from editguard.report.plots import write_report_plots

            self.plots = write_report_plots([{"run": self.run, "cases": self.results}], settings.plots_dir)




def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash[_SETTINGS_KEY]
    corpus = s.ppl_corpus or f"{SINGLE_EDIT_PPL_CORPUS} (sequences: {SEQUENCE_PPL_CORPUS})"
    mode = " sequential" if s.sequential else ""
    extra = (f" devices={','.join(s.devices)}" if s.devices else "") + (f" shard={s.shard_label}" if s.shard else "")
    if s.downstream:
        extra += f" downstream={','.join(s.downstream)} (n={s.downstream_n})"
    return [
        f"editguard: editor={s.editor} model={s.model} device={s.device} dtype={s.dtype}{mode} "
        f"ppl-corpus={corpus} data={s.data_dir or '(unset)'}{extra}"
    ]
