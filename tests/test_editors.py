"""The built-in editors beyond ROME (r-ROME, FT-L∞, MEMIT, AlphaEdit), the editor-agnostic
anatomy, hyperparameter files, and a user's (unsafe) editor under the guard, on the tiny models
of all three families."""

import json
from pathlib import Path

import pytest
import torch

from editguard import EditCase, get_editor, load_model
from editguard.editors.alphaedit import alphaedit_solve, nullspace_projection
from editguard.editors.hparams import HparamsFileError, load_hparams_file
from editguard.editors.registry import available_editors
from editguard.editors.ft import linf_box
from editguard.editors.keys import context_templates, fill, keys_and_values
from editguard.editors.covariance import layer_second_moment
from editguard.editors.memit import block_outputs, default_layers, memit_solve
from editguard.editors.rome import RomeHparams, rank_one_update
from editguard.metrics.anatomy import normal_text_keys, update_anatomy
from editguard.models import WeightSnapshot

FAMILIES = ["tiny-gpt2", "tiny-gptj", "tiny-llama"]
PARIS = EditCase("t1", "{} is the capital of", "Paris", "Rome", "France")
CASES = [
    PARIS,
    EditCase("t2", "{} was born in", "Mozart", "Berlin", "Salzburg"),
    EditCase("t3", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
]
SENTENCES = [
    "The river flows through the old town and into the sea.",
    "She opened the window and looked at the garden for a long time.",
    "In 1905 the railway reached the village, and trade grew quickly.",
    "Most of the museum's paintings were donated by a local family.",
]
N_TOKENS = 3000  # covariance statistics from 3,000 WikiText tokens: enough for tiny models
FAST_V = {"v_num_grad_steps": 4, "context_template_length_params": [[5, 5]]}
FAST = {
    "rome": FAST_V,
    "c-rome": FAST_V,
    "r-rome": FAST_V,
    "ft": {"steps": 5},
    # λ scaled down for tiny models, whose keys are far smaller than GPT-2 XL's.
    "memit": {**FAST_V, "mom2_n_tokens": N_TOKENS, "mom2_update_weight": 10.0},
    "alphaedit": {**FAST_V, "mom2_n_tokens": N_TOKENS, "l2_weight": 1e-2},
}


pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


@pytest.fixture(params=FAMILIES)
def tiny(request):
    return load_model(request.param)


def state(mue) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in mue.model.named_parameters()}


def changed(mue, before: dict[str, torch.Tensor]) -> list[str]:
    return sorted(name for name, p in mue.model.named_parameters() if not torch.equal(p.detach(), before[name]))


def median_eigenvalue(mue, layer: int, data_dir) -> float:
    mom2 = layer_second_moment(mue, layer, "wikitext-2-raw", N_TOKENS, data_dir)
    return float(torch.linalg.eigvalsh(mom2.double()).median())


# --- registry and hyperparameters ---------------------------------------------------------

def test_builtin_editors_are_registered_under_their_names():
    for name in ["rome", "c-rome", "r-rome", "ft", "memit", "alphaedit"]:
        assert name in available_editors()
        assert get_editor(name).name == name


@pytest.mark.parametrize("name, title, a_valid_key", [
    ("rome", "ROME", "v_num_grad_steps"), ("c-rome", "ROME", "kl_factor"), ("r-rome", "ROME", "v_lr"),
    ("ft", "FT", "norm_constraint"), ("memit", "MEMIT", "mom2_update_weight"),
    ("alphaedit", "AlphaEdit", "nullspace_threshold"),
])
def test_unknown_hyperparameters_are_rejected_with_the_valid_ones(name, title, a_valid_key):
    with pytest.raises(ValueError, match=rf"unknown {title} hyperparameters \['bogus', 'lrr'\]; valid: \[.*'{a_valid_key}'"):
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


