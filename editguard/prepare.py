"""`editguard prepare`: everything a model needs before its suites, as one resumable pipeline.

Steps, in order: family (where the MLPs live) → edit layer (causal tracing, for a model without a
registered layer) → covariance statistics (when the editor uses them) → screen (collapse risk of
every case, from forward passes) → mine (full edits of the riskiest and of a random control) →
calibrate (the gate bounds from normal edits).

Everything is stored under the weights' fingerprint, $EDITGUARD_CACHE/prepared/<fingerprint>/
(editguard.suite_files.prepared_dir): the same weights under another name or path reuse it, other
weights never do. Each finished step writes a manifest (`manifest-<step>.json`: what, options, fingerprint,
when, wall time, files) atomically after its outputs, so a step is done exactly when its manifest
is there with the same options. Unfinished steps resume: the screen by chunks of cases
(screen-chunks/), the mining and the calibration case by case (JSONL logs, one line per finished
case); a killed run loses at most the chunk or the case in flight.

What the package ships for a registered model (its layer, its mined list, its calibration) is
reported as `shipped` and not made again unless `force`.

Sharded (`shard=(i, n)`): the screen's chunks and then the mining's candidates are dealt
round-robin (editguard.sharding); shard i computes its part only. The pieces land where the
unsharded steps look for them (a shared cache), or are gathered from other folders by
`merge_pieces` (`editguard merge DIR...`, `editguard prepare --merge DIR...`); the unsharded
run then finds every piece done and writes what it would have written alone.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from editguard.cache import safe_name, write_atomic
from editguard.prepared import (  # re-exported: the pipeline's results are read back through these
    PIECE_KIND,
    Folder,
    Prepared,
    _fold_mine_pieces,
    _jsonable,
    _read_json,
    _write_json,
    find_prepared,
    merge_pieces,
    prepare_command,
)
from editguard.progress import progress_bar
from editguard.sharding import shard_members
from editguard.suite_files import find_mined_suite, find_suite_file

__all__ = ["PIECE_KIND", "STEPS", "PrepareOptions", "Prepared", "StepResult", "find_prepared", "merge_pieces",
           "prepare", "prepare_command"]

STEPS = ("family", "layer", "statistics", "screen", "mine", "calibrate")


@dataclass(frozen=True)
class PrepareOptions:
    """What `prepare` makes and how big: the papers' scale by default (mine the 70 riskiest and 30
    controls, calibrate on 20 normal cases); small sizes serve CI."""
    editor: str = "rome"
    cases: str = "counterfact"            # the screen's case source (editguard.suites.load_case_source)
    screen_cases: int | None = None       # the first N cases of the source; None: all
    screen_chunk: int = 1000              # cases per resumable (and shardable) piece of the screen
    trace_facts: int = 20                 # known facts the causal trace averages over
    mine_top: int = 70
    mine_control: int = 30
    calibrate_cases: int = 20
    seed: int = 0
    force: bool = False
    shard: tuple[int, int] | None = None
    data_dir: Any = None
    download: bool = False


@dataclass
class StepResult:
    step: str
    status: str                    # made, cached, shipped, not needed, partial, waiting
    summary: str = ""
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    manifest: dict[str, Any] | None = None


# --- the pipeline ---------------------------------------------------------------------------

def prepare(mue, options: PrepareOptions, *, on_step: Callable[[StepResult], None] | None = None,
            progress: bool = True) -> tuple[Any, list[StepResult]]:
    """Run the steps that are not done for `mue`'s weights (all with `options.force`): the model
    at its prepared edit layer and one StepResult per step. Sharded (`options.shard`), the screen
    and the mining do their part only and the later steps wait for the merge."""
    from editguard.models.registry import MODELS

    folder = Folder(mue.fingerprint)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.remember_name(mue.name)
    spec = MODELS.get(mue.name)
    results: list[StepResult] = []
    context: dict[str, Any] = {"mue": mue, "spec": spec, "folder": folder, "options": options,
                               "progress": progress}

    def report(result: StepResult) -> None:
        results.append(result)
        if on_step is not None:
            on_step(result)

    for step in STEPS:
        clock = time.perf_counter()
        result = STEP_FUNCTIONS[step](context)
        if result.status == "made":
            result.seconds = time.perf_counter() - clock
        report(result)
        if result.status in ("waiting", "partial"):
            for later in STEPS[STEPS.index(step) + 1:]:
                report(StepResult(later, "waiting", f"after the {step} step is complete"))
            break
    return context["mue"], results


def _finish(context, step: str, options: dict, clock: float, files: list[Path], summary: dict,
            text: str) -> StepResult:
    folder = context["folder"]
    seconds = time.perf_counter() - clock
    manifest = folder.write_manifest(step, context["mue"].name, options, seconds, files, summary)
    return StepResult(step, "made", text, seconds, files + [folder.path / f"manifest-{step}.json"], manifest)


def _cached(step: str, manifest: dict, folder: Folder, text: str) -> StepResult:
    files = [folder.path / f for f in manifest["files"]] + [folder.path / f"manifest-{step}.json"]
    return StepResult(step, "cached", text, manifest["seconds"], files, manifest)


def step_family(context) -> StepResult:
    mue = context["mue"]
    f = mue.family
    return StepResult("family", "shipped" if context["spec"] else "detected",
                      f"{f.name} (model_type {mue.model.config.model_type}): edits {f.rewrite}")


def trace_edit_layer(mue, facts, seed: int = 0, progress: bool = True) -> dict:
    """The causal trace over `facts`; its peak is the edit layer (editguard.tracing)."""
    from editguard.tracing import trace_layers

    with progress_bar(f"trace {len(facts)} facts over {mue.n_layers} layers", len(facts), enabled=progress) as bar:
        return trace_layers(mue, facts, seed=seed, on_fact=lambda _: bar.advance(1))


def step_layer(context) -> StepResult:
    mue, spec, folder, o = context["mue"], context["spec"], context["folder"], context["options"]
    if spec is not None and not o.force:
        return StepResult("layer", "shipped", f"registered layer {spec.edit_layer}")
    step_options = {"facts": o.trace_facts, "pool": 10 * o.trace_facts, "seed": o.seed}
    done = None if o.force else folder.finished("layer", step_options)
    if done is not None:
        layer = done["summary"]["layer"]
    else:
        from editguard.suites import counterfact_normal
        from editguard.tracing import known_facts

        clock = time.perf_counter()
        pool = counterfact_normal(o.data_dir, download=o.download)[: 10 * o.trace_facts]
        facts = known_facts(mue, pool, o.trace_facts)
        doc = trace_edit_layer(mue, facts, o.seed, context["progress"])
        _write_json(folder.path / "trace.json", doc)
        layer = doc["peak_layer"]
        result = _finish(context, "layer", step_options, clock, [folder.path / "trace.json"],
                         {"layer": layer, "effect": doc["effect"]},
                         f"layer {layer} (causal trace peak over {len(facts)} facts)")
    context["mue"] = replace(mue, edit_layer=layer) if layer != mue.edit_layer else mue
    return result if done is None else _cached("layer", done, folder, f"layer {layer} (causal trace)")


def _editor(context):
    if "editor" not in context:
        from editguard.editors.registry import get_editor

        context["editor"] = get_editor(context["options"].editor, data_dir=context["options"].data_dir)
    return context["editor"]


def step_statistics(context) -> StepResult:
    from editguard.editors.api import editor_statistics, prepare_editor

    mue, folder, o = context["mue"], context["folder"], context["options"]
    step_options = {"editor": o.editor, "layer": mue.edit_layer}
    done = None if o.force else folder.finished("statistics", step_options)
    if done is not None:
        result = _cached("statistics", done, folder, done["summary"]["statistics"])
    else:
        clock = time.perf_counter()
        editor = _editor(context)
        prepare_editor(editor, mue)      # computes and caches C (by fingerprint and layer) where the editor uses it
        text = editor_statistics(editor, mue)
        result = _finish(context, "statistics", step_options, clock, [], {"statistics": text}, text)
    if "uses no second moment" in result.summary or result.summary.startswith("none declared"):
        result.status = "not needed"
    return result


def _screen_cases(context):
    if "cases" not in context:
        from editguard.suites import load_case_source

        o = context["options"]
        cases = load_case_source(o.cases, o.data_dir, download=o.download)
        context["cases"] = list(cases)[: o.screen_cases] if o.screen_cases else list(cases)
    return context["cases"]


def _screen_options(context) -> dict:
    o, mue = context["options"], context["mue"]
    return {"cases": o.cases, "screen_cases": o.screen_cases, "chunk": o.screen_chunk, "layer": mue.edit_layer}


def _chunk_path(folder: Folder, index: int) -> Path:
    return folder.path / "screen-chunks" / f"chunk-{index:05d}.json"


def step_screen(context) -> StepResult:
    from editguard.editors.rome import RomeHparams
    from editguard.screen import DEFAULT_SCREEN_TEMPLATES, screen_cases, screen_setup, write_screen

    mue, folder, o = context["mue"], context["folder"], context["options"]
    step_options = _screen_options(context)
    done = None if o.force else folder.finished("screen", step_options)
    if done is not None:
        context["screen"] = _read_json(folder.path / "screen.json")
        return _cached("screen", done, folder, done["summary"]["text"])
    clock = time.perf_counter()
    cases = _screen_cases(context)
    chunks = [cases[start : start + o.screen_chunk] for start in range(0, len(cases), o.screen_chunk)]
    mine_part = [True] * len(chunks) if o.shard is None else shard_members(range(len(chunks)), *o.shard)
    setup = None
    identity = {"kind": PIECE_KIND, "step": "screen", "fingerprint": mue.fingerprint, "options": step_options}
    rows: list[dict] = []
    missing = []
    for index, chunk in enumerate(chunks):
        path = _chunk_path(folder, index)
        piece = _read_json(path) if path.is_file() and not o.force else None
        if piece is not None and all(piece.get(k) == v for k, v in _jsonable(identity).items()):
            rows.extend(piece["rows"])
            continue
        if not mine_part[index]:
            missing.append(index)
            continue
        if setup is None:
            hparams = RomeHparams.for_family(mue.family.name, {"layer": mue.edit_layer})
            setup = screen_setup(mue, hparams, DEFAULT_SCREEN_TEMPLATES, o.data_dir)
        found = screen_cases(mue, chunk, setup["layer"], setup["templates"], setup["inverse"],
                             progress=context["progress"])
        piece = {**identity, "chunk": index, "of": len(chunks), "model": mue.name,
                 "templates": len(setup["templates"]), "templates_total": setup["templates_total"],
                 "mom2_adjustment": setup["mom2_adjustment"], "rows": [r.to_json() for r in found]}
        _write_json(path, piece)
        rows.extend(piece["rows"])
    if missing:
        return StepResult("screen", "partial", f"{len(chunks) - len(missing)} of {len(chunks)} chunks screened "
                                               f"(shard {o.shard[0]}/{o.shard[1]}); the others belong to other shards",
                          time.perf_counter() - clock, [_chunk_path(folder, i) for i in range(len(chunks))
                                                        if i not in missing])
    order = {c.case_id: i for i, c in enumerate(cases)}
    rows.sort(key=lambda r: (-r["risk"], order[r["case_id"]]))   # riskiest first; ties in case order
    first = _read_json(_chunk_path(folder, 0))
    doc = {"model": mue.name, "fingerprint": mue.fingerprint, "layer": mue.edit_layer,
           "templates": first["templates"], "templates_total": first["templates_total"],
           "mom2_adjustment": first["mom2_adjustment"], "n_cases": len(rows), "rows": rows}
    json_path, csv_path = write_screen(doc, folder.path / "screen.json")
    context["screen"] = doc
    first_subject = sum(r["subject_first"] for r in rows[:100])
    text = (f"{len(rows)} cases at layer {mue.edit_layer}; riskiest denominator ratio "
            f"{rows[0]['denominator_ratio']:.3g}; {first_subject} of the top {min(100, len(rows))} subject-first")
    return _finish(context, "screen", step_options, clock, [json_path, csv_path], {"text": text, "n": len(rows)}, text)


def _baseline(context):
    if "baseline" not in context:
        from editguard.data import load_ppl_corpus
        from editguard.guard import measure_baseline
        from editguard.models.registry import ppl_bos_for
        from editguard.options import SINGLE_EDIT_PPL_CORPUS

        o = context["options"]
        sentences = load_ppl_corpus(SINGLE_EDIT_PPL_CORPUS, o.data_dir, download=o.download)
        context["baseline"] = measure_baseline(context["mue"], sentences, SINGLE_EDIT_PPL_CORPUS, shared=True,
                                               bos=ppl_bos_for(context["mue"].name))
    return context["baseline"]


def _shipped_mined(context) -> Path | None:
    spec, o = context["spec"], context["options"]
    if spec is None or o.force or o.editor != "rome":
        return None
    return find_mined_suite(context["mue"].name)


def _mine_options(context) -> dict:
    o = context["options"]
    return {"editor": o.editor, "top": o.mine_top, "control": o.mine_control, "seed": o.seed,
            "screen": _screen_options(context)}


def step_mine(context) -> StepResult:
    from editguard.mining import hardest_records, mine, pick_candidates, write_mined_suite
    from editguard.runinfo import edit_run_info

    mue, folder, o = context["mue"], context["folder"], context["options"]
    shipped = _shipped_mined(context)
    if shipped is not None:
        return StepResult("mine", "shipped", f"mined list {shipped}", files=[shipped])
    step_options = _mine_options(context)
    done = None if o.force else folder.finished("mine", step_options)
    if done is not None:
        return _cached("mine", done, folder, done["summary"]["text"])
    clock = time.perf_counter()
    cases = {c.case_id: c for c in _screen_cases(context)}
    screen = context["screen"]
    candidates = pick_candidates(screen["rows"], cases, o.mine_top, o.mine_control, seed=o.seed)
    editor, baseline = _editor(context), _baseline(context)
    from editguard.gates import Thresholds

    thresholds = Thresholds()
    log = folder.path / f"mine-{safe_name(o.editor)}.jsonl"
    if o.force and log.exists() and "forced-mine" not in context:
        log.unlink()
    context["forced-mine"] = True
    _fold_mine_pieces(folder, log, safe_name(o.editor))
    mine_log = log
    if o.shard is not None:
        keep = shard_members([c.case_id for c, _ in candidates], *o.shard)
        candidates = [c for c, k in zip(candidates, keep) if k]
        mine_log = folder.path / "shards" / f"mine-{safe_name(o.editor)}-{o.shard[0]}-of-{o.shard[1]}.jsonl"
        if log.is_file() and not mine_log.is_file():   # cases the main log holds are not mined again
            mine_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, mine_log)
    risk = {row["case_id"]: row for row in screen["rows"]}
    with progress_bar(f"mine {len(candidates)} cases with {editor.name}", len(candidates),
                      enabled=context["progress"]) as bar:
        records = mine(mue, editor, candidates, baseline, thresholds, mine_log, risk,
                       on_case=lambda _: bar.advance(1))
    if o.shard is not None:
        return StepResult("mine", "partial", f"{len(records)} cases mined (shard {o.shard[0]}/{o.shard[1]}); "
                                             f"merge the shards, then run prepare once more",
                          time.perf_counter() - clock, [mine_log])
    run = edit_run_info(mue, editor, baseline, thresholds, seed=o.seed, suite=o.cases).to_json()
    run.pop("versions")
    run["screen"] = {k: v for k, v in screen.items() if k != "rows"}
    path = folder.path / f"hardcf-{safe_name(o.editor)}.json"
    write_mined_suite(path, records, cases, _jsonable(run))
    kept, _ = hardest_records(records, _jsonable(run))
    collapsed = sum(r["degradation"] == "collapsed" for r in records)
    text = (f"unedited ppl {baseline.ppl.ppl:.2f}; {collapsed} of {len(records)} edits collapse the model "
            f"(ppl > {thresholds.ppl_max:g}); the list keeps {len(kept)}")
    context["mined"] = _read_json(path)
    return _finish(context, "mine", step_options, clock, [path, log],
                   {"text": text, "collapsed": collapsed, "mined": len(records), "kept": len(kept),
                    "baseline_ppl": baseline.ppl.ppl}, text)


def step_calibrate(context) -> StepResult:
    from editguard.calibration import calibrate, find_calibration, shipped_name, write_copy
    from editguard.options import DEFAULT_CALIBRATION_SEED
    from editguard.suites import normal_sample

    mue, folder, o, spec = context["mue"], context["folder"], context["options"], context["spec"]
    if spec is not None and not o.force:
        shipped = find_suite_file("calibration", shipped_name(mue.name, o.editor))
        if shipped is not None and find_calibration(mue.name, mue.fingerprint, o.editor) is not None:
            return StepResult("calibrate", "shipped", f"calibration {shipped}", files=[shipped])
    step_options = {"editor": o.editor, "cases": o.calibrate_cases, "seed": DEFAULT_CALIBRATION_SEED,
                    "layer": mue.edit_layer, "mine": _mine_options(context)}
    done = None if o.force else folder.finished("calibrate", step_options)
    if done is not None:
        return _cached("calibrate", done, folder, done["summary"]["text"])
    clock = time.perf_counter()
    editor, baseline = _editor(context), _baseline(context)
    cases = normal_sample(o.calibrate_cases, o.data_dir, download=o.download, seed=DEFAULT_CALIBRATION_SEED)
    mined = context.get("mined")
    if mined is None:
        path = find_prepared(mue.fingerprint)
        path = path.hardcf_path(o.editor) if path else _shipped_mined(context)
        mined = _read_json(path) if path else None
    log = folder.path / f"calibrate-{safe_name(o.editor)}.jsonl"
    header = json.dumps({"header": _jsonable(step_options)})
    finished: dict[str, dict] = {}
    if log.is_file() and not o.force:
        lines = log.read_text(encoding="utf-8").splitlines()
        if lines and lines[0] == header:
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except ValueError:
                    break   # cut off when the run was killed: that case is edited again
                finished[row["case_id"]] = row
    write_atomic(log, ("\n".join([header, *(json.dumps(r) for r in finished.values())]) + "\n").encode())
    with open(log, "a", encoding="utf-8") as f, progress_bar(f"calibrate on {len(cases)} normal cases",
                                                              len(cases), enabled=context["progress"]) as bar:
        bar.advance(sum(c.case_id in finished for c in cases))

        def record(row):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            bar.advance(1)

        calibration = calibrate(mue, editor, cases, baseline, mined=mined, seed=DEFAULT_CALIBRATION_SEED,
                                cases_source=cases.description, progress=record, done=finished)
    path = folder.path / f"calibration-{safe_name(o.editor)}.json"
    write_copy(calibration, path)
    bounds = calibration.bounds
    text = ", ".join(f"{k}={v:.4g}" for k, v in bounds.items())
    return _finish(context, "calibrate", step_options, clock, [path, log],
                   {"text": text, "bounds": bounds, "n_cases": len(cases)}, text)


STEP_FUNCTIONS: dict[str, Callable[[dict], StepResult]] = {
    "family": step_family, "layer": step_layer, "statistics": step_statistics, "screen": step_screen,
    "mine": step_mine, "calibrate": step_calibrate,
}


# --- the table ----------------------------------------------------------------------------

def render_results(mue, results: list[StepResult], console=None) -> None:
    """The final table (step, status, result, time) and where each file went."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"editguard prepare {mue.name} (fingerprint {mue.fingerprint}, edit layer {mue.edit_layer})",
                  title_justify="left")
    for column in ("step", "status", "result", "time"):
        table.add_column(column, justify="right" if column == "time" else "left")
    for r in results:
        table.add_row(r.step, r.status, r.summary, f"{r.seconds:.1f} s" if r.seconds else "–")
    console.print(table)
    files = [f for r in results for f in r.files]
    if files:
        console.print("files:")
        for f in dict.fromkeys(files):
            console.print(f"  {f}")
