"""The EasyEdit adapter (`--editor=easyedit:ALG`), driven through a stand-in `easyeditor` package of
EasyEdit's interface (tests/fixtures/fake_easyedit: ALG_DICT, a HyperParams class with
from_hparams, apply_*_to_model returning the model and its original weights) on tiny-llama."""

import json
import sys
from pathlib import Path

import pytest
import torch

from editguard import check, get_editor, measure_baseline
from editguard.cases import EditCase
from editguard.data import load_ppl_corpus
from editguard.editors.easyedit import PATH_ENV, EasyEditError, EasyEditUnavailable, easyedit_request
from editguard.restore import StateChanged

FAKE = Path(__file__).parent / "fixtures" / "fake_easyedit"
DOWN_PROJ = "model.layers.{}.mlp.down_proj"
PARIS = EditCase("t1", "{} is the capital of", "Paris", "Rome", "France", paraphrases=("Paris, capital of",))


def write_hparams(folder: Path, alg="FAKE", scale=0.05, layers=(1,), template=DOWN_PROJ, name=None) -> Path:
    path = folder / (name or f"{alg.lower()}.yaml")
    lines = [f"alg_name: {alg}" if alg else "", f"layers: {list(layers)}", f'rewrite_module_tmp: "{template}"',
             f"scale: {scale}", "device: 0"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fake_easyedit(monkeypatch):
    """The stand-in importable through EDITGUARD_EASYEDIT_PATH (sys.path and sys.modules put back after)."""
    monkeypatch.setenv(PATH_ENV, str(FAKE))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [n for n in sys.modules if n.split(".")[0] == "easyeditor"]:
        monkeypatch.delitem(sys.modules, name)
    return FAKE


@pytest.fixture
def no_easyedit(monkeypatch):
    """No EasyEdit anywhere: no EDITGUARD_EASYEDIT_PATH, none imported, none on sys.path."""
    monkeypatch.delenv(PATH_ENV, raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p).resolve() != FAKE.resolve()])
    for name in [n for n in sys.modules if n.split(".")[0] == "easyeditor"]:
        monkeypatch.delitem(sys.modules, name)


def test_a_case_becomes_easyedits_request():
    request = easyedit_request(PARIS)
    assert request["prompt"] == "Paris is the capital of" and request["subject"] == "Paris"
    assert request["target_new"] == "Rome" and request["ground_truth"] == "France"
    assert request["rephrase_prompt"] == "Paris, capital of"
    assert easyedit_request(EditCase("t", "{} plays", "Messi", "tennis"))["ground_truth"] == "<|endoftext|>"


def test_declares_the_files_weights_and_reports_what_easyedit_returned(fake_easyedit, tmp_path, tiny_llama):
    editor = get_editor("easyedit:FAKE", {"hparams_file": str(write_hparams(tmp_path, layers=(1, 2)))})
    assert editor.name == "easyedit:FAKE" and editor.batch_edits is False
    declared = [DOWN_PROJ.format(1) + ".weight", DOWN_PROJ.format(2) + ".weight"]
    assert editor.touched_parameters(tiny_llama, [PARIS]) == declared
    hp = editor.hparams(tiny_llama)
    assert hp["scale"] == 0.05 and hp["easyedit_alg"] == "FAKE" and hp["device"] == "cpu"
    assert hp["easyedit_device_in_file"] == 0
    before = {n: tiny_llama.parameter(n).detach().clone() for n in declared}
    flags = {n: p.requires_grad for n, p in tiny_llama.model.named_parameters()}
    try:
        report = editor.apply(tiny_llama, [PARIS])
        assert report.touched == declared
        assert report.diagnostics["easyedit_returned_originals"] == declared
        for n in declared:
            delta = tiny_llama.parameter(n).detach() - before[n]
            assert float(delta.norm() / before[n].norm()) == pytest.approx(0.05, rel=1e-4)
            assert torch.equal(report.vectors[f"delta:{n}"], delta)
        # EasyEdit turns requires_grad off on every weight; the adapter puts the flags back.
        assert {n: p.requires_grad for n, p in tiny_llama.model.named_parameters()} == flags
        assert editor.easyedit_hparams.device == "cpu"
    finally:
        with torch.no_grad():
            for n, w in before.items():
                tiny_llama.parameter(n).copy_(w)


