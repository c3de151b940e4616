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

The three steps are split as in the original: `subject_keys` (k̄, kᵘ), `optimize_value` (v*),
`rank_one_update` (ΔW).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal, Sequence

import torch

from editguard.cases import EditCase
from editguard.editors.api import EditReport
from editguard.editors.covariance import StatsSource, inverse_second_moment_from, plan_statistics
from editguard.editors.hparams import Hparams, ranged
from editguard.editors.keys import context_templates, fill, keys_and_values, subject_last_index
from editguard.models.forward import cache_kwargs, input_and_output_of, inputs_until, starting_at_layer
from editguard.models.loading import ModelUnderEdit, token_grid
from editguard.models.precision import precision_context
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


@dataclass
class ValueResult:
    v_star: torch.Tensor
    v_init: torch.Tensor       # the value at the unprefixed prompt before the edit
    steps: int
    loss: float
    target_prob: float         # mean P(target_new) over the rewriting prompts at the end
    losses: tuple[float, ...] = ()  # the loss at each step


class _PrefixCachedBatch:
    """Sequences split at the subject's last token: the part before it is run once and kept
    as a key/value cache, since a change at the subject cannot reach earlier positions.
    The suffixes (subject's last token onward) are run once through the layers below `layer`
    too: δ enters at `layer`'s MLP, so nothing below depends on it. Each optimisation step then
    runs only the suffixes through layers `layer`.. (with `layer=None`: through every layer)."""

    def __init__(self, mue: ModelUnderEdit, sequences: list[list[int]], lookups: list[int],
                 layer: int | None = None):
        device, pad = mue.device, mue.tokenizer.pad_token_id
        prefix_len = [lk for lk in lookups]
        suffixes = [seq[lk:] for seq, lk in zip(sequences, lookups)]
        p_width, s_width = max(prefix_len), max(len(s) for s in suffixes)
        n = len(sequences)
        suffix_ids = torch.full((n, s_width), pad, dtype=torch.long)
        suffix_mask = torch.zeros((n, s_width), dtype=torch.long)
        prefix_ids = torch.full((n, p_width), pad, dtype=torch.long)
        prefix_mask = torch.zeros((n, p_width), dtype=torch.long)
        for row, (seq, lk, suf) in enumerate(zip(sequences, lookups, suffixes)):
            suffix_ids[row, : len(suf)], suffix_mask[row, : len(suf)] = torch.tensor(suf), 1
            if lk:  # prefixes are left-padded so that every suffix starts at column p_width
                prefix_ids[row, p_width - lk :], prefix_mask[row, p_width - lk :] = torch.tensor(seq[:lk]), 1
        self.suffix_ids = suffix_ids.to(device)
        self.mask = torch.cat([prefix_mask, suffix_mask], dim=1).to(device)
        self.suffix_positions = (torch.tensor(prefix_len)[:, None] + torch.arange(s_width)[None]).to(device)
        self.cache = None
        if p_width:
            prefix_positions = (prefix_mask.cumsum(1) - 1).clamp(min=0)
            with torch.no_grad():
                out = mue.model.base_model(
                    input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device),
                    position_ids=prefix_positions.to(device), use_cache=True,
                )
            self.cache = getattr(out, "cache", None) or out.past_key_values
        self.layer = layer
        self.layer_input = None
        if layer:
            self.layer_input = inputs_until(mue, mue.module(mue.family.layer.format(layer)), **self._suffix_inputs(mue))

    def _suffix_inputs(self, mue: ModelUnderEdit) -> dict:
        return {"input_ids": self.suffix_ids, "attention_mask": self.mask, "position_ids": self.suffix_positions,
                **cache_kwargs(mue, copy.deepcopy(self.cache))}

    def hidden(self, mue: ModelUnderEdit) -> torch.Tensor:
        """Final hidden states at the suffix positions (batch, suffix width, hidden)."""
        if self.layer_input is None:
            return mue.model.base_model(**self._suffix_inputs(mue)).last_hidden_state
        return self.hidden_from(mue, self.layer, self.layer_input)

    def hidden_from(self, mue: ModelUnderEdit, start: int, start_input: torch.Tensor) -> torch.Tensor:
        """Final hidden states when layer `start` gets `start_input` and the layers below are skipped."""
        with starting_at_layer(mue, start, start_input):
            return mue.model.base_model(**self._suffix_inputs(mue)).last_hidden_state

    @torch.no_grad()
    def output_of_layer(self, mue: ModelUnderEdit) -> torch.Tensor:
        """Layer `layer`'s output at the suffix positions (the layers above it are not run)."""
        block = mue.module(mue.family.layer.format(self.layer))
        if self.layer_input is None:
            return input_and_output_of(mue, block, **self._suffix_inputs(mue))[1]
        with starting_at_layer(mue, self.layer, self.layer_input):
            return input_and_output_of(mue, block, **self._suffix_inputs(mue))[1]


