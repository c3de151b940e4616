"""Case selections that the shipped suites parametrize over.

HardCF for a model is its mined list (hardcf/<model>.json, written by `editguard mine`): the
project's (./editguard-suites or $EDITGUARD_SUITES) before the one shipped in editguard_suites.
A model without one gets the top-risk candidates: the collapse-risk screen run over the
structural pool (CounterFact cases whose subject starts the prompt, one-token subjects first).
The normal suite (the papers' control group) is a seeded sample of cases whose subject does
not start the prompt, as large as the hard list.
"""

from __future__ import annotations

import random

from editguard.cache import cache_dir, cache_key, cached_json
from editguard.cases import EditCase, load_counterfact, read_cases


class CaseList(list):
    """Cases plus a sentence saying where they came from (shown in the report header). A source
    that is empty on purpose (a filter that kept no case) says why in `empty_reason`: its suite is
    then skipped with that reason instead of refused."""

    def __init__(self, cases, description: str = "", empty_reason: str = ""):
        super().__init__(cases)
        self.description = description
        self.empty_reason = empty_reason


SCREEN_POOL = 1000     # structural candidates screened when a model has no mined list
SCREEN_TOP = 100       # how many of them, riskiest first, form the fallback hard suite


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


def load_case_source(spec: str, data_dir=None, download: bool = False) -> list[EditCase]:
    """`counterfact` (all 21,919 cases), `counterfact-<split>`, or a case file path."""
    if spec == "counterfact":
        return load_counterfact(data_dir, download=download)
    if spec.startswith("counterfact-"):
        return load_counterfact(data_dir, splits=[spec.removeprefix("counterfact-")], download=download)
    return read_cases(spec)


def screened_candidates(mue, cases: list[EditCase], top: int = SCREEN_TOP) -> list[EditCase]:
    """The `top` riskiest of `cases` by the collapse-risk screen with ROME's default
    hyperparameters for the model; cached on disk per model, layer and case list."""
    from editguard.editors.rome import RomeHparams
    from editguard.screen import DEFAULT_SCREEN_TEMPLATES, run_screen

    def screen() -> list[str]:
        doc = run_screen(mue, cases, RomeHparams.for_family(mue.family.name, {"layer": mue.edit_layer}))
        return [row["case_id"] for row in doc["rows"]]

    ids = cache_key([c.case_id for c in cases], length=12)
    path = cache_dir() / "screens" / f"{mue.fingerprint}-layer{mue.edit_layer}-t{DEFAULT_SCREEN_TEMPLATES}-{ids}.json"
    ranked = cached_json(path, screen)
    by_id = {c.case_id: c for c in cases}
    return [by_id[cid] for cid in ranked[:top]]


PREPARED_HARDCF = "hardcf-rome.json"   # the list `editguard prepare` mines (editguard.prepare)


def _prepared_list(model_name: str, mue) -> CaseList | None:
    from editguard.suite_files import prepared_file

    path = prepared_file(mue.fingerprint, PREPARED_HARDCF, "mine")
    if path is None:
        return None
    cases = read_cases(path)
    return CaseList(cases, f"prepared HardCF list {path} (fingerprint {mue.fingerprint}, editguard prepare): "
                           f"{len(cases)} mined cases of {model_name}")


def hardcf(model_name: str, data_dir=None, download: bool = False, load=None) -> CaseList:
    """The model's mined HardCF list: the project's (editguard-suites/hardcf/<model>.json), else the
    one `editguard prepare` made for its weights (by fingerprint, whatever the name), else the
    shipped one; with none, its top-risk screened candidates. `load()` gives the ModelUnderEdit;
    it is called only where the weights decide (a name prepared before, no shipped list)."""
    from editguard.suite_files import (
        find_mined_suite,
        is_shipped_suite_file,
        prepared_fingerprint_of,
        suite_file_label,
    )

    path = find_mined_suite(model_name)
    if path is not None and is_shipped_suite_file(path) and prepared_fingerprint_of(model_name) is not None:
        prepared = _prepared_list(model_name, load())
        if prepared is not None:
            return prepared
    if path is not None:
        cases = read_cases(path)
        return CaseList(cases, f"mined HardCF list {suite_file_label(path)}: {len(cases)} cases whose single "
                               f"ROME edit collapsed {model_name} (editguard mine)")
    mue = load()
    prepared = _prepared_list(model_name, mue)
    if prepared is not None:
        return prepared
    pool = counterfact_hard(data_dir, mue.tokenizer, download=download)[:SCREEN_POOL]
    cases = screened_candidates(mue, pool)
    return CaseList(cases, f"no mined list for {model_name}: the {len(cases)} riskiest of {len(pool)} subject-first "
                           f"CounterFact cases by the collapse-risk screen (not confirmed by edits); "
                           f"run `editguard prepare --model {model_name}`")


def hard_sequence(n: int, model_name: str, data_dir=None, download: bool = False, load=None) -> CaseList:
    """The first `n` cases of the model's hard list (hardcf); where it holds fewer, the rest are the
    next structural candidates (subject-first CounterFact cases, one-token subjects first) not in
    it, so long sequences stay deterministic. `load()` gives the ModelUnderEdit (its tokenizer)."""
    hard = hardcf(model_name, data_dir, download, load=load)
    if len(hard) >= n:
        return CaseList(hard[:n], f"the first {n} of: {hard.description}")
    seen = {c.case_id for c in hard}
    extra = [c for c in counterfact_hard(data_dir, load().tokenizer, download=download)
             if c.case_id not in seen][: n - len(hard)]
    return CaseList([*hard, *extra], f"{hard.description}; then {len(extra)} structural candidates (subject-first "
                                     f"CounterFact cases, one-token subjects first, not confirmed by edits) to make "
                                     f"a sequence of {len(hard) + len(extra)}")


def normal_sample(n: int, data_dir=None, download: bool = False, seed: int = 0) -> CaseList:
    """A seeded sample of n CounterFact cases whose subject does not start the prompt."""
    pool = counterfact_normal(data_dir, download=download)
    picked = sorted(random.Random(seed).sample(pool, min(n, len(pool))), key=_case_number)
    return CaseList(picked, f"{len(picked)} CounterFact cases whose subject does not start the prompt "
                            f"(seeded sample {seed}; the papers' control group)")
