"""MEMIT (Meng et al., "Mass-Editing Memory in a Transformer", ICLR 2023): many edits at once,
spread over a range of layers.

For a batch of cases and critical layers l₁ < … < l_L:

1. For each case, a target z for the residual stream at the output of block l_L, at the
   subject's last token: z = h + δ, δ found as ROME finds v* (`value.optimize_values`, decay and
   clamp relative to ‖h‖).
2. For each layer l = l₁ … l_L in turn, on the model as the earlier layers' updates left it:
   K = the keys at l (inputs of the MLP output projection at the subject's last token, averaged
   over context templates), one column per case; R = (z − h_L) / (number of layers left), the
   remaining residual at l_L spread evenly over the layers still to edit; and

       ΔW_l = R Kᵀ (λ C_l + K Kᵀ)⁻¹

   with C_l = E[k kᵀ] over a text corpus (`covariance.second_moment`) and λ =
   `mom2_update_weight`. Each column of R is a case, so rank(ΔW_l) ≤ number of cases.

AlphaEdit (`alphaedit.py`) shares steps 1–2 and replaces the solve.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal, Sequence

import torch

from editguard.cases import EditCase
from editguard.editors.api import EditReport
from editguard.editors.covariance import StatsSource, plan_statistics, second_moment_from
from editguard.editors.hparams import Hparams, ranged
from editguard.editors.keys import (
    capture_io,
    context_templates,
    encode_batch,
    fill,
    keys_and_values,
    subject_last_index,
)
from editguard.editors.value import optimize_values
from editguard.models.loading import ModelUnderEdit
from editguard.options import UPDATE_NORM_REL

# The critical layers of the papers' configs: MEMIT's gpt2-xl.json (13–17) and
# EleutherAI_gpt-j-6B.json (3–8), EasyEdit's MEMIT llama-7b.yaml (4–8).
FAMILY_LAYERS: dict[str, tuple[int, ...]] = {
    "gpt2": (13, 14, 15, 16, 17),
    "gptj": (3, 4, 5, 6, 7, 8),
    "llama": (4, 5, 6, 7, 8),
}
# SmolLM2-135M's layers, measured as MEMIT chose its ranges (bench/causal_trace.py): the MLP
# windows at the subject's last token carry the most indirect effect at layers 6–10 once layer 0
# (a second embedding) is left out (bench/results/causal-trace-smollm2-135m.json).
SMOLLM2_LAYERS = (6, 7, 8, 9, 10)
# Gemma 3 270M's, measured the same way: the best five-layer window is 3–7 (mean indirect effect
# 0.072; peak at layer 5, ROME's edit layer) (bench/results/causal-trace-gemma3-270m.json).
GEMMA3_LAYERS = (3, 4, 5, 6, 7)


def default_layers(mue: ModelUnderEdit) -> tuple[int, ...]:
    """The family's critical layers where the model has them; for a smaller model (the 4-layer
    tiny test models, GPT-2 small) as many consecutive layers as fit in half the model, at most
    as many as the family's range, starting at the model's edit layer (tiny models: [1, 2]).
    A model measured for its own range sets `layers` in the editor's MODEL_DEFAULTS instead."""
    wanted = FAMILY_LAYERS.get(mue.family.name, (mue.edit_layer,))
    n = mue.n_layers
    if max(wanted) < n:
        return wanted
    count = min(len(wanted), max(1, n // 2))
    start = max(0, min(mue.edit_layer, n - count))
    return tuple(range(start, start + count))


@dataclass(frozen=True)
class LayerRangeHparams(Hparams):
    """Hyperparameters shared by MEMIT and AlphaEdit (their v* search is ROME's)."""

    MODEL_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"smollm2-135m": {"layers": SMOLLM2_LAYERS},
                                                           "gemma3-270m": {"layers": GEMMA3_LAYERS}}

    layers: tuple[int, ...] | None = ranged(None, minimum=0)   # None: the family's critical layers (see default_layers)
    v_num_grad_steps: int = ranged(25, minimum=1)
    v_lr: float = ranged(0.5, above=0)
    v_weight_decay: float = ranged(1e-3, minimum=0)
    clamp_norm_factor: float = ranged(4.0, above=0)          # ‖δ‖ ≤ clamp · ‖h‖ (h: block output at l_L)
    kl_factor: float = ranged(0.0625, minimum=0)
    early_stop_loss: float = ranged(5e-2, minimum=0)
    # Precision of the v* search's forward and backward passes (--editguard-edit-precision sets it):
    # bfloat16 is autocast on a float32 model; v*, keys and the update stay float32.
    v_precision: Literal["float32", "bfloat16", "float16"] = "float32"
    mom2_corpus: str = "wikitext-2-raw"
    mom2_n_tokens: int = ranged(100_000, minimum=1)
    # ROME/MEMIT's downloaded statistics instead of the corpus (--editguard-stats-dir; covariance.find_stats_file)
    mom2_stats_dir: str | None = None
    # EasyEdit's choice of statistics: the file's dataset folder (wikipedia, wikitext, wikitext2), its
    # sample count and precision (None: any, when one file fits). Without a statistics directory,
    # mom2_n_samples counts texts of mom2_corpus, as in EasyEdit (and replaces mom2_n_tokens).
    mom2_dataset: str | None = None
    mom2_n_samples: int | None = ranged(None, minimum=1)
    mom2_dtype: str | None = None
    # MEMIT's context templates: "{}" plus 5 generated prefixes of 10 tokens (memit_main.py).
    context_template_length_params: tuple[tuple[int, int], ...] = ((10, 5),)
    template_seed: int = 0


@dataclass(frozen=True)
class MemitHparams(LayerRangeHparams):
    EDITOR: ClassVar[str] = "MEMIT"
    # MEMIT's hparams/MEMIT/gpt2-xl.json and EleutherAI_gpt-j-6B.json; EasyEdit's
    # hparams/MEMIT/llama-7b.yaml.
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "gpt2": {"v_num_grad_steps": 20, "v_weight_decay": 0.5, "clamp_norm_factor": 0.75,
                 "mom2_update_weight": 20000.0},
        "gptj": {"v_num_grad_steps": 25, "v_weight_decay": 0.5, "clamp_norm_factor": 0.75,
                 "mom2_update_weight": 15000.0},
        "llama": {"v_num_grad_steps": 25, "v_weight_decay": 1e-3, "clamp_norm_factor": 4.0,
                  "mom2_update_weight": 15000.0},
    }

    # λ weighs C (mean kkᵀ) against the edit's keys: one key closes a fraction s/(1+s) of its
    # residual, s = kᵀ(λC)⁻¹k ≈ (key width)/λ. GPT-J's 15000 with 16,384-wide keys gives s ≈ 1;
    # on SmolLM2's 1,536-wide keys it gives s ≈ 0.1, and the edits fell short (efficacy 4/10 on
    # normal cases). λ = 1500 restores s ≈ 1: 5/5 on normal cases at unchanged perplexity
    # (150: 5/5 too; see docs/concepts/editors.md).
    MODEL_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        **LayerRangeHparams.MODEL_DEFAULTS,
        "smollm2-135m": {**LayerRangeHparams.MODEL_DEFAULTS["smollm2-135m"], "mom2_update_weight": 1500.0}}

    mom2_update_weight: float = 15000.0     # λ in ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹


