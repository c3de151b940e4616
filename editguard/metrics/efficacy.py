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


@torch.no_grad()
def prefers_new(mue: ModelUnderEdit, prompts: list[str], target_new: str, target_true: str,
                prefix: str = "") -> list[bool]:
    """For each prompt (with `prefix` in front): P(target_new) > P(target_true), efficacy's
    comparison; every prompt and both targets in one batch."""
    if not prompts:
        return []
    texts = [prefix + p for p in prompts for _ in range(2)]
    batch = target_batch(mue, texts, [target_new, target_true] * len(prompts))
    logps = batch.target_logprobs(mue.model(**batch.inputs).logits)
    return [logps[2 * i] > logps[2 * i + 1] for i in range(len(prompts))]


@dataclass(frozen=True)
class PromptHits:
    """How many of a case's prompts of one kind behaved, out of how many."""

    hits: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.n if self.n else None


@dataclass(frozen=True)
class EditScores:
    """CounterFact's three scores for one edit, each the fraction of its prompts that behave:
    efficacy (the edit prompt prefers target_new), generalization (paraphrases prefer it),
    locality (neighbourhood prompts still prefer target_true: ROME's neighborhood score). None
    where the case has no such prompts (or no true target)."""

    efficacy: float | None
    generalization: float | None
    locality: float | None
    prefix: str
    generalization_hits: PromptHits = PromptHits(0, 0)
    locality_hits: PromptHits = PromptHits(0, 0)


def edit_scores(mue: ModelUnderEdit, case, prefix: str = "", with_edit_prompt: bool = True) -> EditScores:
    """Scores of the edited model on `case`, with `prefix` in front of every prompt (C-ROME's test-time
    prefix) or without, measured in one batch. Without `with_edit_prompt` the efficacy is left out
    (None): the guard measures it on its own."""
    if case.target_true is None:
        return EditScores(None, None, None, prefix)
    head = [case.text] if with_edit_prompt else []
    prompts = head + list(case.paraphrases) + list(case.neighborhood)
    new = prefers_new(mue, prompts, case.target_new, case.target_true, prefix)
    efficacy_part, rest = new[:len(head)], new[len(head):]
    para, neigh = rest[:len(case.paraphrases)], rest[len(case.paraphrases):]
    generalization = PromptHits(sum(para), len(para))
    locality = PromptHits(sum(not x for x in neigh), len(neigh))
    return EditScores(
        efficacy=float(efficacy_part[0]) if efficacy_part else None,
        generalization=generalization.rate,
        locality=locality.rate,
        prefix=prefix,
        generalization_hits=generalization,
        locality_hits=locality,
    )
