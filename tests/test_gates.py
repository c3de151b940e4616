"""Gates: which hold, which fail, and the sentence a person reads."""

from editguard.gates import Thresholds, judge

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
