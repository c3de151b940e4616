"""The `editguard` command on a tiny model and on a hand-made JSON report."""

import json

from editguard.cli import main
from editguard.report import write_report

RUN = {"model": "tiny-llama", "editor": "rome", "suite": "hardcf", "ppl_corpus": "me-ppl-50",
       "baseline_ppl": 100.0, "baseline_corpus_ppl": 90.0,
       "thresholds": {"ppl_max": 1000.0, "ppl_max_ratio": 2.0, "denominator_ratio_min": 0.1,
                      "update_norm_rel_max": 0.5}}


def _case(case_id, ppl, passed, gates=()):
    return {"case_id": case_id, "subject": "Paris", "prompt": "{} is the capital of", "target_new": "Rome",
            "passed": passed, "failed_gates": list(gates), "ppl": ppl, "ppl_baseline": 100.0,
            "denominator_ratio": 0.02, "key_cosine": 0.1, "update_norm_rel": 1.2, "efficacy": True}


def test_ppl_prints_both_perplexities(capsys, data_dir):
    assert main(["ppl", "--model", "tiny-gpt2", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "tiny-gpt2 me-ppl-50 (50 sentences" in out and "corpus ppl" in out


def test_report_renders_failed_cases_worst_first_and_exits_1(tmp_path, capsys):
    path = write_report(tmp_path / "r.json", RUN, [_case("1", 120.0, True), _case("2", 5000.0, False, ["perplexity"]),
                                                   _case("3", 900.0, False, ["perplexity"])])
    assert main(["report", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 passed" in out and "2 failed" in out and "1 collapsed" in out
    assert out.index("5000.0") < out.index("900.0")


def test_report_of_passing_run_exits_0(tmp_path):
    path = write_report(tmp_path / "r.json", RUN, [_case("1", 120.0, True)])
    assert main(["report", str(path)]) == 0


def test_report_rejects_a_file_that_is_not_a_report(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cases": []}))
    assert main(["report", str(bad)]) == 2
    assert "not an editguard JSON report" in capsys.readouterr().err
