"""Math shared by locate-then-edit editors: where the subject sits, MLP keys and values,
context templates.

A *key* is the input of the edited MLP output projection at the subject's last token; the
projection's output there is the *value* the edit rewrites.
"""

from __future__ import annotations

import contextlib
import unicodedata

import torch

from editguard.cache import cache_dir, cached_json
from editguard.models.forward import input_and_output_of
from editguard.models.loading import ModelUnderEdit


def fill(template: str, text: str) -> str:
    """`template` with its one "{}" replaced; str.format would trip on other braces."""
    return template.replace("{}", text, 1)


def subject_last_index(tok, template: str, subject: str) -> int:
    """Token index of the subject's last token in `fill(template, subject)`.

    Counted as the length of the tokenized text up to the subject's end, the way ROME does;
    a merge across the subject's end would shift it, which BPE tokenizers avoid at word ends.
    """
    head = template[: template.index("{}")] + subject
    n = len(tok(head)["input_ids"])
    if n == 0:
        raise ValueError(f"subject {subject!r} tokenizes to nothing")
    return n - 1


def encode_batch(mue: ModelUnderEdit, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = mue.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(mue.device), "attention_mask": enc["attention_mask"].to(mue.device)}


@contextlib.contextmanager
def capture_io(module: torch.nn.Module):
    """Record the (first) input and the output of `module` during a forward pass."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, args, output):
        seen["input"], seen["output"] = args[0], output

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def keys_and_values(mue: ModelUnderEdit, layer: int, templates: list[str], subject: str,
                    batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (inputs of the rewrite projection) and values (its outputs) at the subject's last
    token, one row per template. Computed in float32."""
    module = mue.module(mue.family.rewrite.format(layer))
    keys, values = [], []
    for start in range(0, len(templates), batch_size):
        chunk = templates[start : start + batch_size]
        idx = torch.tensor([subject_last_index(mue.tokenizer, t, subject) for t in chunk], device=mue.device)
        rows = torch.arange(len(chunk), device=mue.device)
        key, value = input_and_output_of(mue, module, **encode_batch(mue, [fill(t, subject) for t in chunk]))
        keys.append(key[rows, idx].float())
        values.append(value[rows, idx].float())
    return torch.cat(keys), torch.cat(values)


# --- context templates --------------------------------------------------------------------

TEMPLATE_SEEDS = ["The", "Therefore", "Because", "I", "You"]


@torch.no_grad()
def _sample_continuations(mue: ModelUnderEdit, seed_text: str, n: int, length: int,
                          generator: torch.Generator, top_k: int = 5) -> list[str]:
    """n top-k samples of `length` tokens in all (seed included), as ROME generates them."""
    ids = mue.tokenizer([seed_text] * n, return_tensors="pt")["input_ids"]
    while ids.shape[1] < length:
        logits = mue.model(input_ids=ids.to(mue.device)).logits[:, -1].float().cpu()
        top = logits.topk(top_k, dim=-1)
        choice = torch.multinomial(top.values.softmax(-1), 1, generator=generator)
        ids = torch.cat([ids, top.indices.gather(1, choice)], dim=1)
    return mue.tokenizer.batch_decode(ids, skip_special_tokens=True)


def clean_generated(text: str) -> str:
    """The clean-up ROME's and the papers' generation applies to sampled text: Unicode NFKD, and a
    blank line ("\n\n") becomes one space (special tokens are already skipped when decoding)."""
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")


def context_templates(mue: ModelUnderEdit, length_params: tuple[tuple[int, int], ...],
                      seed: int = 0) -> list[str]:
    """["{}"] + model-generated prefixes "<text>. {}" (text cleaned as the papers' code cleans it),
    seeded and cached on disk so that every process (xdist workers, reruns, other devices) uses
    exactly the same templates. (The papers' code samples new templates in every process.)"""
    for length, n in length_params:
        if n < len(TEMPLATE_SEEDS) or n % len(TEMPLATE_SEEDS):
            raise ValueError(f"context_template_length_params: {n} templates of length {length} cannot be split "
                             f"evenly over the {len(TEMPLATE_SEEDS)} seed words {TEMPLATE_SEEDS}; use a multiple of "
                             f"{len(TEMPLATE_SEEDS)}")
    spec = "-".join(f"{length}x{n}" for length, n in length_params)

    def generate() -> list[str]:
        generator = torch.Generator().manual_seed(seed)
        templates = ["{}"]
        for length, n_gen in length_params:
            for seed_text in TEMPLATE_SEEDS:
                for text in _sample_continuations(mue, seed_text, n_gen // len(TEMPLATE_SEEDS), length, generator):
                    templates.append(clean_generated(text).replace("{", "").replace("}", "") + ". {}")
        return templates

    # "-nfkd": templates cleaned by clean_generated (older cache files hold uncleaned ones).
    return cached_json(cache_dir() / "templates" / f"{mue.fingerprint}-seed{seed}-{spec}-nfkd.json", generate)
