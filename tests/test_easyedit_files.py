"""EasyEdit's hyperparameter files as they are, one of each kind, written here from EasyEdit's
documented keys (its hparams/<ALG>/<model>.yaml): each loads on the tiny model of its family and
edits with it; a file for another family is refused naming both, unless asked for explicitly."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from editguard.cases import EditCase
from editguard.data import load_text_corpus
from editguard.editors.api import editor_statistics, prepare_editor
from editguard.editors.covariance import (
    StatisticsWarning,
    StatsFileError,
    StatsSource,
    corpus_texts,
    find_stats_file,
    read_stats_file,
    second_moment_from,
    second_moment_of_texts,
)
from editguard.editors.ft import prompt_last_nll
from editguard.editors.hparams import HparamsFileError, load_hparams_file, translate_easyedit
from editguard.editors.mend.easyedit import translate_easyedit_mend
from editguard.editors.registry import get_editor
from editguard.guard import check, measure_baseline
from editguard.models.loading import load_model
from editguard.models.registry import FAMILIES
from editguard.tokens import edit_batch

FAST = {"v_num_grad_steps": 4, "context_template_length_params": [[5, 5]]}
LLAMA_TEMPLATES = {"rewrite_module_tmp": "model.layers.{}.mlp.down_proj", "layer_module_tmp": "model.layers.{}",
                   "mlp_module_tmp": "model.layers.{}.mlp", "attn_module_tmp": "model.layers.{}.self_attn",
                   "ln_f_module": "model.norm", "lm_head_module": "lm_head"}
GPT2_TEMPLATES = {"rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
                  "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
                  "ln_f_module": "transformer.ln_f", "lm_head_module": "transformer.wte"}   # the tied head
GPTJ_TEMPLATES = {**GPT2_TEMPLATES, "rewrite_module_tmp": "transformer.h.{}.mlp.fc_out"}
ROME_KEYS = {"stats_dir": "./data/stats", "device": 0, "layers": [1], "fact_token": "subject_last",
             "v_lr": 0.5, "v_loss_layer": 3, "v_weight_decay": 0.5, "clamp_norm_factor": 4, "kl_factor": 0.0625,
             "mom2_adjustment": False, "mom2_dataset": "wikipedia", "mom2_n_samples": 100000,
             "mom2_dtype": "float32", "model_parallel": False, "fp16": False, **FAST}
FILES = {
    "rome-gpt2-tied-head": {"alg_name": "ROME", "model_name": "./hugging_cache/gpt2-xl", **ROME_KEYS,
                            **GPT2_TEMPLATES},
    "r-rome-llama": {"alg_name": "R-ROME", "model_name": "./hugging_cache/llama3.2-3b", **ROME_KEYS,
                     **LLAMA_TEMPLATES},
    "memit-llama-tied-head": {"alg_name": "MEMIT", "model_name": "llama-3.2-3b", **ROME_KEYS, "layers": [0, 1],
                              "layer_selection": "all", "mom2_adjustment": True, "mom2_update_weight": 10.0,
                              "mom2_n_samples": 200, "mom2_dataset": "wikitext2",
                              **LLAMA_TEMPLATES, "lm_head_module": "model.embed_tokens"},
    "ft-l-llama": {"alg_name": "FT", "model_name": "./hugging_cache/llama-2-7b", "device": 0, "layers": [1],
                   "num_steps": 5, "batch_size": 1, "max_length": 40, "lr": 5e-4, "weight_decay": 0,
                   "kl_factor": 0, "norm_constraint": False, "objective_optimization": "prompt_last",
                   **LLAMA_TEMPLATES, "rewrite_module_tmp": "model.layers.{}.mlp.down_proj.weight",
                   "model_parallel": False},
    # The papers' own ROME yaml (an EasyEdit fork): C-ROME's switches and their perplexity keys.
    "papers-rome-llama": {"alg_name": "ROME", "model_name": "llama-2-7b", **ROME_KEYS, **LLAMA_TEMPLATES,
                          "if_c_rome": True, "if_prefix": True, "ppl_sentence_num": 50, "ppl_batch_size": 8,
                          "save_keys": False, "save_keys_path": "./keys"},
}
FILES["ft-m-llama"] = {**FILES["ft-l-llama"], "objective_optimization": "target_new"}
# name -> (tiny model, the editor it runs with, the families it is for, overrides it must give)
EXPECTED = {
    "rome-gpt2-tied-head": ("tiny-gpt2", "rome", ("gpt2",), {"layer": 1, "mom2_adjustment": False}),
    "r-rome-llama": ("tiny-llama", "r-rome", ("llama", "gemma", "phi3"), {"layer": 1}),
    "memit-llama-tied-head": ("tiny-llama", "memit", ("llama", "gemma", "phi3"), {"layers": [0, 1]}),
    "ft-l-llama": ("tiny-llama", "ft-l", ("llama", "gemma", "phi3"),
                   {"layer": 1, "objective": "prompt_last", "norm_constraint": None, "steps": 5}),
    "ft-m-llama": ("tiny-llama", "ft-m", ("llama", "gemma", "phi3"),
                   {"layer": 1, "objective": "target_new", "norm_constraint": None, "steps": 5}),
    "papers-rome-llama": ("tiny-llama", "c-rome", ("llama", "gemma", "phi3"), {"layer": 1}),
}
PARIS = EditCase("e1", "{} is the capital of", "Paris", "Rome", "France")


def write(tmp_path, name: str, data: dict):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", list(FILES))
def test_each_kind_of_easyedit_file_loads_and_edits_on_its_family(tmp_path, name, data_dir):
    model_name, editor_name, families, expected = EXPECTED[name]
    path = write(tmp_path, name, FILES[name])
    t = translate_easyedit(load_hparams_file(path), path)
    assert editor_name in t.editors and t.families == families
    assert expected.items() <= t.overrides.items()
    mue = load_model(model_name)
    editor = get_editor(editor_name, t.overrides, data_dir=data_dir)
    result = check(mue, editor, PARIS, measure_baseline(mue, ["The cat sat on the mat.", "Rivers flow."]))
    assert result.diagnostics[("update_norm_rel")] > 0


def test_the_papers_switches_select_the_editor_and_their_extra_keys_are_ignored_with_why(tmp_path):
    path = write(tmp_path, "papers", FILES["papers-rome-llama"])
    t = translate_easyedit(load_hparams_file(path), path)
    assert t.editors == ("c-rome",)
    assert {"ppl_sentence_num", "ppl_batch_size", "save_keys", "save_keys_path"} <= t.ignored.keys()
    for switches, editor in (((False, False), "rome"), ((True, False), "r-rome")):
        data = {**FILES["papers-rome-llama"], "if_c_rome": switches[0], "if_prefix": switches[1]}
        assert translate_easyedit(data, path).editors == (editor,)
    with pytest.raises(HparamsFileError, match="if_c_rome false with if_prefix true"):
        translate_easyedit({**FILES["papers-rome-llama"], "if_c_rome": False, "if_prefix": True}, path)


@pytest.mark.parametrize("change, message", [
    ({"kl_factor": 0.1}, r"kl_factor 0.1 cannot be honoured: editguard's FT has no KL term"),
    ({"layers": [1, 2]}, r"layers \[1, 2\]: FT edits one layer here"),
    ({"norm_constraint": "tight"}, r"norm_constraint 'tight': expected a number"),
    ({"lm_head_module": "model.embed_positions"}, r"lm_head_module='model.embed_positions' names no module"),
])
def test_ft_values_editguard_cannot_honour_are_errors_naming_the_key(tmp_path, change, message):
    with pytest.raises(HparamsFileError, match=message):
        translate_easyedit({**FILES["ft-l-llama"], **change}, tmp_path / "ft.yaml")


def test_prompt_last_reads_every_target_token_at_the_prompts_last_position():
    """EasyEdit's FT-L loss, computed here from its definition on the prompt alone: the log-softmax
    at the prompt's last position, read at each target token, averaged."""
    mue = load_model("tiny-llama")
    cases = [EditCase("a", "{} is in", "Paris", "New York City", "France"), PARIS]
    batch = edit_batch(mue, cases)
    with torch.no_grad():
        ours = prompt_last_nll(batch, mue.model(**batch.inputs).logits)
        by_hand = []
        for case in cases:
            prompt = mue.tokenizer(case.text, return_tensors="pt")["input_ids"]
            target = mue.tokenizer(" " + case.target_new, add_special_tokens=False)["input_ids"]
            assert len(target) >= 1
            last = torch.log_softmax(mue.model(input_ids=prompt).logits[0, -1].float(), dim=-1)
            by_hand.append(-last[target].mean())
    assert torch.allclose(ours, torch.stack(by_hand).mean(), atol=1e-5)


