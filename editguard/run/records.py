"""The one schema of a run's results: the run header, one record per edited case (a sequence step
or a batch is one record too) and the steps a stopped sequence did not run. The JSON report, the
journal, junit properties, `editguard compare`'s metrics and the terminal and Markdown columns
all derive from the field table here; `report.schema.json` beside this module is generated from
it (`python -m editguard.run.records > editguard/run/report.schema.json`) and checked by a test.

JSON has no NaN or Infinity (JavaScript's JSON.parse refuses them): a non-finite number is
written as null and named, with its value as text, in the record's `non_finite` map
(`{"ppl": "nan"}`); `load_report` puts the value back, so a NaN is still a collapse.
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from editguard.errors import ReportError, bounded
from editguard.options import UPDATE_NORM_REL

# 2: verdict "error" records, `non_finite`, `complete` always written, a journal beside the JSON.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)

# A case's verdict: passed, failed a gate, collapsed (perplexity above the collapse line, NaN/Inf
# included), or error (the editor or a probe raised: the case has no measurement).
PASSED, FAILED_GATE, COLLAPSED, ERROR = "passed", "failed gate", "collapsed", "error"
VERDICTS = (PASSED, FAILED_GATE, COLLAPSED, ERROR)


@dataclass(frozen=True)
class Metric:
    """A per-case number of the record. `higher_is_worse`: True/False for numbers, None for a
    yes/no field where True is good; `column`: its label in the terminal and Markdown tables ("" :
    not a column); `junit`: written as an `editguard.<name>` junit property."""
    name: str
    higher_is_worse: bool | None
    meaning: str
    column: str = ""
    fmt: str = ".3g"
    junit: bool = True
    comparable: bool = True   # a --compare-fail margin may watch it


METRICS: tuple[Metric, ...] = (
    Metric("ppl", True, "edited perplexity (mean of per-sentence perplexities)", "ppl", ".1f"),
    Metric("corpus_ppl", True, "edited token-weighted perplexity"),
    Metric("ppl_baseline", True, "the unedited model's perplexity", comparable=False),
    Metric("denominator_ratio", False, "ROME's denominator with the key used over the one with k̄", "denom ratio"),
    Metric("key_cosine", False, "cos(k̄, kᵘ)", "cos(k̄,kᵘ)", ".2f"),
    Metric(UPDATE_NORM_REL, True, "‖ΔW‖_F/‖W‖_F of the largest touched matrix", "‖ΔW‖/‖W‖"),
    Metric("blast_radius", True, "mean relative change of the layer's output on normal-text keys", "blast"),
    Metric("efficacy", None, "the new target beats the true one after the edit"),
    Metric("peak_memory_mb", True, "peak memory of the edit and its probes (MiB)", comparable=False),
)
METRICS_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
# The numbers the guard copies from an edit's diagnostics into the record's top level.
ANATOMY_FIELDS = ("denominator_ratio", "key_cosine", UPDATE_NORM_REL, "blast_radius")
# The table columns of the anatomy, in order (terminal and Markdown).
ANATOMY_COLUMNS = tuple(METRICS_BY_NAME[n] for n in ANATOMY_FIELDS)
UPDATE_NORM = METRICS_BY_NAME[UPDATE_NORM_REL]


@dataclass(frozen=True)
class CaseRecord:
    """One edit's record (a single case, a batch, or a sequence step). `error` is set (and every
    measurement None) when the edit or a probe raised: {"type", "message", "phase"}."""
    case_id: str
    subject: str
    prompt: str
    target_new: str
    target_true: str | None
    editor: str
    model: str
    passed: bool
    failed_gates: list[str]
    reason: str
    ppl: float | None
    ppl_probed: bool
    corpus_ppl: float | None
    ppl_baseline: float | None
    denominator_ratio: float | None
    key_cosine: float | None
    update_norm_rel: float | None
    blast_radius: float | None
    efficacy: bool | None
    seconds: float
    timings: dict[str, float]
    sequence: str | None
    step: int | None
    peak_memory_mb: float | None
    diagnostics: dict[str, Any]
    generalization: float | None = None
    generalization_hits: int | None = None
    generalization_n: int | None = None
    locality: float | None = None
    locality_hits: int | None = None
    locality_n: int | None = None
    downstream: dict[str, Any] | None = None
    batch: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    suite_module: str = ""
    sequence_stop: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as the report writes it; optional parts only where present."""
        out = asdict(self)
        for name in ("downstream", "batch", "error", "sequence_stop"):
            if out[name] is None:
                del out[name]
        if not out["suite_module"]:
            del out["suite_module"]
        return out


