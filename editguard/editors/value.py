"""The v* search of ROME, C-ROME, r-ROME, MEMIT and AlphaEdit (ROME's compute_v): δ added to one
layer's MLP output at the subject's last token, found by Adam so that the rewriting prompts predict
the new target, with the papers' KL term, weight decay, norm clamp and early stop.

`ValueObjective` is the loss of one or several cases as a function of their δ, computed only where
it can change (prefix cache, the layers below run once, the LM head at the scored positions);
`descend` is the papers' Adam loop over it; `optimize_values` searches cases `CASES_PER_SEARCH` at a
time, `optimize_value` one; `SearchAhead` searches a single edit's v* with those of the cases the
next single edits will get, and hands them out when their turn comes on the same model. `hp` is
any hyperparameters with the v_* fields (`v_num_grad_steps`, `v_lr`, `v_weight_decay`,
`v_precision`), `clamp_norm_factor`, `kl_factor` and `early_stop_loss`: ROME's and MEMIT's.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Sequence

import torch

from editguard.cases import EditCase
from editguard.editors.hparams import Hparams
from editguard.editors.keys import fill, subject_last_index
from editguard.models.forward import (
    cache_kwargs,
    grouped_query_attention,
    input_and_output_of,
    inputs_until,
    starting_at_layer,
)
from editguard.models.loading import ModelUnderEdit, token_grid
from editguard.models.precision import precision_context
from editguard.models.snapshot import weight_digests
from editguard.models.state import ModelState


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
    """The v* loss of each of K cases as a function of its δ (the vector added to layer `layer`'s
    MLP output at the subject's last token): mean NLL of target_new over the rewriting prompts,
    plus the KL term on "{subject} is a" and the weight decay. Computed as the papers define it,
    but only where it can change: prefixes and the layers below `layer` are run once
    (`_PrefixCachedBatch`), and the LM head is applied only at the positions that predict a
    target token and at the KL positions.

    The K cases' prompts run as one batch (rows c·(R+1) .. c·(R+1)+R are case c's R rewriting
    prompts and its KL prompt): no row attends to another, so each case's loss depends on its own
    δ only, and a 2-core CPU runs the larger products nearer its peak (bench/v_star_batching.py).
    δ is (K, hidden); the call returns each case's loss (K) and NLL per rewriting prompt (K, R).

    `scale_module`: see optimize_value."""

    KL_TEMPLATE = "{} is a"

    def __init__(self, mue: ModelUnderEdit, hp: Hparams, layer: int, cases: Sequence[EditCase],
                 templates: list[str], scale_module: str | None = None):
        tok = mue.tokenizer
        self.mue, self.hp, self.layer, self.scale_module = mue, hp, layer, scale_module
        self.n_cases, self.n_rewrite = len(cases), len(templates)
        sequences, lookups, rows, cols, labels, prompt_of_label = [], [], [], [], [], []
        self.n_target = []
        for c, case in enumerate(cases):
            first_row = len(sequences)
            target = tok(" " + case.target_new, add_special_tokens=False)["input_ids"]
            rewrite_templates = [fill(t, case.prompt) for t in templates]
            for i, template in enumerate(rewrite_templates):
                sequence = tok(fill(template, case.subject))["input_ids"] + target[:-1]
                lookup = subject_last_index(tok, template, case.subject)
                sequences.append(sequence), lookups.append(lookup)
                # Where target token j of this prompt is predicted, in suffix coordinates.
                last_prompt_token = len(sequence) - len(target) - lookup
                for j, token in enumerate(target):
                    rows.append(first_row + i), cols.append(last_prompt_token + j), labels.append(token)
                    prompt_of_label.append(c * self.n_rewrite + i)
            sequences.append(tok(fill(self.KL_TEMPLATE, case.subject))["input_ids"])
            lookups.append(subject_last_index(tok, self.KL_TEMPLATE, case.subject))
            self.n_target.append(len(target))
        self.batch = _PrefixCachedBatch(mue, sequences, lookups, layer)
        device = mue.device
        self.rows, self.cols = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        self.labels = torch.tensor(labels, device=device)
        self.prompt_of_label = torch.tensor(prompt_of_label, device=device)
        self.targets_per_prompt = torch.tensor(self.n_target, device=device).repeat_interleave(self.n_rewrite)
        rows_per_case = self.n_rewrite + 1
        self.case_of_row = torch.arange(self.n_cases, device=device).repeat_interleave(rows_per_case)
        self.first_rows = torch.arange(self.n_cases, device=device) * rows_per_case   # each case's "{}" prompt
        self.kl_rows = self.first_rows + self.n_rewrite
        self.at_subject = torch.zeros(1, self.batch.suffix_ids.shape[1], 1, device=device)
        self.at_subject[0, 0, 0] = 1.0  # column 0 of every suffix is the subject's last token
        self.recorded: dict[str, torch.Tensor] = {}
        self.kl_init: torch.Tensor | None = None
        self.layer_output = self._layer_output_if_additive()

    @property
    def starts_above_layer(self) -> bool:
        """Whether each step starts at layer `layer`+1 (see _layer_output_if_additive)."""
        return self.layer_output is not None

    def _shift(self, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(rows, suffix width, hidden): each row's case's δ at the subject's last token, 0 elsewhere."""
        return (self.at_subject * delta[self.case_of_row][:, None, :]).to(dtype)

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
        zero = torch.zeros(self.n_cases, mue.model.config.hidden_size, device=mue.device)
        with self._delta_hooks(zero):
            output = self.batch.output_of_layer(mue)
        probe = torch.randn(zero.shape[1:], generator=torch.Generator().manual_seed(0)).to(mue.device)
        probe = probe * (self.recorded["v_init"].norm(dim=1, keepdim=True) / probe.norm())
        with self._delta_hooks(probe):
            shifted = self.batch.output_of_layer(mue)
        expected = self._shift(probe, output.dtype)
        tolerance = 1e-5 * float(output.abs().max() + probe.abs().max())
        if float((shifted - output - expected).abs().max()) > tolerance:
            return None
        return output

    @contextlib.contextmanager
    def _delta_hooks(self, delta: torch.Tensor):
        """δ (K, hidden) added to layer `layer`'s MLP output at each subject's last token; the
        first pass records each case's v_init there (and, with scale_module, that module's output
        as the scale)."""
        mue, recorded = self.mue, self.recorded

        def add_delta(_module, _args, output):
            grid = token_grid(output, self.batch.suffix_ids.shape[0])   # OPT's MLP sees a flattened batch
            if "v_init" not in recorded:
                recorded["v_init"] = grid[self.first_rows, 0].detach().float().clone()
            return (grid + self._shift(delta, output.dtype)).view(output.shape)

        def record_scale(_module, _args, output):
            if "scale" not in recorded:
                hidden = output[0] if isinstance(output, tuple) else output
                recorded["scale"] = hidden[self.first_rows, 0].detach().float().clone()

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
        """The vectors (K, hidden) the decay and the clamp are relative to (known after the first call)."""
        return self.recorded.get("scale", self.recorded["v_init"])

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss per case (K), NLL per rewriting prompt (K, R)) at δ = `delta` (K, hidden)."""
        mue, hp = self.mue, self.hp
        if self.layer_output is not None:
            start = self.layer_output + self._shift(delta, self.layer_output.dtype)
            hidden = self.batch.hidden_from(mue, self.layer + 1, start)
        else:
            with self._delta_hooks(delta):
                hidden = self.batch.hidden(mue)
        # One product with the LM head for the target positions and the KL positions: the head's
        # weight (vocab × hidden) is read once per pass instead of twice (a 1-row product reads it
        # all for one row: ~12 ms of a 0.7 s step on SmolLM2, forward and backward alike).
        head = mue.model.get_output_embeddings()
        n_scored = len(self.rows)
        rows = torch.cat([hidden[self.rows, self.cols], hidden[self.kl_rows, 0]])
        log_probs = torch.log_softmax(head(rows).float(), dim=-1)
        token_lp = log_probs[:n_scored].gather(1, self.labels[:, None])[:, 0]
        nll_sum = torch.zeros(self.n_cases * self.n_rewrite, device=token_lp.device).index_add(
            0, self.prompt_of_label, -token_lp)
        nll_per_prompt = (nll_sum / self.targets_per_prompt).view(self.n_cases, self.n_rewrite)
        kl_lp = log_probs[n_scored:]
        if self.kl_init is None:
            self.kl_init = kl_lp.detach().clone()
        # kl_div's "batchmean" over one KL prompt per case: the sum over the vocabulary.
        kl = hp.kl_factor * torch.nn.functional.kl_div(self.kl_init, kl_lp, log_target=True,
                                                       reduction="none").sum(-1)
        decay = hp.v_weight_decay * (delta.norm(dim=1) / self.scale.norm(dim=1) ** 2)
        return nll_per_prompt.mean(1) + kl + decay, nll_per_prompt


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


def descend(objective, hp: Hparams, hidden_size: int, device: torch.device) -> list[ValueResult]:
    """The papers' v* search over each case's δ: Adam on `objective(δ)` (δ: cases × hidden; the
    objective returns each case's loss and NLL per prompt), each case stopping as their compute_v
    stops — at the first step whose loss is below `early_stop_loss` (5e-2 in their code) or at
    the last step, before its backward pass — with δ clamped to ‖δ‖ ≤ clamp_norm_factor · ‖scale‖
    after each step. Adam works element by element, so one Adam over the K cases' δ makes each
    case's steps what an Adam of its own would; a case that has stopped keeps its δ (its row is
    put back after each later step). `steps` counts the forward passes made for that case;
    `losses` holds each one's loss."""
    n_cases = objective.n_cases
    delta = torch.zeros(n_cases, hidden_size, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    losses: list[list[float]] = [[] for _ in range(n_cases)]
    stopped: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}   # case -> (steps, δ, NLL per prompt)
    for step in range(hp.v_num_grad_steps):
        opt.zero_grad()
        loss, nll_per_prompt = objective(delta)
        values = loss.tolist()
        active = [c for c in range(n_cases) if c not in stopped]
        for c in active:
            losses[c].append(float(values[c]))
            if losses[c][-1] < hp.early_stop_loss or step == hp.v_num_grad_steps - 1:
                stopped[c] = (step + 1, delta[c].detach().clone(), nll_per_prompt[c].detach())
        active = [c for c in active if c not in stopped]
        if not active:
            break
        loss[active].sum().backward()
        opt.step()
        with torch.no_grad():
            for c, (_steps, kept, _nll) in stopped.items():
                delta[c] = kept
            max_norm = hp.clamp_norm_factor * objective.scale.norm(dim=1)
            for c in active:
                if delta[c].norm() > max_norm[c]:
                    delta[c].mul_(max_norm[c] / delta[c].norm())
    v_init = objective.recorded["v_init"]
    results = []
    for c in range(n_cases):
        steps, kept, nll = stopped[c]
        results.append(ValueResult(
            v_star=(v_init[c] + kept).float(),
            v_init=v_init[c],
            steps=steps,
            loss=losses[c][-1],
            target_prob=float(torch.exp(-nll).mean()),
            losses=tuple(losses[c]),
        ))
    return results


