"""Hard-case mining on tiny models: candidates, degradation levels, a run that resumes after an
interruption and writes a suite file that reads back as cases, case filters, and the HardCF
suite built from the mined list or the screen."""

import json

import pytest

from editguard import get_editor, load_model
from editguard.cases import read_cases, write_cases
from editguard.gates import Thresholds
from editguard.guard import measure_baseline
from editguard.mining import degradation, mine, pick_candidates, risk_correlation, write_mined_suite
from editguard.stats import spearman
from editguard.suite_files import project_mined_suite_path
from tests.tiny_edits import SCREEN_CASES

FAST = {"v_num_grad_steps": 3, "context_template_length_params": [[5, 5]]}
SENTENCES = ["The cat sat on the mat.", "Rivers flow into the sea.", "A book lies on the table."]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)


def test_degradation_levels():
    t = Thresholds()
    assert degradation(1500, 100, t) == "collapsed"
    assert degradation(250, 100, t) == "degraded"
    assert degradation(120, 100, t) == "intact"
    assert degradation(float("nan"), 100, t) == degradation(float("inf"), 100, t) == "collapsed"


def test_pick_candidates_takes_top_then_seeded_control():
    rows = [{"case_id": c.case_id} for c in SCREEN_CASES]
    by_id = {c.case_id: c for c in SCREEN_CASES}
    picked = pick_candidates(rows, by_id, top=2, control=2, seed=3)
    assert [c.case_id for c, g in picked[:2]] == ["1", "2"] and {g for _, g in picked[:2]} == {"top-risk"}
    assert picked == pick_candidates(rows, by_id, top=2, control=2, seed=3)
    assert {g for _, g in picked[2:]} == {"control"} and len(picked) == 4
    with pytest.raises(ValueError, match="not among the loaded cases"):
        pick_candidates([{"case_id": "nope"}], by_id, top=1, control=0)


class _Interrupt(Exception):
    pass


def test_mining_resumes_and_writes_a_suite(tmp_path):
    mue = load_model("tiny-llama")
    editor = get_editor("rome", FAST)
    baseline = measure_baseline(mue, SENTENCES, "tiny")
    # Tiny random models edit wildly; a low collapse line makes some cases "collapse".
    thresholds = Thresholds(ppl_max=mue.model.config.vocab_size * 0.9)
    candidates = [(SCREEN_CASES[0], "top-risk"), (SCREEN_CASES[2], "top-risk"), (SCREEN_CASES[4], "control")]
    progress = tmp_path / "mine.jsonl"
    calls = []

    def stop_after_first(record):
        calls.append(record["case_id"])
        raise _Interrupt

    with pytest.raises(_Interrupt):
        mine(mue, editor, candidates, baseline, thresholds, progress, on_case=stop_after_first)
    assert len(progress.read_text().splitlines()) == 2  # header + one finished case
    first = json.loads(progress.read_text().splitlines()[1])

    with open(progress, "a") as log:  # a run killed mid-write leaves a cut-off line
        log.write('{"case_id": "3", "ppl": 12')
    records = mine(mue, editor, candidates, baseline, thresholds, progress)
    assert [r["case_id"] for r in records] == ["1", "3", "5"]
    assert records[0] == first  # resumed from the log, not edited again
    assert len(progress.read_text().splitlines()) == 4
    for r in records:
        assert r["degradation"] == degradation(r["ppl"], baseline.ppl.ppl, thresholds)
        assert r["group"] in {"top-risk", "control"} and r["diagnostics"]["denominator_ratio"] is not None

    other = get_editor("c-rome", FAST)
    with pytest.raises(ValueError, match="another mining run"):
        mine(mue, other, candidates, baseline, thresholds, progress)

    suite = write_mined_suite(tmp_path / "tiny.json", records, {c.case_id: c for c in SCREEN_CASES},
                              {"model": mue.name, "editor": editor.name, "thresholds": thresholds.to_dict()})
    hard = read_cases(suite)
    assert [c.case_id for c in hard] == [r["case_id"] for r in records if r["degradation"] == "collapsed"]
    doc = json.loads(suite.read_text())
    assert doc["summary"]["mined"] == 3 and len(doc["measurements"]) == 3
    assert sum(doc["summary"][k] for k in ("collapsed", "degraded", "intact")) == 3


def test_risk_correlation_needs_screened_records():
    records = [{"ppl": p, "screen": {"risk": r, "key_cosine": -r}} for p, r in [(10, 0.1), (100, 1.0), (1000, 2.0)]]
    corr = risk_correlation(records)
    assert corr["n"] == 3 and corr["spearman_risk_vs_ppl"] == pytest.approx(1.0)
    assert risk_correlation([{"ppl": 1.0}]) == {"n": 0}