def error_record(case: Any, editor: str, model: str, err: BaseException | str, phase: str,
                 suite_module: str = "", sequence: str | None = None, step: int | None = None,
                 seconds: float = 0.0) -> CaseRecord:
    """The record of an edit that raised: verdict `error`, the exception's one-line summary and
    the phase it failed in (setup, snapshot, edit, perplexity, ...). `case`: an EditCase, or a
    batch (tuple) of them."""
    cases = list(case) if isinstance(case, (tuple, list)) else [case]
    first = cases[0]
    message = one_line(err)
    return CaseRecord(
        case_id=str(first.case_id), subject=first.subject, prompt=first.prompt, target_new=first.target_new,
        target_true=first.target_true, editor=editor, model=model, passed=False, failed_gates=[],
        reason=f"error in {phase}: {message}", ppl=None, ppl_probed=False, corpus_ppl=None, ppl_baseline=None,
        denominator_ratio=None, key_cosine=None, update_norm_rel=None, blast_radius=None, efficacy=None,
        seconds=seconds, timings={}, sequence=sequence, step=step, peak_memory_mb=None, diagnostics={},
        batch={"size": len(cases), "case_ids": [str(c.case_id) for c in cases], "efficacy": []} if len(cases) > 1
        else None,
        error={"type": type(err).__name__ if isinstance(err, BaseException) else "Error", "message": message,
               "phase": phase},
        suite_module=suite_module)


def one_line(err: BaseException | str, limit: int = 500) -> str:
    """An exception's summary on one line, cut at `limit` characters."""
    text = str(err) if not isinstance(err, BaseException) else (f"{type(err).__name__}: {err}" if str(err)
                                                                 else type(err).__name__)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class NotRunStep:
    """A sequence step that was not run because its sequence had stopped (a collapse, a failed step)."""
    sequence: str
    step: int
    case_id: str
    reason: str
    stopped_at: int
    suite_module: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class WorkerDied(Exception):
    """The error of a case whose pytest-xdist worker died while running it (os._exit, an OOM
    kill, a segfault): the case has no measurement, and is not run again."""


WORKER_PHASE = "worker"


@dataclass(frozen=True)
class WorkerDeath:
    """A worker process that died during the run: `exit` says how ("exit code 3", "signal
    SIGKILL", or "unknown"), `case` is the test it was running (its record has verdict `error`;
    None where it died between tests), `not_run` the tests its death left unrun (the later steps
    of a sequence it had started)."""
    worker: str
    exit: str
    message: str
    case: str | None = None
    not_run: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EmptyShard:
    """A shard (`--editguard-shard i/n`) that got no test: more shards than units of work. Its
    report has no case, and `editguard merge` takes it as the part of the run it is."""
    shard: str
    units: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("editguard", "torch", "transformers", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class RunHeader:
    """What a run ran on: model, editor, gates, baseline; one per suite module under `suites`."""
    model: str
    editor: str
    hparams: dict[str, Any]
    thresholds: dict[str, float]
    baseline_ppl: float
    baseline_corpus_ppl: float
    ppl_corpus: str
    model_fingerprint: str
    device: str
    dtype: str
    seed: int = 0
    ppl_bos: str = "never"     # BOS rule of every perplexity in the run (--ppl-bos; never: the papers')
    # The precision of every perplexity in the run and of the editor's v* search, when it has one
    # (--editguard-edit-precision, resolved; the editor's v_precision hyperparameter says its own).
    edit_precision: str = "float32"
    calibration: str = ""      # where the gate bounds come from (editguard calibrate, or the defaults)
    # What `editguard prepare` made for these weights (files, fingerprint, when), or the command to run.
    prepared: str = ""
    # Which second-moment statistics the edits used (the files, or the corpus C was computed on), or
    # why none were needed (editguard.editors.api.editor_statistics).
    statistics: str = ""
    suite: str = ""
    suite_source: str = ""     # where the suite's cases came from (mined list, screen, ...)
    cases_total: int | None = None      # cases the suite module's source holds
    cases_selected: int | None = None   # of those, selected to run (--max-cases keeps the first N)
    sequential: bool = False
    shard: str = ""            # "i/n" when this run is one shard of a larger one (--editguard-shard)
    # Per suite module: its own SUITE_FIELDS (a run may mix single-edit and sequential suites).
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Quality mode's suite-level gates (editguard.gates.QualityGates.to_dict()); None: off.
    quality: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=versions)
    # Command line, working directory, git commit, start time (the plugin's controller puts its own).
    invocation: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Fields that belong to one suite module rather than to the whole run.
