"""Downstream probes: loaders on the real formats, scoring as lm-evaluation-harness does, the
Wilson gate, the probe inside guarded checks and the plugin's options.

Fixture data is written into tmp_path in each task's real format; the SQuAD 2.0 sample is a
small project-made file in dev-v2.0.json's format (tests/fixtures/squad2_dev_sample.json).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from editguard.data import DataError
from editguard.gates import downstream_gates
from editguard.metrics.downstream import (
    TaskScore,
    encode_pair,
    evaluate,
    loglikelihoods,
    prepare_probe,
    score_choices,
    sharing_pays,
    subset,
)
from editguard.models import load_model
from editguard.stats import wilson_interval
from editguard.tasks import TASKS, MCItem, exact_match, f1_score, load_task, normalize_answer, parse_task_list
from tests.tiny_edits import PARIS

SQUAD_SAMPLE = Path(__file__).parent / "fixtures" / "squad2_dev_sample.json"
MMLU_HEADER = "question,choice0,choice1,choice2,choice3,answer\n"


def write_tasks(root: Path) -> Path:
    """A tiny data directory with every task in its real format."""
    (root / "piqa").mkdir(parents=True)
    (root / "piqa" / "valid.jsonl").write_text(
        json.dumps({"goal": "Keep bread fresh", "sol1": "Store it in a bag.", "sol2": "Store it in water."}) + "\n"
        + json.dumps({"goal": "Dry wet shoes", "sol1": "Bake them at 300 degrees.",
                      "sol2": "Stuff them with paper."}) + "\n")
    (root / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    (root / "hellaswag").mkdir()
    (root / "hellaswag" / "hellaswag_val_full.txt").write_text(
        "Baking: A man mixes flour and water. he\n2\nflies away.\nsings.\nkneads the dough on the table.\nis a cat.\n"
        "Swimming: A girl stands on the board\n0\njumps into the pool.\neats.\nsleeps on a rock for a while.\nhe.\n")
    (root / "lambada").mkdir()
    (root / "lambada" / "lambada_test.jsonl").write_text(
        json.dumps({"text": "She opened the door and saw her old friend Tom"}) + "\n"
        + json.dumps({"text": "He poured the tea into the cup"}) + "\n")
    for split in ("test", "dev"):
        (root / "mmlu" / split).mkdir(parents=True)
    (root / "mmlu" / "test" / "astronomy_test.csv").write_text(
        MMLU_HEADER + 'What is closest to the Sun?,Mercury,Venus,Earth,Mars,0\n'
        '"Which, with commas, is a gas giant?",Mars,Jupiter,Venus,Earth,1\n')
    (root / "mmlu" / "test" / "high_school_physics_test.csv").write_text(
        MMLU_HEADER + "What is the unit of force?,joule,watt,newton,volt,2\n")
    (root / "mmlu" / "dev" / "astronomy_dev.csv").write_text(
        MMLU_HEADER + "".join(f"Dev question {i}?,a{i},b{i},c{i},d{i},{i % 4}\n" for i in range(5)))
    (root / "mmlu" / "dev" / "high_school_physics_dev.csv").write_text(
        MMLU_HEADER + "".join(f"Physics {i}?,w{i},x{i},y{i},z{i},{(i + 1) % 4}\n" for i in range(5)))
    (root / "nq-open").mkdir()
    (root / "nq-open" / "NQ-open.dev.jsonl").write_text(
        json.dumps({"question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"]}) + "\n")
    (root / "squad2").mkdir()
    shutil.copy(SQUAD_SAMPLE, root / "squad2" / "dev-v2.0.json")
    return root


@pytest.fixture
def tasks_dir(tmp_path) -> Path:
    return write_tasks(tmp_path / "data")


# --- loaders ----------------------------------------------------------------------------------

def test_piqa_and_hellaswag_prompts_choices_and_gold(tasks_dir):
    piqa = load_task("piqa", tasks_dir)
    assert piqa[0] == MCItem("Question: Keep bread fresh\nAnswer:", (" Store it in a bag.", " Store it in water."), 0,
                             (18, 18))
    assert piqa[1].gold == 1
    hs = load_task("hellaswag", tasks_dir)
    assert hs[0].context == "Baking: A man mixes flour and water. He"   # ctx_b capitalized, as lm-eval
    assert hs[0].choices[2] == " kneads the dough on the table." and hs[0].gold == 2
    assert hs[1].context == "Swimming: A girl stands on the board"   # no sentence end: left as it is
    # acc_norm divides by the ending's characters, without the space that joins it to the context
    assert hs[0].norm_lengths == (len("flies away."), len("sings."), len("kneads the dough on the table."),
                                  len("is a cat."))


def test_lambada_splits_off_the_last_word(tasks_dir):
    items = load_task("lambada", tasks_dir)
    assert items[0].context == "She opened the door and saw her old friend" and items[0].choices == (" Tom",)


def test_mmlu_zero_and_five_shot_prompts(tasks_dir):
    zero = load_task("mmlu", tasks_dir)
    assert len(zero) == 3 and [i.gold for i in zero] == [0, 1, 2]
    assert zero[1].context == ("The following are multiple choice questions (with answers) about astronomy.\n\n"
                               "Which, with commas, is a gas giant?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:")
    assert zero[0].choices == (" A", " B", " C", " D")
    five = load_task("mmlu-5shot", tasks_dir)
    physics = five[2].context
    assert physics.startswith("The following are multiple choice questions (with answers) about high school "
                              "physics.\n\n"
                              "Physics 0?\nA. w0\nB. x0\nC. y0\nD. z0\nAnswer: B\n\nPhysics 1?\n")
    assert physics.count("\n\n") == 6 and "Physics 4?\nA. w4\nB. x4\nC. y4\nD. z4\nAnswer: B\n\n" in physics
    assert physics.endswith("What is the unit of force?\nA. joule\nB. watt\nC. newton\nD. volt\nAnswer:")


def test_generation_tasks_prompts_and_answers(tasks_dir):
    nq = load_task("nq-open", tasks_dir)
    assert nq[0].prompt == "Answer these questions:\n\nQ: who wrote hamlet?\nA:"
    assert nq[0].answers == ("William Shakespeare", "Shakespeare")
    squad = load_task("squad2", tasks_dir)
    assert len(squad) == 5 and [bool(i.answers) for i in squad] == [True, True, False, True, False]
    assert squad[0].prompt.startswith("Title: Harbour_Town\n\nBackground: Harbour Town was founded in 1821")
    assert squad[0].prompt.endswith("\n\nQuestion: When was Harbour Town founded?\n\nAnswer:")
    # answering "" everywhere is right on the unanswerable questions: SQuAD2's "random" is not 0
    assert TASKS["squad2"].random_baseline(squad) == pytest.approx(2 / 5)


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize("task, file, old, new, message", [
    ("piqa", "piqa/valid.jsonl", '"sol2": "Stuff', '"solution2": "Stuff',
     "valid.jsonl: line 2, field 'sol2': expected a non-empty string, got no such field"),
    ("piqa", "piqa/valid-labels.lst", "1\n", "", "valid-labels.lst: 1 labels for 2 questions"),
    ("piqa", "piqa/valid-labels.lst", "1\n", "2\n", "valid-labels.lst: line 2: expected label 0 or 1, got '2'"),
    ("hellaswag", "hellaswag/hellaswag_val_full.txt", "\n0\n", "\nzero\n",
     "line 8 (item 1), field 'label': expected 0-3"),
    ("hellaswag", "hellaswag/hellaswag_val_full.txt", "is a cat.\n", "", "11 lines, not a multiple of 6"),
    ("lambada", "lambada/lambada_test.jsonl", '"text"', '"txt"', "lambada_test.jsonl: line 1, field 'text'"),
    ("mmlu", "mmlu/test/astronomy_test.csv", "Mars,0", "Mars,E",
     "astronomy_test.csv: record 1 (line 2), field 'answer': expected 0-3, got 'E'"),
    ("mmlu", "mmlu/test/astronomy_test.csv", "choice3,", "choice_3,", "astronomy_test.csv: expected the header"),
    ("mmlu-5shot", "mmlu/dev/astronomy_dev.csv", "Dev question 4?,a4,b4,c4,d4,0\n", "",
     "astronomy_dev.csv: 4 rows, 5-shot MMLU needs 5"),
    ("nq-open", "nq-open/NQ-open.dev.jsonl", '["William Shakespeare", "Shakespeare"]', '"Shakespeare"',
     "line 1, field 'answer': expected a non-empty list of strings"),
    ("squad2", "squad2/dev-v2.0.json", '"answers": [],\n       "plausible',
     '"answers": [{"text": "x", "answer_start": 0}],\n       "plausible',
     "data[0].paragraphs[0].qas[2] (id eg-0003), field 'answers': an unanswerable question (is_impossible) "
     "must have no answers"),
])
def test_bad_records_raise_errors_naming_file_record_and_field(tasks_dir, task, file, old, new, message):
    _rewrite(tasks_dir / file, old, new)
    with pytest.raises(DataError) as err:
        load_task(task, tasks_dir)
    assert message in str(err.value)


def test_missing_task_file_says_which_and_where(tasks_dir):
    (tasks_dir / "lambada" / "lambada_test.jsonl").unlink()
    with pytest.raises(DataError, match=r"data file .*lambada/lambada_test.jsonl not found"):
        load_task("lambada", tasks_dir)


def test_task_list_validation_names_the_valid_tasks():
    assert parse_task_list("piqa, lambada,piqa") == ["piqa", "lambada"]
    with pytest.raises(ValueError, match="unknown downstream task.s. wikitext; valid: piqa, hellaswag, lambada, mmlu"):
        parse_task_list("piqa,wikitext")


def test_subsets_are_seeded_fixed_and_in_file_order():
    items = list(range(1000))
    a, b = subset(items, 50, 0, "piqa"), subset(items, 50, 0, "piqa")
    assert a == b == sorted(a) and len(set(a)) == 50
    assert subset(items, 50, 1, "piqa") != a and subset(items, 50, 0, "mmlu") != a
    assert subset(items, None) == subset(items, 5000) == items


# --- scoring ----------------------------------------------------------------------------------

def test_encode_pair_splits_like_lm_eval(tiny_llama):
    tok = tiny_llama.tokenizer
    ctx, cont = encode_pair(tok, "Answer: ", "yes")   # the trailing space moves to the continuation
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " yes"
    ctx, cont = encode_pair(tok, "", "abc")           # nothing to condition on: end-of-text first
    assert ctx == [tok.eos_token_id] and tok.decode(cont) == "abc"


def _naive_loglikelihood(mue, context: str, continuation: str) -> tuple[float, bool]:
    """One pair, full logits, no padding, no sharing: the reference the batched path must equal."""
    ctx, cont = encode_pair(mue.tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(mue.model(ids).logits[0].float(), dim=-1)
    rows = logprobs[len(ctx) - 1 : len(ctx) - 1 + len(cont)]
    target = torch.tensor(cont)
    return float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


PAIRS = [("Question: Keep bread fresh\nAnswer:", " Store it in a bag."),
         ("Question: Keep bread fresh\nAnswer:", " Store it in water."),
         ("A man mixes flour and water. he", " kneads the dough."),
         ("A man mixes flour and water. he", " flies away over the hills and far away."),
         ("A man mixes flour and water. he", " sings."),
         ("What is closest to the Sun?\nAnswer:", "A"),
         ("What is closest to the Sun?\nAnswer:", "B"),
         ("She opened the door and saw her old friend", " Tom")]


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2", "tiny-gptj"])
@pytest.mark.parametrize("share", [True, False], ids=["shared-context", "one-row-per-pair"])
def test_batched_loglikelihood_equals_one_pair_at_a_time(model_name, share):
    mue = load_model(model_name)
    batched = loglikelihoods(mue, PAIRS, share_context=share, tokens_per_batch=64)  # several batches
    for (context, continuation), (lp, greedy) in zip(PAIRS, batched):
        ref_lp, ref_greedy = _naive_loglikelihood(mue, context, continuation)
        assert lp == pytest.approx(ref_lp, abs=1e-4, rel=1e-5) and greedy == ref_greedy


def test_sharing_pays_only_where_it_saves_almost_a_third_of_the_tokens():
    assert sharing_pays(30, [20, 22, 25, 18])     # HellaSwag-like: 130 tokens shared against 205
    assert not sharing_pays(14, [20, 60])          # PIQA-like, answers of unequal length: 134 against 108
    assert not sharing_pays(10, [10, 10])          # 30 against 40: a quarter saved is not enough
    assert sharing_pays(100, [5, 5])               # a long context, short answers: 110 against 210


SHARED = "A man mixes flour and water in a bowl, covers it with a cloth and waits for an hour. Then he"
SHARED_PAIRS = [(SHARED, " kneads the dough."), (SHARED, " bakes bread."), (SHARED, " sings."), PAIRS[0], PAIRS[1]]


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2", "tiny-gptj"])
def test_shared_context_path_equals_one_pair_at_a_time(model_name):
    mue = load_model(model_name)
    encoded = [encode_pair(mue.tokenizer, c, x) for c, x in SHARED_PAIRS[:3]]
    assert sharing_pays(len(encoded[0][0]), [len(cont) for _, cont in encoded])   # the key/value-cache path runs
    batched = loglikelihoods(mue, SHARED_PAIRS, share_context=True, tokens_per_batch=64)
    for (context, continuation), (lp, greedy) in zip(SHARED_PAIRS, batched):
        ref_lp, ref_greedy = _naive_loglikelihood(mue, context, continuation)
        assert lp == pytest.approx(ref_lp, abs=1e-4, rel=1e-5) and greedy == ref_greedy


def test_single_token_fast_path_equals_generic_path(tiny_llama):
    # With the byte tokenizer a bare letter is one token: the MMLU-style fast path (one forward of
    # the context for all four letters) must give the generic path's numbers and predictions.
    items = [MCItem(f"Question {q}: pick one.\nAnswer:", ("A", "B", "C", "D"), q % 4, (1, 1, 1, 1)) for q in range(5)]
    pairs = [(i.context, c) for i in items for c in i.choices]
    fast = loglikelihoods(tiny_llama, pairs, share_context=True)
    generic = loglikelihoods(tiny_llama, pairs, share_context=False)
    assert [lp for lp, _ in fast] == pytest.approx([lp for lp, _ in generic], abs=1e-5)
    assert score_choices(items, fast) == score_choices(items, generic)


def test_bfloat16_scoring_runs_in_16_bits_close_to_float32(tiny_llama):
    from editguard.models.precision import precision_context

    full = loglikelihoods(tiny_llama, PAIRS)
    with precision_context(tiny_llama, "bfloat16"):
        half = loglikelihoods(tiny_llama, PAIRS)
    differences = [abs(a - b) for (a, _), (b, _) in zip(full, half)]
    assert max(differences) > 0                       # the products really ran in bfloat16 ...
    assert [b for b, _ in half] == pytest.approx([a for a, _ in full], rel=0.02)   # ... and barely moved
    assert all(p.dtype == torch.float32 for p in tiny_llama.model.parameters())           # weights untouched


def test_precision_resolution_and_its_errors(tiny_llama):
    from editguard.models.precision import resolve_precision

    assert resolve_precision(tiny_llama, "float32") == "float32"
    assert resolve_precision(tiny_llama, "bfloat16") == "bfloat16"
    from editguard.models.precision import cpu_bfloat16_autocast_is_faster

    # auto: bfloat16 only where the CPU says it has bf16 products AND a timed product confirms it
    assert resolve_precision(tiny_llama, "auto") == ("bfloat16" if cpu_bfloat16_autocast_is_faster() else "float32")
    with pytest.raises(ValueError, match=r"downstream precision must be one of auto, float32, bfloat16; got 'fp8'"):
        resolve_precision(tiny_llama, "fp8", "downstream precision")
    half = load_model("tiny-llama", dtype="float16")
    assert resolve_precision(half, "float32") == "float16"   # a 16-bit model is scored as it is held


def test_acc_norm_divides_by_character_length():
    item = MCItem("ctx", (" short", " a much longer ending"), 1, (5, 20))
    acc, norm = score_choices([item], [(-3.0, False), (-8.0, False)])
    assert acc == [0]      # -3 > -8
    assert norm == [1]     # -3/5 = -0.6 < -8/20 = -0.4


def test_lambada_is_right_only_when_every_last_word_token_is_greedy(tiny_llama):
    context = "She opened the door and saw her old"
    ids = tiny_llama.tokenizer(context, add_special_tokens=False)["input_ids"]
    greedy = []
    with torch.no_grad():
        for _ in range(3):
            greedy.append(int(tiny_llama.model(torch.tensor([ids + greedy])).logits[0, -1].argmax()))
    word = tiny_llama.tokenizer.decode(greedy)
    wrong_last = tiny_llama.tokenizer.decode(greedy[:2] + [(greedy[2] + 1) % 256])
    right, wrong = loglikelihoods(tiny_llama, [(context, word), (context, wrong_last)], share_context=False)
    assert right[1] is True and wrong[1] is False
    score = evaluate(tiny_llama, "lambada", [MCItem(context, (word,)), MCItem(context, (wrong_last,))])
    assert (score.correct, score.n, score.metric) == (1, 2, "acc")


def test_answer_normalisation_exact_match_and_f1():
    assert normalize_answer("  The Eiffel-Tower! ") == "eiffeltower"
    assert normalize_answer("an apple, a pear and the plum") == "apple pear and plum"
    assert exact_match("the Shakespeare.", ("William Shakespeare", "Shakespeare"))
    assert not exact_match("Marlowe", ("William Shakespeare", "Shakespeare"))
    # SQuAD2 unanswerable: only an empty (after normalisation) prediction is right
    assert exact_match("", ()) and exact_match(" the ", ()) and not exact_match("1821", ())
    assert f1_score("", ()) == 1.0 and f1_score("1821", ()) == 0.0 and f1_score("", ("1821",)) == 0.0
    assert f1_score("the cat sat", ("a cat sat down",)) == pytest.approx(0.8)   # P 1, R 2/3


def test_generation_scores_exact_match_and_squad_f1(tiny_llama, tasks_dir):
    from dataclasses import replace

    items = load_task("squad2", tasks_dir)
    score = evaluate(tiny_llama, replace(TASKS["squad2"], max_new_tokens=3), items)   # a random model never stops
    assert score.n == 5 and score.metric == "exact_match" and score.random == pytest.approx(0.4)
    assert 0 <= score.extra["f1"] <= 1 and score.extra["unanswerable"] == 2
    # the official script's numbers, as lm-eval's squadv2 reports them (P(" unanswerable") for best_*)
    assert set(score.extra["squad2"]) == {"exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1",
                                          "best_exact", "best_f1"}
    assert score.extra["squad2"]["exact"] == pytest.approx(100 * score.accuracy)
    assert score.extra["squad2"]["best_exact"] >= score.extra["squad2"]["NoAns_exact"] * 2 / 5
    assert all(set(e) == {"prediction", "answers"} for e in score.extra["examples"])


# --- statistics and the gate --------------------------------------------------------------------

def test_wilson_bound_matches_a_hand_checked_value():
    # p = 0.5, n = 200, z = 1.645: (0.5 + 0.006765 - 1.645·√(0.00125 + 1.691e-5)) / 1.013530 = 0.44223
    low, high = wilson_interval(100, 200, 1.645)
    assert low == pytest.approx(0.44223, abs=1e-5) and high == pytest.approx(1 - low)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(1, 200)[0] > 0   # any hit beats a random of 0


def _score(task, correct, n, random):
    return TaskScore(task, "acc", n, correct, random)


UNEDITED = {"piqa": _score("piqa", 130, 200, 0.5), "mmlu": _score("mmlu", 52, 200, 0.25),
            "lambada": _score("lambada", 60, 200, 0.0)}


def test_gate_fails_a_model_at_random_and_names_task_accuracies_bound_and_n():
    edited = {"piqa": _score("piqa", 100, 200, 0.5), "mmlu": _score("mmlu", 50, 200, 0.25),
              "lambada": _score("lambada", 0, 200, 0.0)}
    gates = downstream_gates(edited, UNEDITED)
    # mmlu: the unedited 0.26 is not significantly above 0.25 (Wilson bound 0.212), so it is not gated
    assert [g.name for g in gates] == ["downstream:piqa", "downstream:lambada"]
    assert not any(g.passed for g in gates)
    assert gates[0].reason == "piqa: accuracy 0.500 (n=200), Wilson 95% lower bound 0.442 ≤ random 0.5; unedited 0.650"
    assert gates[1].reason == "lambada: accuracy 0.000 (n=200), Wilson 95% lower bound 0.000 ≤ random 0; unedited 0.300"


def test_gate_holds_above_random_and_retention_is_optional():
    edited = {"piqa": _score("piqa", 114, 200, 0.5), "lambada": _score("lambada", 58, 200, 0.0)}
    assert all(g.passed for g in downstream_gates(edited, UNEDITED))
    gates = downstream_gates(edited, UNEDITED, min_retention=0.9)
    failed = [g for g in gates if not g.passed]
    assert [g.name for g in failed] == ["downstream_retention:piqa"]   # 0.57 < 0.9 × 0.65 = 0.585
    assert failed[0].reason == "piqa: accuracy 0.570 (n=200) < 0.9 × unedited 0.650 = 0.585"


# --- the probe inside guarded checks -------------------------------------------------------------

def test_unedited_scores_are_computed_once_and_cached_on_disk(tiny_llama, tasks_dir, tmp_path, monkeypatch):
    import editguard.metrics.downstream as ds

    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    calls = []
    real = ds.evaluate
    monkeypatch.setattr(ds, "evaluate", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    first = prepare_probe(tiny_llama, ["piqa", "lambada"], 2, tasks_dir, precision="float32")
    second = prepare_probe(tiny_llama, ["piqa", "lambada"], 2, tasks_dir, precision="float32")
    assert calls == ["piqa", "lambada"]          # the second probe read both from disk
    assert first.unedited == second.unedited and first.indices == {"piqa": [0, 1], "lambada": [0, 1]}
    assert len(list((tmp_path / "cache" / "downstream").glob("tiny-llama-*.json"))) == 2
    prepare_probe(tiny_llama, ["piqa"], 1, tasks_dir, precision="float32")   # another subset is another key
    assert calls == ["piqa", "lambada", "piqa"]
    assert prepare_probe(tiny_llama, ["piqa"], 2, tasks_dir, precision="bfloat16").precision == "bfloat16"
    assert calls == ["piqa", "lambada", "piqa", "piqa"]   # another precision is another key


def test_guarded_check_records_downstream_scores_and_gates(tiny_llama, tasks_dir, tmp_path, monkeypatch):
    from editguard import check, measure_baseline
    from tests.toy_editors import ScaleRowEditor

    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    baseline = measure_baseline(tiny_llama, ["The cat sat on the mat.", "Rain fell on the old town."], "tiny")
    case = PARIS
    plain = check(tiny_llama, ScaleRowEditor({"factor": 1.0}), case, baseline)
    assert "downstream" not in plain.to_json() and "downstream" not in plain.timings   # off: no cost
    probe = prepare_probe(tiny_llama, ["piqa", "lambada"], None, tasks_dir)
    # Pretend the unedited model was far above random on PIQA, so the gate applies and must fail
    # for a (random) tiny model.
    probe.unedited["piqa"] = TaskScore("piqa", "acc", 200, 190, 0.5)
    baseline.downstream = probe
    result = check(tiny_llama, ScaleRowEditor({"factor": 1.0}), case, baseline)
    record = result.to_json()
    assert set(record["downstream"]) == {"piqa", "lambada"}
    assert record["downstream"]["piqa"]["n"] == 2 and record["downstream"]["piqa"]["unedited"] == 0.95
    assert "downstream:piqa" in record["failed_gates"] and "unedited 0.950" in record["reason"]
    assert result.timings["downstream"] > 0


# --- the real files (no model: loaders only) -------------------------------------------------------

@pytest.mark.parametrize("task, count", [("piqa", 1838), ("hellaswag", 10042), ("lambada", 5153), ("mmlu", 14042),
                                         ("mmlu-5shot", 14042), ("nq-open", 3610)])
def test_loaders_read_the_full_shared_files(data_dir, task, count):
    items = load_task(task, data_dir)
    assert len(items) == count
    if task == "mmlu-5shot":
        from editguard.tasks import _read_mmlu_csv

        dev = [len(_read_mmlu_csv(p)) for p in (data_dir / "mmlu" / "dev").glob("*_dev.csv")]
        assert (len(dev), sum(dev)) == (57, 285) and all(i.context.count("\nAnswer: ") == 5 for i in items[:200])


@pytest.mark.embedded
def test_mmlu_letters_are_single_tokens_and_the_fast_path_matches_on_smollm2(data_dir):
    mue = load_model("smollm2-135m")
    items = load_task("mmlu", data_dir)[:3]
    for letter in " A", " B", " C", " D":
        assert len(encode_pair(mue.tokenizer, items[0].context, letter)[1]) == 1
    pairs = [(i.context, c) for i in items for c in i.choices]
    fast, generic = loglikelihoods(mue, pairs), loglikelihoods(mue, pairs, share_context=False)
    assert [lp for lp, _ in fast] == pytest.approx([lp for lp, _ in generic], abs=1e-4)
    assert score_choices(items, fast) == score_choices(items, generic)


# --- the plugin ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--downstream=piqa,wikitext"], "--editguard-downstream: unknown downstream task(s) wikitext; valid: piqa, "
                                     "hellaswag, lambada, mmlu, mmlu-5shot, nq-open, squad2"),
    (["--downstream=piqa", "--downstream-n=0"], "(--downstream-n): expected an integer ≥ 1, got '0'"),
    (["--downstream-min-retention=1.5"], "(--downstream-min-retention): expected a finite number > 0 and ≤ 1, "
                                         "got '1.5'"),
    (["--downstream-precision=fp8"], "(--downstream-precision): expected one of auto, float32, bfloat16, got 'fp8'"),
])
def test_plugin_rejects_bad_downstream_options(pytester, args, message):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--model=tiny-llama", "-p", "no:cacheprovider", *args)
    assert result.ret != 0
    assert message in result.stdout.str() + result.stderr.str()


SUITE = '''
from editguard.cases import EditCase

def edit_cases(settings):
    return [EditCase("t1", "{} is the capital of", "Paris", "Rome", "France")]

def test_edit(edit_case, edit_guard):
    edit_guard.check(edit_case)
'''


def test_plugin_probes_each_edit_and_reports_per_task_accuracy(pytester, tasks_dir, data_dir, tmp_path, monkeypatch):
    (tasks_dir / "me-ppl").symlink_to(data_dir / "me-ppl")
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(".json", hparams=json.dumps({"v_num_grad_steps": 2, "context_template_length_params": [[5, 5]]}))
    result = pytester.runpytest_subprocess(
        "--model=tiny-llama", "--hparams=hparams.json", f"--editguard-data={tasks_dir}", "--downstream=piqa,lambada",
        "--downstream-n=2", "--editguard-json=r.json", "--junitxml=j.xml", "--editguard-lm-eval-json=lm.json",
        "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*downstream=piqa,lambada (n=2)*"])
    case = json.loads((pytester.path / "r.json").read_text())["cases"][0]
    assert set(case["downstream"]) == {"piqa", "lambada"} and case["downstream"]["piqa"]["n"] == 2
    assert 'name="editguard.downstream.piqa"' in (pytester.path / "j.xml").read_text()
    # lm-eval's layout: the unedited scores at the top, the edited model's under post_edit by case id
    lm = json.loads((pytester.path / "lm.json").read_text())
    assert set(lm["results"]) == {"piqa", "lambada_openai"} and lm["n-samples"]["piqa"]["effective"] == 2
    assert lm["results"]["piqa"]["acc,none"] == case["downstream"]["piqa"]["unedited"]
    assert lm["post_edit"]["t1"]["results"]["piqa"]["acc,none"] == case["downstream"]["piqa"]["accuracy"]


# --- editguard eval ----------------------------------------------------------------------------------

def test_eval_command_scores_edits_and_restores_the_weights(tasks_dir, data_dir, tmp_path, monkeypatch, capsys):
    from editguard.cases import EditCase, write_cases
    from editguard.cli import main
    from editguard.models.snapshot import weight_digests

    (tasks_dir / "me-ppl").symlink_to(data_dir / "me-ppl")
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    cases = write_cases(tmp_path / "cases.json",
                        [PARIS, EditCase("t2", "{} is produced by", "Windows", "Apple", "Microsoft")])
    before = weight_digests(load_model("tiny-llama").model)
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny-llama", "--tasks", "piqa,lambada", "--n", "2", "--data", str(tasks_dir),
                 "--editor", "tests.toy_editors:ScaleRowEditor", "--cases", str(cases), "--sequential",
                 "--json", str(out)]) == 0
    assert weight_digests(load_model("tiny-llama").model) == before
    doc = json.loads(out.read_text())
    assert doc["run"]["editor"] == "scale-row" and doc["run"]["cases"] == ["t1", "t2"] and doc["run"]["sequential"]
    assert [e["step"] for e in doc["edits"]] == [1, 2]
    assert set(doc["tasks"]) == {"piqa", "lambada"}
    piqa = doc["tasks"]["piqa"]
    assert piqa["n"] == 2 and piqa["random"] == 0.5 and piqa["ci95_low"] <= piqa["accuracy"] <= piqa["ci95_high"]
    text = capsys.readouterr().out
    assert "weights restored and verified bit for bit" in text and "95% CI (Wilson)" in text


# --- lm-evaluation-harness interop ----------------------------------------------------------------

@pytest.mark.parametrize("alias, name", [
    ("nq_open", "nq-open"), ("lambada_openai", "lambada"), ("squadv2", "squad2"), ("mmlu", "mmlu"),
    ("mmlu:0", "mmlu"), ("mmlu:5", "mmlu-5shot"), ("piqa", "piqa"), ("hellaswag", "hellaswag"), ("piqa:0", "piqa"),
    ("nq-open", "nq-open"), ("mmlu-5shot", "mmlu-5shot"),
])
def test_lm_eval_task_names_are_aliases(alias, name):
    from editguard.tasks import get_task, task_name

    assert task_name(alias) == name and get_task(alias).name == name


def test_lm_eval_aliases_in_task_lists_and_their_errors():
    assert parse_task_list("nq_open, mmlu:5, lambada_openai, lambada") == ["nq-open", "mmlu-5shot", "lambada"]
    with pytest.raises(ValueError, match=r"downstream task 'mmlu:3': mmlu is available 0-shot, 5-shot "
                                         r"\(write mmlu:0, mmlu:5\)"):
        parse_task_list("piqa, mmlu:3")
    with pytest.raises(ValueError, match=r"few-shot count after ':' must be an integer"):
        parse_task_list("piqa:five")
    with pytest.raises(ValueError, match=r"unknown downstream task.s. arc_easy; .*lm-evaluation-harness's .*nq_open"):
        parse_task_list("arc_easy")


def test_scores_carry_lm_eval_keys_beside_editguards():
    from editguard.metrics.lm_eval import TaskScore, lm_eval_metrics
    from editguard.stats import proportion_stderr

    mc = TaskScore("hellaswag", "acc_norm", 200, 80, 0.25, {"acc": 0.35, "acc_norm": 0.4})
    keys = lm_eval_metrics(mc)
    assert keys["acc,none"] == 0.35 and keys["acc_norm,none"] == 0.4
    # lm-evaluation-harness's stderr: sample standard deviation over √n
    scores = [1.0] * 70 + [0.0] * 130
    mean = sum(scores) / 200
    sample_sd = (sum((x - mean) ** 2 for x in scores) / 199) ** 0.5
    assert keys["acc_stderr,none"] == pytest.approx(sample_sd / 200 ** 0.5)
    assert keys["acc_norm_stderr,none"] == pytest.approx(proportion_stderr(80, 200))
    assert lm_eval_metrics(TaskScore("piqa", "acc", 10, 6, 0.5, {"acc": 0.6, "acc_norm": 0.5}))["acc,none"] == 0.6
    assert lm_eval_metrics(TaskScore("lambada", "acc", 10, 4, 0.0)) == {"acc,none": 0.4,
                                                                        "acc_stderr,none": proportion_stderr(4, 10)}
    nq = lm_eval_metrics(TaskScore("nq-open", "exact_match", 50, 5, 0.0))
    assert nq == {"exact_match,remove_whitespace": 0.1,
                  "exact_match_stderr,remove_whitespace": proportion_stderr(5, 50)}
    squad = lm_eval_metrics(TaskScore("squad2", "exact_match", 20, 10, 0.5,
                                      {"f1": 0.55, "squad2": {"exact": 50.0, "f1": 55.0}}))
    assert squad == {"exact,none": 50.0, "exact_stderr,none": "N/A", "f1,none": 55.0, "f1_stderr,none": "N/A"}


def test_probe_json_has_lm_eval_keys_beside_editguards():
    from editguard.metrics.downstream import DownstreamProbe, TaskScore

    score = TaskScore("piqa", "acc", 100, 60, 0.5, {"acc": 0.6, "acc_norm": 0.55})
    record = DownstreamProbe({}, {}, {"piqa": score}).to_json({"piqa": score})["piqa"]
    assert record["accuracy"] == 0.6 and record["acc,none"] == 0.6 and record["acc_norm,none"] == 0.55
    assert "acc_stderr,none" in record and "acc_norm_stderr,none" in record
