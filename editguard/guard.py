"""One guarded edit: snapshot, edit, probe, judge, restore (verified).

    baseline = measure_baseline(model, sentences)
    result = check(model, editor, case, baseline)
    assert result.passed, result.explanation
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from editguard.cache import cache_dir, cache_key, cached_json, safe_name
from editguard.cases import EditCase
from editguard.editors.api import Editor, checked_report, reset_editor, tell_upcoming
from editguard.errors import EditorError
from editguard.gates import Thresholds, Verdict, downstream_gates, is_collapsed, judge
from editguard.metrics.anatomy import blast_radius_skipped, normal_text_keys, update_anatomy
from editguard.metrics.efficacy import PromptHits, edit_scores, efficacy
from editguard.metrics.perplexity import (
    PerplexityInputError,
    PerplexityResult,
    add_bos_for,
    encode_sentences,
    perplexity,
)
from editguard.models.loading import ModelUnderEdit
from editguard.models.snapshot import PristineModel, RestoreError, WeightSnapshot
from editguard.models.state import ModelState
from editguard.options import DEFAULT_PPL_BOS, SEQUENCE_ON_ERROR, UPDATE_NORM_REL
from editguard.restore import RestorePoint, StateChanged, put_back_cases, put_back_state
from editguard.run.records import ANATOMY_FIELDS, CaseRecord
from editguard.tokens import check_case_fits, fits


@dataclass
class Baseline:
    """The unedited model's measurements, taken once per session."""

    ppl: PerplexityResult
    sentences: list[str]
    corpus: str
    pristine: PristineModel = field(repr=False)   # digests of every weight; restores are verified against it
    # The BOS rule (--ppl-bos) the baseline was measured with; every edited measurement uses it too.
    ppl_bos: str = DEFAULT_PPL_BOS
    # The precision it was measured in (--editguard-edit-precision, resolved); so is every edited one.
    ppl_precision: str = "float32"
    # Optional downstream probes (editguard.metrics.downstream.DownstreamProbe): fixed task subsets
    # and the unedited model's scores on them; when set, every edit is probed and gated on them.
    downstream: Any = field(default=None, repr=False)
    # Normal-text inputs of each touched matrix's module, for the blast radius; filled on first
    # need (see anatomy_keys), so every editor's update is measured on the same keys.
    anatomy_keys: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # Inputs of the lowest edited layer for the perplexity corpus, computed by the unedited layers
    # below it on first need (see metrics.perplexity.perplexity's unchanged_below).
    ppl_layer_inputs: dict = field(default_factory=dict, repr=False)


# Bump when perplexity() changes what it computes: cached baselines of older code are then ignored.
# 2: the BOS rule (--ppl-bos, default never) is part of the key. 3: and the precision.
PERPLEXITY_VERSION = 3


def measure_baseline(mue: ModelUnderEdit, sentences: list[str], corpus: str = "", shared: bool = False,
                     bos: str = DEFAULT_PPL_BOS, precision: str = "float32") -> Baseline:
    """The unedited model's perplexity (BOS rule `bos`, see metrics.perplexity.add_bos_for; in the
    resolved `precision`) and weight digests. With `shared`, the perplexity is taken once per
    (weights, dtype, device type, corpus, BOS rule, precision) and kept on disk under a file lock,
    so parallel workers (pytest -n N) and later sessions reuse one measurement."""
    try:
        encode_sentences(mue, sentences, add_bos_for(bos, mue), max_length=1 << 30)
    except PerplexityInputError as err:
        raise PerplexityInputError(f"perplexity corpus {corpus or '(given sentences)'}: {err}") from None
    pristine = PristineModel(mue.model)
    if not shared:
        return Baseline(perplexity(mue, sentences, bos=bos, precision=precision), sentences, corpus, pristine,
                        ppl_bos=bos, ppl_precision=precision)
    # Keyed by the weights as they are now (their digests), not the load-time fingerprint, and by
    # the BOS rule with the BOS it puts there (none, or the tokenizer's BOS id).
    bos_id = mue.tokenizer.bos_token_id if add_bos_for(bos, mue) else None
    key = cache_key(PERPLEXITY_VERSION, mue.fingerprint, sorted(pristine.digests.items()), str(mue.dtype),
                    mue.device.type, sentences, bos, bos_id, precision)

    def measure() -> dict:
        ppl = perplexity(mue, sentences, bos=bos, precision=precision)
        return {**ppl.to_dict(), "per_sentence": list(ppl.per_sentence), "model": mue.name, "corpus": corpus}

    saved = cached_json(cache_dir() / "baselines" / f"{safe_name(mue.name)}-{key}.json", measure)
    ppl = PerplexityResult(saved["ppl"], saved["corpus_ppl"], tuple(saved["per_sentence"]), saved["n_tokens"], bos)
    return Baseline(ppl, sentences, corpus, pristine, ppl_bos=bos, ppl_precision=precision)