@pytest.fixture(scope="module")
def tiny_baseline(tiny_llama, data_dir):
    return measure_baseline(tiny_llama, load_ppl_corpus("me-ppl-50", data_dir), "me-ppl-50")


def test_guarded_verdicts_follow_the_edit(fake_easyedit, tmp_path, tiny_llama, tiny_baseline):
    from editguard.gates import Thresholds

    small = get_editor("easyedit:FAKE", {"hparams_file": str(write_hparams(tmp_path, scale=0.05))})
    result = check(tiny_llama, small, PARIS, tiny_baseline, Thresholds(update_norm_rel_max=0.5))
    assert result.verdict.passed, result.verdict
    assert result.diagnostics["update_norm_rel"] == pytest.approx(0.05, rel=1e-3)
    big = get_editor("easyedit:FAKE", {"hparams_file": str(write_hparams(tmp_path, scale=3.0, name="big.yaml"))})
    result = check(tiny_llama, big, PARIS, tiny_baseline, Thresholds(update_norm_rel_max=0.5))
    assert [g.name for g in result.verdict.failed] == ["update_norm"]
    assert not tiny_baseline.pristine.changes(tiny_llama.model)


def test_a_weight_the_file_does_not_name_is_caught_and_put_back(fake_easyedit, tmp_path, tiny_llama, tiny_baseline):
    editor = get_editor("easyedit:SPILL", {"hparams_file": str(write_hparams(tmp_path, alg="SPILL"))})
    norm = tiny_llama.parameter("model.norm.weight").detach().clone()
    with pytest.raises(StateChanged, match="model.norm.weight"):
        check(tiny_llama, editor, PARIS, tiny_baseline)
    assert torch.equal(tiny_llama.parameter("model.norm.weight"), norm)


def test_a_method_that_returns_another_model_is_refused(fake_easyedit, tmp_path, tiny_llama):
    editor = get_editor("easyedit:WRAP", {"hparams_file": str(write_hparams(tmp_path, alg="WRAP"))})
    with pytest.raises(EasyEditError, match="another model object"):
        editor.apply(tiny_llama, [PARIS])


def test_unknown_alg_names_what_easyedit_registers(fake_easyedit, tmp_path):
    path = write_hparams(tmp_path, alg="NOPE")
    with pytest.raises(EasyEditUnavailable, match="registers no alg_name 'NOPE'; its ALG_DICT has FAKE, SPILL, WRAP"):
        get_editor("easyedit:NOPE", {"hparams_file": str(path)})


def test_a_file_of_another_alg_or_without_one_is_refused(fake_easyedit, tmp_path):
    path = write_hparams(tmp_path, alg="FAKE")
    with pytest.raises(EasyEditError, match=r"alg_name 'FAKE', but --editor=easyedit:SPILL; use "
                                            r"--editor=easyedit:FAKE"):
        get_editor("easyedit:SPILL", {"hparams_file": str(path)})
    with pytest.raises(EasyEditError, match="no alg_name"):
        get_editor("easyedit:FAKE", {"hparams_file": str(write_hparams(tmp_path, alg="", name="none.yaml"))})
    with pytest.raises(EasyEditError, match="needs --hparams FILE"):
        get_editor("easyedit:FAKE")
    with pytest.raises(EasyEditError, match=r"no editguard hyperparameters \['v_lr'\]"):
        get_editor("easyedit:FAKE", {"hparams_file": str(path), "v_lr": 0.1})


def test_easyedits_own_reader_refusing_the_file_is_named(fake_easyedit, tmp_path):
    path = tmp_path / "extra.yaml"
    path.write_text(write_hparams(tmp_path).read_text() + "not_a_field: 1\n")
    with pytest.raises(EasyEditError, match=r"FakeHyperParams.from_hparams refused it: TypeError: .*not_a_field"):
        get_editor("easyedit:FAKE", {"hparams_file": str(path)})


def test_module_names_of_another_model_fail_before_any_edit(fake_easyedit, tmp_path, tiny_llama):
    editor = get_editor("easyedit:FAKE", {"hparams_file": str(write_hparams(tmp_path, template="transformer.h.{}.mlp"
                                                                                      ".c_proj"))})
    with pytest.raises(EasyEditError, match=r"names transformer.h.1.mlp.c_proj.weight, which tiny-llama does not "
                                            r"have \(its weights are named like model.layers.0"):
        editor.hparams(tiny_llama)


