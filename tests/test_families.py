"""Family detection from config.model_type: every known type gets its module templates, the key
ROME reads is the input of the MLP's output projection (checked against a computation from the
MLP's own weights), an unknown type fails with the known ones and the way to add one."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from editguard import load_model
from editguard.editors.keys import fill, keys_and_values, subject_last_index
from editguard.models import Family, ModelLoadError, register_family
from editguard.models.loading import check_family
from editguard.models.registry import FAMILIES, MODEL_TYPES, family_for_model_type
from editguard.models.tiny import tiny_config
from tests.tiny_edits import PARIS

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp_input_module_and_key(mue, layer):
    """The module whose input is the MLP's input, and the key computed from it by hand, per family
    (the formulas of the transformers implementations, written out)."""
    block = mue.module(mue.family.layer.format(layer))
    kind = mue.model.config.model_type
    if kind == "opt":
        return block.fc1, lambda x: block.activation_fn(block.fc1(x))
    mlp = mue.module(mue.family.mlp.format(layer))
    if kind == "phi3":
        def phi3_key(x):
            gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
            return up * mlp.activation_fn(gate)
        return mlp, phi3_key
    if kind == "gpt2":
        return mlp, lambda x: mlp.act(mlp.c_fc(x))
    if kind == "gptj":
        return mlp, lambda x: mlp.act(mlp.fc_in(x))
    if kind == "gpt_neox":
        return mlp, lambda x: mlp.act(mlp.dense_h_to_4h(x))
    # llama, mistral, qwen2/3, gemma/2/3: down_proj(act(gate_proj(x)) * up_proj(x))
    return mlp, lambda x: mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def test_keys_equal_a_manual_computation(tiny_family):
    mue, layer = tiny_family, tiny_family.edit_layer
    templates = ["{}", "Yesterday. {}"]
    keys, values = keys_and_values(mue, layer, [fill(t, PARIS.prompt) for t in templates], PARIS.subject)
    source, manual_key = _mlp_input_module_and_key(mue, layer)
    for row, template in enumerate(templates):
        text = fill(fill(template, PARIS.prompt), PARIS.subject)
        ids = mue.tokenizer(text, return_tensors="pt")["input_ids"]
        seen = {}
        handle = source.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
        with torch.no_grad():
            mue.model(input_ids=ids)
            handle.remove()
            x = seen["x"].reshape(1, ids.shape[1], -1)
            at = subject_last_index(mue.tokenizer, template, PARIS.subject)
            key = manual_key(x[0, at])
            value = mue.rewrite_matrix(layer) @ key
            bias = getattr(mue.module(mue.family.rewrite.format(layer)), "bias", None)
            value = value + bias if bias is not None else value
        assert torch.allclose(keys[row], key, atol=1e-5), mue.name
        assert torch.allclose(values[row], value, atol=1e-5), mue.name


def test_gemma_subject_index_counts_the_bos():
    """Gemma's tokenizer puts a BOS first: a subject at the prompt's start is at index ≥ 1."""
    mue = load_model("tiny-gemma3")
    assert mue.tokenizer("Paris")["input_ids"][0] == mue.tokenizer.bos_token_id
    assert subject_last_index(mue.tokenizer, "{} is the capital of", "Paris") == len("Paris")


def test_every_known_model_type_has_a_family_whose_modules_exist():
    for model_type, family_name in MODEL_TYPES.items():
        family = family_for_model_type(model_type)
        assert family is FAMILIES[family_name]
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2",
                       "gptj", "gpt_neox", "opt"):
        assert model_type in MODEL_TYPES


def test_unknown_model_type_lists_the_known_ones_and_how_to_add_one():
    with pytest.raises(ValueError, match=r"'bloom' model.*known model_type values: gemma, gemma2.*llama.*opt.*"
                                         r"register_family\('<model_type>', Family\("):
        family_for_model_type("bloom")


def test_wrong_templates_fail_at_load_naming_the_missing_modules():
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    wrong = Family("wrong", "model.blocks.{}", "model.blocks.{}.mlp", "model.blocks.{}.mlp.w2", "model.norm", "lm_head")
    with pytest.raises(ModelLoadError, match=r"family 'wrong' names modules it does not have: model.blocks.0, "
                                             r"model.blocks.0.mlp, model.blocks.0.mlp.w2; pass its module templates"):
        check_family("x", model, wrong)


def test_register_family_teaches_a_new_model_type(monkeypatch):
    monkeypatch.setattr("editguard.models.registry.MODEL_TYPES", dict(MODEL_TYPES))
    monkeypatch.setattr("editguard.models.registry.FAMILIES", dict(FAMILIES))
    mine = Family("mine", "model.layers.{}", "model.layers.{}.mlp", "model.layers.{}.mlp.down_proj",
                  "model.norm", "lm_head")
    register_family("my_llama", mine)
    assert family_for_model_type("my_llama") is mine