@dataclass
class CaseResult:
    case: EditCase
    editor: str
    model: str
    verdict: Verdict
    ppl: float | None             # None: not measured on this sequence step (--ppl-every)
    corpus_ppl: float | None
    ppl_baseline: float
    diagnostics: dict[str, Any]
    efficacy: bool | None
    efficacy_logprob_new: float
    efficacy_logprob_true: float | None
    test_prefix: str
    seconds: float
    timings: dict[str, float]
    sequence: str | None = None   # sequential editing: the sequence's name and this edit's
    step: int | None = None       # 1-based position in it
    peak_memory_mb: float | None = None  # see peak_memory_mb()
    downstream: dict[str, Any] | None = None  # per task: edited accuracy, n, unedited accuracy (--downstream)
    # Paraphrase / neighbourhood prompts that behaved (quality mode); None: not measured.
    generalization: PromptHits | None = None
    locality: PromptHits | None = None
    # A batched edit (--batch-size): every case of the one apply() call, and whether each one's new
    # target won after it; `case` is the batch's first case and `efficacy` true only if all won.
    batch: tuple[EditCase, ...] = ()
    batch_efficacy: tuple[bool, ...] = ()

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def explanation(self) -> str:
        if self.batch:
            ids = ", ".join(c.case_id for c in self.batch)
            return f"batch of {len(self.batch)} cases ({ids}): {self.verdict.explain()}"
        return f"{self.case.case_id} ({self.case.text!r} -> {self.case.target_new!r}): {self.verdict.explain()}"

    def to_json(self) -> dict[str, Any]:
        """The case's record (editguard.run.records.CaseRecord) as the reports write it."""
        return self.record().to_json()

    def record(self) -> CaseRecord:
        d = self.diagnostics
        return CaseRecord(
            case_id=self.case.case_id, subject=self.case.subject, prompt=self.case.prompt,
            target_new=self.case.target_new, target_true=self.case.target_true, editor=self.editor, model=self.model,
            passed=self.passed, failed_gates=[g.name for g in self.verdict.failed], reason=self.verdict.explain(),
            ppl=self.ppl, ppl_probed=self.ppl is not None, corpus_ppl=self.corpus_ppl, ppl_baseline=self.ppl_baseline,
            **{name: d.get(name) for name in ANATOMY_FIELDS},
            efficacy=self.efficacy, seconds=self.seconds, timings=self.timings, sequence=self.sequence,
            step=self.step, peak_memory_mb=self.peak_memory_mb, diagnostics=d,
            **_hits_json("generalization", self.generalization), **_hits_json("locality", self.locality),
            downstream=self.downstream,
            batch={"size": len(self.batch), "case_ids": [c.case_id for c in self.batch],
                   "efficacy": list(self.batch_efficacy)} if self.batch else None,
        )


def _hits_json(name: str, hits: PromptHits | None) -> dict[str, Any]:
    """`name` (the rate, None when not measured or the case has no such prompt), `name_hits`, `name_n`."""
    if hits is None:
        return {name: None, f"{name}_hits": None, f"{name}_n": None}
    return {name: hits.rate, f"{name}_hits": hits.hits, f"{name}_n": hits.n}


# Sentences and rows of normal text the blast radius is measured on: enough for a stable mean,
# cheap enough to collect once per touched module.
ANATOMY_SENTENCES = 16
ANATOMY_MAX_KEYS = 512


