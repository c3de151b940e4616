"""lm-evaluation-harness's metrics under its keys (issue 30): NQ-open's normalisation, SQuAD 2.0's
official numbers, the stderrs (MMLU's pooled group stderr, LAMBADA's perplexity and its bootstrap),
the results layout of --lm-eval-json, and the first-N --downstream-limit. Hand-computed values;
the tiny model only where a model is needed. bench/lm_eval_parity.py checks the same against lm-eval
itself on a real model."""

import json
import math

import pytest

from editguard.metrics.downstream import evaluate, first_n, pick_items, prepare_probe
from editguard.metrics.lm_eval import (
    TaskScore,
    lm_eval_bootstrap_stderr,
    lm_eval_metrics,
    lm_eval_pooled_stderr,
    lm_eval_results,
)
from editguard.stats import proportion_stderr
from editguard.tasks import MCItem, exact_match, lm_eval_exact_match, load_task, squad2_metrics
from tests.test_downstream import write_tasks

# --- NQ-open: lm-eval's exact match, not SQuAD's ------------------------------------------------------


def test_nq_open_gold_a_plus_is_not_normalised_away():
    # lm-eval: "A+" -> "a" (its article regex needs a following space); SQuAD: "A+" -> "" (article dropped)
    assert lm_eval_exact_match("A+", ("A+",)) and lm_eval_exact_match(" a+ ", ("A+",))
    assert not lm_eval_exact_match("", ("A+",)) and not lm_eval_exact_match("the", ("A+",))
    assert exact_match("", ("A+",)) and exact_match("the", ("A+",))   # editguard's SQuAD variant: anything empty


def test_nq_open_normalisation_is_lm_evals_and_no_more():
    assert lm_eval_exact_match("The Beatles", ("Beatles",))          # the regex drops "The " ...
    assert not lm_eval_exact_match("THE Beatles", ("Beatles",))      # ... before lowercasing, case-sensitively
    assert lm_eval_exact_match("  U.S.A. ", ("usa",))                # prediction stripped, punctuation ignored
    assert not lm_eval_exact_match("Paris  France", ("Paris France",))   # inner whitespace is not collapsed
    assert exact_match("Paris  France", ("Paris France",))              # (SQuAD's normalisation collapses it)
    assert lm_eval_exact_match("Hamlet", ("Macbeth", "hamlet"))      # any gold answer


def test_nq_open_dev_first_answers_upper_cased_match_lm_evals_count(data_dir):
    # issue 30: each dev item's first gold answer upper-cased as the prediction; lm-eval 0.4.13's own
    # exact_match (ignore_case, ignore_punctuation, its regex) counts 3,318 right, SQuAD's normalisation 3,609
    items = load_task("nq-open", data_dir)
    assert len(items) == 3610
    assert sum(lm_eval_exact_match(i.answers[0].upper(), i.answers) for i in items) == 3318
    assert sum(exact_match(i.answers[0].upper(), i.answers) for i in items) == 3609


# --- SQuAD 2.0: the official script's numbers ----------------------------------------------------------

SQUAD_PREDICTIONS = ["1821", "granite", "", "scones with clotted cream", "two"]
SQUAD_ANSWERS = [("1821", "in 1821"), ("red granite",), (), ("scones with clotted cream",), ()]
SQUAD_NA_PROBS = [0.1, 0.5, 0.9, 0.2, 0.8]


def test_squad2_eight_numbers_by_hand():
    m = squad2_metrics(SQUAD_PREDICTIONS, SQUAD_ANSWERS, SQUAD_NA_PROBS)
    # exact per item 1, 0, 1, 1, 0; F1 1, 2/3 (P 1, R 1/2), 1, 1, 0
    assert m["exact"] == pytest.approx(60.0) and m["f1"] == pytest.approx(100 * (11 / 3) / 5)
    assert m["HasAns_exact"] == pytest.approx(200 / 3) and m["HasAns_f1"] == pytest.approx(100 * (8 / 3) / 3)
    assert m["NoAns_exact"] == pytest.approx(50.0) and m["NoAns_f1"] == pytest.approx(50.0)
    # best threshold: start at 2 (both unanswerable right when everything is "no answer"), then by
    # rising P(no answer): +1 (item 0), +1 (item 3), +0 / +2/3 (item 1), -1 (item 4 answers), 0 (item 2)
    assert m["best_exact"] == pytest.approx(80.0) and m["best_f1"] == pytest.approx(100 * (14 / 3) / 5)