def test_ft_l_and_ft_m_are_unconstrained_and_ft_keeps_its_box():
    mue = load_model("tiny-llama")
    baseline = measure_baseline(mue, ["The cat sat on the mat."])
    boxed = check(mue, get_editor("ft", {"steps": 5}), PARIS, baseline).diagnostics
    assert boxed["max_abs_delta"] <= boxed["norm_constraint"]
    for name, objective in (("ft-l", "prompt_last"), ("ft-m", "target_new")):
        d = check(mue, get_editor(name, {"steps": 5}), PARIS, baseline).diagnostics
        assert d["objective"] == objective and d["norm_constraint"] is None
        assert d["max_abs_delta"] > boxed["norm_constraint"] and d["loss"] < d["loss_initial"]
    with pytest.raises(ValueError, match="'objective' must be one of target_new, prompt_last"):
        get_editor("ft", {"objective": "prompt_first"})


SUITE = '''
from editguard.cases import EditCase

def edit_cases(settings):
    return [EditCase("t1", "{} is the capital of", "Paris", "Rome", "France")]

def test_edit(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
'''


def test_a_file_of_another_family_is_refused_naming_both_unless_asked_for(pytester, tmp_path, data_dir,
                                                                          monkeypatch):
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    gptj = write(tmp_path, "rome-gptj", {"alg_name": "ROME", **ROME_KEYS, **GPTJ_TEMPLATES})
    pytester.makepyfile(test_suite=SUITE)
    args = ["--model=tiny-llama", "--editor=rome", f"--hparams={gptj}", "-p", "no:cacheprovider",
            "--ppl-corpus", str(write_corpus(tmp_path))]
    refused = pytester.runpytest_subprocess(*args)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    said = str(refused.stdout) + str(refused.stderr)
    assert "the --hparams file is for the gptj family (its module templates), but model tiny-llama is of the " \
           "llama family" in said and "--editguard-hparams-any-family" in said
    anyway = pytester.runpytest_subprocess(*args, "--editguard-hparams-any-family",
                                           f"--editguard-json={tmp_path / 'report.json'}")
    assert anyway.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    anyway.assert_outcomes(**({"passed": 1} if anyway.ret == 0 else {"failed": 1}))
    import json

    statistics = json.loads((tmp_path / "report.json").read_text())["run"]["statistics"]
    assert statistics == "none needed (rome with mom2_adjustment false uses no second moment)"


