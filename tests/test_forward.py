"""Attention over shared key/value heads (models.forward.grouped_query_attention): on a CPU the v*
search and the perplexity probe let torch's kernel attend over the key/value heads a group of query
heads shares, with the numbers of the copied heads, and the switch is put back after."""

import contextlib
import os

import pytest
import torch
from torch.overrides import TorchFunctionMode

from editguard import get_editor, load_model
from editguard.editors import value
from editguard.metrics import perplexity as perplexity_module
from editguard.models.forward import _FORCE_GQA, grouped_query_attention
from editguard.models.snapshot import WeightSnapshot
from tests.tiny_edits import CASES, FAST_V, SENTENCES

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")

# Tiny families whose query heads share key/value heads (4 query heads, 2 key/value heads).
GROUPED = ["tiny-llama", "tiny-qwen2", "tiny-gemma3"]


class RecordAttention(TorchFunctionMode):
    """The query and key head counts, the enable_gqa flag and whether a mask was given, of every
    SDPA call. (Without a mask transformers attends over the shared heads by itself.)"""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            query, key = args[0], args[1]
            self.calls.append((query.shape[1], key.shape[1], kwargs.get("enable_gqa", False),
                               kwargs.get("attn_mask") is not None))
        return func(*args, **kwargs)


def padded_forward(mue):
    """A forward pass of two prompts of different lengths: padded, so transformers passes a mask."""
    batch = mue.pad_batch([mue.tokenizer("Paris is the capital of")["input_ids"],
                           mue.tokenizer("Rome")["input_ids"]])
    with torch.no_grad():
        return mue.model.base_model(**batch).last_hidden_state


@pytest.mark.parametrize("name", GROUPED)
def test_inside_sdpa_attends_over_the_shared_heads_with_the_numbers_of_the_copies(name):
    mue = load_model(name)
    with RecordAttention() as copied:
        outside = padded_forward(mue)
    with grouped_query_attention(mue), RecordAttention() as grouped:
        inside = padded_forward(mue)
    assert copied.calls and all(q == k and not gqa and mask for q, k, gqa, mask in copied.calls)
    assert grouped.calls and all(q == 2 * k and gqa and mask for q, k, gqa, mask in grouped.calls)
    assert torch.equal(inside, outside)


def test_the_switch_is_put_back_as_it_was(monkeypatch, tiny_llama):
    monkeypatch.delenv(_FORCE_GQA, raising=False)
    with grouped_query_attention(tiny_llama):
        assert os.environ[_FORCE_GQA] == "1"
    assert _FORCE_GQA not in os.environ
    monkeypatch.setenv(_FORCE_GQA, "0")   # the user's own setting
    with pytest.raises(RuntimeError), grouped_query_attention(tiny_llama):
        raise RuntimeError("an editor failed inside")
    assert os.environ[_FORCE_GQA] == "0"


def test_off_the_cpu_nothing_is_switched(monkeypatch, tiny_llama):
    monkeypatch.delenv(_FORCE_GQA, raising=False)

    class OnAGpu:
        device = torch.device("cuda")

    with grouped_query_attention(OnAGpu()):
        assert _FORCE_GQA not in os.environ


def _copied_heads(_mue):
    return contextlib.nullcontext()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_rome_v_star_and_update_equal_those_over_copied_heads(monkeypatch, name):
    mue = load_model(name)

    def edit():
        editor = get_editor("rome", FAST_V)
        editor.upcoming(CASES[1:])   # three cases' prompts in one padded batch
        snapshot = WeightSnapshot(mue.model, editor.touched_parameters(mue, [CASES[0]]))
        try:
            return editor.apply(mue, [CASES[0]])
        finally:
            snapshot.restore()

    attention = RecordAttention()
    descend = value.descend

    def recorded_descend(*args, **kwargs):
        with attention:
            return descend(*args, **kwargs)

    monkeypatch.setattr(value, "descend", recorded_descend)
    grouped = edit()
    # Every v* step's passes are padded (three cases' prompts) and attend over the shared heads.
    assert attention.calls and all(gqa and mask for _q, _k, gqa, mask in attention.calls)
    monkeypatch.setattr(value, "grouped_query_attention", _copied_heads)
    copied = edit()
    assert torch.equal(grouped.vectors["v_star"], copied.vectors["v_star"])
    assert torch.equal(grouped.vectors["delta_w"], copied.vectors["delta_w"])


@pytest.mark.parametrize("name", GROUPED)
def test_perplexity_equals_that_over_copied_heads(monkeypatch, name):
    mue = load_model(name)
    with RecordAttention() as attention:
        grouped = perplexity_module.perplexity(mue, SENTENCES)
    assert attention.calls and all(gqa and mask for _q, _k, gqa, mask in attention.calls)
    monkeypatch.setattr(perplexity_module, "grouped_query_attention", _copied_heads)
    copied = perplexity_module.perplexity(mue, SENTENCES)
    assert grouped.per_sentence == copied.per_sentence