def test_memit_layers_default_per_family_and_fit_small_models(tiny):
    assert default_layers(tiny) == (1, 2)  # 4 layers: half the model from the edit layer
    assert get_editor("memit").hparams(tiny)["layers"] == (1, 2)
    assert get_editor("alphaedit", {"layers": [0, 3]}).touched_parameters(tiny, [PARIS]) == [
        tiny.family.rewrite_weight(0), tiny.family.rewrite_weight(3)]
    with pytest.raises(ValueError, match=r"MEMIT layers \[2, 7\]: need distinct increasing layers within .*0\.\.3"):
        get_editor("memit", {"layers": [2, 7]}).touched_parameters(tiny, [PARIS])


def test_memit_family_layers_on_full_size_models():
    from types import SimpleNamespace

    from editguard.models import FAMILIES as ARCH

    def model(family, n_layers, edit_layer):
        return SimpleNamespace(family=ARCH[family], n_layers=n_layers, edit_layer=edit_layer)

    assert default_layers(model("llama", 32, 5)) == (4, 5, 6, 7, 8)     # Llama-2-7B
    assert default_layers(model("gpt2", 48, 17)) == (13, 14, 15, 16, 17)  # GPT-2 XL
    assert default_layers(model("gptj", 28, 5)) == (3, 4, 5, 6, 7, 8)    # GPT-J
    assert default_layers(model("gpt2", 12, 2)) == (2, 3, 4, 5, 6)       # GPT-2 small: 5 from the edit layer


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


# --- every editor: touched parameters only, restored bit for bit --------------------------

@pytest.mark.parametrize("name", ["rome", "c-rome", "r-rome", "ft", "memit", "alphaedit"])
def test_snapshot_restores_every_editor_exactly(tiny, name, data_dir):
    editor = get_editor(name, FAST[name], data_dir=data_dir)
    cases = CASES if name in ("ft", "memit", "alphaedit") else [PARIS]
    before = state(tiny)
    touched = editor.touched_parameters(tiny, cases)
    snapshot = WeightSnapshot(tiny.model, touched)
    try:
        report = editor.apply(tiny, cases)
        assert report.touched == touched
        assert changed(tiny, before) == sorted(touched), "the editor changed what it did not declare"
    finally:
        snapshot.restore()
    assert changed(tiny, before) == []
    if hasattr(editor, "reset"):
        editor.reset()


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


# --- r-ROME -------------------------------------------------------------------------------

