"""Prompt + target batches: each prompt followed by " " + its target, right-padded, with the
(row, column) positions where the target's tokens are predicted and their ids. The edit loss of
FT and MEND and the efficacy log-probabilities all read the model there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from editguard.cases import CaseError, EditCase
from editguard.models.loading import ModelUnderEdit

# Longest prompt + target an edit accepts even where the model's context is longer: edit prompts are
# a sentence (CounterFact's: ~10-20 tokens); a kilobyte-long one is a mistake that costs minutes per edit.
MAX_EDIT_TOKENS = 512


def model_context_length(mue: ModelUnderEdit) -> int | None:
    """The model's context window from its config (None when the config does not say)."""
    config = mue.model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_case_fits(mue: ModelUnderEdit, case: EditCase, scored_prompts: bool = False) -> None:
    """Refuse a case whose prompt + target exceeds MAX_EDIT_TOKENS or the model's context, naming
    its length (an editor adds context templates in front, so the limit leaves room for them).
    With `scored_prompts` (quality mode measures them), each paraphrase and neighbourhood prompt +
    its longest target must fit the same limit, named by field and index."""
    context = model_context_length(mue)
    limit = min(MAX_EDIT_TOKENS, context // 2) if context else MAX_EDIT_TOKENS
    where = f"(model context {context or 'unknown'}, edit limit {MAX_EDIT_TOKENS})"
    prompt_ids, target_ids = prompt_target_ids(mue.tokenizer, case.text, case.target_new)
    length = len(prompt_ids) + len(target_ids)
    if length > limit:
        raise CaseError(f"case {case.case_id}: prompt + target_new is {length} tokens on {mue.name}; an edit "
                        f"accepts at most {limit} {where}: shorten the prompt")
    if not scored_prompts:
        return
    targets = [t for t in (case.target_new, case.target_true) if t is not None]
    for field in ("paraphrases", "neighborhood"):
        for index, prompt in enumerate(getattr(case, field)):
            ids = mue.tokenizer(prompt)["input_ids"]
            longest = max(len(prompt_target_ids(mue.tokenizer, "", t)[1]) for t in targets)
            if len(ids) + longest > limit:
                raise CaseError(f"case {case.case_id}: field '{field}' [{index}] + its target is "
                                f"{len(ids) + longest} tokens on {mue.name}; a scored prompt may have at most "
                                f"{limit} {where}: shorten it")


def fits(mue: ModelUnderEdit, case: EditCase) -> bool:
    """Whether check_case_fits would take the case for an edit."""
    try:
        check_case_fits(mue, case)
    except CaseError:
        return False
    return True


def prompt_target_ids(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of `prompt` and of " " + `target` (without special tokens: it continues the prompt).
    Target token j is predicted at position len(prompt ids) − 1 + j."""
    return tokenizer(prompt)["input_ids"], tokenizer(" " + target, add_special_tokens=False)["input_ids"]


@dataclass
class TokenBatch:
    """Sequences (right-padded) with the positions and labels of the tokens a loss reads."""

    inputs: dict[str, torch.Tensor]
    rows: torch.Tensor
    cols: torch.Tensor
    labels: torch.Tensor
    n: int

    def nll(self, logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The mean NLL of each sequence's target tokens, averaged (or, reduction="sum", summed)
        over the sequences."""
        token_nll = torch.nn.functional.cross_entropy(logits[self.rows, self.cols].float(), self.labels,
                                                      reduction="none")
        counts = torch.bincount(self.rows, minlength=self.n).clamp_min(1).float()
        per_seq = torch.zeros(self.n, device=logits.device).index_add(0, self.rows, token_nll) / counts
        return per_seq.sum() if reduction == "sum" else per_seq.mean()

    def target_logprobs(self, logits: torch.Tensor) -> list[float]:
        """log P(target | prompt) of each sequence: its target tokens' log-probabilities, summed."""
        log_probs = torch.log_softmax(logits[self.rows, self.cols].float(), dim=-1)
        token_logprobs = log_probs[torch.arange(len(self.labels), device=logits.device), self.labels]
        # Summed sequence by sequence (not with index_add) so that each sum adds the same values in
        # the same order as summing one sequence alone: scores do not depend on the batch.
        return [float(token_logprobs[self.rows == row].sum()) for row in range(self.n)]


def target_batch(mue: ModelUnderEdit, prompts: Sequence[str], targets: Sequence[str]) -> TokenBatch:
    """Each prompt followed by " " + its target, as one right-padded batch."""
    sequences, rows, cols, labels = [], [], [], []
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        prompt_ids, target_ids = prompt_target_ids(mue.tokenizer, prompt, target)
        sequences.append(prompt_ids + target_ids)
        for j, token in enumerate(target_ids):
            rows.append(row), cols.append(len(prompt_ids) - 1 + j), labels.append(token)
    device = mue.device
    return TokenBatch(mue.pad_batch(sequences), torch.tensor(rows, device=device), torch.tensor(cols, device=device),
                      torch.tensor(labels, device=device), len(sequences))


def edit_batch(mue: ModelUnderEdit, cases: Sequence[EditCase]) -> TokenBatch:
    """Each case's prompt followed by " " + target_new (the loss an edit lowers)."""
    return target_batch(mue, [c.text for c in cases], [c.target_new for c in cases])
