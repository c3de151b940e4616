"""Sequential editing in the library: edits accumulate, each step is measured on the model the
earlier edits left, and the sequence restores the unedited model (verified) on any exit."""

import pytest
import torch

from editguard import EditCase, get_editor, load_model
from editguard.gates import Thresholds
from editguard.guard import EditSequence, SequenceStepError, SequenceStopped, check, measure_baseline
from editguard.models.snapshot import WeightSnapshot, weight_digests
from tests.toy_editors import PartialWriteEditor

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