def test_filter_is_recorded_in_the_case_file_and_selects_cases(tmp_path):
    from editguard.mining import filtered_cases, record_filter

    path = write_cases(tmp_path / "cases.json", SCREEN_CASES[:3], extra={"author": "test"})
    assert filtered_cases(path, "tiny-llama") == (read_cases(path), None)
    records = [{"case_id": c.case_id, "degradation": d, "ppl": p, "reason": "r", "denominator_ratio": 0.5,
                "key_cosine": 0.9, "update_norm_rel": 0.1, "efficacy": True}
               for c, d, p in zip(SCREEN_CASES[:3], ["collapsed", "intact", "collapsed"], [5000.0, 100.0, 2000.0])]
    run = {"model": "tiny-llama", "editor": "rome", "thresholds": Thresholds().to_dict(), "ppl_corpus": "me-ppl-50"}
    record_filter(path, records, run)
    kept, flt = filtered_cases(path, "tiny-llama", "rome")
    assert [c.case_id for c in kept] == ["1", "3"] and flt["kept"] == ["1", "3"]
    assert flt["results"]["2"] == {**{k: records[1][k] for k in records[1] if k != "case_id"}, "kept": False}
    assert len(read_cases(path)) == 3 and json.loads(path.read_text())["author"] == "test"  # cases and metadata kept
    assert filtered_cases(path, "tiny-gpt2", "rome")[1] is None
    assert flt["complete"] is True and flt["pending"] == []
    # An interrupted filter: the cases not yet edited stay in the suite, listed as pending.
    record_filter(path, records[:2], run)
    kept, flt = filtered_cases(path, "tiny-llama", "rome")
    assert flt["complete"] is False and flt["pending"] == ["3"] and [c.case_id for c in kept] == ["1", "3"]


def test_hardcf_suite_uses_the_mined_list_else_the_screen(tmp_path, monkeypatch, data_dir):
    from editguard.suites import SCREEN_TOP, hardcf, normal_sample

    monkeypatch.chdir(tmp_path)  # the project: mined lists go to ./editguard-suites
    monkeypatch.delenv("EDITGUARD_SUITES", raising=False)
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    loads = []

    def load():
        loads.append(1)
        return load_model("tiny-llama")

    screened = hardcf("tiny-llama", data_dir, load=load)
    assert loads and len(screened) == SCREEN_TOP and "no mined list for tiny-llama" in screened.description
    assert all(c.subject_first for c in screened)
    assert hardcf("tiny-llama", data_dir, load=load) == screened  # cached screen, same order

    write_cases(project_mined_suite_path("tiny-llama"), SCREEN_CASES[:2])
    mined = hardcf("tiny-llama", data_dir, load=None)
    assert [c.case_id for c in mined] == ["1", "2"]
    assert "mined HardCF list editguard-suites/hardcf/tiny-llama.json" in mined.description

    normal = normal_sample(7, data_dir)
    assert len(normal) == 7 and not any(c.subject_first for c in normal)
    assert normal == normal_sample(7, data_dir)


def test_filter_of_a_list_format_case_file_with_integer_ids_completes(tmp_path):
    """A valid case file as a top-level JSON list with CounterFact-style integer ids: the filter is
    recorded (the file becomes {"cases": [...], "filters": ...}), and no case stays pending."""
    from editguard.mining import filtered_cases, record_filter

    path = tmp_path / "cases.json"
    raw = [{"case_id": int(c.case_id), "prompt": c.prompt, "subject": c.subject, "target_new": c.target_new}
           for c in SCREEN_CASES[:2]]
    path.write_text(json.dumps(raw))
    assert [c.case_id for c in read_cases(path)] == ["1", "2"]   # normalised once, at read time
    run = {"model": "tiny-llama", "editor": "rome", "thresholds": Thresholds().to_dict(), "ppl_corpus": "me-ppl-50"}
    records = [{"case_id": "1", "degradation": "collapsed", "ppl": 5000.0, "reason": "r", "denominator_ratio": 0.5,
                "key_cosine": 0.9, "update_norm_rel": 0.1, "efficacy": True}]
    record_filter(path, records, run)   # after the first edit
    kept, flt = filtered_cases(path, "tiny-llama", "rome")
    assert flt["pending"] == ["2"] and [c.case_id for c in kept] == ["1", "2"]
    record_filter(path, [*records, {**records[0], "case_id": "2", "degradation": "intact", "ppl": 90.0}], run)
    kept, flt = filtered_cases(path, "tiny-llama", "rome")
    assert flt["complete"] is True and flt["pending"] == [] and [c.case_id for c in kept] == ["1"]
    assert json.loads(path.read_text())["cases"] == raw   # the cases themselves untouched
