"""Gates: which hold, which fail, and the sentence a person reads."""

from editguard.gates import Thresholds, is_collapsed, judge

ROME_COLLAPSE = {"denominator_ratio": 0.015, "denominator": 0.31, "denominator_kbar": 20.66,
                 "key_cosine": 0.07, "update_norm_rel": 2.3}


def test_collapsed_subject_first_edit_names_every_failed_gate():
    verdict = judge(824.6, 98.6, ROME_COLLAPSE, Thresholds(), subject_first=True)
    assert not verdict.passed
    assert [g.name for g in verdict.failed] == ["perplexity", "denominator_ratio", "update_norm"]
    text = verdict.explain()
    assert "perplexity 824.6 > 2 × baseline 98.6" in text
    assert "denominator ratio 0.015 < 0.1 (0.31 with the key used vs 20.7 with k̄)" in text
    assert "‖ΔW‖/‖W‖ 2.3 > 0.35" in text
    assert text.endswith("cos(k̄,kᵘ) = 0.07: the subject is the prompt's first token")


def test_absolute_collapse_line_wins_over_the_ratio():
    verdict = judge(1500.0, 900.0, {}, Thresholds(), subject_first=False)
    assert verdict.failed[0].reason == "perplexity 1500.0 > collapse line 1000"


def test_intact_edit_passes_and_only_applicable_gates_run():
    verdict = judge(99.0, 98.6, {"update_norm_rel": 0.08}, Thresholds(), subject_first=False)
    assert verdict.passed and [g.name for g in verdict.gates] == ["perplexity", "update_norm"]
    assert verdict.explain().startswith("all gates held: perplexity 99.0 ≤ 197.2")


def test_thresholds_are_configurable():
    strict = Thresholds(ppl_max_ratio=1.001, denominator_ratio_min=0.95, update_norm_rel_max=0.05)
    verdict = judge(99.0, 98.6, {"denominator_ratio": 0.9, "update_norm_rel": 0.08}, strict, subject_first=False)
    assert [g.name for g in verdict.failed] == ["perplexity", "denominator_ratio", "update_norm"]


def test_nan_or_inf_perplexity_is_a_collapse():
    for ppl in (float("nan"), float("inf")):
        verdict = judge(ppl, 98.6, {}, Thresholds(), subject_first=False)
        assert not verdict.passed and "not finite: collapsed" in verdict.failed[0].reason
        assert is_collapsed(ppl, 1000.0)
    assert not is_collapsed(999.0, 1000.0) and is_collapsed(1001.0, 1000.0)


def test_nan_weights_are_a_collapse_whatever_the_perplexity():
    verdict = judge(99.0, 98.6, {"non_finite_weights": ["w"]}, Thresholds(), subject_first=False)
    assert [g.name for g in verdict.failed] == ["perplexity"] and "['w'] hold NaN/Inf" in verdict.explain()


def test_the_terminal_report_counts_a_nan_perplexity_as_collapsed():
    from rich.console import Console

    from editguard.report.terminal import render_report

    run = {"editor": "rome", "model": "m", "thresholds": Thresholds().to_dict(), "ppl_corpus": "c",
           "baseline_ppl": 98.6, "baseline_corpus_ppl": 90.0}
    cases = [{"case_id": str(i), "prompt": "{} is", "subject": "X", "target_new": "Y", "ppl": ppl, "ppl_baseline": 98.6,
              "passed": False, "failed_gates": ["perplexity"]} for i, ppl in enumerate([float("nan"), 1500.0, 150.0])]
    console = Console(width=200, record=True)
    console.print(render_report(run, cases))
    assert "2 collapsed" in console.export_text()
