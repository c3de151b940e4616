"""The collapse-risk screen and hard-case mining on tiny models: the screen's shortcuts (shared
heads, cached template prefixes, stopping at the edited layer) give ROME's own keys; mining
resumes after an interruption and writes a suite file that reads back as cases."""

import json

import pytest
import torch

from editguard import EditCase, get_editor, load_model
from editguard.cases import read_cases, write_cases
from editguard.cli import main
from editguard.editors.keys import context_templates
from editguard.editors.rome import RomeHparams, subject_keys
from editguard.gates import Thresholds
from editguard.guard import measure_baseline
from editguard.mining import degradation, mine, pick_candidates, risk_correlation, write_mined_suite
from editguard.screen import risk_score, screen_cases, template_subset
from editguard.stats import spearman

CASES = [
    EditCase("1", "{} is the capital of", "Paris", "Rome", "France"),
    EditCase("2", "{} is located in", "Paris", "Peru", "France"),  # same head as case 1
    EditCase("3", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditCase("4", "{} was developed by", "Windows", "Apple", "Microsoft"),
    EditCase("5", "In {}, the official language is", "Japan", "Greek", "Japanese"),
]
FAST = {"v_num_grad_steps": 3, "context_template_length_params": [[5, 5]]}
SENTENCES = ["The cat sat on the mat.", "Rivers flow into the sea.", "A book lies on the table."]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gptj", "tiny-llama"])
def test_screen_equals_rome_keys(name):
    mue = load_model(name)
    hp = RomeHparams.for_family(mue.family.name)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    rows = {r.case_id: r for r in screen_cases(mue, CASES, mue.edit_layer, templates, batch_size=2, progress=False)}
    for case in CASES:
        keys = subject_keys(mue, mue.edit_layer, case, templates)
        expected = float(keys.k_bar @ keys.k_unprefixed / (keys.k_bar @ keys.k_bar))
        row = rows[case.case_id]
        assert row.denominator_ratio == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert row.key_cosine == pytest.approx(
            float(torch.nn.functional.cosine_similarity(keys.k_bar, keys.k_unprefixed, dim=0)), abs=1e-5)
        assert row.subject_first == case.subject_first
    assert rows["1"].denominator_ratio == rows["2"].denominator_ratio  # one head, one computation


def test_screen_with_inverse_second_moment_uses_it_on_k_bar():
    mue = load_model("tiny-llama")
    templates = template_subset(context_templates(mue, ((5, 5),), 0), None)
    width = mue.rewrite_matrix(mue.edit_layer).shape[1]
    inverse = torch.diag(torch.linspace(0.5, 2.0, width))
    row = screen_cases(mue, CASES[:1], mue.edit_layer, templates, inverse, progress=False)[0]
    keys = subject_keys(mue, mue.edit_layer, CASES[0], templates)
    left = inverse @ keys.k_bar
    assert row.denominator_ratio == pytest.approx(float(left @ keys.k_unprefixed / (left @ keys.k_bar)), rel=1e-4)


def test_screen_ranks_riskiest_first():
    mue = load_model("tiny-llama")
    templates = context_templates(mue, ((5, 5),), 0)
    rows = screen_cases(mue, CASES, mue.edit_layer, templates, progress=False)
    risks = [r.risk for r in rows]
    assert risks == sorted(risks, reverse=True)
    assert risk_score(0.01) > risk_score(0.5) > risk_score(1.0)
    assert risk_score(-0.01) == risk_score(0.01)


def test_template_subset_keeps_the_unprefixed_template_and_spreads_the_rest():
    templates = ["{}"] + [f"t{i}. {{}}" for i in range(20)]
    subset = template_subset(templates, 11)
    assert subset[0] == "{}" and len(subset) == 11 and len(set(subset)) == 11
    assert subset[1:] == templates[1::2]
    assert template_subset(templates, None) == templates
    with pytest.raises(ValueError, match="at least 2 templates"):
        template_subset(templates, 1)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)


def test_degradation_levels():
    t = Thresholds()
    assert degradation(1500, 100, t) == "collapsed"
    assert degradation(250, 100, t) == "degraded"
    assert degradation(120, 100, t) == "intact"


def test_pick_candidates_takes_top_then_seeded_control():
    rows = [{"case_id": c.case_id} for c in CASES]
    by_id = {c.case_id: c for c in CASES}
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
    candidates = [(CASES[0], "top-risk"), (CASES[2], "top-risk"), (CASES[4], "control")]
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

    suite = write_mined_suite(tmp_path / "tiny.json", records, {c.case_id: c for c in CASES},
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


def test_screen_command_writes_ranked_json_and_csv(tmp_path, capsys):
    cases_file = write_cases(tmp_path / "cases.json", CASES)
    out = tmp_path / "screen.json"
    assert main(["screen", "--model", "tiny-llama", "--cases", str(cases_file), "--out", str(out), "--templates", "3"]) == 0
    doc = json.loads(out.read_text())
    assert doc["templates"] == 3 and doc["n_cases"] == len(CASES) and len(doc["rows"]) == len(CASES)
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,case_id") and len(csv_lines) == len(CASES) + 1
    assert "riskiest" in capsys.readouterr().out


def test_filter_is_recorded_in_the_case_file_and_selects_cases(tmp_path):
    from editguard.mining import filtered_cases, record_filter

    path = write_cases(tmp_path / "cases.json", CASES[:3], extra={"author": "test"})
    assert filtered_cases(path, "tiny-llama") == (read_cases(path), None)
    records = [{"case_id": c.case_id, "degradation": d, "ppl": p, "reason": "r", "denominator_ratio": 0.5,
                "key_cosine": 0.9, "update_norm_rel": 0.1, "efficacy": True}
               for c, d, p in zip(CASES[:3], ["collapsed", "intact", "collapsed"], [5000.0, 100.0, 2000.0])]
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
    import editguard.mining as mining
    from editguard.suites import SCREEN_TOP, hardcf, normal_sample

    monkeypatch.setattr(mining, "SUITES_DIR", tmp_path)
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    loads = []

    def load():
        loads.append(1)
        return load_model("tiny-llama")

    screened = hardcf("tiny-llama", data_dir, load=load)
    assert loads and len(screened) == SCREEN_TOP and "no mined list for tiny-llama" in screened.description
    assert all(c.subject_first for c in screened)
    assert hardcf("tiny-llama", data_dir, load=load) == screened  # cached screen, same order

    write_cases(mining.mined_suite_path("tiny-llama"), CASES[:2])
    mined = hardcf("tiny-llama", data_dir, load=None)
    assert [c.case_id for c in mined] == ["1", "2"] and "mined HardCF list" in mined.description

    normal = normal_sample(7, data_dir)
    assert len(normal) == 7 and not any(c.subject_first for c in normal)
    assert normal == normal_sample(7, data_dir)
