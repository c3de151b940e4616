"""Sequential editing in the library: edits accumulate, each step is measured on the model the
earlier edits left, and the sequence restores the unedited model (verified) on any exit."""

import pytest
import torch

from editguard import EditCase, get_editor, load_model
from editguard.gates import Thresholds
from editguard.guard import EditSequence, check, measure_baseline
from editguard.models.snapshot import WeightSnapshot, weight_digests

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
