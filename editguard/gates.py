"""Thresholds turn measurements into a Verdict that says which gates held and why."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from editguard.options import (
    COLLAPSE_PPL,
    DENOMINATOR_RATIO_MIN,
    PPL_MAX_RATIO,
    QUALITY_MIN_EFFICACY,
    UPDATE_NORM_MAX,
    UPDATE_NORM_REL,
)
from editguard.stats import Z_ONE_SIDED_95, wilson_interval, wilson_lower_bound


@dataclass(frozen=True)
class Thresholds:
    """The gates' bounds; the defaults are editguard.options' (the one place they are set)."""
    ppl_max: float = COLLAPSE_PPL                      # the papers' collapse line: mean per-sentence ME-PPL
    ppl_max_ratio: float = PPL_MAX_RATIO               # edited over unedited perplexity
    denominator_ratio_min: float = DENOMINATOR_RATIO_MIN
    update_norm_rel_max: float = UPDATE_NORM_MAX

    def to_dict(self) -> dict:
        return asdict(self)


def is_collapsed(ppl: float | None, threshold: float) -> bool:
    """The one collapse predicate (gates, mining, reports): perplexity above the collapse line, or
    not a finite number (NaN/Inf; None: not measured, which a report cannot call intact)."""
    return ppl is None or not math.isfinite(ppl) or ppl > threshold


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float
    bound: float
    reason: str


@dataclass(frozen=True)
class Verdict:
    gates: tuple[GateResult, ...]
    context: str = ""   # the likely cause, appended to failure messages

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def explain(self) -> str:
        if self.passed:
            return "all gates held: " + "; ".join(g.reason for g in self.gates)
        text = "; ".join(g.reason for g in self.failed)
        return f"{text}; {self.context}" if self.context else text


def judge(ppl: float | None, baseline_ppl: float, diagnostics: dict, thresholds: Thresholds,
          subject_first: bool) -> Verdict:
    """Apply every gate that the available measurements allow. NaN/Inf perplexity, or NaN/Inf in
    a touched weight (diagnostics["non_finite_weights"]), is a collapse. `ppl` None: perplexity was
    not measured on this step (a sequence's --ppl-every), so the perplexity gate is not judged."""
    t = thresholds
    limit = min(t.ppl_max, t.ppl_max_ratio * baseline_ppl)
    non_finite = diagnostics.get("non_finite_weights") or []
    gates = []
    if ppl is not None or non_finite:
        collapsed = bool(non_finite) or is_collapsed(ppl, t.ppl_max)
        if non_finite:
            ppl_reason = f"weights {non_finite[:3]} hold NaN/Inf after the edit: collapsed"
        elif not math.isfinite(ppl):
            ppl_reason = f"perplexity {ppl} is not finite: collapsed"
        elif collapsed:
            ppl_reason = f"perplexity {ppl:.1f} > collapse line {t.ppl_max:g}"
        elif ppl > t.ppl_max_ratio * baseline_ppl:
            ppl_reason = f"perplexity {ppl:.1f} > {t.ppl_max_ratio:g} × baseline {baseline_ppl:.1f}"
        else:
            ppl_reason = f"perplexity {ppl:.1f} ≤ {limit:.1f}"
        gates.append(GateResult("perplexity", not collapsed and ppl <= limit, ppl, limit, ppl_reason))

    if "denominator_ratio" in diagnostics:
        ratio = diagnostics["denominator_ratio"]
        ok = ratio >= t.denominator_ratio_min
        detail = ""
        if "denominator" in diagnostics and "denominator_kbar" in diagnostics:
            detail = (f" ({diagnostics['denominator']:.3g} with the key used"
                      f" vs {diagnostics['denominator_kbar']:.3g} with k̄)")
        sign = "≥" if ok else "<"
        gates.append(GateResult("denominator_ratio", ok, ratio, t.denominator_ratio_min,
                                f"denominator ratio {ratio:.3g} {sign} {t.denominator_ratio_min:g}{detail}"))

    if UPDATE_NORM_REL in diagnostics:
        rel = diagnostics[UPDATE_NORM_REL]
        ok = rel <= t.update_norm_rel_max
        sign = "≤" if ok else ">"
        gates.append(GateResult("update_norm", ok, rel, t.update_norm_rel_max,
                                f"‖ΔW‖/‖W‖ {rel:.3g} {sign} {t.update_norm_rel_max:g}"))

    context = ""
    if "key_cosine" in diagnostics:
        context = f"cos(k̄,kᵘ) = {diagnostics['key_cosine']:.2f}"
        if subject_first:
            context += ": the subject is the prompt's first token"
    return Verdict(tuple(gates), context)


def downstream_gates(edited: dict, unedited: dict, min_retention: float | None = None,
                     z: float = Z_ONE_SIDED_95) -> list[GateResult]:
    """One gate per task (scores with .accuracy, .correct, .n, .random): the edited model must stay
    significantly above the task's random baseline, judged only on tasks where the unedited model
    itself is; with `min_retention` r, also edited accuracy ≥ r × unedited accuracy. "Significantly
    above random" is a one-sided 95% Wilson lower bound above the task's random baseline; n = 200
    resolves about ±0.06 around a PIQA-like 0.65."""
    gates = []
    for name, score in edited.items():
        before = unedited[name]
        if wilson_interval(before.correct, before.n, z)[0] <= before.random:
            continue  # the unedited model is not distinguishable from guessing here: nothing to lose
        low = wilson_interval(score.correct, score.n, z)[0]
        head = (f"{name}: accuracy {score.accuracy:.3f} (n={score.n}), Wilson 95% lower bound {low:.3f}")
        tail = f"; unedited {before.accuracy:.3f}"
        above = low > score.random
        gates.append(GateResult(f"downstream:{name}", above, score.accuracy, score.random,
                                f"{head} {'>' if above else '≤'} random {score.random:.3g}{tail}"))
        if min_retention is not None:
            bound = min_retention * before.accuracy
            kept = score.accuracy >= bound
            gates.append(GateResult(f"downstream_retention:{name}", kept, score.accuracy, bound,
                                    f"{name}: accuracy {score.accuracy:.3f} (n={score.n}) {'≥' if kept else '<'} "
                                    f"{min_retention:g} × unedited {before.accuracy:.3f} = {bound:.3f}"))
    return gates


@dataclass(frozen=True)
class QualityGates:
    """Suite-level edit-quality gates (off unless asked for): the one-sided 95% Wilson lower bound
    of each rate over all cases of a run must reach its minimum. None: not gated."""

    min_efficacy: float | None = None
    min_generalization: float | None = None
    min_locality: float | None = None
    # Generalization and locality are measured per case (paraphrase and neighbourhood prompts).
    measure_scores: bool = False

    @classmethod
    def mode(cls, quality: bool, min_efficacy: float | None = None, min_generalization: float | None = None,
             min_locality: float | None = None) -> "QualityGates":
        """Quality mode is on with `quality` or with any minimum set; then generalization and
        locality are measured and efficacy is gated (at QUALITY_MIN_EFFICACY unless set)."""
        on = quality or any(m is not None for m in (min_efficacy, min_generalization, min_locality))
        if not on:
            return cls()
        return cls(QUALITY_MIN_EFFICACY if min_efficacy is None else min_efficacy, min_generalization,
                   min_locality, measure_scores=True)

    @property
    def enabled(self) -> bool:
        return self.measure_scores or self.min_efficacy is not None

    def minimum(self, rate: str) -> float | None:
        return getattr(self, f"min_{rate}")

    def to_dict(self) -> dict:
        return asdict(self)


def rate_gate(name: str, hits: int, n: int, minimum: float, z: float = Z_ONE_SIDED_95) -> GateResult:
    """A rate over a suite (hits of n) passes when its Wilson lower bound (one-sided 95% with the
    default z) reaches `minimum`. No measurement (n = 0) fails: a gate asked for must be judged."""
    if n == 0:
        return GateResult(name, False, math.nan, minimum,
                          f"{name}: no case measured it (cases need a true target and such prompts), "
                          f"so the minimum {minimum:g} cannot be shown")
    low = wilson_lower_bound(hits, n, z)
    ok = low >= minimum
    return GateResult(name, ok, low, minimum,
                      f"{name} {hits}/{n}, Wilson lower bound {low:.2f} {'≥' if ok else '<'} {minimum:g}")
