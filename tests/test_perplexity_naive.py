"""Batched perplexity agrees with the obvious one-sentence-at-a-time loop."""

import math

import pytest
import torch

from editguard import load_model
from editguard.data import load_ppl_corpus
from editguard.metrics.perplexity import length_batches, perplexity
from tests.tiny_edits import EVERY_TINY_MODEL

SENTENCES = [
    "A short one.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the old wooden fence.",
    "Editing a model should not break it.",
    "x y",
]


def naive(mue, sentences, bos=False):
    per_sentence, total, count = [], 0.0, 0
    with torch.no_grad():
        for text in sentences:
            ids = mue.tokenizer(text, add_special_tokens=False)["input_ids"]
            if bos:
                ids = [mue.tokenizer.bos_token_id, *ids]
            ids = torch.tensor([ids])
            logits = mue.model(ids).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").double()
            per_sentence.append(math.exp(float(nll.mean())))
            total, count = total + float(nll.sum()), count + nll.numel()
    return sum(per_sentence) / len(per_sentence), math.exp(total / count), per_sentence


@pytest.mark.parametrize("name", EVERY_TINY_MODEL)
@pytest.mark.parametrize("tokens_per_batch", [32, 8192], ids=["many-batches", "one-batch"])
def test_batched_equals_naive(name, tokens_per_batch):
    mue = load_model(name)
    result = perplexity(mue, SENTENCES, tokens_per_batch=tokens_per_batch)
    ppl, corpus_ppl, per_sentence = naive(mue, SENTENCES)
    assert result.ppl == pytest.approx(ppl, rel=1e-4)
    assert result.corpus_ppl == pytest.approx(corpus_ppl, rel=1e-4)
    assert result.per_sentence == pytest.approx(per_sentence, rel=1e-4)  # original order kept


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_tokenizer_rule_on_a_gemma_scores_after_its_bos(name):
    """Gemma's tokenizer puts a BOS first: under the `tokenizer` rule (Gemma 3's default) each
    sentence is scored after it, as the naive loop with a BOS does."""
    mue = load_model(name)
    assert mue.tokenizer("a")["input_ids"][0] == mue.tokenizer.bos_token_id
    result = perplexity(mue, SENTENCES, bos="tokenizer")
    assert result.ppl == pytest.approx(naive(mue, SENTENCES, bos=True)[0], rel=1e-4)
    assert result.ppl != pytest.approx(perplexity(mue, SENTENCES, bos="never").ppl, rel=1e-4)


def test_me_ppl_50_on_a_tiny_model_equals_naive(data_dir):
    mue = load_model("tiny-llama")
    sentences = load_ppl_corpus("me-ppl-50", data_dir)
    assert perplexity(mue, sentences).ppl == pytest.approx(naive(mue, sentences)[0], rel=1e-4)


def test_bos_is_prepended_on_request():
    mue = load_model("tiny-gpt2")
    with_bos = perplexity(mue, SENTENCES, bos="always")
    assert with_bos.ppl == pytest.approx(naive(mue, SENTENCES, bos=True)[0], rel=1e-4)
    assert with_bos.ppl != pytest.approx(perplexity(mue, SENTENCES).ppl, rel=1e-4)


def test_unscorable_input_is_rejected():
    mue = load_model("tiny-llama")
    with pytest.raises(ValueError, match="sentence 1 \\('x'\\) is 1 token on tiny-llama; a perplexity needs"):
        perplexity(mue, ["fine sentence", "x"])
    with pytest.raises(ValueError, match="at least one sentence"):
        perplexity(mue, [])


def _padded(lengths, batches):
    return sum((j - i) * lengths[j - 1] for i, j in batches)


@pytest.mark.parametrize("seed", range(5))
def test_length_batches_cover_in_order_within_the_limit_at_least_cost(seed):
    """Batches split the sorted sequences in order, none over the limit (unless one sequence alone
    is longer), and no split costs less (checked against every split of a short list)."""
    import itertools
    import random

    rng = random.Random(seed)
    lengths = sorted(rng.randint(3, 60) for _ in range(9))
    limit, per_forward = 150, 20
    batches = length_batches(lengths, limit, per_forward)
    assert [i for i, _ in batches] == [0] + [j for _, j in batches[:-1]] and batches[-1][1] == len(lengths)
    assert all((j - i) * lengths[j - 1] <= limit or j - i == 1 for i, j in batches)
    best = math.inf
    for cut_mask in itertools.product([False, True], repeat=len(lengths) - 1):
        cuts = [0] + [k + 1 for k, cut in enumerate(cut_mask) if cut] + [len(lengths)]
        split = list(zip(cuts, cuts[1:]))
        if all((j - i) * lengths[j - 1] <= limit or j - i == 1 for i, j in split):
            best = min(best, _padded(lengths, split) + per_forward * len(split))
    assert _padded(lengths, batches) + per_forward * len(batches) == best
    assert length_batches([5, 100, 200], 150) == [(0, 1), (1, 2), (2, 3)]  # too long for the limit: alone