SUITE_FIELDS = ("suite", "suite_source", "cases_total", "cases_selected", "sequential", "ppl_corpus", "baseline_ppl",
                "baseline_corpus_ppl")


# ---- junit ---------------------------------------------------------------------------------

# The diagnostics an editor may report that junit shows beside the record's own numbers.
JUNIT_DIAGNOSTICS = ("denominator", "denominator_kbar", "key_rel_distance", "update_norm", "numerator_norm",
                     "v_star_norm", "layer")


def junit_properties(record: dict[str, Any]) -> list[tuple[str, str]]:
    """A case's numbers as (name, value) pairs named editguard.<field> (junit XML <property>
    elements); the failed gates, the reason and, for an error record, the error as one line each."""
    props = [(f"editguard.{name}", str(record[name])) for name in ("passed", "sequence", "step")
             if record.get(name) is not None]
    props += [(f"editguard.{m.name}", str(record[m.name])) for m in METRICS
              if m.junit and record.get(m.name) is not None]
    props.append(("editguard.failed_gates", ",".join(record["failed_gates"])))
    for task, scores in (record.get("downstream") or {}).items():
        props.append((f"editguard.downstream.{task}", str(scores["accuracy"])))
    props.append(("editguard.reason", record["reason"]))
    if record.get("error"):
        props.append(("editguard.error", f"{record['error']['phase']}: {record['error']['message']}"))
    diagnostics = record.get("diagnostics") or {}
    props += [(f"editguard.{name}", str(diagnostics[name])) for name in JUNIT_DIAGNOSTICS
              if isinstance(diagnostics.get(name), (int, float))]
    return props


# ---- JSON without NaN -----------------------------------------------------------------------

def finite_json(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with every non-finite float (at any depth) replaced by null, and those fields named
    in `non_finite` ({"ppl": "nan", "diagnostics.denominator": "inf"})."""
    found: dict[str, str] = {}

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found[path] = repr(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    out = clean({k: v for k, v in record.items() if k != "non_finite"}, "")
    if found or record.get("non_finite"):
        out["non_finite"] = {**(record.get("non_finite") or {}), **found}
    return out


def restore_non_finite(record: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `finite_json`: the named fields get their NaN/Inf back (in place)."""
    for path, text in (record.get("non_finite") or {}).items():
        parts = path.split(".")
        target: Any = record
        try:
            for part in parts[:-1]:
                target = target[int(part)] if isinstance(target, list) else target[part]
            last = parts[-1]
            if isinstance(target, list):
                target[int(last)] = float(text)
            else:
                target[last] = float(text)
        except (KeyError, IndexError, ValueError, TypeError):
            raise ReportError(f"case {record.get('case_id')!r}: non_finite names {path!r} with {text!r}, which is "
                              f"not a field holding a number") from None
    return record


# ---- checking a record read from a file ------------------------------------------------------

_JSON_TYPES = {str: "a string", bool: "true or false", int: "an integer", float: "a number", dict: "an object",
               list: "a list"}


def _expected_types(annotation: str) -> tuple[tuple[type, ...], bool]:
    """(Python types, None allowed) of a CaseRecord field's annotation."""
    nullable = "None" in annotation
    base = annotation.replace(" | None", "").split("[")[0].strip()
    types = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float), "dict": (dict,),
             "list": (list,)}[base]
    return types, nullable


CASE_FIELD_TYPES = {f.name: _expected_types(str(f.type)) for f in fields(CaseRecord)}
# The fields every case record has, in every schema version editguard reads.
REQUIRED_CASE_FIELDS = ("case_id", "passed")
# Fields the reports' readers (render, compare, merge, plots) index: a record read from a file
# without them is refused, naming the field; nullable measurements it lacks read as null.
READ_CASE_FIELDS = ("subject", "prompt", "failed_gates")


def check_case(case: Any, where: str) -> None:
    """ReportError naming the case and field when a record read from a file is not a case record
    of this schema ("passed": "false" is not a yes/no)."""
    if not isinstance(case, dict):
        raise ReportError(f"{where} is not a case record (expected an object, got {type(case).__name__})")
    for name in REQUIRED_CASE_FIELDS:
        if name not in case:
            raise ReportError(f"{where} is not a case record (it has no {name!r})")
    label = f"{where} (case {bounded(case.get('case_id'))})"
    for name, value in case.items():
        if name not in CASE_FIELD_TYPES or value is None and CASE_FIELD_TYPES[name][1]:
            continue
        types, _ = CASE_FIELD_TYPES[name]
        if name == "case_id" and isinstance(value, int) and not isinstance(value, bool):
            continue   # reports of schema 1 may hold numeric ids
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ReportError(f"{label}: field {name!r} is {bounded(value)}; expected {_JSON_TYPES[types[-1]]}"
                              + ("" if not CASE_FIELD_TYPES[name][1] else " or null"))


