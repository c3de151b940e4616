"""The pytest plugin, driven through pytester on a tiny model with a short v* search.

Runs go through subprocesses: in-process pytester runs re-import torch modules, which torch forbids.
"""

import json

import pytest

SUITE = '''
from editguard.cases import EditCase

CASES = [
    EditCase("t1", "{} is the capital of", "Paris", "Rome", "France"),
    EditCase("t2", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditCase("t3", "{} is produced by", "Windows", "Apple", "Microsoft"),
]

def edit_cases(settings):
    from editguard.suites import CaseList
    return CaseList(CASES, "three hand-written cases")

def test_edit(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
'''

UNSAFE_EDITOR = '''
import torch
from editguard.editors.api import EditReport

class ScaleRow:
    """Multiplies one row of the edited matrix by 100: what no edit should do."""
    name = "scale-row"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def hparams(self, model):
        return {"factor": 100}

    def apply(self, model, cases):
        with torch.no_grad():
            model.rewrite_matrix(model.edit_layer)[0] *= 100
        return EditReport(touched=self.touched_parameters(model, cases))
'''


@pytest.fixture
def suite(pytester, data_dir, monkeypatch):
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(".json", hparams=json.dumps({"v_num_grad_steps": 3, "context_template_length_params": [[5, 5]]}))
    pytester.syspathinsert()
    return pytester


def base_args(*extra):
    # Random tiny models need larger updates than a trained model's calibrated bound allows.
    return ["--model=tiny-llama", "--hparams=hparams.json", "--update-norm-max=5", "-p", "no:cacheprovider", *extra]


def test_ids_name_case_and_subject(suite):
    result = suite.runpytest_subprocess(*base_args("--collect-only", "-q"))
    result.stdout.fnmatch_lines([
        "test_suite.py::test_edit[[]t1-Paris[]]",
        "test_suite.py::test_edit[[]t2-Danielle_Darrieux[]]",
        "test_suite.py::test_edit[[]t3-Windows[]]",
    ])


def test_max_cases_takes_the_first_n(suite):
    result = suite.runpytest_subprocess(*base_args("--collect-only", "-q", "--max-cases", "2"))
    result.stdout.fnmatch_lines(["*t1-Paris*", "*t2-Danielle_Darrieux*", "2 tests collected*"])


def test_json_report_holds_every_field(suite):
    result = suite.runpytest_subprocess(*base_args("--editor=c-rome", "--editguard-json=out/report.json"))
    result.assert_outcomes(passed=3)
    doc = json.loads((suite.path / "out" / "report.json").read_text())
    run = doc["run"]
    assert run["model"] == "tiny-llama" and run["editor"] == "c-rome"
    assert run["suite_source"] == "three hand-written cases" and run["sequential"] is False
    assert run["hparams"]["v_num_grad_steps"] == 3 and run["hparams"]["consistent_keys"] is True
    for key in ("versions", "seed", "thresholds", "baseline_ppl"):
        assert key in run
    assert [c["case_id"] for c in doc["cases"]] == ["t1", "t2", "t3"]
    for case in doc["cases"]:
        for key in ("case_id", "subject", "prompt", "editor", "model", "passed", "failed_gates", "ppl",
                    "ppl_baseline", "denominator_ratio", "key_cosine", "update_norm_rel", "efficacy", "seconds"):
            assert key in case, key
        assert case["denominator_ratio"] == pytest.approx(1.0)
        assert case["ppl_baseline"] == pytest.approx(run["baseline_ppl"])
    # The first edit searched the next two cases' v* with its own; they used theirs (same model).
    assert [c["diagnostics"]["v_star_search"] for c in doc["cases"]] == [
        "with t2, t3", "ahead, during t1", "ahead, during t1"]


