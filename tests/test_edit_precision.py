"""--editguard-edit-precision: the v* search (ROME's, shared by MEMIT and AlphaEdit) and every
perplexity of a run in float32 or bfloat16 autocast, `auto` resolved by the same detection as the
downstream probes; the run header, the editor's hyperparameters and the baseline cache say which."""

import dataclasses

import pytest
import torch

from editguard.data import load_ppl_corpus
from editguard.editors.keys import context_templates
from editguard.editors.memit import MemitHparams
from editguard.editors.rome import RomeHparams
from editguard.editors.value import optimize_value
from editguard.guard import measure_baseline
from editguard.metrics.perplexity import perplexity
from editguard.models.precision import precision_context, resolve_precision
from editguard.options import OPTIONS_BY_NAME
from editguard.report.compare import check_comparable
from editguard.report.merge import MergeError, merge_reports
from editguard.run.config import RunConfig
from editguard.run.session import open_run
from tests.tiny_edits import FAST_V, PARIS

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def config_from(values):
    return RunConfig.from_options(lambda name: values.get(name, OPTIONS_BY_NAME[name].default))


def linear_output_dtypes(mue):
    """Record the dtype of every linear layer's output while installed (a context manager)."""
    seen, handles = set(), []

    class Recording:
        def __enter__(self):
            for module in mue.model.modules():
                if isinstance(module, torch.nn.Linear):
                    handles.append(module.register_forward_hook(lambda _m, _a, out: seen.add(out.dtype)))
            return seen

        def __exit__(self, *exc):
            for handle in handles:
                handle.remove()

    return Recording()


@pytest.mark.parametrize("hparams_class", [RomeHparams, MemitHparams], ids=["rome", "memit"])
def test_the_v_star_search_runs_in_bfloat16_when_asked_and_lands_near_float32(tiny_llama, hparams_class):
    hp = hparams_class.for_family(tiny_llama.family.name, FAST_V, tiny_llama.name, n_layers=tiny_llama.n_layers)
    templates = context_templates(tiny_llama, hp.context_template_length_params, hp.template_seed)
    with linear_output_dtypes(tiny_llama) as dtypes:
        full = optimize_value(tiny_llama, hp, tiny_llama.edit_layer, PARIS, templates)
    assert dtypes == {torch.float32}
    with linear_output_dtypes(tiny_llama) as dtypes:
        half = optimize_value(tiny_llama, dataclasses.replace(hp, v_precision="bfloat16"), tiny_llama.edit_layer,
                              PARIS, templates)
    assert dtypes == {torch.bfloat16}                       # the products ran in 16 bits ...
    assert half.v_star.dtype == torch.float32 and not torch.equal(half.v_star, full.v_star)
    assert (half.v_star - full.v_star).norm() / full.v_star.norm() < 0.05    # ... and v* barely moved
    assert half.steps == full.steps
    assert all(p.dtype == torch.float32 for p in tiny_llama.model.parameters())
    assert not torch.is_autocast_enabled("cpu")             # nothing left switched on


def test_a_v_precision_that_is_no_precision_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"ROME hyperparameter 'v_precision' must be one of float32, bfloat16, "
                                         r"float16, got 'fp8'"):
        RomeHparams.check_overrides({"v_precision": "fp8"})


def test_perplexity_in_bfloat16_is_close_to_float32_and_cached_apart(tiny_llama, data_dir):
    sentences = load_ppl_corpus("me-ppl-50", data_dir)[:10]
    full = perplexity(tiny_llama, sentences)
    half = perplexity(tiny_llama, sentences, precision="bfloat16")
    assert half.ppl != full.ppl and half.ppl == pytest.approx(full.ppl, rel=0.02)
    cached_full = measure_baseline(tiny_llama, sentences, "first ten", shared=True)
    cached_half = measure_baseline(tiny_llama, sentences, "first ten", shared=True, precision="bfloat16")
    assert (cached_full.ppl.ppl, cached_half.ppl.ppl) == (full.ppl, half.ppl)   # one cache entry each
    assert (cached_full.ppl_precision, cached_half.ppl_precision) == ("float32", "bfloat16")
    with pytest.raises(ValueError, match="a resolved precision"):
        perplexity(tiny_llama, sentences, precision="auto")


def test_a_run_edits_and_measures_in_its_edit_precision(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    run = open_run(config_from({"model": "tiny-llama", "editor": "memit", "edit-precision": "bfloat16",
                                "data": str(data_dir)}))
    assert run.edit_precision == "bfloat16"
    assert run.editor.hparams(run.model)["v_precision"] == "bfloat16"
    assert run.baseline("me-ppl-50").ppl_precision == "bfloat16"
    from editguard.runinfo import edit_run_info

    header = edit_run_info(run.model, run.editor, run.baseline("me-ppl-50"), run.gates.thresholds)
    assert header.edit_precision == "bfloat16" and header.hparams["v_precision"] == "bfloat16"
    # an --hparams file that names v_precision wins over the option
    named = open_run(config_from({"model": "tiny-llama", "editor": "rome", "edit-precision": "bfloat16",
                                  "hparams": str(_write(tmp_path / "hp.json", '{"v_precision": "float32"}'))}))
    assert named.editor.hparams(named.model)["v_precision"] == "float32"
    # an editor without a v* search runs as it is; the perplexities still follow the option
    ft = open_run(config_from({"model": "tiny-llama", "editor": "ft-l", "edit-precision": "bfloat16"}))
    assert "v_precision" not in ft.editor.hparams(ft.model) and ft.edit_precision == "bfloat16"
    auto = open_run(config_from({"model": "tiny-llama", "editor": "rome", "edit-precision": "auto"}))
    assert auto.edit_precision == resolve_precision(auto.model, "auto")     # the downstream probes' detection
    assert auto.editor.hparams(auto.model)["v_precision"] == auto.edit_precision


def _write(path, text):
    path.write_text(text)
    return path


def test_a_bad_edit_precision_is_refused_naming_the_option(tiny_llama):
    with pytest.raises(ValueError, match="expected one of auto, float32, bfloat16, got 'fp8'"):
        OPTIONS_BY_NAME["edit-precision"].parse("fp8")
    with pytest.raises(ValueError, match="--editguard-edit-precision must be one of auto, float32, bfloat16"):
        resolve_precision(tiny_llama, "fp8", "--editguard-edit-precision")


def test_runs_in_two_precisions_compare_with_a_note_and_do_not_merge():
    run = {"model": "m", "model_fingerprint": "f", "editor": "rome", "hparams": {}, "thresholds": {},
           "dtype": "float32", "ppl_bos": "never", "edit_precision": "float32"}
    notes = check_comparable(run, {**run, "edit_precision": "bfloat16"}, "a.json")
    assert notes == ["edit precision float32 there, bfloat16 here (v* and perplexity)"]
    shard = {"schema": 1, "cases": [], "run": run}
    other = {"schema": 1, "cases": [], "run": {**run, "edit_precision": "bfloat16"}}
    with pytest.raises(MergeError, match="differ in 'edit_precision'"):
        merge_reports([("a.json", shard), ("b.json", other)])


def test_autocast_is_only_for_a_float32_model(tiny_llama):
    from editguard.models import load_model

    half = load_model("tiny-llama", dtype="bfloat16")
    assert resolve_precision(half, "float32") == "bfloat16"
    with precision_context(half, "bfloat16"):
        assert not torch.is_autocast_enabled("cpu")
    with precision_context(tiny_llama, "bfloat16"):
        assert torch.is_autocast_enabled("cpu")