def test_stats_dir_goes_to_easyedits_stats_dir(fake_easyedit, tmp_path):
    editor = get_editor("easyedit:FAKE", {"hparams_file": str(write_hparams(tmp_path)),
                                          "mom2_stats_dir": str(tmp_path)})
    assert editor.easyedit_hparams.stats_dir == str(tmp_path)


def test_missing_easyedit_says_how_to_install_it(no_easyedit, tmp_path, monkeypatch):
    path = str(write_hparams(tmp_path))
    with pytest.raises(EasyEditUnavailable, match=rf"EasyEdit is not importable .*No module named 'easyeditor'.*"
                                                  rf"set {PATH_ENV} to an EasyEdit checkout"):
        get_editor("easyedit:FAKE", {"hparams_file": path})
    monkeypatch.setenv(PATH_ENV, str(tmp_path))
    with pytest.raises(EasyEditUnavailable, match=rf"{PATH_ENV}={tmp_path}: no easyeditor/__init__.py in it"):
        get_editor("easyedit:FAKE", {"hparams_file": path})
    # EasyEdit found, one of its own dependencies missing: named as such.
    broken = tmp_path / "broken" / "easyeditor" / "util"
    broken.mkdir(parents=True)
    (broken.parent / "__init__.py").write_text("")
    (broken / "__init__.py").write_text("")
    (broken / "alg_dict.py").write_text("import peft_not_installed_here\n")
    monkeypatch.setenv(PATH_ENV, str(tmp_path / "broken"))
    with pytest.raises(EasyEditUnavailable, match="was found .* but importing it failed: No module named "
                                                  "'peft_not_installed_here'; install EasyEdit's requirements"):
        get_editor("easyedit:FAKE", {"hparams_file": path})


# --- through the plugin --------------------------------------------------------------------------

SUITE = '''
from editguard.cases import EditCase

def edit_cases(settings):
    from editguard.suites import CaseList
    return CaseList([EditCase("t1", "{} is the capital of", "Paris", "Rome", "France"),
                     EditCase("t2", "{} is produced by", "Windows", "Apple", "Microsoft")], "two cases")

def test_edit(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
'''


@pytest.fixture
def suite(pytester, data_dir, monkeypatch):
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    monkeypatch.delenv(PATH_ENV, raising=False)
    pytester.makepyfile(test_suite=SUITE)
    write_hparams(pytester.path, scale=0.05, name="small.yaml")
    write_hparams(pytester.path, scale=3.0, name="big.yaml")
    return pytester


def run_plugin(suite, *args):
    return suite.runpytest_subprocess("--model=tiny-llama", "--editor=easyedit:FAKE", "--ppl-corpus=me-ppl-50",
                                      "--update-norm-max=0.5", "--editguard-json=out/r.json", "-p", "no:cacheprovider",
                                      *args)


def test_plugin_runs_easyedits_method_and_records_what_it_touched(suite, monkeypatch):
    monkeypatch.setenv(PATH_ENV, str(FAKE))
    result = run_plugin(suite, "--hparams=small.yaml")
    result.assert_outcomes(passed=2)
    doc = json.loads((suite.path / "out" / "r.json").read_text())
    assert doc["run"]["editor"] == "easyedit:FAKE" and doc["run"]["hparams"]["scale"] == 0.05
    for case in doc["cases"]:
        assert case["verdict"] == "passed" and case["update_norm_rel"] == pytest.approx(0.05, rel=1e-3)
        assert case["diagnostics"]["easyedit_returned_originals"] == ["model.layers.1.mlp.down_proj.weight"]
    result = run_plugin(suite, "--hparams=big.yaml")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*t1 ('Paris is the capital of' -> 'Rome'): *‖ΔW‖/‖W‖ * > 0.5*"])


def test_plugin_errors_name_the_problem(suite, monkeypatch):
    result = run_plugin(suite, "--hparams=small.yaml")   # no EasyEdit anywhere
    assert result.ret != 0 and "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"*EasyEdit is not importable*set {PATH_ENV} to an EasyEdit checkout*"])
    monkeypatch.setenv(PATH_ENV, str(FAKE))
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=easyedit:SPILL", "--hparams=small.yaml",
                                        "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*small.yaml: alg_name 'FAKE', but --editor=easyedit:SPILL; "
                                 "use --editor=easyedit:FAKE*"])
