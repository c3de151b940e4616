"""`editguard prepare` on tiny-llama at small sizes: every step made and stored by fingerprint, a
rerun (and the same weights under another path) doing no model work, an interrupted mining and
calibration resuming case-wise, the plugin using the prepared layer, list and bounds (and naming
the command where nothing is prepared), shards + merge equal to one unsharded run, and the
per-task commands of the Slurm and GitHub Actions examples."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import editguard.calibration
import editguard.mining
import editguard.screen
import editguard.tracing
from editguard.cli import main
from editguard.models import load_model
from editguard.prepare import PrepareOptions, find_prepared, prepare
from editguard.suite_files import prepared_dir

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--screen-cases", "12", "--screen-chunk", "6", "--mine-top", "2", "--mine-control", "1",
         "--calibrate-cases", "2", "--trace-facts", "3"]
STEP_NAMES = ("family", "layer", "statistics", "screen", "mine", "calibrate")


def _small(**kw) -> PrepareOptions:
    base = dict(screen_cases=12, screen_chunk=6, mine_top=2, mine_control=1, calibrate_cases=2, trace_facts=3)
    return PrepareOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """tiny-llama's weights saved twice, at two paths: models without a registration."""
    mue = load_model("tiny-llama", "cpu")
    dirs = []
    for name in ("first", "second"):
        path = tmp_path_factory.mktemp(name) / "model"
        mue.model.save_pretrained(path)
        mue.tokenizer.save_pretrained(path)
        dirs.append(path)
    return dirs


@pytest.fixture
def cache(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    monkeypatch.setenv("EDITGUARD_SUITES", str(tmp_path / "suites"))
    return tmp_path / "cache"


ORIGINALS = {(module.__name__, name): getattr(module, name) for module, name in [
    (editguard.tracing, "trace_fact"), (editguard.screen, "screen_cases"), (editguard.mining, "check"),
    (editguard.calibration, "check")]}


class Counter:
    """Counts the calls of a library function (and the case id each edit was given); with
    `fail_after`, the next call raises KeyboardInterrupt, as a killed run would stop."""

    def __init__(self, monkeypatch, module, name: str, fail_after: int | None = None):
        self.calls: list[str] = []
        original = ORIGINALS[(module.__name__, name)]

        def wrapped(*args, **kwargs):
            if fail_after is not None and len(self.calls) >= fail_after:
                raise KeyboardInterrupt("killed")
            case = args[2] if len(args) > 2 else None
            self.calls.append(getattr(case, "case_id", ""))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)


def _counters(monkeypatch) -> dict[str, Counter]:
    return {"trace": Counter(monkeypatch, editguard.tracing, "trace_fact"),
            "screen": Counter(monkeypatch, editguard.screen, "screen_cases"),
            "mine": Counter(monkeypatch, editguard.mining, "check"),
            "calibrate": Counter(monkeypatch, editguard.calibration, "check")}


