"""EasyEdit's hyperparameter files as they are, one of each kind, written here from EasyEdit's
documented keys (its hparams/<ALG>/<model>.yaml): each loads on the tiny model of its family and
edits with it; a file for another family is refused naming both, unless asked for explicitly."""

from __future__ import annotations

import pytest
import torch
import yaml

from editguard.cases import EditCase
from editguard.editors.ft import prompt_last_nll
from editguard.editors.hparams import HparamsFileError, load_hparams_file, translate_easyedit
from editguard.editors.registry import get_editor
from editguard.guard import check, measure_baseline
from editguard.models.loading import load_model
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
                              "mom2_n_samples": 3000, **LLAMA_TEMPLATES, "lm_head_module": "model.embed_tokens"},
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
    anyway = pytester.runpytest_subprocess(*args, "--editguard-hparams-any-family")
    assert anyway.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    anyway.assert_outcomes(**({"passed": 1} if anyway.ret == 0 else {"failed": 1}))


def write_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("The cat sat on the mat.\nRivers flow into the sea.\n")
    return path