def test_squad2_keys_and_na_stderr_as_lm_eval_reports_them():
    m = squad2_metrics(SQUAD_PREDICTIONS[:2], SQUAD_ANSWERS[:2], SQUAD_NA_PROBS[:2])
    assert "NoAns_exact" not in m and "HasAns_exact" in m   # present only where such questions are
    keys = lm_eval_metrics(TaskScore("squad2", "exact_match", 2, 1, 0.0, {"squad2": m}))
    assert set(keys) == {f"{k}{s},none" for k in m for s in ("", "_stderr")}
    assert all(keys[f"{k}_stderr,none"] == "N/A" for k in m)


def test_squad2_on_a_synthetic_file_gives_the_eight_keys(tiny_llama, tmp_path):
    from dataclasses import replace

    from editguard.tasks import TASKS

    root = write_tasks(tmp_path / "data")
    score = evaluate(tiny_llama, replace(TASKS["squad2"], max_new_tokens=2), load_task("squad2", root),
                     precision="float32")
    keys = lm_eval_metrics(score)
    for name in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1"):
        assert isinstance(keys[f"{name},none"], float) and keys[f"{name}_stderr,none"] == "N/A"
    assert keys["exact,none"] == pytest.approx(100 * score.accuracy)


# --- stderrs ------------------------------------------------------------------------------------------


def test_pooled_stderr_by_hand():
    # (3·0.25²·4 + 1·0.5²·2) / (6 − 2) = 0.3125; / 6, square root
    assert lm_eval_pooled_stderr([0.25, 0.5], [4, 2]) == pytest.approx(math.sqrt(0.3125 / 6))
    assert lm_eval_pooled_stderr([0.25, "N/A"], [4, 1]) == "N/A"


def test_mmlu_group_stderr_is_pooled_over_the_subjects_and_has_no_acc_norm():
    groups = {"abstract_algebra": [4, 1], "anatomy": [2, 1], "marketing": [3, 2]}   # stem, stem, other
    score = TaskScore("mmlu", "acc", 9, 4, 0.25, {"acc": 4 / 9, "acc_norm": 5 / 9, "groups": groups})
    keys = lm_eval_metrics(score)
    # lm-eval 0.4.13 pools a group over its leaf tasks (the subjects), not over its sub-groups:
    # (3·0.25²·4 + 1·0.5²·2 + 2·(1/3)²·3) / (9 − 3) = 0.319444; / 9, square root
    assert keys == {"acc,none": pytest.approx(4 / 9), "acc_stderr,none": pytest.approx(
        lm_eval_pooled_stderr([proportion_stderr(1, 4), proportion_stderr(1, 2), proportion_stderr(2, 3)], [4, 2, 3]))}
    assert keys["acc_stderr,none"] == pytest.approx(math.sqrt(0.3194444 / 9), abs=1e-6)
    assert abs(keys["acc_stderr,none"] - proportion_stderr(4, 9)) > 0.01   # not the plain stderr of 9 items


def test_lambada_perplexity_and_its_bootstrap_stderr(tiny_llama, tmp_path):
    root = write_tasks(tmp_path / "data")
    score = evaluate(tiny_llama, "lambada", load_task("lambada", root), precision="float32")
    lls = score.extra["loglikelihoods"]
    keys = lm_eval_metrics(score)
    assert keys["perplexity,none"] == pytest.approx(math.exp(-sum(lls) / len(lls)))
    assert "perplexity_stderr,none" not in keys   # the bootstrap only where asked for (the JSON, the bench)
    with_stderr = lm_eval_metrics(score, bootstrap_iters=2000)
    assert with_stderr["perplexity_stderr,none"] > 0
    assert with_stderr["perplexity_stderr,none"] == lm_eval_metrics(score, bootstrap_iters=2000)[
        "perplexity_stderr,none"]   # seeded per chunk: the same every time


def test_bootstrap_stderr_of_a_mean_is_near_the_plain_stderr():
    xs = [float(i % 2) for i in range(200)]
    plain = proportion_stderr(100, 200)
    assert lm_eval_bootstrap_stderr(lambda v: sum(v) / len(v), xs, 5000) == pytest.approx(plain, rel=0.05)
    assert lm_eval_bootstrap_stderr(lambda v: sum(v) / len(v), [1.0] * 10, 1000) == 0.0


# --- the results layout ---------------------------------------------------------------------------------