def test_prepare_makes_every_step_then_a_rerun_and_the_same_weights_elsewhere_reuse_them(
        cache, model_dirs, monkeypatch, capsys):
    first, second = (str(p) for p in model_dirs)
    counters = _counters(monkeypatch)
    assert main(["prepare", "--model", first, *SMALL]) == 0
    out = capsys.readouterr().out
    assert {k: len(c.calls) for k, c in counters.items()} == {"trace": 3, "screen": 2, "mine": 3, "calibrate": 2}
    fingerprint = load_model(first, "cpu").fingerprint
    folder = prepared_dir(fingerprint)
    for step in ("layer", "statistics", "screen", "mine", "calibrate"):
        manifest = json.loads((folder / f"manifest-{step}.json").read_text())
        assert (manifest["step"], manifest["fingerprint"], manifest["model"]) == (step, fingerprint, first)
        assert manifest["seconds"] >= 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["made"])
        assert all((folder / f).is_file() for f in manifest["files"])
    layer = json.loads((folder / "manifest-layer.json").read_text())["summary"]["layer"]
    trace = json.loads((folder / "trace.json").read_text())
    assert trace["peak_layer"] == layer and len(trace["effect"]) == load_model(first, "cpu").n_layers
    screen = json.loads((folder / "screen.json").read_text())
    assert screen["layer"] == layer and screen["n_cases"] == 12
    assert [r["risk"] for r in screen["rows"]] == sorted((r["risk"] for r in screen["rows"]), reverse=True)
    mined = json.loads((folder / "hardcf-rome.json").read_text())
    assert mined["summary"]["mined"] == 3 and mined["run"]["hparams"]["layer"] == layer
    calibration = json.loads((folder / "calibration-rome.json").read_text())
    assert (calibration["fingerprint"], calibration["n_cases"]) == (fingerprint, 2)
    # The table: every step, its status and time; then where each file went.
    assert f"editguard prepare {first} (fingerprint {fingerprint}, edit layer {layer})" in out
    table = out[out.index("┏"):]
    for step, status in [("family", "detected"), ("layer", "made"), ("statistics", "not needed"),
                         ("screen", "made"), ("mine", "made"), ("calibrate", "made")]:
        assert re.search(rf"│ {step}\s+│ {status}\s+│", table), (step, status, table)
    assert str(folder / "calibration-rome.json") in out and "unedited ppl" in out

    # A rerun, and the same weights under another path: every step cached, no model work.
    for model in (first, second):
        counters = _counters(monkeypatch)
        assert main(["prepare", "--model", model, *SMALL]) == 0
        out = capsys.readouterr().out
        assert {k: len(c.calls) for k, c in counters.items()} == {"trace": 0, "screen": 0, "mine": 0, "calibrate": 0}
        for step in ("layer", "screen", "mine", "calibrate"):
            assert re.search(rf"│ {step}\s+│ cached\s+│", out), (model, step)
    assert load_model(second, "cpu").fingerprint == fingerprint
    # Other sizes make the steps they change again (and only those).
    counters = _counters(monkeypatch)
    assert main(["prepare", "--model", second, *SMALL, "--calibrate-cases", "3"]) == 0
    assert {k: len(c.calls) for k, c in counters.items()} == {"trace": 0, "screen": 0, "mine": 0, "calibrate": 3}