def anatomy_keys(mue: ModelUnderEdit, baseline: Baseline, names: list[str]) -> dict[str, torch.Tensor]:
    """Normal-text keys (inputs) for every touched 2-D matrix in `names`, taken from the first
    ANATOMY_SENTENCES sentences of the baseline corpus on the model as it is when first needed
    (unedited, for single edits) and kept in the baseline."""
    matrices = [n for n in names if blast_radius_skipped(mue, n) is None]
    missing = sorted({n.rpartition(".")[0] for n in matrices} - baseline.anatomy_keys.keys())
    if missing:
        baseline.anatomy_keys.update(normal_text_keys(mue, missing, baseline.sentences[:ANATOMY_SENTENCES],
                                                      max_keys=ANATOMY_MAX_KEYS))
    return {n: baseline.anatomy_keys[n.rpartition(".")[0]] for n in matrices}


def measure_anatomy(snapshot: WeightSnapshot, mue: ModelUnderEdit, keys: dict[str, torch.Tensor] | None = None) -> dict:
    """update_anatomy of the change since `snapshot` was taken (editor-agnostic)."""
    return update_anatomy(mue, {name: snapshot.saved(name) for name in snapshot.names}, keys)


def edit_batch_of(case: EditCase | Sequence[EditCase]) -> list[EditCase]:
    """The cases one edit applies: a single case, or a batch (--batch-size) of them."""
    cases = [case] if isinstance(case, EditCase) else list(case)
    if not cases:
        raise ValueError("an edit needs at least one case; got an empty batch")
    return cases


@contextmanager
def named_phase(phase: list[str]):
    """Name on any exception raised inside the phase of the edit it was in (`err.editguard_phase`,
    `phase[0]` when it leaves): the error record of the case says where the edit failed."""
    try:
        yield
    except Exception as err:
        if getattr(err, "editguard_phase", None) is None:
            err.editguard_phase = phase[0]
        raise


def _edit_and_measure(*args, **kwargs) -> CaseResult:
    """`_measure_edit`, which moves `phase` along as it goes, with that phase named on its errors."""
    phase = ["check"]
    with named_phase(phase):
        return _measure_edit(*args, phase=phase, **kwargs)