def test_unsafe_user_editor_fails_with_named_gates_and_report(suite):
    suite.makepyfile(unsafe_editor=UNSAFE_EDITOR)
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=unsafe_editor:ScaleRow", "--max-cases=1",
                                       "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*t1 ('Paris is the capital of' -> 'Rome'): *‖ΔW‖/‖W‖ * > 0.35*",
        "*editguard collapse report*",
        "*scale-row on tiny-llama*0 passed, 1 failed*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_ini_keys_and_command_line_precedence(suite):
    suite.makeini("[pytest]\neditguard_model = tiny-gpt2\neditguard_editor = c-rome\neditguard_ppl_max_ratio = 3.5\n"
                  "editguard_update_norm_max = 5\n")
    result = suite.runpytest_subprocess("--hparams=hparams.json", "--max-cases=1", "--editguard-json=r.json",
                                       "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    run = json.loads((suite.path / "r.json").read_text())["run"]
    assert (run["model"], run["editor"], run["thresholds"]["ppl_max_ratio"]) == ("tiny-gpt2", "c-rome", 3.5)
    assert run["thresholds"]["update_norm_rel_max"] == 5
    result = suite.runpytest_subprocess("--hparams=hparams.json", "--max-cases=1", "--editguard-json=r.json",
                                       "--model=tiny-gptj", "-p", "no:cacheprovider")
    assert json.loads((suite.path / "r.json").read_text())["run"]["model"] == "tiny-gptj"


def test_strict_gate_fails_rome_with_readable_reason(suite):
    result = suite.runpytest_subprocess(*base_args("--max-cases=1", "--ppl-max-ratio=0.5"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*t1 ('Paris is the capital of' -> 'Rome'): perplexity * > 0.5 × baseline *"])


@pytest.mark.parametrize("args, message", [
    (["--max-cases", "0"], "--editguard-max-cases (--max-cases): expected an integer ≥ 1, got '0'"),
    (["--ppl-threshold", "high"], "--editguard-ppl-threshold (--ppl-threshold): expected a finite number > 0, got"),
    (["--ppl-max-ratio", "nan"], "--editguard-ppl-max-ratio (--ppl-max-ratio): expected a finite number > 0, got"),
    (["--ppl-threshold", "-5"], "(--ppl-threshold): expected a finite number > 0, got '-5'"),
    (["--dtype", "float8"], "--editguard-dtype (--dtype): expected one of float32, bfloat16, float16, got"),
    (["--ppl-bos", "sometimes"], "--editguard-ppl-bos (--ppl-bos): expected one of never, tokenizer, always, got"),
    (["--editor", "no-such-editor"],
     "unknown editor 'no-such-editor'; available: alphaedit, c-rome, ft, ft-l, ft-m, memit, mend, r-rome, rome"),
    (["--hparams", "missing.json"], "--editguard-hparams missing.json:"),
    (["--editor", "unsafe_editor:ScaleRow"], "takes no hyperparameters"),
    (["--editor", "unsafe_editor:Nope"], "cannot import 'Nope' from 'unsafe_editor'"),
])
def test_bad_options_give_specific_errors(suite, args, message):
    suite.makepyfile(unsafe_editor=UNSAFE_EDITOR)
    result = suite.runpytest_subprocess(*base_args(*args))
    assert result.ret != 0
    assert message in result.stdout.str() + result.stderr.str()


def test_the_edit_precision_is_in_the_header_the_hparams_and_the_json(suite, data_dir):
    result = suite.runpytest_subprocess(*base_args("--max-cases=1", "--editguard-edit-precision=bfloat16",
                                                   "--editguard-json=r.json"))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["editguard: * ppl-bos=never edit-precision=bfloat16 *"])
    run = json.loads((suite.path / "r.json").read_text())["run"]
    assert run["edit_precision"] == "bfloat16" and run["hparams"]["v_precision"] == "bfloat16"
    from editguard import load_model
    from editguard.data import load_ppl_corpus
    from editguard.metrics.perplexity import perplexity

    sentences = load_ppl_corpus("me-ppl-50", data_dir)
    in_bfloat16 = perplexity(load_model("tiny-llama"), sentences, precision="bfloat16")
    assert run["baseline_ppl"] == pytest.approx(in_bfloat16.ppl, rel=1e-6)
    assert run["baseline_ppl"] != pytest.approx(perplexity(load_model("tiny-llama"), sentences).ppl, rel=1e-6)


def test_the_ppl_bos_rule_is_in_the_header_the_report_and_the_json(suite, data_dir):
    result = suite.runpytest_subprocess(*base_args("--max-cases=1", "--ppl-bos=always", "--editguard-json=r.json"))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["editguard: *ppl-corpus=me-ppl-50 (sequences: me-ppl-1k) ppl-bos=always *",
                                 "*baseline me-ppl-50 perplexity * (token-weighted *; BOS: always)*"])
    run = json.loads((suite.path / "r.json").read_text())["run"]
    assert run["ppl_bos"] == "always"
    from editguard import load_model
    from editguard.data import load_ppl_corpus
    from editguard.metrics.perplexity import perplexity

    with_bos = perplexity(load_model("tiny-llama"), load_ppl_corpus("me-ppl-50", data_dir), bos="always")
    assert run["baseline_ppl"] == pytest.approx(with_bos.ppl, rel=1e-6)


def test_module_without_case_source_is_a_usage_error(pytester):
    pytester.makepyfile(test_nocases="def test_edit(edit_case):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    assert "defines no edit_cases(settings) function" in result.stdout.str() + result.stderr.str()


AFTER_SEQUENCE = '''
from editguard.models.snapshot import weight_digests

def test_model_is_pristine_after_the_sequence(model_under_edit, baseline):
    assert weight_digests(model_under_edit.model) == baseline.pristine.digests
'''


def test_sequential_mode_accumulates_edits_and_restores_after_the_module(suite):
    suite.makepyfile(test_zz_after=AFTER_SEQUENCE)
    result = suite.runpytest_subprocess(*base_args("--sequential", "--ppl-corpus=me-ppl-50",
                                                   "--editguard-json=out/seq.json", "--editguard-plots=plots", "-v"))
    result.stdout.fnmatch_lines(["*test_edit[[]step01-t1-Paris[]]*", "*test_edit[[]step03-t3-Windows[]]*",
                                 "*test_model_is_pristine_after_the_sequence PASSED*",
                                 "*sequence suite: perplexity after each edit*"])
    doc = json.loads((suite.path / "out" / "seq.json").read_text())
    steps = sorted(doc["cases"], key=lambda c: c["step"])
    assert [c["step"] for c in steps] == [1, 2, 3] and {c["sequence"] for c in steps} == {"suite"}
    assert doc["run"]["sequential"] is True and doc["run"]["ppl_corpus"] == "me-ppl-50"
    assert (suite.path / "plots" / "sequence-ppl.png").stat().st_size > 5000
    # Later steps measure a model that carries the earlier edits: the cumulative change grows.
    cumulative = [c["diagnostics"]["cumulative_update_norm_rel"] for c in steps]
    assert cumulative[-1] > steps[0]["diagnostics"]["update_norm_rel"] * 0.999
    # Each step edits the model the earlier ones left: no v* is searched ahead.
    assert {c["diagnostics"]["v_star_search"] for c in steps} == {"alone"}


def test_sequences_default_to_me_ppl_1k(suite):
    suite.makepyfile(test_suite=SUITE.replace("def edit_cases", "EDITGUARD_SEQUENTIAL = True\n\ndef edit_cases"))
    result = suite.runpytest_subprocess(*base_args("--max-cases=1", "--editguard-json=out/seq.json"))
    result.assert_outcomes(passed=1)
    doc = json.loads((suite.path / "out" / "seq.json").read_text())
    assert doc["run"]["ppl_corpus"] == "me-ppl-1k" and doc["cases"][0]["step"] == 1


def test_sequential_with_xdist_keeps_a_sequence_on_one_worker_in_order(suite):
    result = suite.runpytest_subprocess(*base_args("--sequential", "--ppl-corpus=me-ppl-50", "-n", "2",
                                                   "--editguard-json=out/seq.json"))
    result.assert_outcomes(passed=3)
    steps = sorted(json.loads((suite.path / "out" / "seq.json").read_text())["cases"], key=lambda c: c["step"])
    assert [(c["step"], c["case_id"]) for c in steps] == [(1, "t1"), (2, "t2"), (3, "t3")]


def test_ppl_every_and_a_collapse_stop_the_sequence_skip_the_rest_and_restore(suite, toy_importable):
    """Step 1 is not probed (ppl null), step 2 is (every 2nd) and collapses: the sequence stops,
    step 3 is skipped naming step 2, the JSON says so, and the model is the unedited one after."""
    suite.makepyfile(test_zz_after=AFTER_SEQUENCE)
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=tests.toy_editors:CollapsesAtStepEditor",
                                        "--sequential", "--ppl-corpus=me-ppl-50", "--ppl-every=2", "-rs",
                                        "--editguard-json=out/seq.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*sequence stopped at step 2: collapsed (perplexity *"])
    doc = json.loads((suite.path / "out" / "seq.json").read_text())
    steps = sorted(doc["cases"], key=lambda c: c["step"])
    assert [(c["step"], c["ppl_probed"]) for c in steps] == [(1, False), (2, True)]
    assert steps[0]["ppl"] is None and steps[0]["efficacy"] is not None and steps[0]["verdict"] == "passed"
    assert steps[1]["verdict"] == "collapsed" and steps[1]["sequence_stop"]["step"] == 2
    stop = doc["sequences_stopped"]["test_suite.py"]
    assert stop["step"] == 2 and stop["reason"] == "collapsed"
    assert stop["steps_not_run"] == [{"step": 3, "case_id": "t3"}]


