"""Causal tracing (ROME §2): which MLP layers carry a model's facts, the measurement ROME's edit
layer and MEMIT's critical layers come from. `editguard prepare` picks an unregistered model's
edit layer with it; bench/causal_trace.py prints the full table for a model.

For facts the unedited model knows (normal CounterFact cases ranked by P(true target)), the
subject's input embeddings are corrupted with Gaussian noise (σ = 3 × the embedding output std,
as ROME), then the clean MLP outputs at the subject's last token are restored for a window of
layers centred on each layer. The indirect effect of a layer is the mean over facts and noise
samples of P_restored(true target) − P_corrupted(true target). The layer-0 MLP acts as a second
embedding (restoring it alone undoes most of the noise), so the edit layer is the peak among the
layers whose window leaves it out, as MEMIT's GPT-J and GPT-2 XL ranges do.
"""

from __future__ import annotations

import statistics
from typing import Callable

import torch

from editguard.cases import EditCase
from editguard.editors.keys import encode_batch, fill, subject_last_index
from editguard.models.loading import ModelUnderEdit

__all__ = ["best_band", "known_facts", "noise_scale", "peak_layer", "subject_span", "trace_fact", "trace_layers"]


def subject_span(tok, prompt: str, subject: str) -> tuple[int, int]:
    """[first, last] token indices of the subject in `fill(prompt, subject)`."""
    head = prompt[: prompt.index("{}")]
    first = len(tok(head)["input_ids"]) if head else len(tok("")["input_ids"])
    return first, subject_last_index(tok, prompt, subject)


def _target_token(tok, case: EditCase) -> int:
    return tok(" " + case.target_true, add_special_tokens=False)["input_ids"][0]


@torch.no_grad()
def known_facts(mue: ModelUnderEdit, pool: list[EditCase], n: int) -> list[EditCase]:
    """The `n` cases of `pool` whose true target the unedited model gives the highest probability."""
    known = []
    for case in pool:
        logits = mue.model(**encode_batch(mue, [fill(case.prompt, case.subject)])).logits[0, -1]
        known.append((logits.float().softmax(-1)[_target_token(mue.tokenizer, case)].item(), case))
    return [c for _, c in sorted(known, key=lambda pc: -pc[0])[:n]]


def noise_scale(mue: ModelUnderEdit) -> float:
    """3 × the std of the embedding outputs (Gemma scales them by √hidden inside the module)."""
    embed = mue.model.get_input_embeddings()
    return 3 * embed.weight.float().std().item() * float(getattr(embed, "embed_scale", 1.0))


@torch.no_grad()
def trace_fact(mue: ModelUnderEdit, case: EditCase, window: int, samples: int, scale: float,
               generator: torch.Generator) -> dict:
    """P(true target's first token): clean, corrupted, and per layer with the MLP window restored."""
    tok, family = mue.tokenizer, mue.family
    text = fill(case.prompt, case.subject)
    first, last = subject_span(tok, case.prompt, case.subject)
    target = _target_token(tok, case)
    enc = encode_batch(mue, [text] * samples)
    mlps = [mue.module(family.mlp.format(layer)) for layer in range(mue.n_layers)]

    clean_out = {}
    hooks = [m.register_forward_hook(
                 lambda mod, a, out, layer=layer: clean_out.__setitem__(layer, out[0, last].clone()))
             for layer, m in enumerate(mlps)]
    try:
        p_clean = mue.model(**encode_batch(mue, [text])).logits[0, -1].float().softmax(-1)[target].item()
    finally:
        for h in hooks:
            h.remove()

    embed = mue.model.get_input_embeddings()
    noise = torch.randn((samples, last - first + 1, embed.weight.shape[1]), generator=generator) * scale

    def corrupt(_module, _args, out):
        out = out.clone()
        out[:, first : last + 1] += noise.to(out.dtype).to(out.device)
        return out

    def run(restore: list[int]) -> float:
        handles = [embed.register_forward_hook(corrupt)]
        for layer in restore:
            def put_back(_module, _args, out, layer=layer):
                out = out.clone()
                out[:, last] = clean_out[layer]
                return out
            handles.append(mlps[layer].register_forward_hook(put_back))
        try:
            probs = mue.model(**enc).logits[:, -1].float().softmax(-1)[:, target]
        finally:
            for h in handles:
                h.remove()
        return probs.mean().item()

    p_corrupt = run([])
    half = window // 2
    restored = [run(list(range(max(0, layer - half), min(mue.n_layers, layer - half + window))))
                for layer in range(mue.n_layers)]
    return {"case_id": case.case_id, "subject": case.subject, "p_clean": p_clean, "p_corrupt": p_corrupt,
            "restored": restored}


def lowest_candidate(window: int, keep_first_mlp: bool = False) -> int:
    """The lowest layer whose restored window leaves out layer 0 (0 with keep_first_mlp)."""
    return 0 if keep_first_mlp else window // 2 + 1


def peak_layer(effect: list[float], window: int, keep_first_mlp: bool = False) -> int:
    """The layer of the highest indirect effect among those whose window leaves out layer 0
    (any layer where the model is too shallow for that)."""
    lowest = lowest_candidate(window, keep_first_mlp)
    layers = range(lowest, len(effect)) if lowest < len(effect) else range(len(effect))
    return max(layers, key=effect.__getitem__)


def best_band(effect: list[float], width: int, window: int, keep_first_mlp: bool = False) -> int:
    """The first of `width` consecutive layers with the highest mean effect (MEMIT's layers)."""
    lowest = lowest_candidate(window, keep_first_mlp)
    starts = range(lowest, len(effect) - width + 1)
    if not starts:
        starts = range(0, max(1, len(effect) - width + 1))
    return max(starts, key=lambda s: sum(effect[s : s + width]))


def trace_layers(mue: ModelUnderEdit, facts: list[EditCase], window: int = 5, samples: int = 8, seed: int = 0,
                 on_fact: Callable[[dict], None] | None = None) -> dict:
    """Trace each of `facts`; the per-layer indirect effect, the peak layer (the edit layer) and
    every fact's trace, as a JSON-able document."""
    if not facts:
        raise ValueError("causal tracing needs at least one fact")
    scale = noise_scale(mue)
    generator = torch.Generator().manual_seed(seed)
    traces = []
    for case in facts:
        traces.append(trace_fact(mue, case, window, samples, scale, generator))
        if on_fact is not None:
            on_fact(traces[-1])
    effect = [statistics.mean(t["restored"][layer] - t["p_corrupt"] for t in traces) for layer in range(mue.n_layers)]
    return {"model": mue.name, "fingerprint": mue.fingerprint, "window": window, "samples": samples, "seed": seed,
            "noise_scale": scale, "effect": effect, "peak_layer": peak_layer(effect, window), "facts": traces}
