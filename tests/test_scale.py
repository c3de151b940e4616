"""Sharding, merging and comparing reports, worker devices, the shared baseline cache, plots."""

import copy

import pytest
import torch

from editguard.models.loading import resolve_device, worker_device
from editguard.report.compare import compare_reports
from editguard.report.merge import MergeError, merge_reports
from editguard.sharding import parse_shard, shard_members


def test_parse_shard():
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "1/0", "a/b", "2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shards_partition_and_keep_units_together():
    units = ["a", "b", "seq", "seq", "seq", "c", "d", "e"]
    taken = [shard_members(units, i, 3) for i in (1, 2, 3)]
    for position in range(len(units)):   # each item in exactly one shard
        assert sum(t[position] for t in taken) == 1
    owners = {i for i, t in enumerate(taken) for pos in (2, 3, 4) if t[pos]}
    assert len(owners) == 1               # the sequence's items share a shard
    assert shard_members(units, 1, 1) == [True] * len(units)


def _report(editor="rome", cases=None, shard=""):
    run = {"model": "m", "model_fingerprint": "f", "editor": editor, "hparams": {"lr": 0.5},
           "thresholds": {"ppl_max": 1000.0}, "ppl_corpus": "me-ppl-50", "dtype": "float32",
           "sequential": False, "baseline_ppl": 10.0, "baseline_corpus_ppl": 9.0, "device": "cpu", "shard": shard}
    cases = cases if cases is not None else [{"case_id": "1", "ppl": 11.0, "passed": True, "seconds": 3.0,
                                              "timings": {"edit": 2.0}, "diagnostics": {"seconds_keys": 1.0, "d": 0.5}}]
    return {"schema": 1, "run": run, "cases": cases}


def test_merge_refuses_mixed_runs_naming_the_field():
    a = _report()
    b = _report(editor="c-rome", cases=[{"case_id": "2", "ppl": 12.0, "passed": True}])
    with pytest.raises(MergeError, match="differ in 'editor' \\('c-rome' vs 'rome'\\)"):
        merge_reports([("a.json", a), ("b.json", b)])
    b["run"]["editor"], b["run"]["hparams"] = "rome", {"lr": 0.1}
    with pytest.raises(MergeError, match="'hparams'"):
        merge_reports([("a.json", a), ("b.json", b)])
    with pytest.raises(MergeError, match="case '1' is in both a.json and a2.json"):
        merge_reports([("a.json", a), ("a2.json", _report())])


def test_merge_keeps_every_case_sorted_and_lists_its_sources():
    a = _report(cases=[{"case_id": "3", "ppl": 1.0, "passed": True}], shard="1/2")
    b = _report(cases=[{"case_id": "1", "ppl": 2.0, "passed": False}], shard="2/2")
    b["run"]["device"] = "cuda:1"
    merged = merge_reports([("a.json", a), ("b.json", b)])
    assert [c["case_id"] for c in merged["cases"]] == ["1", "3"]
    assert "shard" not in merged["run"]
    assert [(m["shard"], m["device"]) for m in merged["run"]["merged_from"]] == [("1/2", "cpu"), ("2/2", "cuda:1")]


def test_merge_keeps_the_shards_stopped_sequences_and_incompleteness():
    a = _report(cases=[{"case_id": "3", "ppl": 1.0, "passed": True}], shard="1/2")
    b = _report(cases=[{"case_id": "1", "ppl": 2e4, "passed": False}], shard="2/2")
    stop = {"sequence": "hard", "step": 10, "message": "collapsed", "steps_not_run": [{"step": 11, "case_id": "7"}]}
    b["sequences_stopped"], b["complete"] = {"suites/sequential/test_hard_sequence.py": stop}, False
    merged = merge_reports([("a.json", a), ("b.json", b)])
    assert merged["sequences_stopped"] == b["sequences_stopped"] and merged["complete"] is False
    assert "sequences_stopped" not in merge_reports([("a.json", a), ("b.json", _report(cases=[], shard="2/2"))])
    other = {"suites/sequential/test_hard_sequence.py": {**stop, "step": 20}}
    with pytest.raises(MergeError, match="stopped differently in a.json and b.json"):
        merge_reports([("a.json", {**a, "sequences_stopped": other}), ("b.json", b)])


def test_compare_ignores_timings_but_not_numbers_or_verdicts():
    a, b = _report(), _report()
    b["cases"][0]["seconds"], b["cases"][0]["timings"]["edit"] = 99.0, 98.0
    b["cases"][0]["diagnostics"]["seconds_keys"] = 7.0
    b["run"]["device"] = "cuda:0"
    assert compare_reports(a, b) == []
    b["cases"][0]["ppl"] = 11.0 * (1 + 1e-6)
    assert compare_reports(a, b) == []
    c = copy.deepcopy(b)
    c["cases"][0]["ppl"], c["cases"][0]["diagnostics"]["d"] = 11.5, 0.6
    assert compare_reports(a, c) == ["case 1: diagnostics.d: 0.5 vs 0.6", "case 1: ppl: 11.0 vs 11.5"]
    c = copy.deepcopy(b)
    c["cases"][0]["passed"] = False
    assert compare_reports(a, c) == ["case 1: passed: True vs False"]
    assert compare_reports(a, _report(cases=[])) == ["case 1 only in the first report"]


