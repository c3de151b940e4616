"""Interop with EasyEdit and ROME/MEMIT: EasyEdit's hyperparameter files through --hparams, and the
covariance statistics users downloaded for ROME/MEMIT through --editguard-stats-dir."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from editguard import get_editor
from editguard.editors.covariance import StatsFileError, find_stats_file, layer_second_moment, read_stats_file
from editguard.editors.hparams import HparamsFileError, load_hparams_file, translate_easyedit
from editguard.editors.memit import MemitHparams
from editguard.editors.rome import RomeHparams
from tests.tiny_edits import FAST_V, N_TOKENS, PARIS

FIXTURES = Path(__file__).parent / "fixtures"
ROME_FILE = FIXTURES / "easyedit-rome-llama-7b.yaml"
MEMIT_FILE = FIXTURES / "easyedit-memit-llama-7b.yaml"


def test_easyedit_rome_file_maps_onto_editguards_names():
    t = translate_easyedit(load_hparams_file(ROME_FILE), ROME_FILE)
    assert t.algorithm == "ROME" and t.editors == ("rome", "c-rome", "r-rome")
    assert t.overrides == {
        "layer": 5, "v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 1e-3, "clamp_norm_factor": 4,
        "kl_factor": 0.0625, "mom2_adjustment": False, "context_template_length_params": [[5, 10], [10, 10]],
        "mom2_n_samples": 100000, "mom2_dataset": "wikipedia", "mom2_dtype": "float32"}
    assert set(t.ignored) == {"alg_name", "model_name", "stats_dir", "device", "fact_token", "v_loss_layer",
                              "module templates"}
    assert re.search(r"the [\w/]*\bllama\b[\w/]* family", t.ignored["module templates"])
    assert any("mom2_adjustment false: mom2_dataset, mom2_n_samples, mom2_dtype, stats_dir unused" in n
               for n in t.notes) and any("mom2_dataset 'wikipedia'" in n for n in t.notes)
    hp = RomeHparams.for_family("llama", t.overrides, n_layers=32)
    assert (hp.layer, hp.v_lr, hp.mom2_n_samples, hp.mom2_dataset, hp.context_template_length_params) == \
        (5, 0.5, 100000, "wikipedia", ((5, 10), (10, 10)))


def test_easyedit_memit_file_maps_layers_and_lambda():
    t = translate_easyedit(load_hparams_file(MEMIT_FILE), MEMIT_FILE)
    assert t.editors == ("memit",)
    assert t.overrides["layers"] == [4, 5, 6, 7, 8] and t.overrides["mom2_update_weight"] == 15000
    assert "mom2_adjustment" in t.ignored and "layer_selection" in t.ignored
    hp = MemitHparams.for_family("llama", t.overrides, n_layers=32)
    assert hp.layers == (4, 5, 6, 7, 8) and hp.mom2_update_weight == 15000.0 and hp.clamp_norm_factor == 4.0


@pytest.mark.parametrize("change, message", [
    ({"alg_name": "KN"}, r"alg_name 'KN': editguard reads EasyEdit files of ROME, R-ROME, MEMIT, AlphaEdit, FT"),
    ({"layers": [4, 5]}, r"ROME edits one layer"),
    ({"mom2_dataset": "c4"}, r"mom2_dataset 'c4': EasyEdit's layer_stats knows wikipedia, wikitext, wikitext2"),
    ({"fact_token": "last"}, r"fact_token 'last' cannot be honoured"),
    ({"mom2_dtype": "bfloat8"}, r"mom2_dtype 'bfloat8': expected one of float16, float32, float64"),
    ({"mom2_n_samples": None}, r"mom2_n_samples None: expected a positive number of texts"),
    ({"rewrite_module_tmp": "model.layers.{}.mlp.up_proj"},
     r"rewrite_module_tmp='model.layers.{}.mlp.up_proj' names no module of a family editguard knows"),
    ({"v_lrr": 0.1}, r"EasyEdit ROME keys editguard does not know: \['v_lrr'\]"),
])
def test_easyedit_values_editguard_cannot_honour_are_errors(change, message):
    data = {**load_hparams_file(ROME_FILE), **change}
    with pytest.raises(HparamsFileError, match=message):
        translate_easyedit(data, ROME_FILE)


SUITE = '''
from editguard.cases import EditCase

def edit_cases(settings):
    return [EditCase("t1", "{} is the capital of", "Paris", "Rome", "France")]

def test_edit(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
'''


def test_easyedit_file_through_hparams_warns_what_it_ignores_and_checks_the_editor(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "--editor=rome", f"--hparams={ROME_FILE}",
                                           "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*PytestConfigWarning: EasyEdit ROME file*ignored alg_name*device (--device)*"])
    wrong = pytester.runpytest_subprocess("--collect-only", "--editor=memit", f"--hparams={ROME_FILE}",
                                          "-p", "no:cacheprovider")
    assert wrong.ret == pytest.ExitCode.USAGE_ERROR
    wrong.stderr.fnmatch_lines(["*an EasyEdit ROME file (alg_name), but --editor=memit; use it with --editor=rome "
                                "or c-rome or r-rome*"])


def write_stats(path: Path, total: np.ndarray, count, **extra) -> Path:
    """A file as ROME/MEMIT's layer_stats saves one (numpy.savez of CombinedStat's state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{"constructor": "util.runningstats.CombinedStat()",
                      "mom2.constructor": "util.runningstats.SecondMoment()", "mom2.count": count,
                      "mom2.mom2": total, **extra})
    return path


