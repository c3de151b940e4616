"""ROME (Meng et al. 2022) and C-ROME ("The Fall of ROME", Yang et al. 2024).

The update rewrites the MLP output projection W of one layer so that the subject's key maps to
a new value v*:

    ΔW = (v* − W k) (C⁻¹k̄)ᵀ / ((C⁻¹k̄)ᵀ k)

k̄ is the subject key averaged over context templates ("{}" and 20 model-generated prefixes).
ROME as published (and as the papers ran it) plugs the *unprefixed* key kᵘ into k; when the
subject is the prompt's first token kᵘ is far from k̄, the denominator nearly vanishes and the
update explodes. C-ROME uses k̄ for k as well, and tests its edit behind a prefix. r-ROME
(Gupta et al. 2024, "Rebuilding ROME") makes the same update as C-ROME but tests the edit on the
bare prompt.

The three steps are split as in the original: `subject_keys` (k̄, kᵘ), `optimize_value` (v*, in
editguard.editors.value, which MEMIT and AlphaEdit share), `rank_one_update` (ΔW).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal, Sequence

import torch

from editguard.cases import EditCase
from editguard.editors.api import EditReport
from editguard.editors.covariance import StatsSource, inverse_second_moment_from, plan_statistics
from editguard.editors.hparams import Hparams, ranged
from editguard.editors.keys import context_templates, fill, keys_and_values
from editguard.editors.value import SearchAhead
from editguard.models.loading import ModelUnderEdit
from editguard.options import UPDATE_NORM_REL

# The ROME/EasyEdit configs the papers used (gpt2-xl.yaml, gpt-j-6B.yaml, llama-7b.yaml).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"v_num_grad_steps": 20, "v_weight_decay": 0.5},
    "gptj": {"v_num_grad_steps": 20, "v_weight_decay": 0.5},
    "llama": {"v_num_grad_steps": 25, "v_weight_decay": 1e-3},
}


@dataclass(frozen=True)
class RomeHparams(Hparams):
    EDITOR: ClassVar[str] = "ROME"
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = FAMILY_DEFAULTS

    layer: int | None = ranged(None, minimum=0)          # None: the model's registered edit layer
    v_num_grad_steps: int = ranged(25, minimum=1)
    v_lr: float = ranged(0.5, above=0)
    v_weight_decay: float = ranged(1e-3, minimum=0)
    clamp_norm_factor: float = ranged(4.0, above=0)    # ‖v* − v‖ ≤ clamp · ‖v‖
    kl_factor: float = ranged(0.0625, minimum=0)
    early_stop_loss: float = ranged(5e-2, minimum=0)
    # Precision of the v* search's forward and backward passes (--editguard-edit-precision sets it):
    # bfloat16 is autocast on a float32 model; v*, keys and the update stay float32.
    v_precision: Literal["float32", "bfloat16", "float16"] = "float32"
    mom2_adjustment: bool = False     # the papers ran EasyEdit's default (off); ROME's paper: on
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
    context_template_length_params: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    template_seed: int = 0


@dataclass
class SubjectKeys:
    k_bar: torch.Tensor        # mean key over all context templates
    v_bar: torch.Tensor        # mean value (W k̄ + b) over the same
    k_unprefixed: torch.Tensor
    v_unprefixed: torch.Tensor


def subject_keys(mue: ModelUnderEdit, layer: int, case: EditCase, templates: list[str]) -> SubjectKeys:
    keys, values = keys_and_values(mue, layer, [fill(t, case.prompt) for t in templates], case.subject)
    plain_key, plain_value = keys_and_values(mue, layer, [case.prompt], case.subject)
    return SubjectKeys(keys.mean(0), values.mean(0), plain_key[0], plain_value[0])


def rank_one_update(v_star: torch.Tensor, value: torch.Tensor, key: torch.Tensor,
                    left: torch.Tensor) -> torch.Tensor:
    """ΔW (out × in) with ΔW key = v* − value and ΔW x ∝ leftᵀx for every x."""
    return torch.outer(v_star - value, left) / torch.dot(left, key)


@dataclass
class ROME:
    """ROME; with `consistent=True` C-ROME; with `consistent=True, prefix_at_test=False` r-ROME.
    One edit at a time (ROME is single-edit).

    C-ROME and r-ROME make the same update: the prefix-averaged key k̄ in the numerator
    (v* − W k̄) and in the denominator ((C⁻¹k̄)ᵀk̄). They differ in how the edit is tested:
    C-ROME ("The Fall of ROME") also prepends one of its context-template prefixes to the prompt
    at test time (`EditReport.test_prefix`); r-ROME ("Rebuilding ROME", Gupta et al. 2024) tests
    on the bare prompt, so its efficacy is measured where the user will query the model.
    """

    consistent: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: Any = None
    prefix_at_test: bool = True   # consistent editors only: C-ROME (True) or r-ROME (False)
    _statistics: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _search_ahead: SearchAhead = field(default_factory=SearchAhead, init=False, repr=False, compare=False)

    def __post_init__(self):
        RomeHparams.check_overrides(self.overrides)  # fail at construction, not at the first edit

    @property
    def name(self) -> str:
        if not self.consistent:
            return "rome"
        return "c-rome" if self.prefix_at_test else "r-rome"

    def hparams(self, mue: ModelUnderEdit) -> dict[str, Any]:
        hp = self._resolve(mue)
        return {**asdict(hp), "consistent_keys": self.consistent,
                "prefix_at_test": self.consistent and self.prefix_at_test}

    def _resolve(self, mue: ModelUnderEdit) -> RomeHparams:
        hp = RomeHparams.for_family(mue.family.name, self.overrides, mue.name, n_layers=mue.n_layers)
        return hp if hp.layer is not None else replace(hp, layer=mue.edit_layer)

    def touched_parameters(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> list[str]:
        return [mue.family.rewrite_weight(self._resolve(mue).layer)]

    def statistics(self, mue: ModelUnderEdit) -> str:
        """C⁻¹ found (or computed) and checked now, or why none is needed: the run header's sentence
        (worked out once per model)."""
        if mue.fingerprint not in self._statistics:
            hp = self._resolve(mue)
            self._statistics[mue.fingerprint] = plan_statistics(
                mue, hp, [hp.layer], self.data_dir, used=hp.mom2_adjustment, inverse=True,
                why_unused=f"{self.name} with mom2_adjustment false uses no second moment")
        return self._statistics[mue.fingerprint]

    def prepare(self, mue: ModelUnderEdit) -> None:
        self.statistics(mue)

    def upcoming(self, cases: Sequence[EditCase]) -> None:
        """The cases of the next single edits: their v* are searched in one batch with the next
        edit's (editors.value.SearchAhead; on a 2-core CPU four cases' searches took 62 s in one
        batch against 72 s one by one)."""
        self._search_ahead.upcoming(cases)

    def apply(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        if len(cases) != 1:
            raise ValueError(f"{self.name} applies one edit at a time; got {len(cases)} cases "
                             f"(apply them one by one for sequential editing)")
        case = cases[0]
        hp = self._resolve(mue)
        clock = time.perf_counter()
        templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
        keys = subject_keys(mue, hp.layer, case, templates)
        seconds_keys, clock = time.perf_counter() - clock, time.perf_counter()
        value, v_star_search = self._search_ahead.value(mue, hp, hp.layer, case, templates)
        seconds_value, clock = time.perf_counter() - clock, time.perf_counter()
        left = keys.k_bar
        if hp.mom2_adjustment:
            left = inverse_second_moment_from(mue, hp.layer, StatsSource.of(hp), self.data_dir) @ left
        k_used, value_used = (keys.k_bar, keys.v_bar) if self.consistent else (keys.k_unprefixed, keys.v_unprefixed)
        delta_w = rank_one_update(value.v_star, value_used, k_used, left)
        weight = mue.rewrite_matrix(hp.layer)
        weight_norm = float(weight.detach().float().norm())
        with torch.no_grad():
            weight.add_(delta_w.to(weight.dtype))

        seconds_update = time.perf_counter() - clock

        unit = left / left.norm()
        denominator = float(unit @ k_used)
        denominator_kbar = float(unit @ keys.k_bar)
        diagnostics = {
            "layer": hp.layer,
            "numerator_norm": float((value.v_star - value_used).norm()),
            "denominator": denominator,
            "denominator_kbar": denominator_kbar,
            "denominator_unprefixed": float(unit @ keys.k_unprefixed),
            "denominator_ratio": denominator / denominator_kbar,
            "key_cosine": float(torch.nn.functional.cosine_similarity(keys.k_bar, keys.k_unprefixed, dim=0)),
            "key_rel_distance": float((keys.k_unprefixed - keys.k_bar).norm() / keys.k_bar.norm()),
            "update_norm": float(delta_w.norm()),
            UPDATE_NORM_REL: float(delta_w.norm()) / weight_norm,
            "v_star_norm": float(value.v_star.norm()),
            "v_init_norm": float(value.v_init.norm()),
            "v_steps": value.steps,
            "v_loss": value.loss,
            "v_target_prob": value.target_prob,
            # "alone", "with <ids>" (this edit searched their v* too: seconds_v_star counts theirs) or
            # "ahead, during <id>" (searched in that case's edit: seconds_v_star is only the check)
            "v_star_search": v_star_search,
            "seconds_keys": seconds_keys,
            "seconds_v_star": seconds_value,
            "seconds_update": seconds_update,
        }
        return EditReport(
            touched=[mue.family.rewrite_weight(hp.layer)],
            diagnostics=diagnostics,
            vectors={"k_bar": keys.k_bar, "k_unprefixed": keys.k_unprefixed, "v_star": value.v_star,
                     "left": left, "delta_w": delta_w},
            # The paper's test-time cure: C-ROME's edit is read behind a prefix like its templates.
            test_prefix=(fill(templates[1], "") if self.consistent and self.prefix_at_test and len(templates) > 1
                         else ""),
        )