def test_results_layout_is_lm_evals():
    scores = {
        "piqa": TaskScore("piqa", "acc", 4, 3, 0.5, {"acc": 0.75, "acc_norm": 0.5}),
        "mmlu-5shot": TaskScore("mmlu-5shot", "acc", 5, 2, 0.25,
                                {"acc": 0.4, "groups": {"anatomy": [3, 1], "marketing": [2, 1]}}),
        "nq-open": TaskScore("nq-open", "exact_match", 10, 1, 0.0, {"exact_match_squad": 0.2}),
    }
    doc = lm_eval_results(scores, {"piqa": {"": 1838}, "mmlu-5shot": {"anatomy": 135, "marketing": 234}},
                          config={"model": "tiny"})
    assert {"results", "groups", "group_subtasks", "configs", "versions", "n-shot", "n-samples",
            "higher_is_better", "config"} <= set(doc)
    assert doc["results"]["piqa"] == {"alias": "piqa", "acc,none": 0.75, "acc_stderr,none": proportion_stderr(3, 4),
                                      "acc_norm,none": 0.5, "acc_norm_stderr,none": proportion_stderr(2, 4)}
    assert doc["n-samples"]["piqa"] == {"original": 1838, "effective": 4}
    assert doc["results"]["nq_open"]["exact_match,remove_whitespace"] == 0.1
    assert "exact_match_squad" not in json.dumps(doc["results"])   # editguard's own variant: not under lm-eval keys
    assert doc["versions"]["nq_open"] == 4.0 and doc["n-shot"]["mmlu"] == 5
    assert doc["configs"]["nq_open"]["generation_kwargs"] == {"until": ["\n", ".", ","], "do_sample": False,
                                                              "max_gen_toks": 256}
    assert doc["groups"]["mmlu"]["acc,none"] == 0.4 and "acc_norm,none" not in doc["results"]["mmlu"]
    assert doc["group_subtasks"]["mmlu"] == ["mmlu_stem", "mmlu_other"]
    assert doc["group_subtasks"]["mmlu_stem"] == ["mmlu_anatomy"]
    assert doc["results"]["mmlu_anatomy"]["acc,none"] == pytest.approx(1 / 3)
    assert doc["n-samples"]["mmlu_marketing"] == {"original": 234, "effective": 2}
    assert doc["config"] == {"model": "tiny"}


def test_eval_command_writes_the_lm_eval_layout_with_first_n(tiny_llama, tmp_path, monkeypatch):
    from editguard.cli import main

    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    root = write_tasks(tmp_path / "data")
    out = tmp_path / "lm.json"
    assert main(["eval", "--model", "tiny-llama", "--tasks", "piqa,mmlu,lambada", "--limit", "1", "--data", str(root),
                 "--json", str(tmp_path / "e.json"), "--lm-eval-json", str(out), "--downstream-precision",
                 "float32"]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["results"]) >= {"piqa", "lambada_openai", "mmlu", "mmlu_stem", "mmlu_astronomy",
                                   "mmlu_high_school_physics"}
    assert doc["n-samples"]["piqa"] == {"original": 2, "effective": 1}                 # the first 1 of 2
    assert doc["n-samples"]["mmlu_astronomy"] == {"original": 2, "effective": 1}       # per subject, as --limit
    assert "perplexity,none" in doc["results"]["lambada_openai"]
    assert isinstance(doc["results"]["lambada_openai"]["perplexity_stderr,none"], float)
    assert doc["config"]["editguard_state"] == "unedited" and doc["config"]["limit"] == 1


# --- first N (lm-eval's --limit) beside the seeded subset ----------------------------------------------------


def test_first_n_takes_the_first_items_per_subject():
    items = [MCItem("q", (" A",), 0, (), g) for g in ("a", "a", "a", "b", "c", "c")]
    assert first_n(items, 2) == [0, 1, 3, 4, 5]
    assert first_n(items, None) == list(range(6))
    plain = list(range(10))
    assert first_n(plain, 3) == [0, 1, 2]
    assert pick_items(plain, "piqa", 3, seed=0) != [0, 1, 2] or pick_items(plain, "piqa", 3, seed=1) != [0, 1, 2]
    with pytest.raises(ValueError, match="either a first-N limit or a seeded subset size"):
        pick_items(plain, "piqa", 3, 0, 2)