class ValueObjective:
    """The v* loss as a function of δ (the vector added to layer `layer`'s MLP output at the
    subject's last token): mean NLL of target_new over the rewriting prompts, plus the KL term on
    "{subject} is a" and the weight decay. Computed as the papers define it, but only where it
    can change: prefixes and the layers below `layer` are run once (`_PrefixCachedBatch`), and the
    LM head is applied only at the positions that predict a target token and at the KL position.

    `scale_module`: see optimize_value."""

    def __init__(self, mue: ModelUnderEdit, hp: RomeHparams, layer: int, case: EditCase,
                 templates: list[str], scale_module: str | None = None):
        tok = mue.tokenizer
        self.mue, self.hp, self.layer, self.scale_module = mue, hp, layer, scale_module
        target = tok(" " + case.target_new, add_special_tokens=False)["input_ids"]
        rewrite_templates = [fill(t, case.prompt) for t in templates]
        sequences = [tok(fill(t, case.subject))["input_ids"] + target[:-1] for t in rewrite_templates]
        lookups = [subject_last_index(tok, t, case.subject) for t in rewrite_templates]
        kl_template = "{} is a"
        sequences.append(tok(fill(kl_template, case.subject))["input_ids"])
        lookups.append(subject_last_index(tok, kl_template, case.subject))
        self.batch = _PrefixCachedBatch(mue, sequences, lookups, layer)

        # Where target token j of rewriting prompt i is predicted, in suffix coordinates.
        self.n_rewrite, self.n_target = len(rewrite_templates), len(target)
        rows, cols, labels = [], [], []
        for i in range(self.n_rewrite):
            last_prompt_token = len(sequences[i]) - len(target) - lookups[i]
            for j, token in enumerate(target):
                rows.append(i), cols.append(last_prompt_token + j), labels.append(token)
        self.rows, self.cols = torch.tensor(rows, device=mue.device), torch.tensor(cols, device=mue.device)
        self.labels = torch.tensor(labels, device=mue.device)
        self.at_subject = torch.zeros(1, self.batch.suffix_ids.shape[1], 1, device=mue.device)
        self.at_subject[0, 0, 0] = 1.0  # column 0 of every suffix is the subject's last token
        self.recorded: dict[str, torch.Tensor] = {}
        self.kl_init: torch.Tensor | None = None
        self.layer_output = self._layer_output_if_additive()

    @property
    def starts_above_layer(self) -> bool:
        """Whether each step starts at layer `layer`+1 (see _layer_output_if_additive)."""
        return self.layer_output is not None

    def _layer_output_if_additive(self) -> torch.Tensor | None:
        """Layer `layer`'s output with δ = 0, when adding δ to its MLP output shifts the layer's
        output by exactly δ (the MLP output goes straight into the residual stream: every family
        but those with a norm after the MLP, as Gemma 2's and 3's). Nothing else in that layer depends on δ,
        so each step can start at the layer above from this output + δ: one layer less per step.
        Tested with a probe δ rather than assumed per family. None: each step runs the layer.
        Records v_init (and the scale) as a first step would."""
        mue = self.mue
        if self.layer + 1 >= mue.n_layers:
            return None
        zero = torch.zeros(mue.model.config.hidden_size, device=mue.device)
        with self._delta_hooks(zero):
            output = self.batch.output_of_layer(mue)
        probe = torch.randn(zero.shape, generator=torch.Generator().manual_seed(0)).to(mue.device)
        probe = probe * (self.recorded["v_init"].norm() / probe.norm())
        with self._delta_hooks(probe):
            shifted = self.batch.output_of_layer(mue)
        expected = (self.at_subject * probe).to(output.dtype)
        tolerance = 1e-5 * float(output.abs().max() + probe.abs().max())
        if float((shifted - output - expected).abs().max()) > tolerance:
            return None
        return output

    @contextlib.contextmanager
    def _delta_hooks(self, delta: torch.Tensor):
        """δ added to layer `layer`'s MLP output at the subject's last token; the first pass
        records v_init there (and, with scale_module, that module's output as the scale)."""
        mue, recorded = self.mue, self.recorded

        def add_delta(_module, _args, output):
            grid = token_grid(output, self.batch.suffix_ids.shape[0])   # OPT's MLP sees a flattened batch
            if "v_init" not in recorded:
                recorded["v_init"] = grid[0, 0].detach().float().clone()
            return (grid + (self.at_subject * delta).to(output.dtype)).view(output.shape)

        def record_scale(_module, _args, output):
            if "scale" not in recorded:
                hidden = output[0] if isinstance(output, tuple) else output
                recorded["scale"] = hidden[0, 0].detach().float().clone()

        handles = [mue.module(mue.family.mlp.format(self.layer)).register_forward_hook(add_delta)]
        if self.scale_module:
            handles.append(mue.module(self.scale_module).register_forward_hook(record_scale))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @property
    def scale(self) -> torch.Tensor:
        """The vector the decay and the clamp are relative to (known after the first call)."""
        return self.recorded.get("scale", self.recorded["v_init"])

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, NLL per rewriting prompt) at δ = `delta`."""
        mue, hp = self.mue, self.hp
        if self.layer_output is not None:
            start = self.layer_output + (self.at_subject * delta).to(self.layer_output.dtype)
            hidden = self.batch.hidden_from(mue, self.layer + 1, start)
        else:
            with self._delta_hooks(delta):
                hidden = self.batch.hidden(mue)
        # One product with the LM head for the target positions and the KL position: the head's
        # weight (vocab × hidden) is read once per pass instead of twice (a 1-row product reads it
        # all for one row: ~12 ms of a 0.7 s step on SmolLM2, forward and backward alike).
        head = mue.model.get_output_embeddings()
        n_scored = len(self.rows)
        rows = torch.cat([hidden[self.rows, self.cols], hidden[self.n_rewrite:, 0]])
        log_probs = torch.log_softmax(head(rows).float(), dim=-1)
        token_lp = log_probs[:n_scored].gather(1, self.labels[:, None])[:, 0]
        nll_per_prompt = -token_lp.view(self.n_rewrite, self.n_target).sum(1) / self.n_target
        kl_lp = log_probs[n_scored:]
        if self.kl_init is None:
            self.kl_init = kl_lp.detach().clone()
        kl = hp.kl_factor * torch.nn.functional.kl_div(self.kl_init, kl_lp, log_target=True, reduction="batchmean")
        decay = hp.v_weight_decay * (delta.norm() / self.scale.norm() ** 2)
        return nll_per_prompt.mean() + kl + decay, nll_per_prompt


@contextlib.contextmanager
def _frozen(model: torch.nn.Module):
    """No parameter of `model` requires a gradient inside; the flags are restored after."""
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(grad_flags[name])


def descend(objective, hp: RomeHparams, hidden_size: int, device: torch.device) -> ValueResult:
    """The papers' v* search over δ: Adam on `objective(δ)`, stopping as their compute_v stops —
    at the first step whose loss is below `early_stop_loss` (5e-2 in their code) or at the last
    step, before its backward pass — with δ clamped to ‖δ‖ ≤ clamp_norm_factor · ‖scale‖ after
    each step. `steps` counts the forward passes made; `losses` holds each one's loss."""
    delta = torch.zeros(hidden_size, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    losses = []
    for step in range(hp.v_num_grad_steps):
        opt.zero_grad()
        loss, nll_per_prompt = objective(delta)
        losses.append(float(loss.item()))
        if losses[-1] < hp.early_stop_loss or step == hp.v_num_grad_steps - 1:
            break
        loss.backward()
        opt.step()
        max_norm = hp.clamp_norm_factor * objective.scale.norm()
        if delta.norm() > max_norm:
            with torch.no_grad():
                delta.mul_(max_norm / delta.norm())
    v_init = objective.recorded["v_init"]
    return ValueResult(
        v_star=(v_init + delta.detach()).float(),
        v_init=v_init,
        steps=step + 1,
        loss=losses[-1],
        target_prob=float(torch.exp(-nll_per_prompt.detach()).mean()),
        losses=tuple(losses),
    )


def optimize_value(mue: ModelUnderEdit, hp: RomeHparams, layer: int, case: EditCase,
                   templates: list[str], scale_module: str | None = None) -> ValueResult:
    """v* = v + δ, δ found by Adam so that the rewriting prompts predict target_new, with a KL
    term that keeps "{subject} is a" unchanged, a weight decay on ‖δ‖ and the norm clamp.

    δ is added to the output of layer `layer`'s MLP at the subject's last token. The decay and
    the clamp are relative to the norm of the MLP's output there (ROME) or, with `scale_module`,
    to that module's output (MEMIT passes the decoder block: its v* is a residual-stream target;
    adding δ to the MLP output or to the block output is the same thing). `hp` needs the v_*
    fields (v_precision bfloat16: the passes run under autocast), clamp_norm_factor, kl_factor and
    early_stop_loss."""
    with _frozen(mue.model), precision_context(mue, hp.v_precision):
        objective = ValueObjective(mue, hp, layer, case, templates, scale_module)
        return descend(objective, hp, mue.model.config.hidden_size, mue.device)


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
        value = optimize_value(mue, hp, hp.layer, case, templates)
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