def test_without_stop_on_collapse_and_with_a_last_step_probe(suite, toy_importable):
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=tests.toy_editors:CollapsesAtStepEditor",
                                        "--sequential", "--ppl-corpus=me-ppl-50", "--ppl-every=5",
                                        "--sequence-stop-on-collapse=off", "--editguard-json=out/seq.json",
                                        "--update-norm-max=100",   # the collapse scales the final norm ×30
                                        "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=2)   # only the last step (3) is probed, and it is collapsed
    doc = json.loads((suite.path / "out" / "seq.json").read_text())
    assert [c["ppl_probed"] for c in sorted(doc["cases"], key=lambda c: c["step"])] == [False, False, True]
    assert "sequences_stopped" not in doc


def test_batch_size_groups_cases_into_one_edit_each(suite):
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=ft", "--update-norm-max=5", "--batch-size=2",
                                        "--ppl-corpus=me-ppl-50", "--editguard-json=out/b.json",
                                        "-v", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_edit[[]batch2-t1-Paris-to-t2-Danielle_Darrieux[]]*",
                                 "*test_edit[[]batch1-t3-Windows[]]*"])
    cases = json.loads((suite.path / "out" / "b.json").read_text())["cases"]
    assert sorted((c["case_id"], (c.get("batch") or {}).get("case_ids")) for c in cases) == [
        ("t1", ["t1", "t2"]), ("t3", None)]


def test_a_batched_sequence_probes_its_last_step(suite):
    """With --batch-size the sequence has fewer steps than cases: the last step (here step 2 of
    3 cases in batches of 2) is still the one always probed."""
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=ft", "--update-norm-max=5", "--batch-size=2",
                                        "--sequential", "--ppl-every=10", "--ppl-corpus=me-ppl-50",
                                        "--editguard-json=out/bs.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    steps = sorted(json.loads((suite.path / "out" / "bs.json").read_text())["cases"], key=lambda c: c["step"])
    assert [(c["step"], c["ppl_probed"], c["ppl"] is not None) for c in steps] == [(1, False, False), (2, True, True)]


