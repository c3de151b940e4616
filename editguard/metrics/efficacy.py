"""Did the edit take? Efficacy compares the new and the true target on the edit prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editguard.models.loading import ModelUnderEdit
from editguard.tokens import target_batch


@torch.no_grad()
def target_logprobs(mue: ModelUnderEdit, prompt: str, targets: list[str]) -> list[float]:
    """log P(" " + target | prompt), summed over the target's tokens, for each target."""
    batch = target_batch(mue, [prompt] * len(targets), targets)
    return batch.target_logprobs(mue.model(**batch.inputs).logits)


@dataclass(frozen=True)
class Efficacy:
    logprob_new: float
    logprob_true: float | None
    prefix: str

    @property
    def success(self) -> bool | None:
        """P(target_new) > P(target_true); None when the case has no true target."""
        return None if self.logprob_true is None else self.logprob_new > self.logprob_true


def efficacy(mue: ModelUnderEdit, prompt_text: str, target_new: str, target_true: str | None,
             prefix: str = "") -> Efficacy:
    targets = [target_new] if target_true is None else [target_new, target_true]
    logps = target_logprobs(mue, prefix + prompt_text, targets)
    return Efficacy(logps[0], logps[1] if target_true is not None else None, prefix)


@dataclass(frozen=True)
class EditScores:
    """CounterFact's three scores for one edit, each the fraction of its prompts that behave:
    efficacy (the edit prompt prefers target_new), generalization (paraphrases prefer it),
    locality (neighbourhood prompts still prefer target_true). None where the case has no such prompts."""

    efficacy: float | None
    generalization: float | None
    locality: float | None
    prefix: str


def edit_scores(mue: ModelUnderEdit, case, prefix: str = "") -> EditScores:
    """Scores of the edited model on `case`, with `prefix` in front of every prompt (C-ROME's test-time
    prefix) or without."""
    if case.target_true is None:
        return EditScores(None, None, None, prefix)

    def prefers_new(prompt: str) -> bool:
        new, true = target_logprobs(mue, prefix + prompt, [case.target_new, case.target_true])
        return new > true

    def fraction(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return EditScores(
        efficacy=float(prefers_new(case.text)),
        generalization=fraction([prefers_new(p) for p in case.paraphrases]),
        locality=fraction([not prefers_new(p) for p in case.neighborhood]),
        prefix=prefix,
    )