# Cases whose v* searches share one batch: on a 2-core AMD EPYC, four HardCF cases' step took 2.39 s
# in one batch against 2.73 s one by one, their whole searches 62 s against 72 (SmolLM2-135M); eight
# copies of a case cost no less per case than four (bench/v_star_batching.py).
CASES_PER_SEARCH = 4


def optimize_values(mue: ModelUnderEdit, hp: Hparams, layer: int, cases: Sequence[EditCase],
                    templates: list[str], scale_module: str | None = None,
                    cases_per_search: int = CASES_PER_SEARCH) -> list[ValueResult]:
    """Each case's v* (see optimize_value), `cases_per_search` cases searched in one batch."""
    results = []
    with _frozen(mue.model), precision_context(mue, hp.v_precision), grouped_query_attention(mue):
        for start in range(0, len(cases), cases_per_search):
            objective = ValueObjective(mue, hp, layer, cases[start : start + cases_per_search], templates,
                                       scale_module)
            results.extend(descend(objective, hp, mue.model.config.hidden_size, mue.device))
    return results


def optimize_value(mue: ModelUnderEdit, hp: Hparams, layer: int, case: EditCase,
                   templates: list[str], scale_module: str | None = None) -> ValueResult:
    """v* = v + δ, δ found by Adam so that the rewriting prompts predict target_new, with a KL
    term that keeps "{subject} is a" unchanged, a weight decay on ‖δ‖ and the norm clamp.

    δ is added to the output of layer `layer`'s MLP at the subject's last token. The decay and
    the clamp are relative to the norm of the MLP's output there (ROME) or, with `scale_module`,
    to that module's output (MEMIT passes the decoder block: its v* is a residual-stream target;
    adding δ to the MLP output or to the block output is the same thing). `hp` needs the v_*
    fields (v_precision bfloat16: the passes run under autocast), clamp_norm_factor, kl_factor and
    early_stop_loss."""
    return optimize_values(mue, hp, layer, [case], templates, scale_module)[0]


