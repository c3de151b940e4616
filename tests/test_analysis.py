"""The Fall of ROME analyses (subject position, test-time prefix cure) on tiny models."""

import json

import pytest

from editguard import EditCase, get_editor, measure_baseline
from editguard.analysis import (
    analyze_positions,
    analyze_prefix_cure,
    position_variants,
    summarize_positions,
    summarize_prefix_cure,
)
from editguard.cases import write_cases
from editguard.metrics.efficacy import edit_scores, target_logprobs
from editguard.models import weight_digests

SHORT = {"v_num_grad_steps": 3, "context_template_length_params": [[5, 5]]}
FIRST = EditCase("p1", "{} is the capital of", "Paris", "Rome", "France",
                 paraphrases=("The capital city of France is", "{} is the seat of"),
                 neighborhood=("Lyon is a city in",))


@pytest.fixture(scope="module")
def tiny_baseline(tiny_llama):
    return measure_baseline(tiny_llama, ["The cat sat on the mat.", "A quiet morning in the village."], "two")


def test_position_variants_move_the_subject_off_the_first_token(tiny_llama):
    variants = position_variants(tiny_llama, FIRST)
    assert [v.subject_first for v in variants.values()] == [True, False, False]
    texts = [v.text for v in variants.values()]
    assert texts == ["Paris is the capital of", "In fact, Paris is the capital of",
                     f"{tiny_llama.tokenizer.eos_token}Paris is the capital of"]
    # the swap adds exactly one token, and it is the end-of-text token
    ids = tiny_llama.tokenizer(texts[2])["input_ids"]
    assert ids[0] == tiny_llama.tokenizer.eos_token_id and ids[1:] == tiny_llama.tokenizer(texts[0])["input_ids"]
    with pytest.raises(ValueError, match="case n1: the position analysis needs a subject-first prompt"):
        position_variants(tiny_llama, EditCase("n1", "The capital of {} is", "France", "Rome", "Paris"))


def test_edit_scores_compare_the_targets_on_every_prompt(tiny_llama):
    scores = edit_scores(tiny_llama, FIRST, "")
    new, true = target_logprobs(tiny_llama, FIRST.text, ["Rome", "France"])
    assert scores.efficacy == float(new > true)
    para = [target_logprobs(tiny_llama, p, ["Rome", "France"]) for p in FIRST.paraphrases]
    assert scores.generalization == sum(n > t for n, t in para) / 2
    n, t = target_logprobs(tiny_llama, FIRST.neighborhood[0], ["Rome", "France"])
    assert scores.locality == float(t >= n)
    assert edit_scores(tiny_llama, EditCase("x", "{} is", "Paris", "Rome"), "").efficacy is None


def test_positions_analysis_edits_each_variant_and_restores(tiny_llama, tiny_baseline):
    editor = get_editor("rome", SHORT)
    rows = analyze_positions(tiny_llama, editor, [FIRST], tiny_baseline)
    assert [r["condition"].split(" (")[0] for r in rows] == ["subject first", "moved later", "first position swapped"]
    assert all(r["ppl"] > 1 and -1 <= r["key_cosine"] <= 1 for r in rows)
    assert len({r["key_cosine"] for r in rows}) == 3     # three different unprefixed keys
    assert weight_digests(tiny_llama.model) == tiny_baseline.pristine.digests
    summary = summarize_positions(rows, ppl_max=1e9)
    assert [s["n"] for s in summary] == [1, 1, 1] and all(s["collapsed"] == 0 for s in summary)
    assert summarize_positions(rows, ppl_max=0)[0]["collapsed"] == 1


def test_prefix_cure_scores_with_and_without_the_editors_prefix(tiny_llama, tiny_baseline):
    rows = analyze_prefix_cure(tiny_llama, get_editor("c-rome", SHORT), {"hard": [FIRST]}, tiny_baseline)
    assert rows[0]["test_prefix"]                          # C-ROME tests behind a context prefix
    rows_rome = analyze_prefix_cure(tiny_llama, get_editor("rome", SHORT), {"hard": [FIRST]}, tiny_baseline)
    assert rows_rome[0]["test_prefix"] == ""              # ROME has none: both columns are the same test
    assert all(rows_rome[0][f"{k}_plain"] == rows_rome[0][f"{k}_prefixed"]
               for k in ("efficacy", "generalization", "locality"))
    assert weight_digests(tiny_llama.model) == tiny_baseline.pristine.digests
    summary = summarize_prefix_cure(rows)
    assert [(s["group"], s["test"]) for s in summary] == [("hard", "no prefix"), ("hard", "with prefix")]


def test_analyze_command_writes_the_table_json(tmp_path, data_dir, capsys):
    from editguard.cli import main

    cases = tmp_path / "cases.json"
    write_cases(cases, [FIRST])
    out = tmp_path / "positions.json"
    assert main(["analyze", "positions", "--model", "tiny-llama", "--cases", str(cases), "--max-cases", "1",
                 "--data", str(data_dir), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["run"]["editor"] == "rome" and len(doc["rows"]) == 3 and len(doc["summary"]) == 3
    assert "subject position" in capsys.readouterr().out
