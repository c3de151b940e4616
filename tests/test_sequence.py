"""Sequential editing in the library: edits accumulate, each step is measured on the model the
earlier edits left, and the sequence restores the unedited model (verified) on any exit."""

import pytest
import torch

from editguard import EditCase, get_editor, load_model
from editguard.editors.api import check_batch_size, edits_in_batches
from editguard.gates import Thresholds
from editguard.guard import EditSequence, SequenceStepError, SequenceStopped, check, measure_baseline
from editguard.models.snapshot import WeightSnapshot, weight_digests
from editguard.report.verdicts import verdict
from tests.toy_editors import CollapsesAtStepEditor, PartialWriteEditor, ScaleRowEditor

FAST = {"v_num_grad_steps": 3, "context_template_length_params": [[5, 5]]}
CASES = [
    EditCase("1", "{} is the capital of", "Paris", "Rome", "France"),
    EditCase("2", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditCase("3", "{} was developed by", "Windows", "Apple", "Microsoft"),
]
SENTENCES = ["The cat sat on the mat.", "Rivers flow into the sea."]
LOOSE = Thresholds(update_norm_rel_max=5.0)


@pytest.fixture(scope="module")
def setup():
    mue = load_model("tiny-llama")
    return mue, get_editor("rome", FAST), measure_baseline(mue, SENTENCES, "tiny")


def test_steps_accumulate_and_restore(setup):
    mue, editor, baseline = setup
    layer_weight = mue.rewrite_matrix(mue.edit_layer)
    original = layer_weight.detach().clone()
    with EditSequence(mue, editor, baseline, LOOSE, name="s") as seq:
        results = [seq.apply(c) for c in CASES]
        after_all = layer_weight.detach().clone()
    assert [r.step for r in results] == [1, 2, 3] and {r.sequence for r in results} == {"s"}
    # The single-edit result of case 1 equals step 1 (same starting model).
    single = check(mue, editor, CASES[0], baseline, LOOSE)
    assert results[0].ppl == pytest.approx(single.ppl, rel=1e-5)
    # Step 2 is measured on the model carrying edit 1, so it differs from a fresh single edit.
    single2 = check(mue, editor, CASES[1], baseline, LOOSE)
    assert results[1].ppl != pytest.approx(single2.ppl, rel=1e-6)
    cumulative = float((after_all - original).norm() / original.norm())
    assert results[-1].diagnostics["cumulative_update_norm_rel"] == pytest.approx(cumulative, rel=1e-4)
    assert torch.equal(layer_weight, original)
    assert weight_digests(mue.model) == baseline.pristine.digests


def test_sequence_restores_when_a_step_raises(setup):
    mue, editor, baseline = setup
    original = mue.rewrite_matrix(mue.edit_layer).detach().clone()
    with pytest.raises(RuntimeError, match="boom"):
        with EditSequence(mue, editor, baseline, LOOSE) as seq:
            seq.apply(CASES[0])
            raise RuntimeError("boom")
    assert torch.equal(mue.rewrite_matrix(mue.edit_layer), original)


def test_snapshot_extend_keeps_the_first_copy(setup):
    mue, _, _ = setup
    name = mue.family.rewrite_weight(mue.edit_layer)
    snap = WeightSnapshot(mue.model, [name])
    original = snap.saved(name).clone()
    with torch.no_grad():
        mue.parameter(name).add_(1.0)
    snap.extend([name, mue.family.rewrite_weight(0)])
    assert torch.equal(snap.saved(name), original) and len(snap.names) == 2
    snap.restore()
    assert torch.equal(mue.parameter(name), original)
    with pytest.raises(KeyError, match="unknown parameters"):
        snap.extend(["no.such.weight"])


def test_a_failed_step_is_undone_recorded_and_stops_the_sequence(setup):
    mue, _, baseline = setup
    w = mue.rewrite_matrix(mue.edit_layer)
    with EditSequence(mue, PartialWriteEditor(), baseline, LOOSE, name="s") as seq:
        seq.apply(CASES[0])
        after_step_1 = w.detach().clone()
        with pytest.raises(SequenceStepError, match=r"step 2 \(2\) of sequence 's' failed: RuntimeError: .*half-way"):
            seq.apply(CASES[1])
        assert torch.equal(w, after_step_1), "the half-written step was not undone"
        assert seq.failed_steps == [(2, "2", "RuntimeError: the editor failed half-way")]
        with pytest.raises(SequenceStopped, match=r"stopped at step 2 \(2\), which failed"):
            seq.apply(CASES[2])
    assert weight_digests(mue.model) == baseline.pristine.digests


def test_continue_after_a_failed_step_builds_on_the_weights_before_it(setup):
    mue, _, baseline = setup
    w = mue.rewrite_matrix(mue.edit_layer)
    with EditSequence(mue, PartialWriteEditor(), baseline, LOOSE, on_error="continue") as seq:
        seq.apply(CASES[0])
        expected = w.detach().clone()
        with pytest.raises(SequenceStepError):
            seq.apply(CASES[1])
        third = seq.apply(CASES[2])
        with torch.no_grad():
            expected[0] *= 1.01
        assert third.step == 3 and torch.equal(w, expected)
    assert [r.step for r in seq.results] == [1, 3] and weight_digests(mue.model) == baseline.pristine.digests
    with pytest.raises(ValueError, match="on_error must be one of stop, continue"):
        EditSequence(mue, PartialWriteEditor(), baseline, on_error="ignore")


def test_ppl_every_measures_on_multiples_and_the_last_step_only(setup):
    mue, _, baseline = setup
    with EditSequence(mue, ScaleRowEditor({"factor": 1.01}), baseline, LOOSE, ppl_every=2, length=3) as seq:
        results = [seq.apply(c) for c in CASES]
    assert [r.ppl is not None for r in results] == [False, True, True]   # step 2 (every 2nd), step 3 (the last)
    first = results[0].to_json()
    assert first["ppl"] is None and first["corpus_ppl"] is None and first["ppl_probed"] is False
    assert "perplexity" not in [g.name for g in results[0].verdict.gates]
    assert results[0].efficacy is not None and "update_norm_rel" in results[0].diagnostics   # still recorded
    assert verdict(first, LOOSE.ppl_max) == "passed"   # not measured is not collapsed
    assert "perplexity" in [g.name for g in results[1].verdict.gates]
    with pytest.raises(ValueError, match="ppl_every must be an integer ≥ 1"):
        EditSequence(mue, ScaleRowEditor(), baseline, ppl_every=0)


def test_a_collapse_stops_the_sequence_and_later_steps_are_recorded_as_not_run(setup):
    mue, _, baseline = setup
    editor = CollapsesAtStepEditor()
    with EditSequence(mue, editor, baseline, LOOSE, name="s", stop_on_collapse=True) as seq:
        seq.apply(CASES[0])
        collapsed = seq.apply(CASES[1])
        assert collapsed.ppl > LOOSE.ppl_max and not collapsed.passed
        assert seq.stop["step"] == 2 and seq.stop["reason"] == "collapsed"
        assert seq.stopped_reason.startswith("sequence stopped at step 2: collapsed (perplexity ")
        with pytest.raises(SequenceStopped, match="sequence stopped at step 2: collapsed"):
            seq.apply(CASES[2])
        assert seq.skip(CASES[2]) == {"sequence": "s", "step": 3, "case_id": "3", "reason": seq.stopped_reason,
                                      "stopped_at": 2}
    assert weight_digests(mue.model) == baseline.pristine.digests


def test_without_stop_on_collapse_the_sequence_runs_on(setup):
    mue, _, baseline = setup
    with EditSequence(mue, CollapsesAtStepEditor(), baseline, LOOSE) as seq:
        results = [seq.apply(c) for c in CASES]
    assert seq.stop is None and [r.step for r in results] == [1, 2, 3]


def test_a_batch_is_one_edit_judged_once_and_names_its_cases(setup):
    mue, _, baseline = setup
    editor = CollapsesAtStepEditor()
    editor.collapse_at = 0
    result = check(mue, editor, CASES, baseline, LOOSE)
    assert editor.calls == 1 and result.diagnostics["n_cases"] == 3
    record = result.to_json()
    assert record["batch"]["case_ids"] == ["1", "2", "3"] and len(record["batch"]["efficacy"]) == 3
    assert record["efficacy"] == all(record["batch"]["efficacy"])
    assert "batch of 3 cases (1, 2, 3)" in result.explanation
    with EditSequence(mue, editor, baseline, LOOSE) as seq:
        step = seq.apply(CASES[:2])
    assert step.step == 1 and [c.case_id for c in step.batch] == ["1", "2"]
    assert weight_digests(mue.model) == baseline.pristine.digests
    with pytest.raises(ValueError, match="empty batch"):
        check(mue, editor, [], baseline)


def test_editors_without_batch_support_are_refused_by_name():
    check_batch_size(get_editor("memit"), 100)
    check_batch_size(get_editor("rome"), 1)
    assert edits_in_batches(get_editor("ft")) and edits_in_batches(get_editor("alphaedit"))
    for name in ("rome", "c-rome", "r-rome"):
        with pytest.raises(ValueError, match=f"--batch-size 4: editor '{name}' applies one case per edit.*"
                                             "use --batch-size 1, or .*--editor=memit"):
            check_batch_size(get_editor(name), 4)


class CountingProbe:
    """A downstream probe with no tasks that counts when it is run."""

    unedited, min_retention = {}, None

    def __init__(self):
        self.runs = 0

    def run(self, mue):
        self.runs += 1
        return {}

    def to_json(self, scores):
        return {}


def test_downstream_probes_run_on_the_perplexity_steps_only(setup):
    mue, _, baseline = setup
    probe = CountingProbe()
    baseline.downstream = probe
    try:
        with EditSequence(mue, ScaleRowEditor({"factor": 1.01}), baseline, LOOSE, ppl_every=2, length=3) as seq:
            results = [seq.apply(c) for c in CASES]
    finally:
        baseline.downstream = None
    assert probe.runs == 2 and [r.downstream is not None for r in results] == [False, True, True]
