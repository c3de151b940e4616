"""Case selections that the shipped suites parametrize over.

Until hard cases are mined per model, the hard suite is the shape the papers found collapsing:
CounterFact cases whose subject starts the prompt, single-token subjects first, then by case id.
The normal suite (the papers' control group) holds cases whose subject does not start the prompt.
"""

from __future__ import annotations

from editguard.cases import EditCase, load_counterfact


def _case_number(case: EditCase) -> int:
    return int(case.case_id) if case.case_id.isdigit() else 1 << 30


def hardcf_candidates(cases: list[EditCase], tokenizer) -> list[EditCase]:
    """Subject-first cases, one-token subjects first (their first-position key is the most
    anomalous), then by case id."""
    first = [c for c in cases if c.subject_first]
    encoded = tokenizer([c.subject for c in first], add_special_tokens=False)["input_ids"]
    n_tokens = {c.case_id: len(ids) for c, ids in zip(first, encoded)}
    return sorted(first, key=lambda c: (n_tokens[c.case_id] > 1, _case_number(c)))


def normal_cases(cases: list[EditCase]) -> list[EditCase]:
    return sorted((c for c in cases if not c.subject_first), key=_case_number)


def counterfact_hard(data_dir, tokenizer, download: bool = False) -> list[EditCase]:
    return hardcf_candidates(load_counterfact(data_dir, download=download), tokenizer)


def counterfact_normal(data_dir, download: bool = False) -> list[EditCase]:
    return normal_cases(load_counterfact(data_dir, download=download))
