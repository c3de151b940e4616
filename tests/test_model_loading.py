"""Model registry and loading: family templates name real modules, tiny models are seeded, and
unknown architectures, missing weights and bad options are specific errors."""

import pytest
import torch

from editguard import load_model
from editguard.models import FAMILIES, ModelLoadError
from editguard.models.registry import family_for_model_type
from editguard.models.tiny import build_tiny_model

FAMILY_OF = {"tiny-gpt2": "gpt2", "tiny-gptj": "gptj", "tiny-llama": "llama"}


@pytest.mark.parametrize("name", FAMILY_OF)
def test_family_templates_name_real_modules(name):
    mue = load_model(name)
    assert mue.family.name == FAMILY_OF[name]
    for template in (mue.family.layer, mue.family.mlp, mue.family.rewrite):
        assert isinstance(mue.module(template.format(mue.edit_layer)), torch.nn.Module)
    mue.module(mue.family.final_norm), mue.module(mue.family.lm_head)
    hidden = mue.model.config.hidden_size
    out_dim, in_dim = mue.rewrite_matrix(mue.edit_layer).shape
    assert out_dim == hidden and in_dim > hidden  # (out, in) whatever the storage (GPT-2 Conv1D is transposed)


def test_tiny_models_are_seeded():
    a, b = build_tiny_model("llama"), build_tiny_model("llama")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(ValueError, match="'mamba'.*known model_type values: gemma, .*gpt2, gpt_neox, gptj, llama"):
        family_for_model_type("mamba")
    assert set(FAMILIES) == {"gpt2", "gptj", "llama", "gemma", "phi3", "gpt_neox", "opt"}


def test_missing_big_model_says_how_to_provide_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="(?s)does not download weights unless asked.*--editguard-download.*"
                                             "--model=/path/to/a/local/model/dir"):
        load_model("nobody/does-not-exist-editguard")
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model("./no/such/model/dir")


def test_bad_device_dtype_and_layer_are_specific_errors():
    with pytest.raises(ValueError, match="--dtype must be one of float32, bfloat16, float16; got 'fp8'"):
        load_model("tiny-llama", dtype="fp8")
    with pytest.raises(ValueError, match="edit layer 9 is outside model tiny-llama's layers 0..3"):
        load_model("tiny-llama", edit_layer=9)


def test_a_device_that_cannot_run_an_edit_is_refused():
    from editguard.models.loading import resolve_device

    with pytest.raises(ValueError, match=r"--device meta: editguard runs models on cpu or cuda"):
        resolve_device("meta")
