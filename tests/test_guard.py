"""The guard's check on any editor: every built-in editor's anatomy is measured, and a user's
(unsafe) editor is flagged."""

import pytest

from editguard import get_editor, load_model
from tests.tiny_edits import FAST, PARIS, SENTENCES

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


@pytest.mark.parametrize("name", ["rome", "c-rome", "r-rome", "ft", "memit", "alphaedit"])
def test_guard_measures_every_editors_anatomy(tiny, name, data_dir):
    """Editor-agnostic anatomy: each touched matrix's ‖ΔW‖/‖W‖ and blast radius, whatever the editor."""
    from editguard.guard import check, measure_baseline

    editor = get_editor(name, FAST[name], data_dir=data_dir)
    result = check(tiny, editor, PARIS, measure_baseline(tiny, SENTENCES))
    d = result.diagnostics
    matrices = {n: m for n, m in d["touched_matrices"].items() if "blast_radius" in m}
    assert set(d["touched_matrices"]) == set(editor.touched_parameters(tiny, [PARIS]))
    assert matrices, "no touched matrix got a blast radius"
    assert d["blast_radius"] == max(m["blast_radius"] for m in matrices.values()) > 0
    assert d["update_norm_rel"] == max(m["update_norm_rel"] for m in d["touched_matrices"].values()) > 0
    assert result.to_json()["blast_radius"] == d["blast_radius"]
    if hasattr(editor, "reset"):
        editor.reset()


def test_guard_flags_the_unsafe_user_editor(toy_importable):
    from editguard.guard import check, measure_baseline

    mue = load_model("tiny-llama")
    baseline = measure_baseline(mue, SENTENCES)
    result = check(mue, get_editor("tests.toy_editors:ScaleRowEditor"), PARIS, baseline)
    assert not result.passed
    assert "update_norm" in [g.name for g in result.verdict.failed]
    assert result.diagnostics["update_norm_rel"] > 0.35
    assert "‖ΔW‖/‖W‖" in result.explanation and "> 0.35" in result.explanation
    assert result.editor == "scale-row"
    # Row 0 × 100: on each normal-text key k, ‖ΔW k‖/‖W k‖ = 99 |w₀·k| / ‖W k‖.
    module = mue.family.rewrite.format(mue.edit_layer)
    keys = baseline.anatomy_keys[module]
    w = mue.rewrite_matrix(mue.edit_layer).detach().float()
    expected = (99 * (keys @ w[0]).abs() / (keys @ w.T).norm(dim=1)).mean()
    assert result.diagnostics["blast_radius"] == pytest.approx(float(expected), rel=1e-4)
    assert keys.shape[0] == sum(len(mue.tokenizer(s)["input_ids"]) for s in SENTENCES)