def test_r_rome_uses_k_bar_in_numerator_and_denominator_and_tests_without_prefix(tiny):
    editor = get_editor("r-rome", FAST_V)
    hp = RomeHparams.for_family(tiny.family.name, FAST_V)
    layer = tiny.edit_layer
    templates = context_templates(tiny, hp.context_template_length_params, hp.template_seed)
    keys, values = keys_and_values(tiny, layer, [fill(t, PARIS.prompt) for t in templates], PARIS.subject)
    k_bar, v_bar = keys.mean(0), values.mean(0)   # v̄ = W k̄ + b
    snapshot = WeightSnapshot(tiny.model, editor.touched_parameters(tiny, [PARIS]))
    before = tiny.rewrite_matrix(layer).detach().clone()
    try:
        report = editor.apply(tiny, [PARIS])
        delta = tiny.rewrite_matrix(layer).detach() - before
    finally:
        snapshot.restore()
    v_star = report.vectors["v_star"]
    expected = rank_one_update(v_star, v_bar, k_bar, k_bar)   # mom2 off: C⁻¹k̄ = k̄
    assert torch.allclose(delta, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(delta @ k_bar, v_star - v_bar, atol=1e-4 * float(v_star.norm()) + 1e-5)
    assert report.diagnostics["denominator_ratio"] == pytest.approx(1.0)
    assert report.test_prefix == "" and editor.hparams(tiny)["prefix_at_test"] is False
    c_rome = get_editor("c-rome", FAST_V)
    try:
        c_report = c_rome.apply(tiny, [PARIS])
    finally:
        snapshot.restore()
    assert c_report.test_prefix != "" and torch.allclose(c_report.vectors["delta_w"], report.vectors["delta_w"])


# --- FT-L∞ --------------------------------------------------------------------------------

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
    before = state(tiny)
    snapshot = WeightSnapshot(tiny.model, [name])
    try:
        report = editor.apply(tiny, CASES)
        assert changed(tiny, before) == [name]
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


# --- MEMIT --------------------------------------------------------------------------------

def test_memit_solve_is_the_closed_form():
    g = torch.Generator().manual_seed(1)
    keys, residual = torch.randn(12, 3, generator=g), torch.randn(7, 3, generator=g)
    a = torch.randn(12, 12, generator=g)
    mom2 = a @ a.T / 12
    delta = memit_solve(residual, keys, mom2, 5.0)
    expected = residual @ keys.T @ torch.linalg.inv(5.0 * mom2 + keys @ keys.T)
    assert torch.allclose(delta, expected, atol=1e-4)
    assert torch.linalg.matrix_rank(delta) == 3


def test_memit_batch_edit(tiny, data_dir):
    editor = get_editor("memit", FAST["memit"], data_dir=data_dir)
    layers = editor.hparams(tiny)["layers"]
    before = state(tiny)
    h_before = block_outputs(tiny, layers[-1], CASES)
    snapshot = WeightSnapshot(tiny.model, editor.touched_parameters(tiny, CASES))
    try:
        report = editor.apply(tiny, CASES)
        assert changed(tiny, before) == sorted(tiny.family.rewrite_weight(layer) for layer in layers)
        h_after = block_outputs(tiny, layers[-1], CASES)
        z = report.vectors["z"]
        # every case's residual stream at the last critical layer moved toward its target
        assert ((z - h_after).norm(dim=1) < (z - h_before).norm(dim=1)).all()
        d = report.diagnostics
        assert d["residual_norm_final"] < 0.6 * d["residual_norm_initial"]
        for layer in layers:
            delta = tiny.rewrite_matrix(layer).detach() - (
                before[tiny.family.rewrite_weight(layer)].T if tiny.family.weight_is_in_by_out
                else before[tiny.family.rewrite_weight(layer)])
            assert torch.allclose(delta, report.vectors[f"delta_w_layer{layer}"], atol=1e-5)
            assert torch.linalg.matrix_rank(delta) <= len(CASES)
            assert d[f"update_norm_rel_layer{layer}"] > 0
    finally:
        snapshot.restore()


def test_memit_first_layer_update_matches_the_formula(data_dir):
    mue = load_model("tiny-llama")
    overrides = FAST["memit"]
    editor = get_editor("memit", overrides, data_dir=data_dir)
    hp = editor._resolve(mue)
    first = hp.layers[0]
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    keys = torch.stack([keys_and_values(mue, first, [fill(t, c.prompt) for t in templates], c.subject)[0].mean(0)
                        for c in CASES[:2]], dim=1)
    snapshot = WeightSnapshot(mue.model, editor.touched_parameters(mue, CASES[:2]))
    h = block_outputs(mue, hp.layers[-1], CASES[:2])
    try:
        report = editor.apply(mue, CASES[:2])
    finally:
        snapshot.restore()
    residual = (report.vectors["z"] - h).T / len(hp.layers)
    mom2 = layer_second_moment(mue, first, hp.mom2_corpus, hp.mom2_n_tokens, data_dir)
    r, k = residual.double(), keys.double()
    expected = r @ k.T @ torch.linalg.inv(hp.mom2_update_weight * mom2.double() + k @ k.T)
    got = report.vectors[f"delta_w_layer{first}"].double()
    assert float((got - expected).norm()) < 1e-4 * float(expected.norm())


# --- AlphaEdit ----------------------------------------------------------------------------

def test_alphaedit_solve_is_projected():
    g = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    mom2 = basis @ torch.diag(torch.tensor([1.0] * 6 + [1e-4] * 4)) @ basis.T
    projection, dim = nullspace_projection(mom2, 1e-2)
    assert dim == 4 and torch.allclose(projection, basis[:, 6:] @ basis[:, 6:].T, atol=1e-5)
    keys, residual, preserved = (torch.randn(10, 2, generator=g), torch.randn(5, 2, generator=g),
                                 torch.randn(10, 3, generator=g))
    delta = alphaedit_solve(residual, keys, projection, preserved, 0.5)
    p = projection
    closed_form = residual @ keys.T @ p @ torch.linalg.inv(preserved @ preserved.T @ p + keys @ keys.T @ p
                                                           + 0.5 * torch.eye(10))
    assert torch.allclose(delta, closed_form, atol=1e-4)
    assert float((delta @ basis[:, :6]).norm()) < 1e-5 * float(delta.norm())


def test_alphaedit_is_orthogonal_to_the_preserved_subspace(tiny, data_dir):
    layers = (1, 2)
    threshold = median_eigenvalue(tiny, layers[0], data_dir)
    editor = get_editor("alphaedit", {**FAST["alphaedit"], "nullspace_threshold": threshold}, data_dir=data_dir)
    snapshot = WeightSnapshot(tiny.model, editor.touched_parameters(tiny, CASES))
    try:
        report = editor.apply(tiny, CASES)
    finally:
        snapshot.restore()
    for layer in layers:
        mom2 = layer_second_moment(tiny, layer, "wikitext-2-raw", N_TOKENS, data_dir)
        eigenvalues, eigenvectors = torch.linalg.eigh(mom2.double())
        preserved = eigenvectors[:, eigenvalues >= threshold].float()   # where normal-text keys live
        assert 0 < preserved.shape[1] < mom2.shape[0]
        delta = report.vectors[f"delta_w_layer{layer}"]
        assert float(delta.norm()) > 1e-6
        assert float((delta @ preserved).norm()) < 1e-4 * float(delta.norm())
        assert report.diagnostics[f"nullspace_dim_layer{layer}"] == mom2.shape[0] - preserved.shape[1]


def test_alphaedit_accumulates_preserved_keys_until_reset(data_dir):
    mue = load_model("tiny-gpt2")
    editor = get_editor("alphaedit", FAST["alphaedit"], data_dir=data_dir)
    layers = editor.hparams(mue)["layers"]
    snapshot = WeightSnapshot(mue.model, editor.touched_parameters(mue, CASES))
    try:
        first = editor.apply(mue, CASES[:1])
        assert [editor.preserved_count(mue, layer) for layer in layers] == [1, 1]
        second = editor.apply(mue, CASES[1:])  # sequential: on top of the first edit
        assert [editor.preserved_count(mue, layer) for layer in layers] == [3, 3]
        assert second.diagnostics[f"preserved_keys_layer{layers[0]}"] == 1
        assert not first.diagnostics["preserved_keys_dropped"] and not second.diagnostics["preserved_keys_dropped"]
        # the remembered keys are the ones each edit used
        assert torch.allclose(editor.preserved_keys[(mue.fingerprint, layers[0])][:, :1],
                              first.vectors[f"keys_layer{layers[0]}"])
    finally:
        snapshot.restore()
    # the weights no longer hold those edits: the next edit starts afresh
    try:
        third = editor.apply(mue, CASES[:1])
        assert third.diagnostics["preserved_keys_dropped"]
        assert [editor.preserved_count(mue, layer) for layer in layers] == [1, 1]
    finally:
        snapshot.restore()
    editor.reset()
    assert editor.preserved_keys == {} and editor.preserved_count(mue, layers[0]) == 0


# --- anatomy ------------------------------------------------------------------------------

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


# --- a user's editor under the guard ------------------------------------------------------

@pytest.fixture
def toy_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))


def test_user_editor_resolves_by_module_path(toy_importable):
    editor = get_editor("tests.toy_editors:ScaleRowEditor")
    assert editor.name == "scale-row"
    assert get_editor("tests.toy_editors:ScaleRowEditor", {"factor": 3}).hp.factor == 3.0
    with pytest.raises(ValueError, match=r"unknown scale-row hyperparameters \['scale'\]; valid: \['factor', 'row'\]"):
        get_editor("tests.toy_editors:ScaleRowEditor", {"scale": 3})


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
