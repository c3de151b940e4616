"""Quality mode: suite-level efficacy / generalization / locality gates on one-sided 95% Wilson lower
bounds, judged over every case of a run; a no-op editor fails it, an editor forcing the target passes."""

import json

import pytest

from editguard import EditCase
from editguard.gates import QualityGates, rate_gate
from editguard.metrics.efficacy import edit_scores, target_logprobs
from editguard.options import QUALITY_MIN_EFFICACY
from editguard.report.json_report import with_verdicts
from editguard.report.quality import quality_lines, quality_summary
from editguard.stats import Z_TWO_SIDED_95, wilson_interval, wilson_lower_bound


@pytest.mark.parametrize("successes, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_published_values(successes, n, low, high):
    assert wilson_interval(successes, n, Z_TWO_SIDED_95) == pytest.approx((low, high), abs=5e-5)


def test_one_sided_lower_bound_of_ten_of_ten_is_n_over_n_plus_z_squared():
    # all successes: the bound is n / (n + z²) = 10 / 12.706 with z = 1.645
    assert wilson_lower_bound(10, 10) == pytest.approx(10 / (10 + 1.645**2))
    assert wilson_lower_bound(10, 10) == pytest.approx(0.787, abs=1e-3)
    assert wilson_lower_bound(9, 10) == pytest.approx(0.6518, abs=1e-3)
    assert wilson_lower_bound(0, 0) == 0.0
    # the default minimum is reachable by a 10-case run, 0.8 is not
    assert wilson_lower_bound(10, 10) >= QUALITY_MIN_EFFICACY > wilson_lower_bound(9, 10)
    assert wilson_lower_bound(10, 10) < 0.8 <= wilson_lower_bound(11, 11)


def test_rate_gate_says_hits_bound_and_minimum():
    gate = rate_gate("efficacy", 3, 10, 0.8)
    assert not gate.passed and gate.reason == "efficacy 3/10, Wilson lower bound 0.13 < 0.8"
    assert rate_gate("locality", 10, 10, 0.7).reason == "locality 10/10, Wilson lower bound 0.79 ≥ 0.7"
    empty = rate_gate("generalization", 0, 0, 0.5)
    assert not empty.passed and "no case measured it" in empty.reason


def test_quality_mode_switches():
    assert QualityGates.mode(False) == QualityGates() and not QualityGates().enabled
    on = QualityGates.mode(True)
    assert on.min_efficacy == QUALITY_MIN_EFFICACY and on.measure_scores and on.min_locality is None
    assert QualityGates.mode(False, min_efficacy=0.9).min_efficacy == 0.9
    implied = QualityGates.mode(False, min_locality=0.5)
    assert implied.measure_scores and implied.min_efficacy == QUALITY_MIN_EFFICACY and implied.min_locality == 0.5


def _record(i, efficacy, gen=None, loc=None):
    return {"case_id": str(i), "passed": True, "ppl": 10.0, "failed_gates": [], "efficacy": efficacy,
            "generalization_hits": gen[0] if gen else None, "generalization_n": gen[1] if gen else None,
            "locality_hits": loc[0] if loc else None, "locality_n": loc[1] if loc else None}


RUN = {"editor": "x", "model": "m", "thresholds": {"ppl_max": 1000.0}}


def test_summary_pools_prompts_over_cases_and_judges_the_gates():
    cases = [_record(i, i < 3, gen=(1, 2), loc=(2, 2)) for i in range(10)] + [_record(10, None)]
    quality = {"min_efficacy": 0.8, "min_generalization": None, "min_locality": 0.5, "measure_scores": True}
    summary = quality_summary({**RUN, "quality": quality}, cases)
    assert summary["rates"]["efficacy"] == {"hits": 3, "n": 10, "rate": 0.3, "wilson_lower": wilson_lower_bound(3, 10)}
    assert summary["rates"]["generalization"]["hits"] == 10 and summary["rates"]["generalization"]["n"] == 20
    assert [g["name"] for g in summary["gates"]] == ["efficacy", "locality"] and not summary["passed"]
    lines = quality_lines(summary)
    assert lines[0] == ("efficacy 3/10, Wilson lower bound 0.13 < 0.8", False)
    assert lines[1][1] and lines[2] == ("generalization 10/20 = 0.50, Wilson lower bound 0.33 (not gated)", True)
    # in the JSON document (also what `editguard merge` writes)
    assert with_verdicts({**RUN, "quality": quality}, cases)["quality"] == summary
    # off: no summary, no key
    assert quality_summary(RUN, cases) is None and "quality" not in with_verdicts(RUN, cases)


def test_batched_scores_equal_prompt_by_prompt(tiny_llama):
    case = EditCase("s", "{} is the capital of", "Paris", "Rome", "France",
                    paraphrases=("The capital city that Paris is in:", "Paris, capital of"),
                    neighborhood=("Lyon is a city of", "Marseille is in", "Berlin is the capital of"))
    scores = edit_scores(tiny_llama, case, "In fact, ")

    def prefers_new(prompt):
        new, true = target_logprobs(tiny_llama, "In fact, " + prompt, ["Rome", "France"])
        return new > true

    para = [prefers_new(p) for p in case.paraphrases]
    neigh = [not prefers_new(p) for p in case.neighborhood]
    assert scores.efficacy == float(prefers_new(case.text))
    assert (scores.generalization_hits.hits, scores.generalization_hits.n) == (sum(para), 2)
    assert (scores.locality_hits.hits, scores.locality_hits.n) == (sum(neigh), 3)
    assert scores.locality == sum(neigh) / 3
    assert edit_scores(tiny_llama, case, "", with_edit_prompt=False).efficacy is None


# On these prompts the unedited (and so the no-op-edited) random tiny model prefers the true target;
# the new one has as many tokens, so an edit can make it win (see toy_editors.ForceTargetEditor).
SUITE = '''
from editguard.cases import EditCase

SUBJECTS = ["Paris", "Mozart", "Danielle Darrieux", "Windows", "Japan", "Lionel Messi", "Toyota", "Nokia"]
CASES = [EditCase(f"q{i}", "{} is associated with", s, "Oslo", "Rome",
                  paraphrases=(f"People say {s} belongs to",), neighborhood=("Berlin is associated with",))
         for i, s in enumerate(SUBJECTS)]

def edit_cases(settings):
    return CASES

def test_edit(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
'''


@pytest.fixture
def suite(pytester, data_dir, monkeypatch, toy_importable):
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def run(suite, editor, *extra):
    # The forcing editor moves the matrix far more than a real edit may: only quality is judged here.
    return suite.runpytest_subprocess("--model=tiny-llama", f"--editor=tests.toy_editors:{editor}",
                                      "--update-norm-max=1e9", "--ppl-max-ratio=1e9", "-p", "no:cacheprovider",
                                      *extra)


def test_a_no_op_editor_fails_quality_mode_with_the_bound_in_the_report(suite):
    result = run(suite, "NoOpEditor", "--editguard-quality", "--editguard-json=q.json")
    result.assert_outcomes(passed=8)     # every safety gate holds: nothing changed
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*editguard edit quality: FAILED*",
                                 "FAILED efficacy 0/8, Wilson lower bound 0.00 < 0.7",
                                 "generalization 0/8 = 0.00, Wilson lower bound 0.00 (not gated)",
                                 "locality 8/8 = 1.00, Wilson lower bound 0.75 (not gated)"])
    doc = json.loads((suite.path / "q.json").read_text())
    assert doc["run"]["quality"]["min_efficacy"] == QUALITY_MIN_EFFICACY and not doc["quality"]["passed"]
    case = doc["cases"][0]
    assert (case["efficacy"], case["generalization"], case["generalization_hits"], case["generalization_n"],
            case["locality"], case["locality_hits"], case["locality_n"]) == (False, 0.0, 0, 1, 1.0, 1, 1)


