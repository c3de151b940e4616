"""Integration on the embedded SmolLM2-135M: the papers' collapse mechanism, reproduced.

Subject-first prompts give an unprefixed key kᵘ far from k̄, ROME's denominator collapses and
perplexity rises; C-ROME (consistent keys) and subject-inside prompts leave the model intact.
"""

import pytest

from editguard import EditCase, check, get_editor, load_model, measure_baseline
from editguard.data import load_ppl_corpus

pytestmark = pytest.mark.embedded

SUBJECT_FIRST = [
    EditCase("paris", "{} is the capital of", "Paris", "Rome", "France"),
    EditCase("windows", "{} is produced by", "Windows", "Apple", "Microsoft"),
    EditCase("germany", "{} is a member of the", "Germany", "Warsaw Pact", "European Union"),
]
SUBJECT_INSIDE = [
    EditCase("darrieux", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditCase("google", "The headquarter of {} is located in", "Google", "Paris", "Mountain View"),
]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def baseline(smollm2, data_dir):
    return measure_baseline(smollm2, load_ppl_corpus("me-ppl-50", data_dir), "me-ppl-50")


def test_baseline_perplexity_is_a_trained_models(baseline):
    # A random 49k-vocabulary model scores ~50,000; the trained model a few hundred at most.
    assert 50 < baseline.ppl.ppl < 400
    assert baseline.ppl.corpus_ppl < baseline.ppl.ppl  # a few hard sentences dominate the mean


@pytest.mark.parametrize("case", SUBJECT_FIRST, ids=lambda c: c.case_id)
def test_rome_collapses_on_subject_first_prompts_and_c_rome_does_not(smollm2, baseline, case):
    rome = check(smollm2, get_editor("rome"), case, baseline)
    assert rome.diagnostics["denominator_ratio"] < 0.1, rome.explanation
    assert rome.ppl > 2 * baseline.ppl.ppl, rome.explanation
    assert not rome.passed and "perplexity" in [g.name for g in rome.verdict.failed]

    c_rome = check(smollm2, get_editor("c-rome"), case, baseline)
    assert c_rome.ppl <= 1.05 * baseline.ppl.ppl, c_rome.explanation
    assert c_rome.passed, c_rome.explanation


@pytest.mark.parametrize("case", SUBJECT_INSIDE, ids=lambda c: c.case_id)
def test_subject_inside_prompts_stay_intact_under_both(smollm2, baseline, case):
    for name in ("rome", "c-rome"):
        result = check(smollm2, get_editor(name), case, baseline)
        assert result.ppl <= 1.05 * baseline.ppl.ppl, result.explanation
        assert result.diagnostics["key_cosine"] > 0.8
        assert result.efficacy, f"{name} did not make {case.target_new!r} beat {case.target_true!r}"


# MEMIT and AlphaEdit need the layers' key covariance; 20k WikiText tokens (instead of 100k)
# keep a fresh CI machine's first computation to about a minute and still give full-rank C.
SMALL_STATS = {"mom2_n_tokens": 20_000}


@pytest.mark.parametrize("name, hparams", [("r-rome", None), ("ft", None), ("memit", SMALL_STATS),
                                           ("alphaedit", SMALL_STATS)])
@pytest.mark.parametrize("case", SUBJECT_INSIDE, ids=lambda c: c.case_id)
def test_every_locate_then_edit_editor_lands_a_normal_edit_safely(smollm2, baseline, case, name, hparams):
    result = check(smollm2, get_editor(name, hparams), case, baseline)
    assert result.efficacy, f"{name} did not make {case.target_new!r} beat {case.target_true!r}"
    assert result.passed, result.explanation
    assert result.ppl <= 1.1 * baseline.ppl.ppl, result.explanation


def test_the_design_cards_command_runs_in_the_checkout_and_fails_a_hard_case(data_dir, tmp_path):
    """`pytest suites/hardcf --editor=rome --model=smollm2-135m --max-cases 1` (the short forms)
    runs the mined list in the checkout and exits 1 on its collapsing first case."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    report = tmp_path / "card.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/hardcf", "--editor=rome", "--model=smollm2-135m", "--max-cases", "1",
         f"--editguard-data={data_dir}", f"--editguard-json={report}", "-p", "no:cacheprovider", "-q"],
        cwd=checkout, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads(report.read_text())
    assert doc["run"]["editor"] == "rome" and doc["run"]["model"] == "smollm2-135m"
    assert len(doc["cases"]) == 1 and not doc["cases"][0]["passed"]
    assert "mined HardCF list" in result.stdout