def _value_inputs(case: EditCase) -> tuple[str, str, str]:
    """What of a case its v* depends on (with the model, hp, layer and templates)."""
    return case.prompt, case.subject, case.target_new


@dataclass
class _ModelAtSearch:
    """The model a batch of v* was searched on: every weight's digest, everything else of the model
    under edit (models.state), and the search's own inputs."""

    digests: dict[str, str]
    state: ModelState
    inputs: tuple

    def matches(self, mue: ModelUnderEdit, inputs: tuple) -> bool:
        return inputs == self.inputs and weight_digests(mue.model) == self.digests and not self.state.changes(mue)


class SearchAhead:
    """A single edit's v* searched in one batch with those of the next cases (`upcoming`), up to
    CASES_PER_SEARCH in all: a harness restores the model after each single edit, so the next
    cases start from the model this one starts from. A case's v* found ahead is used only when
    the model is the one it was searched on — same weights (digests), same hooks, modules,
    settings and tokenizer (models.state.ModelState), same hyperparameters, layer and templates —
    and is searched again otherwise. A batch that fails (a later case malformed, say) is searched
    again for the current case alone, so an error stays with its own case.

    `value` returns the v* and a note for the report: "alone", "with <ids>" (this edit's batch) or
    "ahead, during <id>" (found while an earlier case was edited)."""

    def __init__(self, cases_per_search: int = CASES_PER_SEARCH):
        self.cases_per_search = cases_per_search
        self.next_cases: list[EditCase] = []
        self.found: dict[tuple[str, str, str], tuple[ValueResult, str]] = {}
        self.model_at_search: _ModelAtSearch | None = None

    def upcoming(self, cases: Sequence[EditCase]) -> None:
        self.next_cases = list(cases)

    def value(self, mue: ModelUnderEdit, hp: Hparams, layer: int, case: EditCase, templates: list[str],
              scale_module: str | None = None) -> tuple[ValueResult, str]:
        inputs = (mue.fingerprint, hp, layer, tuple(templates), scale_module)
        ahead = self.found.pop(_value_inputs(case), None)
        if ahead is not None and self.model_at_search.matches(mue, inputs):
            return ahead
        self.found, self.model_at_search = {}, None
        batch, seen = [case], {_value_inputs(case)}
        for later in self.next_cases:
            if len(batch) == self.cases_per_search:
                break
            if _value_inputs(later) not in seen:
                batch.append(later), seen.add(_value_inputs(later))
        self.next_cases = []   # told again before the next edit
        if len(batch) > 1:
            at_search = _ModelAtSearch(weight_digests(mue.model), ModelState(mue), inputs)
            try:
                results = optimize_values(mue, hp, layer, batch, templates, scale_module,
                                          cases_per_search=len(batch))
            except Exception:
                results = None   # searched again alone below: the error, if any, is this case's
            if results is not None:
                ids = ", ".join(str(c.case_id) for c in batch[1:])
                self.found = {_value_inputs(c): (r, f"ahead, during {case.case_id}")
                              for c, r in zip(batch[1:], results[1:])}
                self.model_at_search = at_search
                return results[0], f"with {ids}"
        return optimize_value(mue, hp, layer, case, templates, scale_module), "alone"