def _measure_edit(mue: ModelUnderEdit, editor: Editor, case: EditCase | Sequence[EditCase], baseline: Baseline,
                  thresholds: Thresholds, snapshot: WeightSnapshot, timings: dict[str, float],
                  start: float, probe_step: bool = True, measure_scores: bool = False,
                  edited_since_pristine: Sequence[str] = (), *, phase: list[str],
                  state: ModelState | None = None, upcoming: Sequence[EditCase] = ()) -> CaseResult:
    """Apply the edit on top of the model as it is, measure and judge; restores nothing.
    `snapshot` holds the touched weights as they were just before this edit; `edited_since_pristine`
    names every parameter earlier edits of a sequence touched (the layers below all of them are
    the unedited model's, so perplexity need not rerun them). Without `probe_step`
    (a sequence step between --ppl-every probes) neither perplexity nor downstream is measured:
    the step records the edit's diagnostics and efficacy, and only the gates those allow. With
    `measure_scores`, generalization and locality are measured too (one batch of the case's other
    prompts; of a batch's first case)."""
    cases = edit_batch_of(case)
    case = cases[0]
    phase[0] = "case check"
    for each in cases:
        # Before any weight moves: a kilobyte prompt is refused, not edited for minutes.
        check_case_fits(mue, each, scored_prompts=measure_scores)
    if mue.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(mue.device)
    t = time.perf_counter()
    phase[0] = "anatomy keys"
    keys = anatomy_keys(mue, baseline, snapshot.names)
    timings["anatomy_keys"] = time.perf_counter() - t
    t = time.perf_counter()
    phase[0] = "edit"
    case_fields = [vars(c).copy() for c in cases]
    state = state if state is not None else ModelState(mue)
    if upcoming:   # copies (the editor cannot reach cases it has not been given), of those that fit
        tell_upcoming(editor, [copy.copy(c) for c in upcoming[:UPCOMING_CASES] if fits(mue, c)])
    report = checked_report(editor, editor.apply(mue, cases))
    timings["edit"] = time.perf_counter() - t
    t = time.perf_counter()
    put_back_cases(cases, case_fields, editor.name)
    put_back_state(mue, state, editor.name, "in apply()")   # before any probe runs on what it left
    timings["state_check"] = time.perf_counter() - t
    timings.update({k: v for k, v in report.diagnostics.items() if k.startswith("seconds_")})
    ppl = None
    if probe_step:
        t = time.perf_counter()
        phase[0] = "perplexity"
        ppl = perplexity(mue, baseline.sentences, bos=baseline.ppl_bos,
                         unchanged_below=mue.lowest_layer_of([*snapshot.names, *edited_since_pristine]),
                         layer_inputs=baseline.ppl_layer_inputs, precision=baseline.ppl_precision)
        timings["perplexity"] = time.perf_counter() - t
    t = time.perf_counter()
    phase[0] = "efficacy"
    effs = [efficacy(mue, c.text, c.target_new, c.target_true, prefix=report.test_prefix) for c in cases]
    eff = effs[0]
    timings["efficacy"] = time.perf_counter() - t
    prompt_scores = None
    if measure_scores:   # quality mode only: the paraphrase and neighbourhood prompts cost a forward pass
        t = time.perf_counter()
        phase[0] = "generalization and locality"
        prompt_scores = edit_scores(mue, case, prefix=report.test_prefix, with_edit_prompt=False)
        timings["generalization_locality"] = time.perf_counter() - t
    t = time.perf_counter()
    phase[0] = "anatomy"
    diagnostics = {k: v for k, v in report.diagnostics.items() if not k.startswith("seconds_")}
    anatomy = measure_anatomy(snapshot, mue, keys)
    diagnostics[UPDATE_NORM_REL] = anatomy["update_norm_rel_max"]
    diagnostics["blast_radius"] = anatomy["blast_radius_max"]
    diagnostics["touched_matrices"] = anatomy["matrices"]
    skipped = {n: why for n in snapshot.names if (why := blast_radius_skipped(mue, n)) is not None}
    if skipped:   # measured: the update norm; not measured: the blast radius, and why
        diagnostics["blast_radius_skipped"] = skipped
    non_finite = [n for n in snapshot.names if not bool(torch.isfinite(mue.parameter(n)).all())]
    if non_finite:
        diagnostics["non_finite_weights"] = non_finite
    timings["anatomy"] = time.perf_counter() - t
    verdict = judge(None if ppl is None else ppl.ppl, baseline.ppl.ppl, diagnostics, thresholds,
                    any(c.subject_first for c in cases))
    downstream = None
    if baseline.downstream is not None and probe_step:   # off by default: no probe, no cost
        t = time.perf_counter()
        phase[0] = "downstream"
        scores = baseline.downstream.run(mue)
        timings["downstream"] = time.perf_counter() - t
        downstream = baseline.downstream.to_json(scores)
        probe = baseline.downstream
        verdict = Verdict(verdict.gates + tuple(downstream_gates(scores, probe.unedited, probe.min_retention)),
                          verdict.context)
    return CaseResult(
        case=case, editor=editor.name, model=mue.name, verdict=verdict, ppl=None if ppl is None else ppl.ppl,
        corpus_ppl=None if ppl is None else ppl.corpus_ppl, ppl_baseline=baseline.ppl.ppl, diagnostics=diagnostics,
        efficacy=all(e.success for e in effs), efficacy_logprob_new=eff.logprob_new,
        efficacy_logprob_true=eff.logprob_true, test_prefix=report.test_prefix, seconds=time.perf_counter() - start,
        timings=timings, peak_memory_mb=peak_memory_mb(mue), downstream=downstream,
        **({"batch": tuple(cases), "batch_efficacy": tuple(e.success for e in effs)} if len(cases) > 1 else {}),
        generalization=prompt_scores.generalization_hits if prompt_scores and case.target_true is not None else None,
        locality=prompt_scores.locality_hits if prompt_scores and case.target_true is not None else None,
    )