def test_batch_size_is_refused_for_an_editor_that_edits_one_case_at_a_time(suite):
    result = suite.runpytest_subprocess(*base_args("--editor=rome", "--batch-size=2"))
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*--batch-size 2: editor 'rome' applies one case per edit*use --batch-size 1*"])


@pytest.mark.parametrize("length, first, last", [(12, "step01-", "step12-"), (100, "step001-", "step100-")])
def test_sequence_length_draws_the_normal_sequence_and_max_cases_cuts_it(suite, length, first, last):
    from pathlib import Path

    path = str(Path(__file__).resolve().parents[1] / "suites" / "sequential" / "test_normal_sequence.py")
    result = suite.runpytest_subprocess(path, "--collect-only", "-q", "--sequence-length", str(length),
                                        "-p", "no:cacheprovider")
    ids = [line for line in result.stdout.lines if "::test_step_keeps_model_intact[" in line]
    assert len(ids) == length and f"[{first}" in ids[0] and f"[{last}" in ids[-1]
    cut = suite.runpytest_subprocess(path, "--collect-only", "-q", "--sequence-length", str(length),
                                     "--max-cases", "5", "-p", "no:cacheprovider")
    def cases(lines):   # the case part of each id: step numbers are padded to the sequence's own length
        return [line.partition("[step")[2].partition("-")[2] for line in lines if "::test_step_keeps" in line]

    assert cases(cut.stdout.lines) == cases(ids[:5])


FUZZ_SUITE = '''
from hypothesis import given
from editguard.strategies import Fact, edit_cases, fuzz_settings

FACTS = [Fact("Paris", "{} is the capital of", "France", "Japan"),
         Fact("Danielle Darrieux", "The mother tongue of {} is", "French", "English")]

@fuzz_settings()
@given(case=edit_cases(FACTS))
def test_fuzz(case, edit_guard):
    with open("examples.log", "a") as log:
        log.write(case.case_id + "\\n")
    edit_guard.assert_safe(case)
'''


def test_fuzzing_an_unsafe_editor_shrinks_to_no_prefix_subject_first(suite):
    suite.makepyfile(test_suite=FUZZ_SUITE, unsafe_editor=UNSAFE_EDITOR)
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=unsafe_editor:ScaleRow", "--fuzz-examples=5",
                                       "--editguard-json=out/fuzz.json", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["Paris|- ('Paris is the capital of' -> 'Japan'): ‖ΔW‖/‖W‖ * > 0.35"])
    # Hypothesis's own report of the shrunk example (its notes, whatever their wording and layout in
    # this version) stays beside editguard's explanation.
    out = result.stdout.str()
    section = out[out.index("- Hypothesis -"):out.index("editguard collapse report")]
    assert "Paris" in section and "reproduce_failure" in section
    # The report holds the shrunk example, the last one run.
    (case,) = json.loads((suite.path / "out" / "fuzz.json").read_text())["cases"]
    assert (case["case_id"] == "Paris|-" and case["prompt"] == "{} is the capital of"
            and "update_norm" in case["failed_gates"])


def test_fuzzing_a_safe_editor_holds_and_is_derandomized(suite):
    suite.makepyfile(test_suite=FUZZ_SUITE)
    runs = []
    for _ in range(2):
        log = suite.path / "examples.log"
        log.unlink(missing_ok=True)
        result = suite.runpytest_subprocess(*base_args("--editor=c-rome", "--fuzz-examples=3"))
        result.assert_outcomes(passed=1)
        runs.append(log.read_text().splitlines())
    # The same examples in the same order, as many as --fuzz-examples asks for (none was shrunk).
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def test_a_hypothesis_profile_of_the_user_replaces_the_ci_profile(suite):
    suite.makepyfile(test_suite=FUZZ_SUITE)
    # deadline=None as a user fuzzing model edits would set it: Hypothesis's 200 ms default measures
    # the machine's load, not editguard (it failed on 2 busy cores).
    suite.makeconftest("from hypothesis import settings\n"
                       "settings.register_profile('tiny', max_examples=2, deadline=None)\n")
    result = suite.runpytest_subprocess(*base_args("--editor=c-rome", "--fuzz-examples=5",
                                                   "--hypothesis-profile=tiny", "--hypothesis-seed=0"))
    result.assert_outcomes(passed=1)
    assert len((suite.path / "examples.log").read_text().splitlines()) == 2


# --- scale: sharding + merge, xdist equality, junit properties ------------------------------

SEQUENCE_MODULE = SUITE.replace("def edit_cases", "EDITGUARD_SEQUENTIAL = True\n\ndef edit_cases").replace(
    'CaseList(CASES, "three hand-written cases")', 'CaseList(CASES[:2], "two steps")')