def test_worker_devices():
    assert worker_device("auto", ["cuda:0", "cuda:1"], 3, 0) == "cuda:1"
    assert worker_device("cpu", ["cpu", "cuda:0"], 0, 1) == "cpu"
    assert worker_device("auto", None, 5, 4) == "cuda:1"      # several GPUs: one per worker
    assert worker_device("auto", None, 5, 1) == "auto"        # one GPU (or none): all share it
    assert worker_device("auto", None, None, 4) == "auto"     # not under xdist
    assert worker_device("cuda:2", None, 1, 4) == "cuda:2"    # an explicit device wins


def test_xdist_workers_share_the_cpus_unless_told():
    from editguard.run.config import threads_per_worker

    assert threads_per_worker(2, {}, 2) == 1
    assert threads_per_worker(4, {}, 16) == 4
    assert threads_per_worker(3, {}, 2) == 1                       # never below one
    assert threads_per_worker(None, {}, 16) is None                # one process: torch's own
    assert threads_per_worker(1, {}, 16) is None
    assert threads_per_worker(2, {"OMP_NUM_THREADS": "3"}, 16) is None   # the user said it already


def test_an_explicit_thread_count_wins_over_the_workers_share():
    from editguard.options import OPTIONS_BY_NAME
    from editguard.run.config import RunConfig

    def config(values, worker_count):
        return RunConfig.from_options(lambda name: values.get(name, OPTIONS_BY_NAME[name].default),
                                      worker_index=0 if worker_count else None, worker_count=worker_count)

    assert config({"threads": 3}, 2).threads == 3
    assert config({"threads": 3}, None).threads == 3
    assert config({}, None).threads is None
    with pytest.raises(ValueError, match="expected an integer ≥ 1, got '0'"):
        OPTIONS_BY_NAME["threads"].parse("0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="--device cuda:1: CUDA is not available on this machine"):
        resolve_device("cuda:1")


def test_shared_baseline_is_measured_once_and_keyed_by_the_weights(monkeypatch, tmp_path):
    import editguard.guard as guard
    from editguard.models import load_model

    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path))
    mue = load_model("tiny-gpt2")
    sentences = ["The cat sat on the mat.", "Paris is the capital of France."]
    first = guard.measure_baseline(mue, sentences, "two", shared=True)
    calls = []
    monkeypatch.setattr(guard, "perplexity", lambda *a, **kw: calls.append(a) or first.ppl)
    again = guard.measure_baseline(mue, sentences, "two", shared=True)
    assert again.ppl == first.ppl and calls == []             # read from disk
    weight = mue.rewrite_matrix(mue.edit_layer)
    saved = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] += 1.0
    try:
        guard.measure_baseline(mue, sentences, "two", shared=True)
        assert len(calls) == 1                                 # other weights: measured anew
    finally:
        with torch.no_grad():
            weight[0, 0] = saved
    assert len(list((tmp_path / "baselines").glob("*.json"))) == 2


