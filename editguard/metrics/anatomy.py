"""Editor-agnostic anatomy of an update: how large it is, and how far it reaches.

For every touched matrix W (as it was before the edit) and its update ΔW:

- ‖ΔW‖_F and ‖ΔW‖_F / ‖W‖_F;
- the blast radius: the mean over normal-text keys k of ‖ΔW k‖ / ‖W k‖, the relative change of
  the matrix's output on inputs that have nothing to do with the edit. A surgical edit keeps it
  near 0; a collapsing ROME edit moves every output.

Keys are a matrix's inputs on ordinary sentences; `normal_text_keys` collects them for any
modules in one pass. The guard (editguard.guard) measures this for every editor.

    before = {name: snapshot.saved(name) for name in snapshot.names}
    path = "model.layers.5.mlp.down_proj"
    keys = normal_text_keys(model, [path], sentences)[path]   # before the edit
    anatomy = update_anatomy(model, before, {path + ".weight": keys})   # after it
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from editguard.models.loading import ModelUnderEdit, token_grid
from editguard.options import UPDATE_NORM_REL


@torch.no_grad()
def normal_text_keys(mue: ModelUnderEdit, modules: Sequence[str], sentences: list[str], max_keys: int = 2048,
                     batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Inputs of each module in `modules` (paths) at every token of `sentences`, from one forward
    pass per batch: {path: (keys, in)} float32, up to `max_keys` rows each, in order."""
    wanted = list(dict.fromkeys(modules))
    seen: dict[str, list[torch.Tensor]] = {path: [] for path in wanted}
    current: dict[str, torch.Tensor] = {}

    def recorder(path):
        def hook(_module, args):
            current[path] = args[0]
        return hook

    handles = [mue.module(path).register_forward_pre_hook(recorder(path)) for path in wanted]
    total = 0
    try:
        for start in range(0, len(sentences), batch_size):
            ids = [mue.tokenizer(s)["input_ids"] for s in sentences[start : start + batch_size]]
            ids = [seq for seq in ids if seq]
            if not ids:
                continue
            enc = mue.pad_batch(ids)
            current.clear()
            mue.model(**enc)
            real = enc["attention_mask"].bool()
            for path in wanted:
                seen[path].append(token_grid(current[path], real.shape[0])[real].float())
            total += int(real.sum())
            if total >= max_keys:
                break
    finally:
        for handle in handles:
            handle.remove()
    if total == 0:
        raise ValueError("normal_text_keys: the sentences gave no tokens")
    return {path: torch.cat(rows)[:max_keys] for path, rows in seen.items()}


def blast_radius_skipped(mue: ModelUnderEdit, name: str) -> str | None:
    """Why the blast radius of parameter `name` is not measured (None: it is): only a matrix that a
    linear layer multiplies its input vectors by has one; an embedding's inputs are token ids."""
    module_path, _, attr = name.rpartition(".")
    module = mue.module(module_path) if module_path else mue.model
    if mue.parameter(name).dim() != 2:
        return f"not a matrix ({mue.parameter(name).dim()}-D)"
    if isinstance(module, torch.nn.Embedding):
        return "an embedding: its inputs are token ids, not vectors"
    if attr != "weight" or not (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"):
        return f"not the weight of a linear layer ({type(module).__name__}.{attr})"
    return None


def _as_out_by_in(mue: ModelUnderEdit, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A 2-D weight as (out, in): GPT-2's Conv1D stores (in, out)."""
    module_path = name.rpartition(".")[0]
    module = mue.module(module_path) if module_path else None
    stored_in_by_out = type(module).__name__ == "Conv1D"
    return tensor.T if stored_in_by_out else tensor


def update_anatomy(mue: ModelUnderEdit, before: Mapping[str, torch.Tensor],
                   keys: torch.Tensor | Mapping[str, torch.Tensor] | None = None) -> dict:
    """Anatomy of the change from `before` (parameter name -> its value before the edit) to the
    model's current parameters.

    `keys` are normal-text inputs (rows) for the blast radius: one tensor used for every touched
    2-D matrix whose input width matches, or a mapping parameter name -> keys. Without keys (or
    for a matrix without matching keys, or a 1-D parameter) the blast radius is left out.

    Returns {"matrices": {name: {"update_norm", UPDATE_NORM_REL[, "blast_radius",
    "blast_radius_max"]}}, "update_norm_rel_max", "blast_radius_max" (None without keys)}.
    """
    matrices: dict[str, dict[str, float]] = {}
    for name, old in before.items():
        with torch.no_grad():
            w_old = old.detach().float()
            w_new = mue.parameter(name).detach().float().to(w_old.device)
            delta = w_new - w_old
            entry = {
                "update_norm": float(delta.norm()),
                UPDATE_NORM_REL: float(delta.norm() / w_old.norm().clamp_min(1e-12)),
            }
            k = keys.get(name) if isinstance(keys, Mapping) else keys
            if k is not None and w_old.dim() == 2:
                w_oriented = _as_out_by_in(mue, name, w_old)
                d_oriented = _as_out_by_in(mue, name, delta)
                k = k.float().to(w_old.device)
                if k.shape[-1] == w_oriented.shape[1]:
                    change = (k @ d_oriented.T).norm(dim=1)
                    base = (k @ w_oriented.T).norm(dim=1).clamp_min(1e-12)
                    ratio = change / base
                    entry["blast_radius"] = float(ratio.mean())
                    entry["blast_radius_max"] = float(ratio.max())
        matrices[name] = entry
    radii = [m["blast_radius"] for m in matrices.values() if "blast_radius" in m]
    return {
        "matrices": matrices,
        "update_norm_rel_max": max((m[UPDATE_NORM_REL] for m in matrices.values()), default=0.0),
        "blast_radius_max": max(radii) if radii else None,
    }
