"""Perplexity on a normal-text corpus (ME-PPL), the papers' collapse signal.

The papers' number (their ppl.py) is the *mean of per-sentence perplexities*: each sentence is
tokenized without special tokens (`add_special_tokens=False`, `add_start_token=False`, on every
model, Llama-2 included), scored on tokens 2..n, and exp(mean token NLL) is taken per sentence.
A single broken sentence can dominate that mean, so the token-weighted corpus perplexity is
reported beside it.

Whether a BOS goes before each sentence is a rule (`--ppl-bos`, editguard.options.PPL_BOS_CHOICES),
decided in one place, `add_bos_for`: `never` (the default: the papers' number), `tokenizer` (where
the tokenizer adds one by itself: Llama-2, Gemma) or `always`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from editguard.errors import DataError, bounded
from editguard.models.forward import grouped_query_attention, inputs_until, starting_at_layer
from editguard.models.loading import ModelUnderEdit
from editguard.models.precision import precision_context
from editguard.options import DEFAULT_PPL_BOS, PPL_BOS_CHOICES


class PerplexityInputError(DataError, ValueError):
    """A perplexity sentence that cannot be scored (fewer than two tokens on the model)."""


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float                 # mean of per-sentence perplexities (the papers' ME-PPL number)
    corpus_ppl: float          # exp(total NLL / total scored tokens)
    per_sentence: tuple[float, ...]
    n_tokens: int
    bos: str = DEFAULT_PPL_BOS  # the BOS rule it was measured with (PPL_BOS_CHOICES)

    def to_dict(self) -> dict:
        return {"ppl": self.ppl, "corpus_ppl": self.corpus_ppl, "n_tokens": self.n_tokens, "bos": self.bos}


def encode_sentences(mue: ModelUnderEdit, sentences: list[str], add_bos: bool, max_length: int) -> list[list[int]]:
    tok = mue.tokenizer
    encoded = []
    for i, text in enumerate(sentences):
        ids = tok(text, add_special_tokens=False)["input_ids"][: max_length - int(add_bos)]
        if add_bos:
            ids = [tok.bos_token_id, *ids]
        if len(ids) < 2:
            raise PerplexityInputError(
                f"sentence {i} ({bounded(text, 60)}) is {len(ids)} token{'s' * (len(ids) != 1)} on {mue.name}; a "
                f"perplexity needs at least two (the first is context): remove it from the corpus")
        encoded.append(ids)
    return encoded


def add_bos_for(rule: str, mue: ModelUnderEdit) -> bool:
    """Whether a BOS goes before each sentence under `rule`: `never` (the papers' ME-PPL), `tokenizer`
    (only where the tokenizer adds one by itself: Llama-2, Gemma; GPT-2 and SmolLM2 add none) or
    `always` (an error for a tokenizer without a BOS token)."""
    tok = mue.tokenizer
    if rule == "never":
        return False
    if rule == "tokenizer":
        probe = tok("a")["input_ids"]
        return tok.bos_token_id is not None and len(probe) > 0 and probe[0] == tok.bos_token_id
    if rule == "always":
        if tok.bos_token_id is None:
            raise ValueError(f"--ppl-bos always: the tokenizer of {mue.name} has no BOS token")
        return True
    raise ValueError(f"--ppl-bos must be one of {', '.join(PPL_BOS_CHOICES)}, got {rule!r}")


# Inputs of the lowest edited layer kept for reuse (unchanged_below) up to this many bytes per corpus:
# ME-PPL_50 and _1k fit on SmolLM2 (3.6 and ~70 MB); _10k (~620 MB) is recomputed each time.
LAYER_INPUTS_MAX_BYTES = 256 * 2**20


def token_nlls(mue: ModelUnderEdit, batch: list[list[int]], unchanged_below: int = 0,
               layer_inputs: dict | None = None) -> list[torch.Tensor]:
    """Per-token NLL of each sequence (tokens 2..n), from one right-padded forward pass.

    Logits are computed only at scored positions, in chunks, so a batch never holds a
    (batch, length, vocab) tensor. With `unchanged_below` = L > 0, the input of layer L is taken
    from `layer_inputs` (computed by layers 0..L-1 and stored there on first need) and the
    forward pass starts at layer L.
    """
    device = mue.device
    enc = mue.pad_batch(batch)
    input_ids, mask = enc["input_ids"], enc["attention_mask"]
    unchanged_below = min(unchanged_below, mue.n_layers - 1)   # nothing edited: the top layer still runs
    if unchanged_below > 0 and layer_inputs is not None:
        key = (unchanged_below, tuple(map(tuple, batch)))   # the tokens themselves: no hash collision
        start_input = layer_inputs.get(key)
        if start_input is None:
            start_input = inputs_until(mue, mue.module(mue.family.layer.format(unchanged_below)), **enc)
            stored = sum(t.numel() * t.element_size() for t in layer_inputs.values())
            if stored + start_input.numel() * start_input.element_size() <= LAYER_INPUTS_MAX_BYTES:
                layer_inputs[key] = start_input
        with starting_at_layer(mue, unchanged_below, start_input):
            hidden = mue.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    else:
        hidden = mue.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    # Position t predicts token t+1; score every position whose next token is real.
    predicts = mask[:, 1:].bool()
    states = hidden[:, :-1][predicts]
    targets = input_ids[:, 1:][predicts]
    head = mue.model.get_output_embeddings()
    nll = torch.empty(targets.shape[0], dtype=torch.float32, device=device)
    for start in range(0, targets.shape[0], 2048):
        logits = head(states[start : start + 2048]).float()
        nll[start : start + 2048] = torch.nn.functional.cross_entropy(
            logits, targets[start : start + 2048], reduction="none"
        )
    lengths = (mask.sum(1) - 1).tolist()
    return list(torch.split(nll, lengths))


def length_batches(sorted_lengths: list[int], tokens_per_batch: int,
                   tokens_per_forward: int = 64) -> list[tuple[int, int]]:
    """Split sequences sorted by length into batches [i, j) that cost least: each batch costs its
    padded size (count × longest) plus `tokens_per_forward`, the fixed cost of one more forward
    pass counted in tokens, and holds at most `tokens_per_batch` padded tokens (a longer sequence
    goes alone). ME-PPL_50 on SmolLM2 padded in one batch is 103% padding (2,750 tokens for
    1,352); split this way, 16% in four batches."""
    n = len(sorted_lengths)
    best = [0.0] + [math.inf] * n        # best[j]: least cost of the first j sequences
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            padded = (j - i) * sorted_lengths[j - 1]
            if padded > tokens_per_batch and i < j - 1:
                break
            cost = best[i] + padded + tokens_per_forward
            if cost < best[j]:
                best[j], start[j] = cost, i
    batches, j = [], n
    while j > 0:
        batches.append((start[j], j))
        j = start[j]
    return batches[::-1]


@torch.no_grad()
def perplexity(mue: ModelUnderEdit, sentences: list[str], *, bos: str = DEFAULT_PPL_BOS,
               max_length: int = 1024, tokens_per_batch: int = 8192, progress=None,
               unchanged_below: int = 0, layer_inputs: dict | None = None,
               precision: str = "float32") -> PerplexityResult:
    """ME-PPL of `sentences` under the model as it is now (edited or not), with the BOS rule `bos`
    (see add_bos_for; the default is the papers'), in `precision` (a resolved one, see
    editguard.models.precision: bfloat16 autocasts the forward passes; compare only perplexities
    taken in the same precision).

    Sentences are sorted by length and split into batches of at most `tokens_per_batch` padded
    tokens with little padding (length_batches). `progress`, if given, is called with the number of sentences done.

    `unchanged_below` = L: the caller vouches that layers 0..L-1 are those `layer_inputs` (a dict
    it owns, one per corpus and unedited model) was filled with. Their output is then computed
    once per batch and reused, and each later call runs layers L.. only: an edit at layer 5 of
    SmolLM2's 30 need not rerun the five below it.
    """
    if not sentences:
        raise ValueError("perplexity needs at least one sentence")
    add_bos = add_bos_for(bos, mue)
    config = mue.model.config
    max_length = min(max_length,
                     getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", max_length))
    encoded = encode_sentences(mue, sentences, add_bos, max_length)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    per_sentence_nll: list[torch.Tensor | None] = [None] * len(encoded)
    with precision_context(mue, precision), grouped_query_attention(mue):
        for i, j in length_batches([len(encoded[k]) for k in order], tokens_per_batch):
            chunk = order[i:j]
            for idx, nll in zip(chunk, token_nlls(mue, [encoded[k] for k in chunk], unchanged_below, layer_inputs)):
                per_sentence_nll[idx] = nll.double().cpu()
            if progress is not None:
                progress(j - i)
    per_sentence = tuple(math.exp(float(n.mean())) for n in per_sentence_nll)
    total = sum(float(n.sum()) for n in per_sentence_nll)
    count = sum(n.numel() for n in per_sentence_nll)
    return PerplexityResult(
        ppl=sum(per_sentence) / len(per_sentence),
        corpus_ppl=math.exp(total / count),
        per_sentence=per_sentence,
        n_tokens=count,
        bos=bos,
    )
