"""Second moment C = E[k kᵀ] of an edited layer's MLP keys over a text corpus.

ROME's `mom2_adjustment` multiplies k̄ by C⁻¹. C is computed once per (model fingerprint,
layer, corpus hash, token count) and cached on disk; a file lock lets parallel workers share
one computation.
"""

from __future__ import annotations

import hashlib

import torch

from editguard.cache import cache_dir, cached_tensors
from editguard.data import load_text_corpus
from editguard.editors.keys import inputs_until
from editguard.models.loading import ModelUnderEdit
from editguard.progress import progress_bar


def _token_chunks(mue: ModelUnderEdit, lines: list[str], n_tokens: int, seq_len: int) -> list[list[int]]:
    """Corpus lines, joined and tokenized, cut into sequences until n_tokens are collected."""
    chunks, buffer, total = [], [], 0
    for line in lines:
        buffer.extend(mue.tokenizer(line + "\n", add_special_tokens=False)["input_ids"])
        while len(buffer) >= seq_len and total < n_tokens:
            chunks.append(buffer[:seq_len])
            buffer, total = buffer[seq_len:], total + seq_len
        if total >= n_tokens:
            break
    if total < n_tokens and buffer:
        chunks.append(buffer[: n_tokens - total])
    return chunks


def corpus_hash(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def second_moment(mue: ModelUnderEdit, layer: int, lines: list[str], n_tokens: int = 100_000,
                  seq_len: int = 256, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """E[k kᵀ] over up to `n_tokens` corpus tokens, float64 accumulation, cached on disk."""

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        chunks = _token_chunks(mue, lines, n_tokens, seq_len)
        module = mue.module(mue.family.rewrite.format(layer))
        width = module.weight.shape[0] if mue.family.weight_is_in_by_out else module.weight.shape[1]
        total = torch.zeros(width, width, dtype=torch.float64)
        count = 0
        with progress_bar(f"covariance {mue.name} layer {layer}", len(chunks), enabled=progress) as bar:
            for start in range(0, len(chunks), batch_size):
                batch = chunks[start : start + batch_size]
                count += _accumulate(mue, module, batch, total)
                bar.advance(len(batch))
        return {"mom2": (total / count).float()}, {"n_tokens": count, "layer": layer, "model": mue.name}

    name = f"{mue.fingerprint}-layer{layer}-{corpus_hash(lines)}-{n_tokens}tok.safetensors"
    tensors, _meta = cached_tensors(cache_dir() / "stats" / name, compute)
    return tensors["mom2"]


# In-process copies on the model's device: every edit of a session reuses them.
_IN_MEMORY: dict[tuple, torch.Tensor] = {}


def _in_memory(key: tuple, compute) -> torch.Tensor:
    if key not in _IN_MEMORY:
        _IN_MEMORY[key] = compute()
    return _IN_MEMORY[key]


def layer_second_moment(mue: ModelUnderEdit, layer: int, corpus: str, n_tokens: int, data_dir=None) -> torch.Tensor:
    """C = E[k kᵀ] of the unedited model's keys at `layer` over a named text corpus (disk-cached
    by `second_moment`, kept in memory here), float32 on the model's device."""
    def compute() -> torch.Tensor:
        lines = load_text_corpus(corpus, data_dir)
        return second_moment(mue, layer, lines, n_tokens=n_tokens).float().to(mue.device)

    return _in_memory((mue.fingerprint, layer, corpus, n_tokens, str(mue.device), "C"), compute)


def inverse_layer_second_moment(mue: ModelUnderEdit, layer: int, corpus: str, n_tokens: int,
                                data_dir=None) -> torch.Tensor:
    """C⁻¹ (inverted in float64), float32 on the model's device; kept in memory."""
    def compute() -> torch.Tensor:
        mom2 = second_moment(mue, layer, load_text_corpus(corpus, data_dir), n_tokens=n_tokens)
        return torch.linalg.inv(mom2.double()).float().to(mue.device)

    return _in_memory((mue.fingerprint, layer, corpus, n_tokens, str(mue.device), "C^-1"), compute)


@torch.no_grad()
def _accumulate(mue: ModelUnderEdit, module: torch.nn.Module, batch: list[list[int]], total: torch.Tensor) -> int:
    enc = mue.pad_batch(batch)
    keys = inputs_until(mue, module, **enc)[enc["attention_mask"].bool()].double().cpu()
    total += keys.T @ keys
    return keys.shape[0]