def peak_memory_mb(mue: ModelUnderEdit) -> float:
    """On a GPU: the most memory torch allocated on it during this edit and its probes (the
    counter is reset before each edit). On the CPU: the process's peak resident set so far."""
    if mue.device.type == "cuda":
        return torch.cuda.max_memory_allocated(mue.device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# How many of the next cases a single edit's editor is told of (editors.api.SearchesAhead).
UPCOMING_CASES = 8


def check(mue: ModelUnderEdit, editor: Editor, case: EditCase | Sequence[EditCase], baseline: Baseline,
          thresholds: Thresholds = Thresholds(), measure_scores: bool = False,
          upcoming: Sequence[EditCase] = ()) -> CaseResult:
    """Apply `editor` to `case` (or to a batch of cases in one call), measure, judge, and restore
    the model bit for bit. With `measure_scores`, generalization and locality are measured too
    (quality mode). `upcoming`: the cases the next checks on this model will edit, in order (the
    first UPCOMING_CASES are told to an editor that searches ahead: ROME)."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with named_phase(["snapshot"]):
        touched = editor.touched_parameters(mue, edit_batch_of(case))
        restore_point = RestorePoint(mue, editor, touched, baseline.pristine)
    timings["snapshot"] = time.perf_counter() - start
    try:
        result = _edit_and_measure(mue, editor, case, baseline, thresholds, restore_point.snapshot, timings, start,
                                   measure_scores=measure_scores, state=restore_point.state, upcoming=upcoming)
    except BaseException as err:
        _restore(restore_point, timings, during=err)
        raise
    _restore(restore_point, timings)
    result.seconds = time.perf_counter() - start
    return result


def _restore(restore_point: RestorePoint, timings: dict[str, float], during: BaseException | None = None) -> None:
    """restore_point.restore(), timed; what it finds after an edit already failed for changing the
    state is added to that failure, so the record names both."""
    t = time.perf_counter()
    try:
        with named_phase(["restore"]):
            restore_point.restore()
    except RestoreError as err:
        if isinstance(during, StateChanged):
            combined = StateChanged(f"{during} After the edit, the restore found more: {err}")
            combined.editguard_phase = getattr(during, "editguard_phase", None)
            raise combined from err
        raise
    finally:
        timings["restore"] = time.perf_counter() - t


class SequenceStepError(EditorError, RuntimeError):
    """A step of a sequence raised; its partial writes were undone (the weights are as before it)."""


class SequenceStopped(EditorError, RuntimeError):
    """An earlier step failed and the sequence stops there (on_error="stop")."""


class EditSequence:
    """Sequential editing: cases applied one after another without restoring, each step
    measured and judged on the model as the earlier edits left it; `restore()` at the end puts
    the unedited model back (verified). Use as a context manager to restore on any exit.

        with EditSequence(model, editor, baseline, name="hard") as seq:
            for case in cases:
                result = seq.apply(case)   # result.step, result.ppl, result.verdict

    A step that raises is undone (its touched weights back to before it), recorded in
    `failed_steps` with its number and raised as SequenceStepError. Then, with on_error="stop",
    every later `apply` raises SequenceStopped naming that step; with "continue", the next step
    builds on the weights as they were before the failed one and keeps its own number.

    Long sequences: perplexity (and downstream) is measured on steps ppl_every, 2·ppl_every, …
    and on the last step (`length`, when known); the other steps record the edit's diagnostics
    and efficacy with ppl None. With `stop_on_collapse`, a measured perplexity above the collapse
    line (or NaN/Inf) ends the sequence: later `apply` calls raise SequenceStopped, and
    `stop` says where and why.
    """

    def __init__(self, mue: ModelUnderEdit, editor: Editor, baseline: Baseline,
                 thresholds: Thresholds = Thresholds(), name: str = "sequence", on_error: str = "stop",
                 ppl_every: int = 1, length: int | None = None, stop_on_collapse: bool = False,
                 measure_scores: bool = False):
        if on_error not in SEQUENCE_ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(SEQUENCE_ON_ERROR)}, got {on_error!r}")
        if not (isinstance(ppl_every, int) and ppl_every >= 1):
            raise ValueError(f"ppl_every must be an integer ≥ 1, got {ppl_every!r}")
        self.mue, self.editor, self.baseline, self.thresholds, self.name = mue, editor, baseline, thresholds, name
        self.on_error, self.measure_scores = on_error, measure_scores
        self.ppl_every, self.length, self.stop_on_collapse = ppl_every, length, stop_on_collapse
        self.collapsed_at: tuple[int, float | None] | None = None   # (step, perplexity) that stopped it
        self.not_run: list[dict[str, Any]] = []   # steps after a stop, recorded by `skip`
        self.original = RestorePoint(mue, editor, [], baseline.pristine)
        self.results: list[CaseResult] = []
        self.failed_steps: list[tuple[int, str, str]] = []   # (step, case id, error)
        self.steps_taken = 0
        reset_editor(editor)  # editors with memory (AlphaEdit) start from the unedited model

    @property
    def stop(self) -> dict[str, Any] | None:
        """Where and why the sequence stopped early ({"step", "reason", "message"}), else None."""
        if self.collapsed_at is not None:
            step, ppl = self.collapsed_at
            return {"step": step, "reason": "collapsed", "ppl": ppl,
                    "message": f"sequence stopped at step {step}: collapsed (perplexity {ppl:.4g} > collapse line "
                               f"{self.thresholds.ppl_max:g}; --sequence-stop-on-collapse)"}
        if self.on_error == "stop" and self.failed_steps:
            step, case_id, error = self.failed_steps[0]
            return {"step": step, "reason": "failed", "message": f"sequence '{self.name}' stopped at step {step} "
                                                                 f"({case_id}), which failed: {error}"}
        return None

    @property
    def stopped_reason(self) -> str | None:
        """Why later steps are not run (a failed step with on_error="stop", or a collapse with
        stop_on_collapse), else None."""
        return self.stop["message"] if self.stop else None

    def skip(self, case: EditCase | Sequence[EditCase]) -> dict[str, Any]:
        """Record that `case`, the next step, is not run because the sequence stopped; returns the
        record ({"sequence", "step", "case_id", "reason", "stopped_at"}) for the report."""
        stop = self.stop
        if stop is None:
            raise ValueError(f"sequence '{self.name}' has not stopped: its next step should be applied")
        first = edit_batch_of(case)[0]
        record = {"sequence": self.name, "step": self.steps_taken + len(self.not_run) + 1, "case_id": first.case_id,
                  "reason": stop["message"], "stopped_at": stop["step"]}
        self.not_run.append(record)
        return record

    def probes_step(self, step: int) -> bool:
        """Whether perplexity (and downstream) is measured after `step` (1-based)."""
        return step % self.ppl_every == 0 or step == self.length

    def apply(self, case: EditCase | Sequence[EditCase]) -> CaseResult:
        """The next step: one case, or a batch of cases edited in one call."""
        if self.stopped_reason:
            raise SequenceStopped(self.stopped_reason)
        cases = edit_batch_of(case)
        self.steps_taken += 1
        step = self.steps_taken
        timings: dict[str, float] = {}
        start = time.perf_counter()
        touched = self.editor.touched_parameters(self.mue, cases)
        self.original.snapshot.extend(touched)
        step_snapshot = WeightSnapshot(self.mue.model, touched)  # this step's ΔW is measured against it
        step_state = ModelState(self.mue)   # nothing but declared weights may change in a step either
        timings["snapshot"] = time.perf_counter() - start
        try:
            result = _edit_and_measure(self.mue, self.editor, case, self.baseline, self.thresholds,
                                       step_snapshot, timings, start, probe_step=self.probes_step(step),
                                       measure_scores=self.measure_scores,
                                       edited_since_pristine=self.original.snapshot.names, state=step_state)
        except Exception as err:
            step_state.put_back(self.mue)
            step_snapshot.restore()   # never build on a half-written edit
            self.failed_steps.append((step, cases[0].case_id, f"{type(err).__name__}: {err}"))
            then = "later steps are skipped" if self.on_error == "stop" else "the sequence continues from there"
            failure = SequenceStepError(f"step {step} ({cases[0].case_id}) of sequence '{self.name}' failed: "
                                        f"{type(err).__name__}: {err}; its writes were undone, {then}")
            failure.editguard_phase = getattr(err, "editguard_phase", None)
            raise failure from err
        result.sequence, result.step = self.name, step
        result.diagnostics["cumulative_update_norm_rel"] = measure_anatomy(self.original.snapshot,
                                                                           self.mue)["update_norm_rel_max"]
        self.results.append(result)
        if self.stop_on_collapse and result.ppl is not None and is_collapsed(result.ppl, self.thresholds.ppl_max):
            self.collapsed_at = (step, result.ppl)
        return result

    def restore(self) -> None:
        self.original.restore()
        reset_editor(self.editor)

    def __enter__(self) -> "EditSequence":
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False