def test_anatomy_plot_is_written_for_rome_reports(tmp_path):
    from editguard.report.plots import write_report_plots

    doc = _report(cases=[{"case_id": str(i), "ppl": p, "passed": p < 1000, "key_cosine": cos,
                          "denominator_ratio": r, "ppl_baseline": 10.0}
                         for i, (p, cos, r) in enumerate([(12, 0.9, 0.95), (5000, 0.1, 0.02), (14, 0.8, 0.8)])])
    written = write_report_plots([doc], tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["anatomy-rome-m-cases.png", "ppl-rome-m-cases.png"]
    assert all(p.stat().st_size > 5000 for p in written)


def test_run_header_does_not_depend_on_which_suite_ran_first():
    from editguard.report.json_report import combine_runs

    single = {**_report()["run"],
              "suites": {"suites/hardcf/test_hardcf.py": {"sequential": False, "ppl_corpus": "me-ppl-50"}}}
    seq = {**_report()["run"],
           "suites": {"suites/sequential/test_seq.py": {"sequential": True, "ppl_corpus": "me-ppl-1k"}}}
    one, other = combine_runs([single, seq]), combine_runs([seq, single])
    assert one["suites"] == other["suites"] and list(one["suites"]) == sorted(one["suites"])
    assert one["sequential"] is other["sequential"] is False     # from the first module by name
    clash = {**_report()["run"],
             "suites": {"suites/hardcf/test_hardcf.py": {"sequential": True, "ppl_corpus": "me-ppl-50"}}}
    with pytest.raises(MergeError, match="suites/hardcf/test_hardcf.py ran with sequential=False in one and True"):
        merge_reports([("a.json", {**_report(), "run": single}),
                       ("b.json", {**_report(cases=[{"case_id": "9", "ppl": 1.0, "passed": True}]), "run": clash})])


def test_merge_refuses_a_missing_shard_and_mixed_splits_naming_the_files():
    one = _report(cases=[{"case_id": "1", "ppl": 1.0, "passed": True}], shard="1/2")
    with pytest.raises(MergeError, match=r"shard 2/2 missing: got a\.json \(1/2\)"):
        merge_reports([("a.json", one)])
    three = _report(cases=[{"case_id": "2", "ppl": 1.0, "passed": True}], shard="2/3")
    with pytest.raises(MergeError, match=r"different splits: a\.json \(1/2\), b\.json \(2/3\)"):
        merge_reports([("a.json", one), ("b.json", three)])
    whole = _report(cases=[{"case_id": "2", "ppl": 1.0, "passed": True}])
    with pytest.raises(MergeError, match=r"different splits: a\.json \(1/2\), b\.json \(not a shard\)"):
        merge_reports([("a.json", one), ("b.json", whole)])


def test_merge_names_the_file_of_a_duplicate_case_within_one_report():
    doubled = _report(cases=[{"case_id": "1", "ppl": 1.0, "passed": True}] * 2)
    with pytest.raises(MergeError, match=r"a\.json: case '1' occurs twice in this one report"):
        merge_reports([("a.json", doubled)])


@pytest.mark.parametrize("text, message", [
    ("{not json", r"bad\.json: not valid JSON \(line 1, column 2\)"),
    ('{"run": {}}', r"bad\.json: not an editguard JSON report \(expected keys 'run' and 'cases'\)"),
    ('{"run": {}, "cases": [{"ppl": 1}]}', r"bad\.json: case 0 is not a case record"),
])
def test_merge_command_names_the_file_of_a_malformed_report(tmp_path, capsys, text, message):
    import re

    from editguard.cli import main

    (tmp_path / "bad.json").write_text(text)
    assert main(["merge", str(tmp_path / "bad.json"), "--json", str(tmp_path / "all.json")]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_merge_takes_an_empty_shard_whose_header_holds_only_the_options():
    ran = _report(cases=[{"case_id": "1", "ppl": 1.0, "passed": True}], shard="1/3")
    empty = {"schema": 1, "run": {"model": "m", "editor": "rome", "thresholds": {"ppl_max": 1000.0}, "shard": "2/3"},
             "cases": [], "empty_shard": {"shard": "2/3", "units": 1}}
    with pytest.raises(MergeError, match=r"shard 3/3 missing"):
        merge_reports([("a.json", ran), ("b.json", empty)])
    merged = merge_reports([("b.json", empty), ("a.json", ran), ("c.json", {**empty, "run": {**empty["run"],
                                                                                             "shard": "3/3"}})])
    assert [c["case_id"] for c in merged["cases"]] == ["1"] and merged["run"]["model_fingerprint"] == "f"
    assert [m["shard"] for m in merged["run"]["merged_from"]] == ["2/3", "1/3", "3/3"]
    # A report with cases is checked in full, whatever it says.
    with pytest.raises(MergeError, match="differ in 'model_fingerprint'"):
        merge_reports([("a.json", ran), ("b.json", {**empty, "cases": [{"case_id": "2", "passed": True}]}),
                       ("c.json", {**empty, "run": {**empty["run"], "shard": "3/3"}})])


ONE_CASE_SUITE = '''
from editguard.cases import EditCase

def edit_cases(settings):
    return [EditCase("t1", "{} is the capital of", "Paris", "Rome", "France")]

def test_edit(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
'''


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_a_shard_with_no_case_ends_well_and_merges(pytester, data_dir, monkeypatch, xdist):
    """Two shards of a one-case suite: shard 2/2 gets nothing; it exits 0 with a report that says
    so, and `editguard merge` takes it with shard 1/2."""
    import json

    from editguard.cli import main

    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    pytester.makepyfile(test_one=ONE_CASE_SUITE)
    pytester.makefile(".json", hparams=json.dumps({"v_num_grad_steps": 3, "context_template_length_params": [[5, 5]]}))
    args = ["--model=tiny-llama", "--hparams=hparams.json", "--update-norm-max=5", "--ppl-corpus=me-ppl-50",
            "-p", "no:cacheprovider"]
    empty = pytester.runpytest_subprocess(*args, *xdist, "--editguard-shard=2/2", "--editguard-json=s2.json")
    assert empty.ret == 0, empty.stdout.str()[-2000:]
    empty.stdout.fnmatch_lines(["*shard 2/2 got no test (the run has 1 unit of work, fewer than its shards)*"])
    doc = json.loads((pytester.path / "s2.json").read_text())
    assert doc["empty_shard"] == {"shard": "2/2", "units": 1} and doc["cases"] == [] and doc["complete"] is True
    assert doc["run"]["shard"] == "2/2"
    if xdist:
        return   # the shard that runs is the serial case's
    ran = pytester.runpytest_subprocess(*args, "--editguard-shard=1/2", "--editguard-json=s1.json")
    assert ran.ret in (0, 1), ran.stdout.str()[-2000:]
    assert main(["merge", str(pytester.path / "s1.json"), str(pytester.path / "s2.json"),
                 "--json", str(pytester.path / "all.json")]) == 0
    merged = json.loads((pytester.path / "all.json").read_text())
    assert [c["case_id"] for c in merged["cases"]] == ["t1"] and merged.get("complete", True) is True