def test_an_editor_forcing_the_target_passes_quality_mode(suite):
    result = run(suite, "ForceTargetEditor", "--editguard-quality", "--editguard-json=q.json")
    result.assert_outcomes(passed=8)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*editguard edit quality: held*", "efficacy 8/8, Wilson lower bound 0.75 ≥ 0.7"])
    doc = json.loads((suite.path / "q.json").read_text())
    assert doc["quality"]["passed"] and doc["quality"]["rates"]["efficacy"]["hits"] == 8


def test_a_locality_gate_fails_the_forcing_editor_under_xdist(suite):
    """Judged on the controller from both workers' results; setting a minimum turns quality mode on."""
    result = run(suite, "ForceTargetEditor", "--editguard-min-locality=0.5", "-n", "2", "--editguard-json=q.json")
    result.assert_outcomes(passed=8)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    doc = json.loads((suite.path / "q.json").read_text())
    gates = {g["name"]: g for g in doc["quality"]["gates"]}
    assert gates["efficacy"]["passed"] and not gates["locality"]["passed"]
    assert doc["quality"]["rates"]["efficacy"]["n"] == 8


def test_quality_mode_is_off_by_default(suite):
    result = run(suite, "NoOpEditor", "--max-cases=2", "--editguard-json=q.json")
    assert result.ret == pytest.ExitCode.OK
    assert "edit quality" not in result.stdout.str()
    doc = json.loads((suite.path / "q.json").read_text())
    assert "quality" not in doc and doc["run"]["quality"] is None
    assert doc["cases"][0]["generalization"] is None and doc["cases"][0]["locality_n"] is None