def _run_json(suite, name, *extra):
    result = suite.runpytest_subprocess(*base_args("--ppl-corpus=me-ppl-50", f"--editguard-json={name}", *extra))
    assert result.ret in (0, 1), result.stdout.str()[-3000:]
    return json.loads((suite.path / name).read_text())


def test_shards_merge_into_the_unsharded_report(suite):
    from editguard.report.compare import compare_reports

    suite.makepyfile(test_steps=SEQUENCE_MODULE)
    whole = _run_json(suite, "whole.json")
    first = _run_json(suite, "s1.json", "--editguard-shard=1/2")
    second = _run_json(suite, "s2.json", "--editguard-shard=2/2")
    assert first["run"]["shard"] == "1/2" and second["run"]["shard"] == "2/2"
    # Every case in exactly one shard; the two steps of the sequence stay together.
    seq_shards = {i for i, doc in enumerate((first, second)) for c in doc["cases"] if c["sequence"]}
    assert len(seq_shards) == 1
    assert len(first["cases"]) + len(second["cases"]) == len(whole["cases"]) == 5
    from editguard.cli import main

    assert main(["merge", str(suite.path / "s1.json"), str(suite.path / "s2.json"),
                 "--json", str(suite.path / "all.json")]) == 0
    merged = json.loads((suite.path / "all.json").read_text())
    assert compare_reports(whole, merged) == []
    assert [m["shard"] for m in merged["run"]["merged_from"]] == ["1/2", "2/2"]
    assert main(["compare", str(suite.path / "whole.json"), str(suite.path / "all.json"), "--equal"]) == 0
    # Overlapping shards are refused.
    assert main(["merge", str(suite.path / "s1.json"), str(suite.path / "s1.json"),
                 "--json", str(suite.path / "x.json")]) == 2


def test_xdist_run_equals_the_serial_run(suite):
    from editguard.report.compare import compare_reports

    serial = _run_json(suite, "serial.json")
    parallel = _run_json(suite, "parallel.json", "-n", "2")
    assert len(parallel["cases"]) == 3
    assert compare_reports(serial, parallel) == []


THREADS_PROBE = """
import os, pytest, torch

@pytest.mark.parametrize("i", range(4))
def test_threads(model_under_edit, i):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"threads-{worker}-{i}.txt", "w") as f:
        f.write(str(torch.get_num_threads()))
"""


def _threads_seen(suite, *args):
    for old in suite.path.glob("threads-*.txt"):
        old.unlink()
    result = suite.runpytest_subprocess(*base_args("test_threads.py", *args))
    result.assert_outcomes(passed=4)
    return result, {int(p.read_text()) for p in suite.path.glob("threads-*.txt")}


def test_xdist_workers_each_take_their_share_of_the_cpus(suite, monkeypatch):
    """Two workers with torch's default would each start one thread per core and contend for them;
    each takes half the CPUs instead, an explicit --editguard-threads wins, and OMP_NUM_THREADS
    (torch's own setting) is left alone."""
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    suite.makepyfile(test_threads=THREADS_PROBE)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    result, seen = _threads_seen(suite, "-n", "2")
    assert seen == {share}
    result.stdout.fnmatch_lines([f"editguard: * threads={share} per worker*"])
    assert _threads_seen(suite, "-n", "2", "--editguard-threads=3")[1] == {3}
    assert _threads_seen(suite, "--editguard-threads=3")[1] == {3}
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    result, seen = _threads_seen(suite, "-n", "2")
    assert seen == {2}
    assert "threads=" not in result.stdout.str()


def test_junit_xml_carries_each_case_numbers(suite):
    import xml.etree.ElementTree as ET

    result = suite.runpytest_subprocess(*base_args("--max-cases=2", "--junitxml=junit.xml"))
    result.assert_outcomes(passed=2)
    cases = ET.parse(suite.path / "junit.xml").getroot().iter("testcase")
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert float(props["editguard.ppl"]) > 1 and props["editguard.passed"] == "True"
        for name in ("editguard.denominator_ratio", "editguard.key_cosine", "editguard.update_norm_rel",
                     "editguard.failed_gates", "editguard.reason", "editguard.peak_memory_mb"):
            assert name in props, name


@pytest.mark.parametrize("shard, message", [("3/2", "need 1 <= i <= n"), ("half", "must look like i/n")])
def test_bad_shard_is_a_usage_error(suite, shard, message):
    result = suite.runpytest_subprocess(*base_args(f"--editguard-shard={shard}", "--collect-only"))
    assert result.ret != 0 and message in result.stderr.str() + result.stdout.str()


# --- options in somebody else's project ----------------------------------------------------

FOREIGN_CONFTEST = '''
def pytest_addoption(parser):
    for flag in ("--device", "--model", "--dtype", "--editor", "--hparams", "--max-cases"):
        parser.addoption(flag, action="store", default=None, help="the project's own " + flag)
'''

FOREIGN_TEST = '''
def test_the_projects_own_options(request):
    assert request.config.getoption("--model") == "their-model"
    assert request.config.getoption("--device") == "their-device"
'''