@torch.no_grad()
def block_outputs(mue: ModelUnderEdit, layer: int, cases: Sequence[EditCase]) -> torch.Tensor:
    """The residual stream after decoder block `layer` at each case's subject's last token, on
    the bare prompt; (cases, hidden), float32."""
    block = mue.module(mue.family.layer.format(layer))
    idx = torch.tensor([subject_last_index(mue.tokenizer, c.prompt, c.subject) for c in cases], device=mue.device)
    with capture_io(block) as seen:
        mue.model(**encode_batch(mue, [fill(c.prompt, c.subject) for c in cases]))
    hidden = seen["output"][0] if isinstance(seen["output"], tuple) else seen["output"]
    return hidden[torch.arange(len(cases), device=mue.device), idx].float()


def case_keys(mue: ModelUnderEdit, layer: int, cases: Sequence[EditCase], templates: list[str]) -> torch.Tensor:
    """Keys at `layer`, each case's averaged over the context templates; (in, cases), float32."""
    columns = [keys_and_values(mue, layer, [fill(t, c.prompt) for t in templates], c.subject)[0].mean(0)
               for c in cases]
    return torch.stack(columns, dim=1)


def memit_solve(residual: torch.Tensor, keys: torch.Tensor, mom2: torch.Tensor, weight: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹ (out × in), computed in float64."""
    k, r = keys.double(), residual.double()
    gram = weight * mom2.double() + k @ k.T
    # (λC + KKᵀ) is symmetric, so ΔWᵀ = (λC + KKᵀ)⁻¹ K Rᵀ.
    return torch.linalg.solve(gram, k @ r.T).T.float()


@dataclass
class MEMIT:
    """MEMIT: a batch of edits spread over `layers` (one `apply` with several cases)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: Any = None
    _statistics: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    name: ClassVar[str] = "memit"
    batch_edits: ClassVar[bool] = True   # several cases per apply() (--batch-size)
    HPARAMS: ClassVar[type[LayerRangeHparams]] = MemitHparams

    def __post_init__(self):
        self.HPARAMS.check_overrides(self.overrides)  # fail at construction, not at the first edit

    def _resolve(self, mue: ModelUnderEdit):
        hp = self.HPARAMS.for_family(mue.family.name, self.overrides, mue.name, n_layers=mue.n_layers)
        if hp.layers is None:
            return replace(hp, layers=default_layers(mue))
        bad = [layer for layer in hp.layers if not 0 <= layer < mue.n_layers]
        if not hp.layers or bad or list(hp.layers) != sorted(set(hp.layers)):
            raise ValueError(f"{self.HPARAMS.EDITOR} layers {list(hp.layers)}: need distinct increasing layers "
                             f"within model {mue.name}'s 0..{mue.n_layers - 1}")
        return hp

    def hparams(self, mue: ModelUnderEdit) -> dict[str, Any]:
        return asdict(self._resolve(mue))

    def touched_parameters(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> list[str]:
        return [mue.family.rewrite_weight(layer) for layer in self._resolve(mue).layers]

    def _layer_update(self, mue: ModelUnderEdit, hp, layer: int, keys: torch.Tensor,
                      residual: torch.Tensor, diagnostics: dict[str, Any]) -> torch.Tensor:
        mom2 = second_moment_from(mue, layer, StatsSource.of(hp), self.data_dir)
        return memit_solve(residual, keys, mom2, hp.mom2_update_weight)

    def _second_moments(self, mue: ModelUnderEdit, hp) -> None:
        """Every layer's C, before any layer is written: C is the UNEDITED model's key statistics
        (cached under its fingerprint), and the keys of a layer above an updated one would not be."""
        for layer in hp.layers:
            second_moment_from(mue, layer, StatsSource.of(hp), self.data_dir)

    def statistics(self, mue: ModelUnderEdit) -> str:
        """Every layer's C found (or computed) and checked now: the run header's sentence (worked
        out once per model)."""
        if mue.fingerprint not in self._statistics:
            hp = self._resolve(mue)
            sentence = plan_statistics(mue, hp, hp.layers, self.data_dir)
            self._second_moments(mue, hp)
            self._statistics[mue.fingerprint] = sentence
        return self._statistics[mue.fingerprint]

    def prepare(self, mue: ModelUnderEdit) -> None:
        self.statistics(mue)

    def _after_layer(self, mue: ModelUnderEdit, hp, layer: int, keys: torch.Tensor) -> None:
        """Called once the update of `layer` is written (AlphaEdit remembers the keys)."""

    def apply(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        if not cases:
            raise ValueError(f"{self.name}: no cases to apply")
        hp = self._resolve(mue)
        last = hp.layers[-1]
        self._second_moments(mue, hp)
        clock = time.perf_counter()
        templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
        values = optimize_values(mue, hp, last, cases, templates, scale_module=mue.family.layer.format(last))
        deltas = torch.stack([v.v_star - v.v_init for v in values])
        targets = block_outputs(mue, last, cases) + deltas        # z, (cases, hidden)
        seconds_value, clock = time.perf_counter() - clock, time.perf_counter()

        diagnostics: dict[str, Any] = {
            "layers": list(hp.layers),
            "n_cases": len(cases),
            "v_steps": max(v.steps for v in values),
            "v_loss": max(v.loss for v in values),
            "v_target_prob": min(v.target_prob for v in values),
            "delta_norm": float(deltas.norm(dim=1).max()),
        }
        vectors: dict[str, torch.Tensor] = {"z": targets}
        worst_rel = 0.0
        for i, layer in enumerate(hp.layers):
            keys = case_keys(mue, layer, cases, templates)
            residual = (targets - block_outputs(mue, last, cases)).T / (len(hp.layers) - i)   # (hidden, cases)
            if i == 0:
                diagnostics["residual_norm_initial"] = float((residual * len(hp.layers)).norm(dim=0).mean())
            delta_w = self._layer_update(mue, hp, layer, keys, residual, diagnostics)
            weight = mue.rewrite_matrix(layer)
            rel = float(delta_w.norm() / weight.detach().float().norm())
            with torch.no_grad():
                weight.add_(delta_w.to(weight.dtype))
            self._after_layer(mue, hp, layer, keys)
            diagnostics[f"update_norm_layer{layer}"] = float(delta_w.norm())
            diagnostics[f"update_norm_rel_layer{layer}"] = rel
            worst_rel = max(worst_rel, rel)
            vectors[f"keys_layer{layer}"] = keys
            vectors[f"delta_w_layer{layer}"] = delta_w
        diagnostics["residual_norm_final"] = float((targets - block_outputs(mue, last, cases)).norm(dim=1).mean())
        diagnostics[UPDATE_NORM_REL] = worst_rel
        diagnostics["seconds_v_star"] = seconds_value
        diagnostics["seconds_update"] = time.perf_counter() - clock
        return EditReport(touched=self.touched_parameters(mue, cases), diagnostics=diagnostics, vectors=vectors)