def test_an_interrupted_mining_and_calibration_resume_case_by_case(cache, monkeypatch):
    mue = load_model("tiny-llama", "cpu")
    options = _small(mine_top=3, mine_control=1, calibrate_cases=3)
    killed = Counter(monkeypatch, editguard.mining, "check", fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        prepare(mue, options, progress=False)
    first_two = killed.calls
    resumed = Counter(monkeypatch, editguard.mining, "check")
    killed_calibration = Counter(monkeypatch, editguard.calibration, "check", fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        prepare(mue, options, progress=False)
    assert len(resumed.calls) == 2 and not set(resumed.calls) & set(first_two)   # cases < k not edited again
    records = editguard.mining._read_progress(prepared_dir(mue.fingerprint) / "mine-rome.jsonl",
                                              json.loads((prepared_dir(mue.fingerprint) / "mine-rome.jsonl")
                                                         .read_text().splitlines()[0])["header"])
    assert set(records) == set(first_two) | set(resumed.calls)
    calibrated_first = killed_calibration.calls
    mining_again = Counter(monkeypatch, editguard.mining, "check")
    calibration_rest = Counter(monkeypatch, editguard.calibration, "check")
    _, results = prepare(mue, options, progress=False)
    assert not mining_again.calls
    assert len(calibration_rest.calls) == 2 and not set(calibration_rest.calls) & set(calibrated_first)
    assert {r.step: r.status for r in results} == {"family": "shipped", "layer": "shipped", "statistics": "not needed",
                                                   "screen": "cached", "mine": "cached", "calibrate": "made"}
    doc = json.loads((prepared_dir(mue.fingerprint) / "calibration-rome.json").read_text())
    assert [c["case_id"] for c in doc["cases"]] == [*calibrated_first, *calibration_rest.calls]


SUITE = '''
from editguard.suites import hardcf


def edit_cases(settings):
    return hardcf(settings.model, settings.data_dir, load=settings.load_model)


def test_edit(edit_case, edit_guard):
    edit_guard.check(edit_case)
'''


def test_the_plugin_uses_the_prepared_layer_list_and_bounds_or_names_the_command(
        pytester, cache, model_dirs, monkeypatch):
    model = str(model_dirs[0])
    pytester.makepyfile(test_suite=SUITE)
    args = ["-p", "no:cacheprovider", "--editguard-json=r.json", "--max-cases=1"]

    def run(*extra):
        result = pytester.runpytest_subprocess(*args, *extra)
        assert result.ret == 0, result.stdout.str()
        return result, json.loads((pytester.path / "r.json").read_text())["run"]

    fingerprint = load_model("tiny-llama", "cpu").fingerprint
    result, header = run("--model=tiny-llama")
    assert header["prepared"] == (f"nothing prepared for fingerprint {fingerprint}: "
                                  f"run `editguard prepare --model tiny-llama`")
    assert "run `editguard prepare --model tiny-llama`" in header["suite_source"]
    result.stdout.fnmatch_lines(["*CalibrationWarning:*or prepare everything the model needs at once: "
                                 "run `editguard prepare --model tiny-llama`*"])

    mue, results = prepare(load_model(model, "cpu"), _small(), progress=False)
    prepared = find_prepared(mue.fingerprint)
    result, header = run(f"--model={model}")
    assert header["hparams"]["layer"] == prepared.layer == mue.edit_layer
    assert header["prepared"].startswith(f"prepared for fingerprint {mue.fingerprint}: edit layer {prepared.layer} (")
    for name in ("trace.json", "hardcf-rome.json", "calibration-rome.json"):
        assert str(prepared.folder / name) in header["prepared"]
    assert header["suite_source"].startswith(f"prepared HardCF list {prepared.folder / 'hardcf-rome.json'}")
    bounds = json.loads((prepared.folder / "calibration-rome.json").read_text())["bounds"]
    assert {k: header["thresholds"][k] for k in bounds} == bounds
    assert header["calibration"].startswith(f"gates calibrated on 2 normal cases of {model} with rome")
    assert "CalibrationWarning" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"prepared: prepared for fingerprint {mue.fingerprint}*"])
    _, header = run(f"--model={model}", "--edit-layer=0")   # an explicit layer wins
    assert header["hparams"]["layer"] == 0


# --- sharding and the examples ----------------------------------------------------------------

TIMING = ("seconds", "timings", "peak_memory_mb")


def _results(folder: Path) -> dict:
    """What a prepare wrote that must not depend on sharding: the screen's rows, the mined records
    (timings aside), the mined list's cases and the calibration's bounds."""
    lines = (folder / "mine-rome.jsonl").read_text().splitlines()
    records = sorted((json.loads(line) for line in lines[1:]), key=lambda r: r["case_id"])
    return {"screen": json.loads((folder / "screen.json").read_text())["rows"],
            "mined": [{k: v for k, v in r.items() if k not in TIMING} for r in records],
            "hardcf": json.loads((folder / "hardcf-rome.json").read_text())["cases"],
            "bounds": json.loads((folder / "calibration-rome.json").read_text())["bounds"]}


def _marked(text: str, marker: str) -> str:
    """The command on the line after `# editguard: <marker>` in an example file."""
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip() == f"# editguard: {marker}")
    return lines[index + 1].strip().removeprefix("run:").strip()