def test_probe_with_a_limit_scores_the_first_items(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    root = write_tasks(tmp_path / "data")
    probe = prepare_probe(tiny_llama, ["piqa", "mmlu"], 200, root, precision="float32", limit=1)
    assert probe.indices == {"piqa": [0], "mmlu": [0, 2]}   # mmlu: the first of each subject (astronomy, physics)
    assert probe.originals["mmlu"] == {"astronomy": 2, "high_school_physics": 1}


def test_plugin_takes_downstream_limit(pytester):
    pytester.makepyfile(test_x="def test_x(editguard_settings):\n"
                               "    assert editguard_settings.downstream_limit == 7\n"
                               "    assert editguard_settings.lm_eval_json == 'l.json'\n")
    result = pytester.runpytest_subprocess("--model=tiny-llama", "--editguard-downstream-limit=7",
                                           "--editguard-lm-eval-json=l.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_precision_auto_refuses_bfloat16_without_native_products(tiny_llama, monkeypatch):
    from editguard.models import precision

    monkeypatch.setattr(precision, "cpu_multiplies_bfloat16_natively", lambda: False)
    precision.cpu_bfloat16_autocast_is_faster.cache_clear()
    try:
        assert precision.resolve_precision(tiny_llama, "auto") == "float32"
    finally:
        precision.cpu_bfloat16_autocast_is_faster.cache_clear()


# --- bench/lm_eval_parity.py's comparison of NQ-open's generated texts (pure python, no lm-eval) ------


def _parity_bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "lm_eval_parity.py"
    spec = importlib.util.spec_from_file_location("lm_eval_parity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sample(doc_id, text, em=0):
    return {"doc_id": doc_id, "resps": [[text]], "filtered_resps": [text.strip()], "exact_match": em}


def test_parity_bench_counts_generations_that_differ_even_when_exact_match_agrees():
    from editguard.tasks import GenItem

    bench = _parity_bench()
    items = [GenItem("Q: a?\nA:", ("Paris",)), GenItem("Q: b?\nA:", ("Rome",)), GenItem("Q: c?\nA:", ("Oslo",))]
    mine = [" Paris", " the city of", " Bergen"]
    # lm-eval logs its samples in any order; doc_id is the item's index. Item 1 differs in text only
    # (both wrong), item 2 is the same text.
    samples = [_sample(2, " Bergen"), _sample(0, " Paris", 1), _sample(1, " the city", 0)]
    score = TaskScore("nq-open", "exact_match", 3, 1, 0.0, {"per_item": mine})
    agreement = bench.item_agreement("nq-open", items, score, {"editguard_nq_open": samples})
    assert agreement["exact_match"] == {"n": 3, "differ": 0}
    assert agreement["generation"] == {"n": 3, "differ": 1}
    assert bench.generation_differences(mine, samples) == [
        {"doc_id": 1, "editguard": " the city of", "lm_eval": " the city"}]
    assert bench.generation_differences(mine, samples, keep=0) == []
    # Whitespace counts: lm-eval's filter strips it for the score, the generation itself is compared.
    assert bench.generation_differences([" Paris "], [_sample(0, " Paris")])[0]["doc_id"] == 0


def test_parity_bench_refuses_samples_it_cannot_read():
    bench = _parity_bench()
    with pytest.raises(ValueError, match="1 editguard generations against 2 lm-eval samples"):
        bench.generation_differences(["x"], [_sample(0, "x"), _sample(1, "y")])
    with pytest.raises(ValueError, match=r"doc_id 0: expected resps \[\[text\]\]"):
        bench.generation_differences(["x"], [{"doc_id": 0, "resps": []}])


def test_parity_report_names_the_differing_generations_and_keeps_its_last_line(capsys):
    bench = _parity_bench()
    doc = {"model": "m", "cpu": "c", "tasks": {"nq-open": {
        "n": 2, "limit": 2, "seconds": {"editguard": 1.0, "lm_eval": 3.0},
        "metrics": bench.compare({"exact_match,remove_whitespace": 0.5}, {"exact_match,remove_whitespace": 0.5}),
        "items": {"exact_match": {"n": 2, "differ": 0}, "generation": {"n": 2, "differ": 1}},
        "generations_that_differ": [{"doc_id": 1, "editguard": " a", "lm_eval": " b"}]}}}
    bench.report(doc)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "items that differ: exact_match 0 of 2, generation 1 of 2" in lines[-4]
    assert lines[-3] == "nq-open      doc 1: editguard ' a', lm-eval ' b'"
    assert lines[-1] == ("lm-eval parity on m: max |difference| 0 over 1 metrics "
                         "(worst: nq-open exact_match,remove_whitespace)")
