"""FT-L∞: constrained fine-tuning (Zhu et al. 2020, "Modifying Memories in Transformer Models"),
the fine-tuning baseline of the ROME and MEMIT papers.

Adam minimises the negative log-likelihood of " " + target_new after each case's prompt,
updating only one matrix: the MLP output projection of `layer` (the matrix ROME rewrites).
After every step the matrix is clamped elementwise to [W₀ − ε, W₀ + ε], ε = `norm_constraint`,
so that max |ΔW| ≤ ε holds exactly in the weight's dtype (the bounds are nudged by one ulp
where rounding W₀ ± ε would overshoot).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Sequence

import torch

from editguard.cases import EditCase
from editguard.editors.api import EditReport
from editguard.editors.hparams import Hparams, ranged
from editguard.models.loading import ModelUnderEdit
from editguard.options import UPDATE_NORM_REL
from editguard.tokens import edit_batch


@dataclass(frozen=True)
class FtHparams(Hparams):
    EDITOR: ClassVar[str] = "FT"
    # ROME's constrained-FT configs (hparams/FT/gpt2-xl_constr.json: 25 steps, lr 5e-4, ε 5e-4;
    # EleutherAI_gpt-j-6B_constr.json: the same with ε 5e-5). EasyEdit's Llama FT config
    # (llama-7b.yaml) has no norm constraint; Llama keeps GPT-2's ε = 5e-4 here. Those configs
    # tune layer 0 (GPT-2, GPT-J) or 21 (Llama-2); editguard defaults to the model's edit layer so
    # that FT-L∞ and ROME change the same matrix.
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "gpt2": {"steps": 25, "lr": 5e-4, "norm_constraint": 5e-4},
        "gptj": {"steps": 25, "lr": 5e-4, "norm_constraint": 5e-5},
        "llama": {"steps": 25, "lr": 5e-4, "norm_constraint": 5e-4},
    }

    # SmolLM2-135M, measured on 5 normal CounterFact cases (bench/results/ft-epsilon-smollm2-135m.json):
    # inside ε = 5e-4 the target's NLL barely moves (efficacy at chance, 3/10 in the normal
    # sequence), 2e-3 lands 2/5, 5e-3 lands 5/5 at unchanged perplexity (‖ΔW‖/‖W‖ 0.024).
    MODEL_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"smollm2-135m": {"norm_constraint": 5e-3}}

    layer: int | None = ranged(None, minimum=0)        # None: the model's registered edit layer
    steps: int = ranged(25, minimum=1)
    lr: float = ranged(5e-4, above=0)
    norm_constraint: float = ranged(5e-4, above=0)   # ε of the L∞ box around the unedited matrix
    early_stop_loss: float = ranged(1e-2, minimum=0)   # stop once the mean NLL is below this (as ROME's FT)


def linf_box(w0: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds lo ≤ W ≤ hi such that |W − W₀| ≤ ε holds for every W between them when computed in
    w0's dtype and compared with the Python float ε."""
    e = torch.tensor(eps, dtype=w0.dtype, device=w0.device)
    if float(e) > eps:  # ε rounded up in this dtype
        e = torch.nextafter(e, torch.zeros_like(e))
    lo, hi = w0 - e, w0 + e
    for _ in range(8):  # rounding W₀ ± ε can land one ulp outside; step back towards W₀
        over_hi, over_lo = (hi - w0) > e, (w0 - lo) > e
        if not (over_hi.any() or over_lo.any()):
            break
        hi = torch.where(over_hi, torch.nextafter(hi, w0), hi)
        lo = torch.where(over_lo, torch.nextafter(lo, w0), lo)
    return lo, hi


@dataclass
class FineTuneLInf:
    """FT-L∞: fine-tune one MLP output projection inside an L∞ box around its unedited value."""

    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: Any = None

    name: ClassVar[str] = "ft"
    batch_edits: ClassVar[bool] = True   # several cases per apply() (--batch-size)

    def __post_init__(self):
        FtHparams.check_overrides(self.overrides)  # fail at construction, not at the first edit

    def _resolve(self, mue: ModelUnderEdit) -> FtHparams:
        hp = FtHparams.for_family(mue.family.name, self.overrides, mue.name, n_layers=mue.n_layers)
        if hp.layer is None:
            return replace(hp, layer=mue.edit_layer)
        if not 0 <= hp.layer < mue.n_layers:
            raise ValueError(f"FT layer {hp.layer} is outside model {mue.name}'s layers 0..{mue.n_layers - 1}")
        return hp

    def hparams(self, mue: ModelUnderEdit) -> dict[str, Any]:
        return asdict(self._resolve(mue))

    def touched_parameters(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> list[str]:
        return [mue.family.rewrite_weight(self._resolve(mue).layer)]

    def apply(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        if not cases:
            raise ValueError("ft: no cases to apply")
        hp = self._resolve(mue)
        name = mue.family.rewrite_weight(hp.layer)
        weight = mue.parameter(name)
        w0 = weight.detach().clone()
        lo, hi = linf_box(w0, hp.norm_constraint)
        batch = edit_batch(mue, cases)

        def mean_nll() -> torch.Tensor:
            return batch.nll(mue.model(**batch.inputs).logits)

        clock = time.perf_counter()
        grad_flags = {n: p.requires_grad for n, p in mue.model.named_parameters()}
        mue.model.requires_grad_(False)
        weight.requires_grad_(True)
        opt = torch.optim.Adam([weight], lr=hp.lr)
        steps, loss_initial = 0, None
        try:
            for _ in range(hp.steps):
                opt.zero_grad()
                loss = mean_nll()
                value = float(loss.detach())
                if loss_initial is None:
                    loss_initial = value
                if value < hp.early_stop_loss:
                    break
                loss.backward()
                opt.step()
                with torch.no_grad():
                    weight.copy_(torch.maximum(torch.minimum(weight, hi), lo))
                steps += 1
        finally:
            weight.grad = None
            for n, p in mue.model.named_parameters():
                p.requires_grad_(grad_flags[n])
        with torch.no_grad():
            loss_final = float(mean_nll())
            delta = weight.detach() - w0
            max_abs = float(delta.abs().max())
            update_norm = float(delta.float().norm())
            update_rel = update_norm / float(w0.float().norm())
        diagnostics = {
            "layer": hp.layer,
            "steps": steps,
            "loss_initial": loss_initial if loss_initial is not None else loss_final,
            "loss": loss_final,
            "max_abs_delta": max_abs,
            "norm_constraint": hp.norm_constraint,
            "update_norm": update_norm,
            UPDATE_NORM_REL: update_rel,
            "seconds_update": time.perf_counter() - clock,
        }
        delta_w = delta.T if mue.family.weight_is_in_by_out else delta  # (out, in), as ROME's
        return EditReport(touched=[name], diagnostics=diagnostics, vectors={"delta_w": delta_w})
