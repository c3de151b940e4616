"""Training MEND's editor networks (`train_mend`, the base model frozen and unchanged).

Per step a batch of edits; the edit loss's gradient at the unedited weights gives (u, δ)
(`gradient_pairs`); the update is applied functionally (differentiable in g and α); the loss is
c_edit · NLL(target_new | prompt and its paraphrase, edited) + c_loc · KL(unedited ‖ edited) on
locality text (the cases' neighbourhood prompts and the given locality sentences) + c_neighbour ·
the same KL only where the neighbourhood prompts predict their answer. Only g and α learn. The
caller chooses the cases and sentences (`editguard.mend_data` for the shipped command).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from editguard.cache import cache_key
from editguard.cases import EditCase
from editguard.editors.mend.hparams import EditedMatrix, MendHparams, complete_hparams, edited_matrices, resolve_hparams
from editguard.editors.mend.network import MendNetwork
from editguard.models.loading import ModelUnderEdit
from editguard.tokens import TokenBatch, edit_batch, prompt_target_ids, target_batch

# Bump when training or the network changes what a cached editor means: old ones are ignored.
MEND_VERSION = 2   # 2: the edit gradient sums over the batch's edits (1 averaged them)


def gradient_pairs(mue: ModelUnderEdit, matrices: list[EditedMatrix], batch: TokenBatch
                   ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """(u, δ) rows of every token whose δ ≠ 0, per matrix, for the loss Σ_sequences (mean NLL of the
    sequence's target tokens) at the current weights: Σ_rows δ uᵀ is the gradient of that loss
    w.r.t. the (out × in) matrix. Summed, not averaged, over sequences, so that one edit's (u, δ)
    are the same whether it is applied alone or in a batch (training batches several edits, the
    guard applies one). Also returns the mean NLL per sequence."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    handles, flags = [], {}

    def hook_for(name):
        def hook(_module, args, output):
            seen[name] = {"input": args[0], "output": output}
        return hook

    for m in matrices:
        handles.append(mue.module(m.module).register_forward_hook(hook_for(m.name)))
        weight = mue.parameter(m.name)
        flags[m.name] = weight.requires_grad
        weight.requires_grad_(True)  # so that the outputs carry a graph even in a frozen model
    try:
        with torch.enable_grad():
            logits = mue.model(**batch.inputs).logits
            loss = batch.nll(logits, reduction="sum")
            grads = torch.autograd.grad(loss, [seen[m.name]["output"] for m in matrices])
    finally:
        for h in handles:
            h.remove()
        for name, flag in flags.items():
            mue.parameter(name).requires_grad_(flag)
    mask = batch.inputs["attention_mask"].bool()
    pairs = {}
    for m, grad in zip(matrices, grads):
        u = seen[m.name]["input"].detach()[mask].float()
        delta = grad.detach()[mask].float()
        keep = (delta != 0).any(dim=1) & (u != 0).any(dim=1)
        pairs[m.name] = (u[keep], delta[keep])
    return pairs, float(loss.detach()) / batch.n


def _kl(base_logits: torch.Tensor, edited_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of KL(unedited ‖ edited) of the next-token distributions."""
    base = torch.log_softmax(base_logits.float(), dim=-1)
    edited = torch.log_softmax(edited_logits.float(), dim=-1)
    per_token = (base.exp() * (base - edited)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def locality_batch(mue: ModelUnderEdit, cases: Sequence[EditCase], texts: Sequence[str], max_tokens: int
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Locality text: each case's first neighbourhood prompt followed by " " + its true answer (which
    CounterFact's neighbourhood prompts share), then `texts` cut to `max_tokens` tokens. Returns the
    padded batch and the (row, column) positions where the neighbourhood answers are predicted."""
    tok = mue.tokenizer
    sequences, rows, cols = [], [], []
    for case in cases:
        if not case.neighborhood:
            continue
        if case.target_true:
            prompt, answer = prompt_target_ids(tok, case.neighborhood[0], case.target_true)
        else:
            prompt, answer = tok(case.neighborhood[0])["input_ids"], []
        for j in range(len(answer)):
            rows.append(len(sequences)), cols.append(len(prompt) - 1 + j)
        sequences.append(prompt + answer)
    sequences += [ids for ids in (tok(t)["input_ids"][:max_tokens] for t in texts) if ids]
    device = mue.device
    return (mue.pad_batch(sequences or [[tok.eos_token_id]]), torch.tensor(rows, dtype=torch.long, device=device),
            torch.tensor(cols, dtype=torch.long, device=device))


@dataclass
class TrainedMend:
    """A trained MEND editor for one model: the network, how it was trained, and where it lives."""

    network: MendNetwork
    hparams: MendHparams
    fingerprint: str
    model_name: str
    data_hash: str
    steps: int
    log: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    path: Path | None = None

    @property
    def key(self) -> str:
        return trained_key(self.fingerprint, self.data_hash, self.hparams, self.steps)

    def summary(self, windows: int = 5) -> list[dict[str, float]]:
        """The log averaged over `windows` equal stretches of training (the loss curve, short)."""
        if not self.log:
            return []
        size = max(1, math.ceil(len(self.log) / windows))
        out = []
        for start in range(0, len(self.log), size):
            chunk = self.log[start : start + size]
            row = {"from_step": chunk[0]["step"], "to_step": chunk[-1]["step"]}
            for k in chunk[0]:
                if k != "step":
                    row[k] = sum(r[k] for r in chunk) / len(chunk)
            out.append(row)
        return out


def data_hash(cases: Sequence[EditCase], loc_texts: Sequence[str] = ()) -> str:
    h = hashlib.sha256()
    for c in cases:
        h.update(json.dumps([c.case_id, c.prompt, c.subject, c.target_new, c.target_true, list(c.paraphrases),
                             list(c.neighborhood)]).encode())
    h.update(b"\x00loc")
    for t in loc_texts:
        h.update(t.encode() + b"\x00")
    return h.hexdigest()[:16]


def trained_key(fingerprint: str, data: str, hp: MendHparams, steps: int) -> str:
    """What a trained editor depends on, hashed: MEND_VERSION, the model's weights, the data, the
    hyperparameters and the number of steps."""
    # Sorted hyperparameters, as the keys of editors already cached were computed.
    return cache_key(MEND_VERSION, fingerprint, data, dict(sorted(asdict(hp).items())), steps, length=16)


def train_mend(mue: ModelUnderEdit, cases: Sequence[EditCase], hparams: MendHparams | dict | None = None,
               steps: int = 100, progress: Callable[[int, dict], None] | None = None,
               loc_texts: Sequence[str] = ()) -> TrainedMend:
    """Train MEND's editor networks on `cases` for `steps` steps, the model frozen and unchanged.

    Each step takes `batch_size` cases (a seeded shuffle, epoch after epoch), edits with their
    prompt's gradient, and minimises c_edit · NLL(target_new after the prompt and after its first
    paraphrase, edited) + c_loc · KL(unedited ‖ edited) on the cases' neighbourhood prompts plus as
    many `loc_texts` (seeded draws), token-averaged, + c_neighbour · the same KL only where the
    neighbourhood prompts predict their answer. `progress(step, record)` is called after every step."""
    hp = complete_hparams(mue, hparams) if isinstance(hparams, MendHparams) else resolve_hparams(mue, hparams)
    if not cases:
        raise ValueError("train_mend: no training cases")
    if steps < 1:
        raise ValueError(f"train_mend: steps must be ≥ 1, got {steps}")
    matrices = edited_matrices(mue, hp)
    network = MendNetwork(matrices, hp).to(mue.device)
    rng = random.Random(hp.seed)
    order: list[int] = []
    params_g = [p for name, p in network.named_parameters() if name != "edit_lrs"]
    opt = torch.optim.Adam([{"params": params_g, "lr": hp.lr}, {"params": [network.edit_lrs], "lr": hp.lr_lr}])
    base = {m.name: mue.parameter(m.name) for m in matrices}
    loc_pool = list(loc_texts)
    log: list[dict[str, float]] = []
    start = time.perf_counter()
    network.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        batch_cases = []
        while len(batch_cases) < hp.batch_size:
            if not order:
                order = list(range(len(cases)))
                rng.shuffle(order)
            batch_cases.append(cases[order.pop()])
        pairs, nll_before = gradient_pairs(mue, matrices, edit_batch(mue, batch_cases))
        deltas = network.updates(pairs, update_stats=True)
        edited = {m.name: base[m.name] + m.in_storage_layout(deltas[m.name]).to(base[m.name].dtype)
                  for m in matrices}

        prompts = [c.text for c in batch_cases] + [c.paraphrases[0] for c in batch_cases if c.paraphrases]
        targets = [c.target_new for c in batch_cases] + [c.target_new for c in batch_cases if c.paraphrases]
        post = target_batch(mue, prompts, targets)
        logits = torch.func.functional_call(mue.model, edited, args=(), kwargs=post.inputs).logits
        edit_loss = post.nll(logits)

        texts = [rng.choice(loc_pool) for _ in batch_cases] if loc_pool else []
        loc, nb_rows, nb_cols = locality_batch(mue, batch_cases, texts, hp.max_loc_tokens)
        with torch.no_grad():
            base_logits = mue.model(**loc).logits
        edited_logits = torch.func.functional_call(mue.model, edited, args=(), kwargs=loc).logits
        loc_loss = _kl(base_logits, edited_logits, loc["attention_mask"].float())
        if len(nb_rows):
            at = (nb_rows, nb_cols)
            nb_loss = _kl(base_logits[at], edited_logits[at], torch.ones(len(nb_rows), device=mue.device))
        else:
            nb_loss = torch.zeros((), device=mue.device)

        loss = hp.c_edit * edit_loss + hp.c_loc * loc_loss + hp.c_neighbour * nb_loss
        params = params_g + [network.edit_lrs]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        grad_norm = float(nn.utils.clip_grad_norm_(params, hp.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            rel = max(float(deltas[m.name].norm() / base[m.name].float().norm()) for m in matrices)
        record = {"step": step, "edit_nll_before": nll_before, "edit_nll_after": float(edit_loss.detach()),
                  "loc_kl": float(loc_loss.detach()), "neighbour_kl": float(nb_loss.detach()),
                  "loss": float(loss.detach()), "grad_norm": grad_norm,
                  "edit_lr_mean": float(network.edit_lrs.detach().mean()), "update_norm_rel_max": rel,
                  "seconds": time.perf_counter() - t0}
        log.append(record)
        if progress is not None:
            progress(step, record)
    network.eval()
    return TrainedMend(network, hp, mue.fingerprint, mue.name, data_hash(cases, loc_pool), steps, log,
                       time.perf_counter() - start)
