"""The data MEND's editor networks are trained on (curation: it knows the shipped suites, which
the editor must not). `editguard train-mend` passes these to `editguard.editors.mend.store`."""

from __future__ import annotations

from editguard.cases import EditCase, read_cases
from editguard.data import load_ppl_corpus
from editguard.suite_files import find_mined_suite
from editguard.suites import SCREEN_POOL, counterfact_hard, load_case_source, normal_sample


def suite_case_ids(model_name: str, data_dir=None, tokenizer=None) -> set[str]:
    """Case ids the shipped suites may edit on this model: its mined HardCF list (or, with no
    list, the 1,000-case screening pool), and every seeded normal sample of up to 100 cases or
    the hard list's size (suites/counterfact, suites/sequential with any --max-cases)."""
    ids: set[str] = set()
    path = find_mined_suite(model_name)
    if path is not None:
        hard = read_cases(path)
    elif tokenizer is not None:
        hard = counterfact_hard(data_dir, tokenizer)[:SCREEN_POOL]
    else:
        hard = []
    ids.update(c.case_id for c in hard)
    for n in range(1, max(100, len(hard)) + 1):
        ids.update(c.case_id for c in normal_sample(n, data_dir))
    return ids


def training_cases(model_name: str, spec: str = "counterfact", data_dir=None, tokenizer=None
                   ) -> tuple[list[EditCase], int]:
    """MEND's training cases: CounterFact's train split (EasyEdit's counterfact-train.json) without
    any case a shipped suite may edit (`suite_case_ids`), or the cases of a case file. Returns the
    cases and how many were left out."""
    source = "counterfact-train" if spec == "counterfact" else spec
    cases = load_case_source(source, data_dir)
    if not spec.startswith("counterfact"):
        return list(cases), 0
    excluded = suite_case_ids(model_name, data_dir, tokenizer)
    kept = [c for c in cases if c.case_id not in excluded]
    return kept, len(cases) - len(kept)


def locality_sentences(data_dir=None) -> list[str]:
    """ME-PPL sentences that are in neither ME-PPL_50 nor ME-PPL_1k (the corpora perplexity is
    measured on), deduplicated, in file order."""
    held_out = set(load_ppl_corpus("me-ppl-50", data_dir)) | set(load_ppl_corpus("me-ppl-1k", data_dir))
    seen, out = set(), []
    for text in load_ppl_corpus("me-ppl", data_dir):
        if text not in held_out and text not in seen:
            seen.add(text)
            out.append(text)
    return out