def test_a_foreign_project_defining_the_short_options_passes_with_editguard_installed(pytester):
    pytester.makeconftest(FOREIGN_CONFTEST)
    pytester.makepyfile(test_foreign=FOREIGN_TEST)
    result = pytester.runpytest_subprocess("--model=their-model", "--device=their-device", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "conflicting option" not in result.stderr.str()
    (note,) = [line for line in result.stdout.lines if "belong to another plugin or conftest" in line]
    for flag in ("device", "model", "dtype", "editor", "hparams", "max-cases"):
        assert f"--{flag}" in note and f"--editguard-{flag}" in note


def test_editguard_runs_by_its_long_options_beside_the_projects_short_ones(suite):
    suite.makeconftest(FOREIGN_CONFTEST)
    result = suite.runpytest_subprocess("--editguard-model=tiny-llama", "--editguard-hparams=hparams.json",
                                        "--update-norm-max=5", "--editguard-max-cases=1", "--model=their-model",
                                        "--ppl-corpus=me-ppl-50", "--editguard-json=out.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    run = json.loads((suite.path / "out.json").read_text())["run"]
    assert run["model"] == "tiny-llama"


def test_short_and_long_forms_are_the_same_option(suite):
    short = suite.runpytest_subprocess(*base_args("--max-cases=1", "--ppl-corpus=me-ppl-50", "--editguard-json=a.json"))
    long = suite.runpytest_subprocess("--editguard-model=tiny-llama", "--editguard-hparams=hparams.json",
                                      "--editguard-update-norm-max=5", "--editguard-max-cases=1",
                                      "--editguard-ppl-corpus=me-ppl-50", "--editguard-json=b.json",
                                      "-p", "no:cacheprovider")
    short.assert_outcomes(passed=1)
    long.assert_outcomes(passed=1)
    a, b = (json.loads((suite.path / name).read_text()) for name in ("a.json", "b.json"))
    assert [c["case_id"] for c in a["cases"]] == [c["case_id"] for c in b["cases"]] == ["t1"]
    assert a["run"]["model"] == b["run"]["model"] == "tiny-llama"


INTERRUPTING_EDITOR = UNSAFE_EDITOR + '''

class InterruptSecond(ScaleRow):
    """Ctrl-C during the second edit."""
    calls = 0

    def apply(self, model, cases):
        InterruptSecond.calls += 1
        if InterruptSecond.calls == 2:
            raise KeyboardInterrupt
        return super().apply(model, cases)
'''


@pytest.mark.parametrize("args, message", [
    (["--editguard-json=blocker/r.json"], "--editguard-json blocker/r.json: *blocker is not a directory"),
    (["--editguard-plots=blocker"], "--editguard-plots blocker: *blocker exists and is not a directory"),
])
def test_unwritable_output_paths_are_usage_errors_before_any_edit(suite, args, message):
    suite.makefile("", blocker="a file, not a folder")
    result = suite.runpytest_subprocess(*base_args(*args))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*give a path you can write to*"])


def test_an_interrupted_run_writes_its_report_marked_incomplete(suite):
    suite.makepyfile(unsafe_editor=INTERRUPTING_EDITOR)
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=unsafe_editor:InterruptSecond",
                                        "--editguard-json=out/r.json", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(['*editguard: INCOMPLETE run: 1 cases reported, 2 collected edit tests did not run; '
                                 'out/r.json says "complete": false*'])
    doc = json.loads((suite.path / "out" / "r.json").read_text())
    assert doc["complete"] is False and doc["cases_done"] == 1 and [c["case_id"] for c in doc["cases"]] == ["t1"]
    assert doc["cases_not_run"] == ["test_suite.py::test_edit[t2-Danielle_Darrieux]",
                                    "test_suite.py::test_edit[t3-Windows]"]


def test_a_suite_with_no_cases_is_a_usage_error_naming_its_source(suite):
    suite.makepyfile(test_suite=SUITE.replace("CaseList(CASES,", "CaseList([],"))
    result = suite.runpytest_subprocess(*base_args())
    assert result.ret != 0 and "passed" not in result.stdout.str()   # a collection error, as a missing source
    result.stdout.fnmatch_lines(["*test_suite.py::test_edit: its case source (three hand-written cases) gave no "
                                 "cases; point the suite at a non-empty case file or source*"])


def test_a_suite_empty_on_purpose_is_skipped_with_its_reason_and_a_json_saying_so(suite):
    suite.makepyfile(test_suite=SUITE.replace('CaseList(CASES, "three hand-written cases")',
                                              'CaseList([], "a filter", empty_reason="the filter kept no case")'))
    result = suite.runpytest_subprocess(*base_args("--editguard-json=out/empty.json", "-rs"))
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*the filter kept no case*"])
    doc = json.loads((suite.path / "out" / "empty.json").read_text())
    assert doc["cases"] == [] and doc["empty_suites"] == {"test_suite": "the filter kept no case"}
    assert doc["run"]["model"] == "tiny-llama" and doc["complete"]


def test_header_counts_max_cases_and_a_gate_failure_without_collapse(suite, monkeypatch):
    """--max-cases 2 of 3: the header says what was selected and what ran; C-ROME under a strict
    update-norm bound fails that gate without collapsing: counted, explained, stored and drawn as such."""
    result = suite.runpytest_subprocess(*base_args("--editor=c-rome", "--max-cases=2", "--update-norm-max=1e-6",
                                                   "--editguard-json=r.json"))
    result.assert_outcomes(failed=2)
    out = " ".join(result.stdout.str().split())
    assert "cases: 2 of 3 ran (the first 2 selected by --max-cases); source: three hand-written cases" in out
    assert ("0 passed, 2 failed: 2 failed a gate without collapsing (update_norm: 2), 0 collapsed "
            "(ppl > 1000 or NaN)") in out
    assert "next step: the update-norm bound was calibrated on smollm2-135m" in out
    assert out.count("legend: ") == 1 and "blast: blast radius" in out
    doc = json.loads((suite.path / "r.json").read_text())
    assert doc["summary"]["failed_gate"] == 2 and doc["summary"]["collapsed"] == 0
    assert {c["verdict"] for c in doc["cases"]} == {"failed gate"}
    assert doc["run"]["cases_total"] == 3 and doc["run"]["cases_selected"] == 2

    from editguard.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_ppl_scatter(doc["run"], doc["cases"], suite.path / "p.png")
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert "failed a gate (not collapsed) [update_norm]: 2" in labels
    assert not any(t.startswith("passed") for t in labels)


@pytest.mark.parametrize("on_error", ["stop", "continue"])
def test_a_failed_sequence_step_stops_or_continues_from_before_it(suite, toy_importable, on_error):
    """t2's step writes half an edit and raises: it fails as step 2; t3 is skipped naming step 2
    (stop) or runs as step 3 on the weights as step 1 left them (continue)."""
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=tests.toy_editors:PartialWriteEditor",
                                        "--sequential", "--ppl-corpus=me-ppl-50", f"--sequence-on-error={on_error}",
                                        "--editguard-json=out/seq.json", "-rs", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*step 2 (t2) of sequence 'suite' failed: RuntimeError: the editor failed half-way*"])
    if on_error == "stop":
        result.assert_outcomes(passed=1, failed=1, skipped=1)
        result.stdout.fnmatch_lines(["SKIPPED*sequence 'suite' stopped at step 2 (t2), which failed*"])
    else:
        result.assert_outcomes(passed=2, failed=1)
    steps = json.loads((suite.path / "out" / "seq.json").read_text())["cases"]
    # The failed step is a record of its own (verdict error, the phase it failed in), never missing.
    assert [(c["step"], c["verdict"]) for c in steps][:2] == [(1, "passed"), (2, "error")]
    assert steps[1]["error"]["phase"] == "edit" and "the editor failed half-way" in steps[1]["error"]["message"]
    if on_error == "continue":
        assert [c["step"] for c in steps] == [1, 2, 3]
        assert steps[2]["diagnostics"]["update_norm_rel"] < 0.02   # row 0 × 1.01 only: no ×1000 row left over


NO_REPORT_EDITOR = '''
class ReturnsNothing:
    name = "returns-nothing"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def apply(self, model, cases):
        return None
'''


@pytest.mark.parametrize("change, message", [
    ("long", "t1: case t1: prompt + target_new is * tokens on tiny-llama; an edit accepts at most 512*"),
    ("no-report", "t1: editor 'returns-nothing': apply() returned NoneType, expected an editguard.EditReport*"),
])
def test_a_case_too_long_or_an_editor_without_report_fails_cleanly(suite, change, message):
    args = base_args("--max-cases=1", "--ppl-corpus=me-ppl-50")
    if change == "long":
        suite.makepyfile(test_suite=SUITE.replace('"{} is the capital of"', '"word " * 3000 + "{} is the capital of"'))
    else:
        suite.makepyfile(returns_nothing=NO_REPORT_EDITOR)
        args = [a for a in args if not a.startswith("--hparams")] + ["--editor=returns_nothing:ReturnsNothing"]
    result = suite.runpytest_subprocess(*args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{message}"])
    assert "Traceback" not in result.stdout.str()


def test_an_untrained_mend_fails_at_setup_with_the_command_that_trains_it(suite, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "empty-cache"))
    result = suite.runpytest_subprocess("--model=tiny-llama", "--editor=mend", "--max-cases=1",
                                        "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*editguard could not use --editor=mend:*editguard train-mend --model tiny-llama*"])
    assert "Traceback" not in result.stdout.str()


# Records every case and never fails a test: only the comparison can fail the run.
CHECK_ONLY_SUITE = SUITE.replace("edit_guard.assert_safe(edit_case)", "edit_guard.check(edit_case)")


def test_compare_fails_the_run_on_a_regression_even_when_every_test_passed(suite):
    """The gate judges from the collected results (here every test passes: it only records), at
    the end of the run; also under xdist, where the controller judges the workers' results."""
    suite.makepyfile(unsafe_editor=UNSAFE_EDITOR, test_suite=CHECK_ONLY_SUITE)
    saved = suite.runpytest_subprocess(*base_args("--max-cases=2", "--editor=c-rome", "--editguard-json=base.json"))
    saved.assert_outcomes(passed=2)
    assert all(c["passed"] for c in json.loads((suite.path / "base.json").read_text())["cases"])
    for extra in ([], ["-n", "2"]):
        result = suite.runpytest_subprocess("--model=tiny-llama", "--update-norm-max=5", "-p", "no:cacheprovider",
                                            "--max-cases=2", "--editor=unsafe_editor:ScaleRow",
                                            "--editguard-compare=base.json", "--editguard-markdown=s.md",
                                            "--editguard-json=now.json", *extra)
        result.assert_outcomes(passed=2)
        assert result.ret == 1, extra
        result.stdout.fnmatch_lines([
            "*editguard collapse report*", "*compared with base.json*",
            "compared with base.json (c-rome on tiny-llama): 2 cases compared; 2 regressions*",
            "REGRESSION case t1 (Paris): passed in base.json, * now (*update_norm*)",
            "REGRESSION case t2 (Danielle Darrieux): passed in base.json, * now*",
            "editguard compare: FAILED: 2 regressions, 0 worsened beyond a margin against base.json"])
        judged = json.loads((suite.path / "now.json").read_text())["comparison"]
        assert judged["failed"] and [c["case"] for c in judged["regressions"]] == ["case t1 (Paris)",
                                                                                  "case t2 (Danielle Darrieux)"]
        markdown = (suite.path / "s.md").read_text()
        assert markdown.startswith("## ❌ editguard: scale-row on tiny-llama (")
        assert "- case t1 (Paris): passed in base.json" in markdown
    # The saved run against itself: no regression, exit 0; a margin it cannot meet fails it.
    same = suite.runpytest_subprocess(*base_args("--max-cases=2", "--editor=c-rome", "--editguard-compare=base.json",
                                                 "--editguard-compare-fail=ppl:5%",
                                                 "--editguard-compare-fail=efficacy"))
    assert same.ret == 0, same.stdout.str()[-2000:]
    same.stdout.fnmatch_lines(["editguard compare: no regression against base.json"])
    doc = json.loads((suite.path / "base.json").read_text())
    for case in doc["cases"]:
        case["ppl"] /= 2    # a saved run twice as good as this one
    (suite.path / "better.json").write_text(json.dumps(doc))
    worse = suite.runpytest_subprocess(*base_args("--max-cases=2", "--editor=c-rome", "--editguard-compare=better.json",
                                                  "--editguard-compare-fail=ppl:10%"))
    assert worse.ret == 1
    worse.stdout.fnmatch_lines(["WORSE beyond margin case t1 (Paris): ppl * (+100.0%), beyond the margin ppl:10%"])


@pytest.mark.parametrize("args, message", [
    (["--editguard-compare=missing.json"], "--editguard-compare missing.json: cannot read it"),
    (["--editguard-compare=gpt2.json"], "--editguard-compare gpt2.json: it was run on model 'tiny-gpt2', this run is "
                                        "on 'tiny-llama'; compare runs of the same model"),
    (["--editguard-compare-fail=ppl:10%"], "--editguard-compare-fail needs --editguard-compare PATH"),
    (["--editguard-compare=gpt2.json", "--editguard-compare-fail=ppl"],
     "--editguard-compare-fail: fail margin 'ppl': expected FIELD:VALUE"),
    (["--editguard-markdown=hparams.json/x.md"], "--editguard-markdown hparams.json/x.md:"),
])
def test_compare_and_markdown_options_are_checked_before_any_edit(suite, args, message):
    (suite.path / "gpt2.json").write_text(json.dumps({"run": {"model": "tiny-gpt2", "editor": "rome",
                                                                  "thresholds": {"ppl_max": 1000}},
                                                      "cases": []}))
    result = suite.runpytest_subprocess(*base_args(*args))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str(), result.stderr.str()


def test_the_json_report_says_how_and_when_it_was_run(suite):
    suite.runpytest_subprocess(*base_args("--max-cases=1", "--editor=c-rome", "--editguard-json=r.json"))
    info = json.loads((suite.path / "r.json").read_text())["run"]["invocation"]
    assert "--editguard-json=r.json" in info["argv"] and info["cwd"] == str(suite.path)
    assert info["git"] is None          # pytester's directory is no git checkout
    import datetime

    started = datetime.datetime.fromisoformat(info["started_utc"])
    assert started.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()) < 600


def test_a_saved_report_of_another_suite_is_a_usage_error_before_any_edit(suite):
    """The suite is known once tests are collected (their module's folder): refused then."""
    saved = {"run": {"model": "tiny-llama", "editor": "c-rome", "thresholds": {"ppl_max": 1000.0}, "suite": "hardedit",
                     "suites": {"suites/hardedit/test_hardedit.py": {"suite": "hardedit"}}}, "cases": []}
    (suite.path / "hardedit.json").write_text(json.dumps(saved))
    result = suite.runpytest_subprocess(*base_args("--max-cases=1", "--editor=c-rome",
                                                   "--editguard-compare=hardedit.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "passed" not in result.stdout.str()
    result.stderr.fnmatch_lines(["*--editguard-compare hardedit.json: it ran suite hardedit, this run *; compare runs "
                                 "of the same suite"])