def _shell(command: str, env: dict[str, str], cwd: Path) -> None:
    script = f'editguard() {{ "{sys.executable}" -m editguard.cli "$@"; }}\nset -eo pipefail\n{command}\n'
    done = subprocess.run(["bash", "-c", script], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"


SIZES = "--screen-cases 12 --screen-chunk 4 --mine-top 3 --mine-control 1 --calibrate-cases 2"


def test_two_shards_and_the_merge_equal_one_unsharded_run_as_the_examples_run_them(tmp_path, data_dir):
    env = {"EDITGUARD_DATA": str(data_dir), "PYTHONPATH": str(ROOT), "MODEL": "tiny-llama", "N": "2",
           "SIZES": SIZES, "EDITGUARD_SUITES": str(tmp_path / "suites")}
    unsharded = tmp_path / "unsharded"
    _shell(f"editguard prepare --model tiny-llama {SIZES}", {**env, "EDITGUARD_CACHE": str(unsharded)}, tmp_path)
    fingerprint = load_model("tiny-llama", "cpu").fingerprint
    expected = _results(unsharded / "prepared" / fingerprint)
    assert len(expected["screen"]) == 12 and len(expected["mined"]) == 4

    # Slurm: a shared cache; the array's per-task command twice (screen, then mining), then the merge.
    slurm = (ROOT / "examples" / "slurm-prepare.sh").read_text()
    task, merge = _marked(slurm, "per-task"), _marked(slurm, "merge")
    assert task == 'editguard prepare --model "$MODEL" --shard $((SLURM_ARRAY_TASK_ID+1))/$N $SIZES'
    shared = {**env, "EDITGUARD_CACHE": str(tmp_path / "shared")}
    for _phase in ("screen", "mine"):
        for index in ("0", "1"):
            _shell(task, {**shared, "SLURM_ARRAY_TASK_ID": index}, tmp_path)
    folder = tmp_path / "shared" / "prepared" / fingerprint
    assert sorted(p.name for p in (folder / "shards").iterdir()) == ["mine-rome-1-of-2.jsonl", "mine-rome-2-of-2.jsonl"]
    assert not (folder / "mine.json").exists()
    _shell(merge, shared, tmp_path)
    _shell('editguard prepare --model "$MODEL" $SIZES', shared, tmp_path)
    assert _results(folder) == expected

    # GitHub Actions: each job its own cache; the pieces travel as artifacts and `editguard merge` gathers them.
    workflow = (ROOT / "examples" / "github-actions-prepare.yml").read_text()
    yaml.safe_load(workflow)
    task, gather = _marked(workflow, "per-task"), _marked(workflow, "merge")
    assert "--shard ${{ matrix.shard }}/$N" in task and gather == "editguard merge pieces/*"

    for shard in (1, 2):
        _gha_job(tmp_path, env, f"screen-{shard}", task.replace("${{ matrix.shard }}", str(shard)), [], gather)
    for shard in (1, 2):
        _gha_job(tmp_path, env, f"mine-{shard}", task.replace("${{ matrix.shard }}", str(shard)),
                 ["screen-1", "screen-2"], gather)
    _gha_job(tmp_path, env, "finish", 'editguard prepare --model "$MODEL" $SIZES', ["mine-1", "mine-2"], gather)
    assert _results(tmp_path / "gha" / "finish" / "cache" / "prepared" / fingerprint) == expected


def _gha_job(tmp_path: Path, env: dict, name: str, command: str, artifacts: list[str], gather: str) -> None:
    """One job of the workflow: a fresh cache; the named jobs' artifacts (their prepared folders)
    downloaded into pieces/ and gathered with the workflow's merge command; then `command`."""
    job = tmp_path / "gha" / name
    (job / "pieces").mkdir(parents=True)
    for artifact in artifacts:
        shutil.copytree(tmp_path / "gha" / artifact / "cache" / "prepared", job / "pieces" / artifact)
    script = f"{gather}\n{command}" if artifacts else command
    _shell(script, {**env, "EDITGUARD_CACHE": str(job / "cache")}, job)