def complete_case(case: dict[str, Any], where: str) -> None:
    """A checked record (check_case) made readable by the reports: the fields they index must be
    there (ReportError naming the case and field); a nullable measurement it lacks is null."""
    missing = [name for name in READ_CASE_FIELDS if name not in case]
    if missing:
        raise ReportError(f"{where} (case {bounded(case.get('case_id'))}) is not a case record editguard wrote: "
                          f"it has no {', '.join(map(repr, missing))}")
    for name, (_, nullable) in CASE_FIELD_TYPES.items():
        if nullable:
            case.setdefault(name, None)


RUN_HEADER_STRINGS = ("model", "editor")


def check_run_header(run: Mapping[str, Any], where: str) -> None:
    """ReportError unless the header names its model and editor (strings) and its gate thresholds
    are finite numbers (check_thresholds)."""
    for name in RUN_HEADER_STRINGS:
        if not isinstance(run.get(name), str):
            raise ReportError(f"{where}: run.{name} is {bounded(run.get(name))}; expected a string (the report of a "
                              f"run written by --editguard-json names its {name})")
    check_thresholds(run, where)


def check_thresholds(run: Mapping[str, Any], where: str) -> None:
    """ReportError unless the header's `thresholds` is an object of finite numbers with `ppl_max`."""
    thresholds = run.get("thresholds")
    if not isinstance(thresholds, dict) or "ppl_max" not in thresholds:
        raise ReportError(f"{where}: its run header has no gate thresholds (run.thresholds with ppl_max); a report "
                          f"written by editguard's --editguard-json has them")
    for name, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ReportError(f"{where}: run.thresholds.{name} is {bounded(value)}; expected a finite number")


# ---- the JSON Schema, generated from the dataclasses -------------------------------------------

def _schema_of(annotation: str) -> dict[str, Any]:
    types, nullable = _expected_types(annotation)
    names = {str: "string", bool: "boolean", dict: "object", list: "array"}
    kinds = ["number"] if types == (int, float) else ["integer"] if types == (int,) else [names[types[0]]]
    return {"type": kinds + (["null"] if nullable else [])}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of an editguard report (schemas 1 and 2), generated from CaseRecord,
    NotRunStep and RunHeader."""
    case_props = {f.name: _schema_of(str(f.type)) for f in fields(CaseRecord)}
    case_props["case_id"] = {"type": ["string", "integer"]}
    case_props["verdict"] = {"enum": list(VERDICTS)}
    case_props["next_step"] = {"type": "string"}
    case_props["non_finite"] = {"type": "object", "additionalProperties": {"type": "string"}}
    header_props = {f.name: _schema_of(str(f.type)) for f in fields(RunHeader) if f.name in ("model", "editor")}
    header_props["thresholds"] = {"type": "object", "required": ["ppl_max"],
                                  "additionalProperties": {"type": "number"}}
    step_props = {f.name: _schema_of(str(f.type)) for f in fields(NotRunStep)}
    death_props = {f.name: _schema_of(str(f.type)) for f in fields(WorkerDeath)}
    death_props["not_run"] = {"type": "array", "items": {"type": "string"}}
    empty_props = {f.name: _schema_of(str(f.type)) for f in fields(EmptyShard)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "editguard JSON report",
        "description": "Generated from editguard.run.records (python -m editguard.run.records); do not edit.",
        "type": "object",
        "required": ["run", "cases"],
        "properties": {
            "schema": {"enum": list(READABLE_SCHEMAS)},
            "complete": {"type": "boolean"},
            "run": {"type": "object", "required": ["model", "editor", "thresholds"], "properties": header_props},
            "cases": {"type": "array", "items": {"type": "object", "required": list(REQUIRED_CASE_FIELDS),
                                                 "properties": case_props}},
            "steps_not_run": {"type": "array", "items": {"type": "object", "properties": step_props}},
            "cases_not_run": {"type": "array", "items": {"type": "string"}},
            "workers_died": {"type": "array", "items": {"type": "object", "required": ["worker", "exit"],
                                                        "properties": death_props}},
            "empty_shard": {"type": "object", "required": ["shard", "units"], "properties": empty_props},
        },
    }


if __name__ == "__main__":   # regenerate report.schema.json
    import json

    print(json.dumps(json_schema(), indent=1, ensure_ascii=False))
