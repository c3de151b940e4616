"""Editor hyperparameters: unknown and mistyped values are rejected, --hparams files in JSON and
YAML, and a model's defaults on top of its family's, under the user's overrides."""

import json

import pytest

from editguard import get_editor
from editguard.editors.hparams import HparamsFileError, load_hparams_file
from editguard.editors.rome import RomeHparams

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


@pytest.mark.parametrize("name, title, a_valid_key", [
    ("rome", "ROME", "v_num_grad_steps"), ("c-rome", "ROME", "kl_factor"), ("r-rome", "ROME", "v_lr"),
    ("ft", "FT", "norm_constraint"), ("memit", "MEMIT", "mom2_update_weight"),
    ("alphaedit", "AlphaEdit", "nullspace_threshold"),
])
def test_unknown_hyperparameters_are_rejected_with_the_valid_ones(name, title, a_valid_key):
    with pytest.raises(ValueError,
                       match=rf"unknown {title} hyperparameters \['bogus', 'lrr'\]; valid: \[.*'{a_valid_key}'"):
        get_editor(name, {"lrr": 1, "bogus": 2})


def test_mistyped_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match=r"FT hyperparameter 'lr' must be float, got '5e-4' \(str\)"):
        get_editor("ft", {"lr": "5e-4"})
    with pytest.raises(ValueError, match=r"MEMIT hyperparameter 'layers' must be .*got 3"):
        get_editor("memit", {"layers": 3})
    with pytest.raises(ValueError, match=r"ROME hyperparameter 'mom2_adjustment' must be bool"):
        get_editor("rome", {"mom2_adjustment": "yes"})
    # ints are floats, lists are tuples
    hp = RomeHparams.for_family("llama", {"v_lr": 1, "context_template_length_params": [[5, 5]]})
    assert hp.v_lr == 1.0 and isinstance(hp.v_lr, float) and hp.context_template_length_params == ((5, 5),)


def test_hparams_files_json_yaml_yml(tmp_path, tiny):
    (tmp_path / "h.json").write_text(json.dumps({"layers": [1, 2], "v_lr": 0.1}))
    (tmp_path / "h.yaml").write_text("layers: [1, 2]\nv_lr: 1e-1  # YAML 1.1 would read this as a string\n")
    (tmp_path / "h.yml").write_text("layers:\n  - 1\n  - 2\nv_lr: 0.1\n")
    loaded = [load_hparams_file(tmp_path / f) for f in ("h.json", "h.yaml", "h.yml")]
    assert loaded[0] == loaded[1] == loaded[2] == {"layers": [1, 2], "v_lr": 0.1}
    hp = get_editor("memit", loaded[1]).hparams(tiny)
    assert hp["layers"] == (1, 2) and hp["v_lr"] == 0.1
    assert load_hparams_file(tmp_path / "h.yml") == load_hparams_file(str(tmp_path / "h.yml"))


@pytest.mark.parametrize("name, text, message", [
    ("h.toml", "v_lr = 0.1", r"h\.toml: unsupported extension '\.toml'; use \.json, \.yaml or \.yml"),
    ("h.json", "{\"v_lr\": 0.1,}", r"h\.json: invalid JSON"),
    ("h.yaml", "v_lr: [0.1\n", r"h\.yaml: invalid YAML"),
    ("h.yaml", "- 0.1\n- 0.2\n", r"h\.yaml: expected a mapping of name: value at the top level, got list"),
    ("h.json", "3", r"h\.json: expected a mapping .* got int"),
])
def test_bad_hparams_files_name_the_file(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(HparamsFileError, match=message):
        load_hparams_file(tmp_path / name)


def test_missing_hparams_file(tmp_path):
    with pytest.raises(HparamsFileError, match=r"nope\.yaml: cannot read it"):
        load_hparams_file(tmp_path / "nope.yaml")


def test_model_defaults_apply_on_top_of_the_family_and_under_overrides():
    from editguard.editors.alphaedit import AlphaEditHparams
    from editguard.editors.memit import SMOLLM2_LAYERS, MemitHparams

    assert MemitHparams.for_family("llama", model="smollm2-135m").layers == SMOLLM2_LAYERS   # measured
    assert MemitHparams.for_family("llama", model="smollm2-135m").mom2_update_weight == 1500.0
    assert MemitHparams.for_family("llama").mom2_update_weight == 15000.0
    from editguard.editors.ft import FtHparams

    assert FtHparams.for_family("llama", model="smollm2-135m").norm_constraint == 5e-3
    assert FtHparams.for_family("llama").norm_constraint == 5e-4
    assert AlphaEditHparams.for_family("llama", model="smollm2-135m").layers == SMOLLM2_LAYERS
    assert MemitHparams.for_family("llama", model="llama2-7b").layers is None   # the family's range
    assert MemitHparams.for_family("llama", {"layers": [3, 4]}, "smollm2-135m").layers == (3, 4)


@pytest.mark.parametrize("overrides, message", [
    ({"v_lr": -0.1}, r"ROME hyperparameter 'v_lr' must be a finite number > 0, got -0\.1"),
    ({"v_lr": float("nan")}, r"ROME hyperparameter 'v_lr' must be a finite number > 0, got nan"),
    ({"kl_factor": float("inf")}, r"'kl_factor' must be a finite number ≥ 0, got inf"),
    ({"v_num_grad_steps": 0}, r"'v_num_grad_steps' must be an integer ≥ 1, got 0"),
    ({"layer": -1}, r"'layer' must be an integer ≥ 0, got -1"),
])
def test_out_of_range_hparams_fail_when_the_editor_is_made(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_editor("rome", overrides)


def test_a_layer_outside_the_model_fails_when_hparams_are_resolved(tiny):
    from editguard.editors.api import editor_hparams

    for name, overrides in (("rome", {"layer": 99}), ("memit", {"layers": [1, 99]}), ("ft", {"layer": 99})):
        with pytest.raises(ValueError, match=rf"hyperparameter '{'layers' if name == 'memit' else 'layer'}' must "
                                             rf"be within the model's layers 0\.\.{tiny.n_layers - 1}, got"):
            editor_hparams(get_editor(name, overrides), tiny)
