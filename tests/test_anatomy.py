"""The editor-agnostic update anatomy (‖ΔW‖/‖W‖ and blast radius on normal-text keys) of known
updates on the tiny models."""

import pytest
import torch

from editguard import load_model
from editguard.metrics.anatomy import normal_text_keys, update_anatomy
from editguard.models import WeightSnapshot
from tests.tiny_edits import SENTENCES

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def test_update_anatomy_of_a_known_update(tiny):
    layer = tiny.edit_layer
    name = tiny.family.rewrite_weight(layer)
    bias_name = f"{tiny.family.rewrite.format(layer)}.bias"
    has_bias = bias_name in dict(tiny.model.named_parameters())
    module = tiny.family.rewrite.format(layer)
    keys = normal_text_keys(tiny, [module], SENTENCES)[module]
    w = tiny.rewrite_matrix(layer)
    assert keys.shape[1] == w.shape[1] and keys.shape[0] == sum(len(tiny.tokenizer(s)["input_ids"]) for s in SENTENCES)
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)
    touched = [name] + ([bias_name] if has_bias else [])
    snapshot = WeightSnapshot(tiny.model, touched)
    before = {n: snapshot.saved(n) for n in snapshot.names}
    w_old = w.detach().clone()
    delta = 1e-2 * torch.outer(u, v)
    try:
        with torch.no_grad():
            w.add_(delta)
            if has_bias:
                tiny.parameter(bias_name).add_(1.0)
        anatomy = update_anatomy(tiny, before, keys)
        without_keys = update_anatomy(tiny, before, None)
    finally:
        snapshot.restore()
    entry = anatomy["matrices"][name]
    assert entry["update_norm"] == pytest.approx(float(delta.norm()), rel=1e-4)
    assert entry["update_norm_rel"] == pytest.approx(float(delta.norm() / w_old.norm()), rel=1e-4)
    radius = ((keys @ delta.T).norm(dim=1) / (keys @ w_old.T).norm(dim=1)).mean()
    assert entry["blast_radius"] == pytest.approx(float(radius), rel=1e-4)
    assert anatomy["blast_radius_max"] == entry["blast_radius"]
    assert anatomy["update_norm_rel_max"] == max(m["update_norm_rel"] for m in anatomy["matrices"].values())
    if has_bias:
        assert "blast_radius" not in anatomy["matrices"][bias_name]
    assert without_keys["blast_radius_max"] is None and "blast_radius" not in without_keys["matrices"][name]


def test_blast_radius_tells_rome_from_c_rome_on_normal_text():
    """A uniform rescaling of W moves every output by the same fraction; a no-op by none."""
    mue = load_model("tiny-gptj")
    layer = mue.edit_layer
    name = mue.family.rewrite_weight(layer)
    module = mue.family.rewrite.format(layer)
    keys = normal_text_keys(mue, [module], SENTENCES, max_keys=50)[module]
    assert keys.shape[0] == 50
    snapshot = WeightSnapshot(mue.model, [name])
    before = {name: snapshot.saved(name)}
    try:
        assert update_anatomy(mue, before, {name: keys})["matrices"][name]["blast_radius"] == 0.0
        with torch.no_grad():
            mue.rewrite_matrix(layer).mul_(1.5)
        assert update_anatomy(mue, before, {name: keys})["blast_radius_max"] == pytest.approx(0.5, rel=1e-5)
    finally:
        snapshot.restore()
