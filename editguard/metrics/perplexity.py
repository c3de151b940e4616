"""Perplexity on a normal-text corpus (ME-PPL), the papers' collapse signal.

The papers' number (their ppl.py) is the *mean of per-sentence perplexities*: each sentence is
tokenized without special tokens, scored on tokens 2..n (no BOS is prepended for their models),
and exp(mean token NLL) is taken per sentence. A single broken sentence can dominate that mean,
so the token-weighted corpus perplexity is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from editguard.models.loading import ModelUnderEdit


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float                 # mean of per-sentence perplexities (the papers' ME-PPL number)
    corpus_ppl: float          # exp(total NLL / total scored tokens)
    per_sentence: tuple[float, ...]
    n_tokens: int

    def to_dict(self) -> dict:
        return {"ppl": self.ppl, "corpus_ppl": self.corpus_ppl, "n_tokens": self.n_tokens}


def encode_sentences(mue: ModelUnderEdit, sentences: list[str], add_bos: bool, max_length: int) -> list[list[int]]:
    tok = mue.tokenizer
    encoded = []
    for i, text in enumerate(sentences):
        ids = tok(text, add_special_tokens=False)["input_ids"][: max_length - int(add_bos)]
        if add_bos:
            ids = [tok.bos_token_id, *ids]
        if len(ids) < 2:
            raise ValueError(f"sentence {i} ({text[:40]!r}) has fewer than two tokens; it cannot be scored")
        encoded.append(ids)
    return encoded


def default_add_bos(mue: ModelUnderEdit) -> bool:
    """Prepend BOS only where the tokenizer itself would (Llama-2); GPT-2 and SmolLM2 add none."""
    tok = mue.tokenizer
    probe = tok("a")["input_ids"]
    return tok.bos_token_id is not None and len(probe) > 0 and probe[0] == tok.bos_token_id


def token_nlls(mue: ModelUnderEdit, batch: list[list[int]]) -> list[torch.Tensor]:
    """Per-token NLL of each sequence (tokens 2..n), from one right-padded forward pass.

    Logits are computed only at scored positions, in chunks, so a batch never holds a
    (batch, length, vocab) tensor.
    """
    device = mue.device
    enc = mue.pad_batch(batch)
    input_ids, mask = enc["input_ids"], enc["attention_mask"]
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


@torch.no_grad()
def perplexity(mue: ModelUnderEdit, sentences: list[str], *, add_bos: bool | None = None,
               max_length: int = 1024, tokens_per_batch: int = 8192, progress=None) -> PerplexityResult:
    """ME-PPL of `sentences` under the model as it is now (edited or not).

    Sentences are sorted by length and packed into batches of at most `tokens_per_batch`
    padded tokens. `progress`, if given, is called with the number of sentences done.
    """
    if not sentences:
        raise ValueError("perplexity needs at least one sentence")
    if add_bos is None:
        add_bos = default_add_bos(mue)
    config = mue.model.config
    max_length = min(max_length,
                     getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", max_length))
    encoded = encode_sentences(mue, sentences, add_bos, max_length)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    per_sentence_nll: list[torch.Tensor | None] = [None] * len(encoded)
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j + 1 - i) * len(encoded[order[j]]) <= tokens_per_batch:
            j += 1
        chunk = order[i:j]
        for idx, nll in zip(chunk, token_nlls(mue, [encoded[k] for k in chunk])):
            per_sentence_nll[idx] = nll.double().cpu()
        if progress is not None:
            progress(j - i)
        i = j
    per_sentence = tuple(math.exp(float(n.mean())) for n in per_sentence_nll)
    total = sum(float(n.sum()) for n in per_sentence_nll)
    count = sum(n.numel() for n in per_sentence_nll)
    return PerplexityResult(
        ppl=sum(per_sentence) / len(per_sentence),
        corpus_ppl=math.exp(total / count),
        per_sentence=per_sentence,
        n_tokens=count,
    )
