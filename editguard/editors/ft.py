"""Fine-tuning one MLP matrix: FT-L∞ (Zhu et al. 2020, "Modifying Memories in Transformer Models"),
the fine-tuning baseline of the ROME and MEMIT papers, and EasyEdit's two unconstrained variants.

Adam minimises a negative log-likelihood of " " + target_new after each case's prompt, updating
only one matrix: the MLP output projection of `layer` (the matrix ROME rewrites).

- `ft` (FT-L∞): teacher-forced NLL of the target's tokens (`objective: target_new`); after every
  step the matrix is clamped elementwise to [W₀ − ε, W₀ + ε], ε = `norm_constraint`, so that
  max |ΔW| ≤ ε holds exactly in the weight's dtype (the bounds are nudged by one ulp where
  rounding W₀ ± ε would overshoot).
- `ft-l` (EasyEdit's FT-L, `objective_optimization: prompt_last`): every target token's NLL read at
  the prompt's last position (ROME's FT objective), no norm constraint.
- `ft-m` (EasyEdit's FT-M, `objective_optimization: target_new`): teacher-forced NLL of the target's
  tokens, no norm constraint.
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
from editguard.tokens import TokenBatch, edit_batch


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
    # ε of the L∞ box around the unedited matrix; None: unconstrained (EasyEdit's `norm_constraint: false`)
    norm_constraint: float | None = ranged(5e-4, above=0)
    early_stop_loss: float = ranged(1e-2, minimum=0)   # stop once the mean NLL is below this (as ROME's FT)
    objective: str = "target_new"   # one of OBJECTIVES
    weight_decay: float = ranged(0.0, minimum=0)      # Adam's (EasyEdit's files: 0)


# What the loss reads (EasyEdit's `objective_optimization`): the target's tokens teacher-forced, or
# every target token at the prompt's last position.
OBJECTIVES = ("target_new", "prompt_last")


def prompt_last_nll(batch: TokenBatch, logits: torch.Tensor) -> torch.Tensor:
    """EasyEdit's `prompt_last` loss: the log-probabilities at each prompt's last position (where
    its first target token is predicted), read for every one of its target tokens, averaged per
    sequence, then over the sequences."""
    first = torch.full((batch.n,), logits.shape[1], device=logits.device).scatter_reduce(
        0, batch.rows, batch.cols, reduce="amin")
    log_probs = torch.log_softmax(logits[batch.rows, first[batch.rows]].float(), dim=-1)
    token_nll = -log_probs[torch.arange(len(batch.labels), device=logits.device), batch.labels]
    counts = torch.bincount(batch.rows, minlength=batch.n).clamp_min(1).float()
    return (torch.zeros(batch.n, device=logits.device).index_add(0, batch.rows, token_nll) / counts).mean()


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
    # The variant's own values, under the user's overrides (FT-L and FT-M below).
    VARIANT: ClassVar[dict[str, Any]] = {}

    def __post_init__(self):
        checked = FtHparams.check_overrides({**self.VARIANT, **self.overrides})  # fail now, not at the first edit
        if checked.get("objective", "target_new") not in OBJECTIVES:
            raise ValueError(f"FT hyperparameter 'objective' must be one of {', '.join(OBJECTIVES)}, "
                             f"got {checked['objective']!r}")

    def _resolve(self, mue: ModelUnderEdit) -> FtHparams:
        hp = FtHparams.for_family(mue.family.name, {**self.VARIANT, **self.overrides}, mue.name,
                                  n_layers=mue.n_layers)
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
        box = linf_box(w0, hp.norm_constraint) if hp.norm_constraint is not None else None
        batch = edit_batch(mue, cases)
        loss_of = prompt_last_nll if hp.objective == "prompt_last" else TokenBatch.nll

        def mean_nll() -> torch.Tensor:
            return loss_of(batch, mue.model(**batch.inputs).logits)

        clock = time.perf_counter()
        grad_flags = {n: p.requires_grad for n, p in mue.model.named_parameters()}
        mue.model.requires_grad_(False)
        weight.requires_grad_(True)
        opt = torch.optim.Adam([weight], lr=hp.lr, weight_decay=hp.weight_decay)
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
                if box is not None:
                    with torch.no_grad():
                        weight.copy_(torch.maximum(torch.minimum(weight, box[1]), box[0]))
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
            "objective": hp.objective,
            "update_norm": update_norm,
            UPDATE_NORM_REL: update_rel,
            "seconds_update": time.perf_counter() - clock,
        }
        delta_w = delta.T if mue.family.weight_is_in_by_out else delta  # (out, in), as ROME's
        return EditReport(touched=[name], diagnostics=diagnostics, vectors={"delta_w": delta_w})


class FineTuneL(FineTuneLInf):
    """EasyEdit's FT-L: every target token's NLL at the prompt's last position, unconstrained."""

    name: ClassVar[str] = "ft-l"
    VARIANT: ClassVar[dict[str, Any]] = {"objective": "prompt_last", "norm_constraint": None}


class FineTuneM(FineTuneLInf):
    """EasyEdit's FT-M: the target's tokens teacher-forced, unconstrained."""

    name: ClassVar[str] = "ft-m"
    VARIANT: ClassVar[dict[str, Any]] = {"objective": "target_new", "norm_constraint": None}