def write_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("The cat sat on the mat.\nRivers flow into the sea.\n")
    return path


# ---- statistics files (--editguard-stats-dir) ---------------------------------------------------

def write_stats(path: Path, c: np.ndarray, count: int = 1000) -> Path:
    """A file as ROME/MEMIT/EasyEdit's layer_stats saves one (numpy.savez of CombinedStat's state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{"constructor": "util.runningstats.CombinedStat()",
                      "mom2.constructor": "util.runningstats.SecondMoment()", "mom2.count": count,
                      "mom2.mom2": (c * count).astype(np.float32)})
    return path


def spd(width: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((width, 4 * width))
    return a @ a.T / (4 * width)


def stand_in(name: str, name_or_path: str, family: str = "gpt2"):
    """What find_stats_file reads of a model: its name, family and Hugging Face path."""
    return SimpleNamespace(name=name, family=FAMILIES[family],
                           model=SimpleNamespace(config=SimpleNamespace(_name_or_path=name_or_path)))


MODULE = "transformer.h.17.mlp.c_proj"


@pytest.mark.parametrize("name_or_path, folder", [
    ("EleutherAI/gpt-j-6B", "EleutherAI_gpt-j-6B"),     # the papers'/ROME form: the path, "/" as "_"
    ("./hugging_cache/gpt-j-6B", "gpt-j-6B"),            # EasyEdit's current form: the path's last part
])
def test_statistics_are_found_in_both_folder_layouts(tmp_path, name_or_path, folder):
    path = write_stats(tmp_path / folder / "wikipedia_stats" / f"{MODULE}_float32_mom2_100000.npz", np.eye(4))
    assert find_stats_file(tmp_path, stand_in("gpt-j", name_or_path), 17) == path.resolve()


def test_the_file_the_hparams_name_is_chosen_or_what_is_there_is_listed(tmp_path):
    model = stand_in("gpt2-xl", "./hugging_cache/gpt2-xl")
    files = {(ds, dtype, n): write_stats(tmp_path / "gpt2-xl" / f"{ds}_stats" / f"{MODULE}_{dtype}_mom2_{n}.npz",
                                         np.eye(4))
             for ds, dtype, n in (("wikipedia", "float32", 100000), ("wikitext", "float32", 100000),
                                  ("wikipedia", "float64", 100000), ("wikipedia", "float32", 20000))}
    for (dataset, dtype, n), path in files.items():
        assert find_stats_file(tmp_path, model, 17, dataset=dataset, n_samples=n, dtype=dtype) == path.resolve()
    with pytest.raises(StatsFileError, match=r"several statistics files .* fit \(mom2_dataset wikipedia\).*"
                                             r"choose one with mom2_dataset, mom2_n_samples and mom2_dtype"):
        find_stats_file(tmp_path, model, 17, "wikipedia")
    with pytest.raises(StatsFileError, match=r"fits the hyperparameters \(mom2_dataset wikitext2, mom2_n_samples "
                                             r"100000, mom2_dtype float32\); there: .*wikitext_stats.*\(dataset "
                                             r"wikitext, mom2_n_samples 100000, mom2_dtype float32\)"):
        find_stats_file(tmp_path, model, 17, "wikitext2", 100000, "float32")


def test_a_git_lfs_pointer_or_text_is_refused_before_numpy_reads_it(tmp_path):
    lfs = tmp_path / "lfs.npz"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 163840338\n")
    with pytest.raises(StatsFileError, match=rf"statistics file {lfs}: a Git LFS pointer .*git lfs pull"):
        read_stats_file(lfs, 4)
    html = tmp_path / "page.npz"
    html.write_text("<html>Not found</html>")
    with pytest.raises(StatsFileError, match=r"not a \.npz \(zip\) archive, it starts with text b'<html>"):
        read_stats_file(html, 4)


@pytest.mark.parametrize("c, message", [
    (np.zeros((4, 4)), "the second moment is all zeros"),
    (np.eye(4) + np.triu(np.ones((4, 4)), 1), r"not symmetric \(max \|C - Cᵀ\| 1"),
    (np.diag([1.0, 1.0, 1.0, -1.0]), r"not positive definite \(smallest eigenvalue -1"),
])
def test_second_moments_that_are_no_second_moment_are_refused(tmp_path, c, message):
    path = write_stats(tmp_path / "stats.npz", c)
    with pytest.raises(StatsFileError, match=message) as err:
        read_stats_file(path, 4)
    assert str(path) in str(err.value)
    assert read_stats_file(write_stats(tmp_path / "good.npz", spd(4)), 4).shape == (4, 4)


def memit_file(tmp_path, **change):
    data = {**FILES["memit-llama-tied-head"], "layers": [1], "mom2_dataset": "wikipedia", "mom2_n_samples": 100000,
            **change}
    path = write(tmp_path, "memit", data)
    return translate_easyedit(load_hparams_file(path), path).overrides


def test_an_easyedit_memit_file_edits_with_the_statistics_file_it_names_and_the_header_says_which(tmp_path,
                                                                                                data_dir):
    mue = load_model("tiny-llama")
    module = mue.family.rewrite.format(1)
    stats = tmp_path / "stats"
    chosen = write_stats(stats / "tiny-llama" / "wikipedia_stats" / f"{module}_float32_mom2_100000.npz", spd(128))
    write_stats(stats / "tiny-llama" / "wikipedia_stats" / f"{module}_float32_mom2_20000.npz", spd(128, seed=1))
    editor = get_editor("memit", {**memit_file(tmp_path), "mom2_stats_dir": str(stats)}, data_dir=data_dir)
    prepare_editor(editor, mue)
    assert editor_statistics(editor, mue) == f"statistics files layer 1: {chosen.resolve()}"
    c = second_moment_from(mue, 1, StatsSource(stats_dir=str(stats), dataset="wikipedia", n_samples=100000,
                                               dtype="float32"))
    assert torch.allclose(c.double().cpu(), torch.from_numpy(spd(128)), atol=1e-5)
    result = check(mue, editor, PARIS, measure_baseline(mue, ["The cat sat on the mat."]))
    assert result.diagnostics["update_norm_rel"] > 0
    with pytest.raises(StatsFileError, match="fits the hyperparameters .*mom2_n_samples 3000"):
        prepare_editor(get_editor("memit", {**memit_file(tmp_path, mom2_n_samples=3000),
                                            "mom2_stats_dir": str(stats)}, data_dir=data_dir), mue)


def test_a_stats_dir_with_mom2_adjustment_false_is_said_to_be_unused(tmp_path, data_dir):
    mue = load_model("tiny-llama")
    path = write(tmp_path, "rome", {"alg_name": "ROME", **ROME_KEYS, **LLAMA_TEMPLATES})
    t = translate_easyedit(load_hparams_file(path), path)
    assert any("mom2_adjustment false: mom2_dataset, mom2_n_samples, mom2_dtype, stats_dir unused" in n
               for n in t.notes)
    editor = get_editor("rome", {**t.overrides, "mom2_stats_dir": str(tmp_path)}, data_dir=data_dir)
    with pytest.warns(StatisticsWarning, match=rf"--editguard-stats-dir {tmp_path} is unused: rome with "
                                               r"mom2_adjustment false uses no second moment"):
        prepare_editor(editor, mue)
    assert editor_statistics(editor, mue).startswith("none needed (rome with mom2_adjustment false")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = get_editor("rome", t.overrides, data_dir=data_dir)
        prepare_editor(plain, mue)
        assert editor_statistics(plain, mue) == "none needed (rome with mom2_adjustment false uses no second moment)"


def test_without_a_stats_dir_mom2_n_samples_counts_texts_of_the_local_corpus(tmp_path, data_dir):
    mue = load_model("tiny-llama")
    overrides = memit_file(tmp_path, mom2_n_samples=40, mom2_dataset="wikitext2")
    assert overrides["mom2_n_samples"] == 40 and "mom2_n_tokens" not in overrides
    editor = get_editor("memit", overrides, data_dir=data_dir)
    prepare_editor(editor, mue)
    assert editor_statistics(editor, mue) == "computed on 40 texts of wikitext-2-raw (layers 1)"
    lines = load_text_corpus("wikitext-2-raw", data_dir)
    texts = corpus_texts(lines, 40, "wikitext-2-raw")
    assert len(texts) == 40 and set(texts) <= set(lines)
    expected = second_moment_of_texts(mue, 1, texts, progress=False)
    used = second_moment_from(mue, 1, StatsSource(n_samples=40), data_dir)
    assert torch.equal(used.cpu(), expected.float())
    tokens = second_moment_from(mue, 1, StatsSource(n_tokens=40), data_dir)
    assert not torch.allclose(tokens.cpu(), used.cpu())   # 40 texts are not 40 tokens
    too_many = get_editor("memit", memit_file(tmp_path), data_dir=data_dir)
    with pytest.raises(StatsFileError, match=rf"mom2_n_samples 100000: EasyEdit counts texts, and the local corpus "
                                             rf"wikitext-2-raw has only {len(lines)}"):
        prepare_editor(too_many, mue)


def test_a_missing_statistics_file_is_refused_at_start_up_and_the_one_used_is_in_the_run_header(
        pytester, tmp_path, data_dir, monkeypatch):
    import json

    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    path = write(tmp_path, "memit", {**FILES["memit-llama-tied-head"], "layers": [1], "mom2_dataset": "wikipedia",
                                     "mom2_n_samples": 100000})
    stats = tmp_path / "stats"
    (stats / "tiny-llama").mkdir(parents=True)
    pytester.makepyfile(test_suite=SUITE)
    args = ["--model=tiny-llama", "--editor=memit", f"--hparams={path}", f"--editguard-stats-dir={stats}",
            "-p", "no:cacheprovider", "--ppl-corpus", str(write_corpus(tmp_path)),
            f"--editguard-json={tmp_path / 'report.json'}"]
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said = str(result.stdout) + str(result.stderr)
    assert "--editguard-stats-dir (--stats-dir on the command line): no second-moment statistics for " \
           "model.layers.1.mlp.down_proj of tiny-llama" in said
    assert "passed" not in said and "failed" not in said
    # EasyEdit's folder layout: the model folder is the last part of the model's path (here its name).
    name = "model.layers.1.mlp.down_proj_float32_mom2_100000.npz"
    used = write_stats(stats / "tiny-llama" / "wikipedia_stats" / name, spd(128))
    result = pytester.runpytest_subprocess(*args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    run = json.loads((tmp_path / "report.json").read_text())["run"]
    assert run["statistics"] == f"statistics files layer 1: {used.resolve()}"
    assert run["hparams"]["mom2_dataset"] == "wikipedia" and run["hparams"]["mom2_n_samples"] == 100000


# ---- case files in EasyEdit's formats (--cases) -------------------------------------------------

COUNTERFACT_RECORDS = [
    {"case_id": 2, "prompt": "Toko Yasuda, the", "target_new": "piano", "subject": "Toko Yasuda",
     "ground_truth": "guitar", "rephrase_prompt": "Toko Yasuda is incredible at",
     "locality_prompt": "John Lennon performs on the", "locality_ground_truth": "guitar"},
    {"case_id": 3, "prompt": "Autonomous University of Madrid, which is located in", "target_new": "Sweden",
     "subject": "Autonomous University of Madrid", "ground_truth": "Spain",
     "rephrase_prompt": "Autonomous University of Madrid is located in",
     "locality_prompt": "Biure, which is located in", "locality_ground_truth": "Spain"},
]
ZSRE_RECORDS = [
    {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "pred": "Trinity College",
     "rephrase": "What university did Watts Humphrey take part in?", "alt": "University of Michigan",
     "answers": ["Illinois Institute of Technology"], "loc": "nq question: who played desmond doss father in "
     "hacksaw ridge", "loc_ans": "Hugo Weaving", "cond": "Trinity College >> University of Michigan || What "
     "university did Watts Humphrey attend?"},
    {"subject": "Ramalinaceae", "src": "Which family does Ramalinaceae belong to?", "pred": "Lecanorales",
     "rephrase": "What family are Ramalinaceae?", "alt": "Lamiinae", "answers": ["Lecanorales"],
     "loc": "nq question: types of skiing in the winter olympics 2018", "loc_ans": "Downhill", "cond": ""},
]


def write_json(path: Path, data) -> Path:
    import json

    path.write_text(json.dumps(data))
    return path


def test_easyedit_counterfact_and_zsre_case_files_are_read(tmp_path):
    from editguard.cases import read_cases

    cf = read_cases(write_json(tmp_path / "counterfact-edit.json", COUNTERFACT_RECORDS))
    zsre = read_cases(write_json(tmp_path / "zsre_mend_eval.json", ZSRE_RECORDS))
    assert cf[1] == EditCase("3", "{}, which is located in", "Autonomous University of Madrid", "Sweden", "Spain",
                             ("Autonomous University of Madrid is located in",), ("Biure, which is located in",),
                             "counterfact")
    assert zsre[0] == EditCase("0", "What university did {} attend?", "Watts Humphrey", "University of Michigan",
                               "Illinois Institute of Technology",
                               ("What university did Watts Humphrey take part in?",),
                               ("nq question: who played desmond doss father in hacksaw ridge",), "zsre")
    assert [c.case_id for c in zsre] == ["0", "1"]
    # ZsRE's new answer is at times its true one (17 of the first 1,000 training records): no true answer then.
    same = read_cases(write_json(tmp_path / "same.json", [{**ZSRE_RECORDS[1], "alt": "Lecanorales"}]))
    assert same[0].target_new == "Lecanorales" and same[0].target_true is None


def test_the_shipped_zsre_sample_reads_as_cases_but_for_its_two_records_without_a_new_answer(data_dir, tmp_path):
    import json

    from editguard.cases import CaseError, read_cases

    shipped = data_dir / "zsre" / "zsre_mend_train-1k.json"
    with pytest.raises(CaseError, match=r"zsre_mend_train-1k\.json: record 534: field 'alt': expected a non-empty"):
        read_cases(shipped)
    records = [r for r in json.loads(shipped.read_text()) if r["alt"]]
    cases = read_cases(write_json(tmp_path / "zsre.json", records))
    assert len(cases) == 998 and cases[0].prompt == "What is the product made by {}?"
    assert sum(c.target_true is None for c in cases) == 17


@pytest.mark.parametrize("records, message", [
    ([{**ZSRE_RECORDS[0]}, {k: v for k, v in ZSRE_RECORDS[1].items() if k != "alt"}],
     r"record 1: field 'alt' is missing \(EasyEdit's ZsRE record; expected str\)"),
    ([{**ZSRE_RECORDS[0], "answers": "Lecanorales"}], r"record 0: field 'answers': expected list, got str"),
    ([{**ZSRE_RECORDS[0], "answers": []}], r"record 0: field 'answers': expected a non-empty list of strings"),
    ([{**ZSRE_RECORDS[0], "subject": "Humphrey Watts"}],
     r"record 0: field 'src': subject 'Humphrey Watts' \(field 'subject'\) does not occur in src"),
    ([{**ZSRE_RECORDS[0], "alt": ""}], r"record 0: field 'alt': expected a non-empty string, got ''"),
    ([COUNTERFACT_RECORDS[0], {**COUNTERFACT_RECORDS[1], "ground_truth": 7}],
     r"record 1 \(case_id 3\): field 'ground_truth': expected str, got int 7"),
    ([COUNTERFACT_RECORDS[0], {k: v for k, v in COUNTERFACT_RECORDS[1].items() if k != "rephrase_prompt"}],
     r"record 1 \(case_id 3\): field 'rephrase_prompt' is missing"),
])
def test_a_malformed_easyedit_case_record_is_an_error_naming_record_and_field(tmp_path, records, message):
    from editguard.cases import CaseError, read_cases

    path = write_json(tmp_path / "cases.json", records)
    with pytest.raises(CaseError, match=message) as err:
        read_cases(path)
    assert str(path) in str(err.value)


# ---- MEND files, editguard eval --hparams, train-mend --hparams ---------------------------------

# EasyEdit's hparams/MEND/gpt2-xl.yaml keys, for tiny-gpt2's last two layers (and small training values).
MEND_FILE = {
    "archive": "./results/models/MEND/gpt2-xl", "alg_name": "MEND", "device": 0,
    "model_name": "./hugging_cache/gpt2-xl",
    "model_class": "GPT2LMHeadModel", "tokenizer_class": "GPT2Tokenizer", "tokenizer_name": "./hugging_cache/gpt2-xl",
    "model_parallel": False,
    "inner_params": [f"transformer.h.{layer}.mlp.{m}.weight" for layer in (2, 3) for m in ("c_proj", "c_fc")],
    "lr": 1e-3, "edit_lr": 1e-4, "lr_lr": 1e-3, "lr_scale": 1.0, "seed": 42, "cedit": 0.1, "cloc": 1.0, "cbase": 1.0,
    "dropout": 0.0, "train_base": False, "no_grad_layers": None, "one_sided": False, "n_hidden": 1,
    "hidden_dim": None, "init": "id", "norm": True, "combine": True, "x_only": False, "delta_only": False,
    "act": "relu", "rank": 16, "mlp_class": "IDMLP", "shared": True,
    "batch_size": 1, "model_save_pt": 5000, "silent": False, "max_iters": 100000, "log_interval": 1000,
    "eval_log_interval": 1000, "final_eval": True, "val_interval": 1000, "early_stop_patience": 20000,
    "early_stop_key": "loss/total_edit_val", "eval_only": True, "half": False, "debug": False, "save": False,
    "verbose": True, "val_batch_size": 5, "accumulate_bs": 2, "val_steps": 500, "opt": "Adam", "grad_clip": 100.,
    "results_dir": "./results",
}


def test_an_easyedit_mend_file_maps_each_key_or_refuses_it_by_name(tmp_path):
    path = write(tmp_path, "mend", MEND_FILE)
    t = translate_easyedit_mend(load_hparams_file(path), path)
    assert t.editors == ("mend",) and t.families == ("gpt2",)
    assert t.overrides == {"layers": [2, 3], "modules": ["mlp.c_proj", "mlp.c_fc"], "lr": 1e-3, "edit_lr_init": 1e-4,
                           "lr_lr": 1e-3, "seed": 42, "c_edit": 0.1, "c_loc": 1.0, "n_hidden": 1, "rank": 16,
                           "batch_size": 2, "grad_clip": 100.0}
    assert {"archive", "max_iters", "cbase"} <= t.ignored.keys()
    for change, message in (({"train_base": True}, r"train_base True cannot be honoured: editguard's MEND has "
                                                    r"train_base False"),
                            ({"act": "gelu"}, r"act 'gelu' cannot be honoured"),
                            ({"inner_params": ["transformer.h.3.mlp.c_fc.weight", "transformer.h.2.mlp.c_proj.weight"]},
                             r"the same modules .* in every layer it edits; layers 2, 3 differ"),
                            ({"inner_params": ["encoder.block.3.layer.1.weight"]}, r"no layer template"),
                            ({"mend_lr": 1}, r"EasyEdit MEND keys editguard does not know: \['mend_lr'\]")):
        with pytest.raises(HparamsFileError, match=message):
            translate_easyedit_mend({**MEND_FILE, **change}, path)


def test_train_mend_and_the_mend_editor_take_an_easyedit_mend_file(tmp_path, monkeypatch, capsys, data_dir):
    from editguard.cli import main

    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    path = write(tmp_path, "mend", MEND_FILE)
    cases = write_json(tmp_path / "counterfact-train.json", COUNTERFACT_RECORDS)
    argv = ["train-mend", "--model", "tiny-gpt2", "--steps", "3", "--cases", str(cases), "--no-ppl-locality",
            "--hparams", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "MEND on tiny-gpt2: 2 training cases" in out.out and "4 matrices (layer2.c_proj, layer2.c_fc, " \
           "layer3.c_proj, layer3.c_fc); 3 steps of 2 edits" in out.out
    assert "warning: EasyEdit MEND file" in out.err and "archive (EasyEdit's trained network" in out.err
    t = translate_easyedit_mend(load_hparams_file(path), path)
    mue = load_model("tiny-gpt2")
    editor = get_editor("mend", t.overrides, data_dir=data_dir)
    prepare_editor(editor, mue)
    result = check(mue, editor, PARIS, measure_baseline(mue, ["The cat sat on the mat."]))
    assert result.diagnostics["update_norm_rel"] > 0 and result.diagnostics["trained_steps"] == 3
    llama = write(tmp_path, "mend-llama", {**MEND_FILE, "inner_params": ["model.layers.1.mlp.down_proj.weight"]})
    assert main([*argv[:-1], str(llama)]) == 2
    assert "is for the llama/gemma/phi3 family (its module templates), but model tiny-gpt2 is of the gpt2 family" \
           in capsys.readouterr().err


def test_editguard_eval_takes_an_easyedit_file_and_a_zsre_case_file(tmp_path, capsys, data_dir):
    import json

    from editguard.cli import main

    path = write(tmp_path, "memit", {**FILES["memit-llama-tied-head"], "layers": [1], "mom2_n_samples": 40})
    cases = write_json(tmp_path / "zsre.json", ZSRE_RECORDS)
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", "tiny-llama", "--tasks", "piqa", "--n", "2", "--editor", "memit", "--hparams",
            str(path), "--cases", str(cases), "--max-cases", "2", "--json", str(out)]
    assert main(argv) == 0
    assert "warning: EasyEdit MEMIT file" in capsys.readouterr().err
    run = json.loads(out.read_text())["run"]
    assert run["hparams"]["layers"] == [1] and run["hparams"]["mom2_n_samples"] == 40
    assert run["hparams"]["v_num_grad_steps"] == 4 and run["cases"] == ["0", "1"]
    assert run["statistics"] == "computed on 40 texts of wikitext-2-raw (layers 1)"
