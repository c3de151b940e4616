"""FT-L∞ on the tiny models: the L∞ box holds after rounding, only the chosen matrix moves, and
the family defaults are the constrained configs'."""

import pytest
import torch

from editguard import get_editor, load_model
from editguard.editors.ft import linf_box
from editguard.models import WeightSnapshot
from tests.tiny_edits import CASES, changed_parameters, copy_parameters

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linf_box_holds_exactly_after_rounding(dtype):
    g = torch.Generator().manual_seed(0)
    w0 = (torch.randn(4000, generator=g) * torch.logspace(-6, 1, 4000)).to(dtype)
    for eps in (5e-4, 5e-5, 1e-3, 0.1):
        lo, hi = linf_box(w0, eps)
        assert float((hi - w0).max()) <= eps and float((w0 - lo).max()) <= eps
        assert bool((lo <= w0).all() and (w0 <= hi).all())


def test_ft_changes_only_its_matrix_within_the_box_and_lowers_the_loss(tiny):
    layer = 2  # not the edit layer: the chosen matrix, not a default, is the one that moves
    editor = get_editor("ft", {"layer": layer})
    eps = editor.hparams(tiny)["norm_constraint"]
    name = tiny.family.rewrite_weight(layer)
    assert editor.touched_parameters(tiny, CASES) == [name]
    before = copy_parameters(tiny)
    snapshot = WeightSnapshot(tiny.model, [name])
    try:
        report = editor.apply(tiny, CASES)
        assert changed_parameters(tiny, before) == [name]
        delta = tiny.parameter(name).detach() - before[name]
        assert float(delta.abs().max()) <= eps
        assert float(delta.abs().max()) == report.diagnostics["max_abs_delta"]
        d = report.diagnostics
        assert d["steps"] == 25 and d["layer"] == layer
        assert d["loss"] < d["loss_initial"]
        assert d["max_abs_delta"] > 0.5 * eps  # the box is reached: the constraint is what binds
    finally:
        snapshot.restore()


def test_ft_family_defaults_cite_the_constrained_configs():
    gptj, gpt2 = load_model("tiny-gptj"), load_model("tiny-gpt2")
    assert get_editor("ft").hparams(gptj)["norm_constraint"] == 5e-5
    assert get_editor("ft").hparams(gpt2)["norm_constraint"] == 5e-4
    assert get_editor("ft").hparams(gpt2)["layer"] == gpt2.edit_layer
