"""AlphaEdit (Fang et al., "AlphaEdit: Null-Space Constrained Knowledge Editing for Language
Models", ICLR 2025): MEMIT's edit, projected so that it cannot move the outputs of the keys
that carry preserved knowledge.

C = E[k kᵀ] over normal text (the same statistic as MEMIT's) spans the keys of preserved
knowledge K₀. With C = U Λ Uᵀ, P = Û Ûᵀ over the eigenvectors whose eigenvalues are below
`nullspace_threshold` projects onto the (approximate) null space of K₀K₀ᵀ; any ΔW = ΔW P leaves
W k unchanged for k in the preserved subspace. Per layer, with K the keys of this batch, R the
residual spread as in MEMIT and K_p the keys of earlier edits made by this editor instance
(sequential editing), the paper's closed form (its I weighted by α = `l2_weight`) is

    ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹ .

It is computed as ΔWᵀ = (P (K_pK_pᵀ + KKᵀ) + α I)⁻¹ P K Rᵀ (P and the Gram matrices are
symmetric). Then (I − P)(P A + αI) ΔWᵀ = α (I − P) ΔWᵀ = (I − P) P K Rᵀ = 0, so ΔW = ΔW P
exactly: the update is orthogonal to the preserved subspace by construction.

K_p is state: `apply` adds this batch's keys after each update, `reset()` forgets them. If the
weights no longer hold this instance's last edit when `apply` is called (the harness restored
them after a single-edit check), the remembered keys describe edits that are gone and are
dropped first (`diagnostics["preserved_keys_dropped"]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from editguard.cases import EditCase
from editguard.editors.api import EditReport
from editguard.editors.covariance import StatsSource, second_moment_from
from editguard.editors.memit import MEMIT, LayerRangeHparams
from editguard.models.loading import ModelUnderEdit


@dataclass(frozen=True)
class AlphaEditHparams(LayerRangeHparams):
    EDITOR: ClassVar[str] = "AlphaEdit"
    # AlphaEdit's hparams/AlphaEdit/gpt2-xl.json, EleutherAI_gpt-j-6B.json and Llama3-8B.json
    # (its only Llama config); all three: nullspace_threshold 2e-2, L2 10.
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "gpt2": {"v_num_grad_steps": 20, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 0.75},
        "gptj": {"v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 0.75},
        "llama": {"v_num_grad_steps": 25, "v_lr": 0.1, "v_weight_decay": 0.5, "clamp_norm_factor": 0.75},
    }

    nullspace_threshold: float = 2e-2   # eigenvalues of C below it span the null space
    l2_weight: float = 10.0             # α, the weight of ‖ΔW‖² (AlphaEdit's "L2")


_PROJECTIONS: dict[tuple, tuple[torch.Tensor, int]] = {}


def nullspace_projection(mom2: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """P = Û Ûᵀ over the eigenvectors of the symmetric `mom2` with eigenvalue < threshold, and
    the null space's dimension."""
    eigenvalues, eigenvectors = torch.linalg.eigh(mom2.double())
    null = eigenvectors[:, eigenvalues < threshold]
    return (null @ null.T).float(), int(null.shape[1])


def alphaedit_solve(residual: torch.Tensor, keys: torch.Tensor, projection: torch.Tensor,
                    preserved: torch.Tensor | None, l2_weight: float) -> torch.Tensor:
    """ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹ (out × in), float64 inside."""
    k, r, p = keys.double(), residual.double(), projection.double()
    gram = k @ k.T
    if preserved is not None and preserved.numel():
        kp = preserved.double()
        gram = gram + kp @ kp.T
    system = p @ gram + l2_weight * torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    update_t = torch.linalg.solve(system, p @ k @ r.T)
    # ΔW = ΔW P holds exactly in exact arithmetic; projecting once more removes the leakage that
    # rounding (P is stored in float32) and a small α would let through.
    return (p @ update_t).T.float()


@dataclass
class AlphaEdit(MEMIT):
    """AlphaEdit; keeps the keys of its earlier edits (K_p) until `reset()`."""

    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: Any = None
    # (model fingerprint, layer) -> keys of the edits made so far, (in, n) float32
    preserved_keys: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    # (model fingerprint, layer) -> checksum of the weights as this instance's last edit left them
    _signature: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict, init=False, repr=False)

    name: ClassVar[str] = "alphaedit"
    HPARAMS: ClassVar[type[LayerRangeHparams]] = AlphaEditHparams

    def reset(self) -> None:
        """Forget the keys of earlier edits (a new sequence starts from the unedited model)."""
        self.preserved_keys.clear()
        self._signature.clear()

    def preserved_count(self, mue: ModelUnderEdit, layer: int) -> int:
        keys = self.preserved_keys.get((mue.fingerprint, layer))
        return 0 if keys is None else int(keys.shape[1])

    def projection(self, mue: ModelUnderEdit, hp: AlphaEditHparams, layer: int) -> tuple[torch.Tensor, int]:
        key = (mue.fingerprint, layer, StatsSource.of(hp), hp.nullspace_threshold, str(mue.device))
        if key not in _PROJECTIONS:
            mom2 = second_moment_from(mue, layer, StatsSource.of(hp), self.data_dir)
            _PROJECTIONS[key] = nullspace_projection(mom2, hp.nullspace_threshold)
        return _PROJECTIONS[key]

    def _weight_signature(self, mue: ModelUnderEdit, layer: int) -> tuple[float, float]:
        w = mue.rewrite_matrix(layer).detach().double()
        return float(w.sum()), float((w * w).sum())

    def apply(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        hp = self._resolve(mue)
        stale = [layer for layer in hp.layers if (mue.fingerprint, layer) in self._signature
                 and self._signature[(mue.fingerprint, layer)] != self._weight_signature(mue, layer)]
        if stale:
            self.reset()
        report = super().apply(mue, cases)
        for layer in hp.layers:
            self._signature[(mue.fingerprint, layer)] = self._weight_signature(mue, layer)
        report.diagnostics["preserved_keys_dropped"] = bool(stale)
        return report

    def _second_moments(self, mue: ModelUnderEdit, hp: AlphaEditHparams) -> None:
        """Every layer's null-space projection (from the unedited model's C) before any layer is written."""
        for layer in hp.layers:
            self.projection(mue, hp, layer)

    def _layer_update(self, mue: ModelUnderEdit, hp: AlphaEditHparams, layer: int, keys: torch.Tensor,
                      residual: torch.Tensor, diagnostics: dict[str, Any]) -> torch.Tensor:
        projection, null_dim = self.projection(mue, hp, layer)
        preserved = self.preserved_keys.get((mue.fingerprint, layer))
        delta_w = alphaedit_solve(residual, keys, projection, preserved, hp.l2_weight)
        diagnostics[f"nullspace_dim_layer{layer}"] = null_dim
        diagnostics[f"preserved_keys_layer{layer}"] = self.preserved_count(mue, layer)
        return delta_w

    def _after_layer(self, mue: ModelUnderEdit, hp: AlphaEditHparams, layer: int, keys: torch.Tensor) -> None:
        key = (mue.fingerprint, layer)
        earlier = self.preserved_keys.get(key)
        self.preserved_keys[key] = (keys.detach().clone() if earlier is None
                                    else torch.cat([earlier, keys.detach()], dim=1))