def test_me_ppl_50_lengths_waste_little_padding():
    """The split of SmolLM2's ME-PPL_50 lengths (measured with its tokenizer) pads far less than
    one batch, which pads 103%."""
    lengths = [11, 12, 13, 13, 13, 13, 14, 14, 14, 15, 15, 16, 16, 17, 18, 19, 19, 19, 20, 20, 20, 21, 23, 26, 26,
               27, 28, 29, 29, 29, 29, 30, 30, 31, 31, 32, 33, 36, 36, 36, 38, 40, 41, 42, 45, 46, 48, 49, 55, 55]
    batches = length_batches(lengths, 8192)
    assert len(batches) <= 6
    assert _padded(lengths, batches) < 1.2 * sum(lengths) < 0.6 * len(lengths) * max(lengths)


@pytest.mark.parametrize("name", EVERY_TINY_MODEL)
def test_starting_above_unchanged_layers_equals_naive_after_an_edit(name):
    """With the layers below an edited one vouched unchanged, perplexity reuses their output and
    still equals the full computation on the edited model; the reused inputs are kept."""
    mue = load_model(name)
    layer = mue.n_layers - 1
    weight = mue.rewrite_matrix(layer)
    original = weight.detach().clone()
    layer_inputs: dict = {}
    try:
        perplexity(mue, SENTENCES, tokens_per_batch=32, unchanged_below=layer, layer_inputs=layer_inputs)
        assert layer_inputs, "the inputs of the edited layer are kept for the next call"
        with torch.no_grad():
            weight.add_(0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
        reused = perplexity(mue, SENTENCES, tokens_per_batch=32, unchanged_below=layer, layer_inputs=layer_inputs)
        ppl, corpus_ppl, _ = naive(mue, SENTENCES)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert reused.ppl == pytest.approx(ppl, rel=1e-4)
    assert reused.corpus_ppl == pytest.approx(corpus_ppl, rel=1e-4)
    assert reused.ppl != pytest.approx(naive(mue, SENTENCES)[0], rel=1e-4), "the edit changed perplexity"


def test_reused_layer_inputs_are_what_the_caller_vouched_for():
    """The reuse is a promise by the caller: a change below `unchanged_below` after the inputs
    were kept is not seen (the guard passes the lowest layer any edit since the unedited model touched)."""
    mue = load_model("tiny-llama")
    layer_inputs: dict = {}
    before = perplexity(mue, SENTENCES, unchanged_below=1, layer_inputs=layer_inputs)
    weight = mue.rewrite_matrix(0)
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(3.0)
        reused = perplexity(mue, SENTENCES, unchanged_below=1, layer_inputs=layer_inputs)
        full = perplexity(mue, SENTENCES)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert reused.ppl == pytest.approx(before.ppl, rel=1e-6)
    assert full.ppl != pytest.approx(before.ppl, rel=1e-3)
    # No parameter edited: everything below the top layer is reused.
    untouched = perplexity(mue, SENTENCES, unchanged_below=mue.lowest_layer_of([]), layer_inputs={})
    assert untouched.ppl == pytest.approx(before.ppl, rel=1e-5)


def test_lowest_layer_of_parameters():
    mue = load_model("tiny-llama")
    assert mue.lowest_layer_of(["model.layers.1.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight"]) == 0
    assert mue.lowest_layer_of(["model.layers.1.mlp.down_proj.weight"]) == 1
    assert mue.lowest_layer_of([]) == mue.n_layers
    assert mue.lowest_layer_of(["model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"]) == 0
    gpt2 = load_model("tiny-gpt2")
    assert gpt2.lowest_layer_of(["transformer.h.1.mlp.c_proj.weight"]) == 1