@pytest.mark.usefixtures("private_cache", "one_thread")
def test_downloaded_statistics_give_the_same_rome_update_as_editguards_own(tmp_path, tiny_llama, data_dir):
    layer = tiny_llama.edit_layer
    own = layer_second_moment(tiny_llama, layer, "wikitext-2-raw", N_TOKENS, data_dir).double().cpu()
    count = 2999
    module = tiny_llama.family.rewrite.format(layer)
    write_stats(tmp_path / "tiny-llama" / "wikipedia_stats" / f"{module}_float32_mom2_{count}.npz",
                (own * count).float().numpy(), count)
    assert find_stats_file(tmp_path, tiny_llama, layer).name == f"{module}_float32_mom2_{count}.npz"
    hp = {**FAST_V, "mom2_adjustment": True, "mom2_n_tokens": N_TOKENS}
    from_file = layer_second_moment(tiny_llama, layer, "unused", 1, data_dir, stats_dir=tmp_path).double().cpu()
    assert torch.allclose(from_file, own, rtol=1e-5, atol=1e-7)

    def update(overrides):
        weight = tiny_llama.rewrite_matrix(layer)
        before = weight.detach().clone()
        get_editor("rome", overrides, data_dir=data_dir).apply(tiny_llama, [PARIS])
        delta = weight.detach() - before
        with torch.no_grad():
            weight.copy_(before)
        return delta

    ours, theirs = update(hp), update({**hp, "mom2_stats_dir": str(tmp_path)})
    assert ours.abs().max() > 0
    assert torch.allclose(theirs, ours, rtol=1e-4, atol=1e-6 * float(ours.abs().max()))


@pytest.mark.parametrize("arrays, message", [
    ({"mom2.count": 10}, r"missing mom2\.mom2 \(ROME/MEMIT's layer_stats layout\); it has mom2\.count"),
    ({"mom2.mom2": np.eye(3), "mom2.count": 10}, r"must be a \(128, 128\) numeric matrix .* shape \(3, 3\)"),
    ({"mom2.mom2": np.full((128, 128), np.nan), "mom2.count": 10}, r"mom2\.mom2 holds NaN or Inf"),
    ({"mom2.mom2": np.eye(128), "mom2.count": 0}, r"mom2\.count must be one positive number"),
    ({"mom2.mom2": np.array([{"a": 1}], dtype=object), "mom2.count": 10}, r"cannot read it as a \.npz of plain arrays"),
])
def test_bad_statistics_files_are_errors_naming_the_file(tmp_path, arrays, message):
    path = tmp_path / "stats.npz"
    np.savez(path, **arrays)
    with pytest.raises(StatsFileError, match=message) as err:
        read_stats_file(path, 128)
    assert str(path) in str(err.value)


def test_missing_or_ambiguous_statistics_say_where_they_were_looked_for(tmp_path, tiny_llama):
    module = tiny_llama.family.rewrite.format(1)
    with pytest.raises(StatsFileError, match=rf"expected a file like {tmp_path}/tiny-llama/wikipedia_stats/"
                                             rf"{module}_float32_mom2_100000\.npz"):
        find_stats_file(tmp_path, tiny_llama, 1)
    for name in (f"{module}_float32_mom2_100000.npz", f"{module}_float64_mom2_100000.npz"):
        write_stats(tmp_path / "tiny-llama" / "wikipedia_stats" / name, np.eye(128), 1)
    with pytest.raises(StatsFileError, match="several statistics files"):
        find_stats_file(tmp_path, tiny_llama, 1)


def test_stats_dir_that_is_no_directory_is_a_usage_error(pytester, tmp_path):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("--collect-only", f"--editguard-stats-dir={tmp_path / 'nowhere'}",
                                           "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--editguard-stats-dir {tmp_path / 'nowhere'}: not a directory*"])
