"""Where a model comes from: a registered name, a local directory, or a Hugging Face Hub id with an
optional revision, resolved from a Hub cache laid out on disk here (a tiny model; no network:
HF_HUB_OFFLINE is set and every download is a recording stand-in). The fingerprint identifies
the weights whatever the source, so every cache keyed by it is shared."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from editguard.errors import UsageError
from editguard.models import ModelLoadError
from editguard.models.loading import load_model, model_fingerprint, original_parameters, reload_model
from editguard.models.registry import MODEL_TYPES
from editguard.models.sources import hub_cache_dir, parse_model_spec
from editguard.models.tiny import build_tiny_model, tiny_tokenizer

REPO = "editguard-test/tiny-llama"
MAIN = "a" * 40       # the commit refs/main points at: tiny-llama's seeded weights
OTHER = "b" * 40      # the commit refs/v2 points at: other weights


def save_tiny(directory: Path, scale: float = 1.0) -> Path:
    model = build_tiny_model("llama")
    if scale != 1.0:
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight.mul_(scale)
    model.save_pretrained(directory)
    tiny_tokenizer("llama").save_pretrained(directory)
    return directory


def lay_out(cache: Path, repo: str, commit: str, files: Path, refs: tuple[str, ...] = ()) -> Path:
    """huggingface_hub's cache layout: blobs by content hash, snapshots/<commit>/ linking to them,
    refs/<name> holding a commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for path in sorted(files.iterdir()):
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hugging Face home with REPO at two revisions (main, v2), and a private editguard cache."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "editguard-cache"))
    cache = home / "hub"
    lay_out(cache, REPO, MAIN, save_tiny(tmp_path / "main"), refs=("main",))
    lay_out(cache, REPO, OTHER, save_tiny(tmp_path / "other", scale=1.5), refs=("v2",))
    load_model.cache_clear()
    yield cache
    load_model.cache_clear()


def test_the_spec_is_parsed_into_its_kind():
    assert parse_model_spec("tiny-llama").kind == "registered"
    assert parse_model_spec("org/name@v1.0") == parse_model_spec("org/name@v1.0").__class__(
        "org/name@v1.0", "hub", "org/name", "v1.0")
    assert parse_model_spec("gpt2-xl@abc").hub_id == "gpt2-xl"   # a registered Hub model takes a revision
    for bad, why in [("org/name@", "an empty revision"), ("@main", "an empty id"), ("a/b@c@d", "revision 'c@d'")]:
        with pytest.raises(UsageError, match=f"--model={bad}: expected a Hub id .*ORG/NAME@REVISION.*got {why}"):
            parse_model_spec(bad)
    with pytest.raises(UsageError, match="--editguard-model=tiny-llama@v1: tiny-llama is a registered tiny model"):
        parse_model_spec("tiny-llama@v1", "--editguard-model")


def test_the_hub_cache_follows_the_environment_at_each_call(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"


def test_a_hub_id_loads_from_the_cache_with_the_registered_models_fingerprint(hub):
    registered = load_model("tiny-llama", device="cpu")
    by_id = load_model(REPO, device="cpu")
    assert by_id.name == REPO and by_id.weights_dir == str(hub / f"models--{REPO.replace('/', '--')}" / "snapshots"
                                                            / MAIN)
    assert by_id.fingerprint == registered.fingerprint
    assert load_model(f"{REPO}@main", device="cpu").fingerprint == registered.fingerprint
    assert load_model(f"{REPO}@{MAIN}", device="cpu").fingerprint == registered.fingerprint
    other = load_model(f"{REPO}@v2", device="cpu")
    assert other.fingerprint != registered.fingerprint and other.weights_dir.endswith(OTHER)
    assert by_id.edit_layer == 0 and other.source.startswith(f"{REPO}@v2 (")


def test_the_snapshot_directory_shares_the_hub_ids_fingerprint_and_caches(hub, monkeypatch):
    from editguard.editors import covariance

    by_id = load_model(REPO, device="cpu")
    by_dir = load_model(by_id.weights_dir, device="cpu")
    assert by_dir.name == by_id.weights_dir and by_dir.fingerprint == by_id.fingerprint
    texts = ["The capital of France is Paris.", "Rome is in Italy."]
    first = covariance.second_moment_of_texts(by_id, 1, texts, progress=False)
    monkeypatch.setattr(covariance, "_accumulate", lambda *a: pytest.fail("computed again, not a cache hit"))
    again = covariance.second_moment_of_texts(by_dir, 1, texts, progress=False)
    assert torch.equal(first, again)
    other = load_model(f"{REPO}@v2", device="cpu")
    with pytest.raises(pytest.fail.Exception, match="not a cache hit"):
        covariance.second_moment_of_texts(other, 1, texts, progress=False)   # other weights: other entry


def test_a_change_anywhere_in_a_tensor_changes_the_fingerprint():
    model = build_tiny_model("llama")
    before = model_fingerprint(model)
    weight = model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        weight.view(-1)[7] = torch.nextafter(weight.view(-1)[7], torch.tensor(10.0))   # one value, one ulp
    stride = weight.numel() // 4096
    assert stride >= 2 and 7 % stride != 0   # index 7 lies between the strided samples
    assert model_fingerprint(model) != before


def test_restores_re_read_the_resolved_revision(hub):
    other = load_model(f"{REPO}@v2", device="cpu")
    name = other.family.rewrite_weight(1)   # the matrix v2 changed
    read = original_parameters(other, [name])[name]
    assert torch.equal(read, other.parameter(name).detach())
    assert not torch.equal(read, load_model(REPO, device="cpu").parameter(name).detach())
    with torch.no_grad():
        other.parameter(name).zero_()
    reload_model(other)
    assert torch.equal(other.parameter(name).detach(), read)


def test_a_missing_id_names_the_id_the_cache_and_both_ways_out(hub):
    with pytest.raises(ModelLoadError) as err:
        load_model("nobody/absent@v3", device="cpu")
    message = str(err.value)
    for part in ["nobody/absent", "'v3'", str(hub), "--editguard-download",
                 "huggingface-cli download nobody/absent --revision v3"]:
        assert part in message


def test_an_unknown_revision_names_the_revisions_the_cache_holds(hub):
    with pytest.raises(ModelLoadError, match=f"holds {REPO} but not revision 'v9'; it holds revisions main, {MAIN}, "
                                             f"v2, {OTHER}"):
        load_model(f"{REPO}@v9", device="cpu")


def test_download_is_asked_only_with_the_flag_and_with_the_revision(hub, monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    real = huggingface_hub.snapshot_download
    fetched = []

    def recording(repo_id, revision=None, cache_dir=None, local_files_only=False, allow_patterns=None, **kw):
        if local_files_only:
            return real(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
        fetched.append({"repo_id": repo_id, "revision": revision, "cache_dir": cache_dir, "patterns": allow_patterns})
        return str(lay_out(Path(cache_dir), repo_id, "c" * 40, save_tiny(tmp_path / "fetched", scale=2.0),
                           refs=(revision,)))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        load_model("elsewhere/tiny@rc1", device="cpu")
    assert fetched == []
    assert load_model(REPO, device="cpu", download=True).weights_dir.endswith(MAIN)   # cached: nothing fetched
    assert fetched == []
    mue = load_model("elsewhere/tiny@rc1", device="cpu", download=True)
    assert [(f["repo_id"], f["revision"], Path(f["cache_dir"])) for f in fetched] == [("elsewhere/tiny", "rc1", hub)]
    assert "*.safetensors" in fetched[0]["patterns"] and not {"*.py", "*.bin"} & set(fetched[0]["patterns"])
    assert mue.weights_dir.endswith("c" * 40)
    assert isinstance(LocalEntryNotFoundError("x"), Exception)


def test_remote_code_is_refused_unless_trusted(hub, tmp_path, monkeypatch):
    directory = save_tiny(tmp_path / "remote")
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="editguard_remote_llama",
                  auto_map={"AutoConfig": "configuration_remote.RemoteConfig",
                            "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "configuration_remote.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass RemoteConfig(LlamaConfig):\n"
        "    model_type = 'editguard_remote_llama'\n")
    (directory / "modeling_remote.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_remote import RemoteConfig\n\n\n"
        "class RemoteForCausalLM(LlamaForCausalLM):\n    config_class = RemoteConfig\n")
    lay_out(hub, "editguard-test/remote", "d" * 40, directory, refs=("main",))
    with pytest.raises(ModelLoadError, match="(?s)model 'editguard-test/remote'.*maps AutoModelForCausalLM to "
                                             "'modeling_remote.RemoteForCausalLM'.*--editguard-trust-remote-code"):
        load_model("editguard-test/remote", device="cpu")
    monkeypatch.setitem(MODEL_TYPES, "editguard_remote_llama", "llama")
    mue = load_model("editguard-test/remote", device="cpu", trust_remote_code=True)
    assert type(mue.model).__name__ == "RemoteForCausalLM" and mue.trust_remote_code
    plain = load_model("tiny-llama", device="cpu")
    name = plain.family.rewrite_weight(1)
    assert torch.equal(mue.parameter(name), plain.parameter(name))


def test_a_plugin_run_takes_a_hub_id(hub, pytester, data_dir, monkeypatch):
    from test_plugin import SUITE

    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(".json", hparams=json.dumps({"v_num_grad_steps": 3, "context_template_length_params": [[5, 5]]}))
    result = pytester.runpytest_subprocess(f"--model={REPO}@main", "--hparams=hparams.json", "--update-norm-max=5",
                                           "--max-cases=1", "--editguard-json=r.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    run = json.loads((pytester.path / "r.json").read_text())["run"]
    assert run["model"] == f"{REPO}@main"
    assert run["model_fingerprint"] == load_model("tiny-llama", device="cpu").fingerprint
    bad = pytester.runpytest_subprocess(f"--model={REPO}@", "-p", "no:cacheprovider")
    output = bad.stdout.str() + bad.stderr.str()
    assert bad.ret != 0 and "--editguard-model=editguard-test/tiny-llama@: expected a Hub id" in output


def test_every_command_that_takes_a_model_takes_trust_remote_code():
    """A model that needs remote code must be loadable by every command that loads models
    (prepare included), never only by the plugin."""
    import argparse

    from editguard.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    lacking = [name for name, parser in sub.choices.items()
               if "--model" in parser._option_string_actions
               and "--trust-remote-code" not in parser._option_string_actions]
    assert not lacking, f"commands taking --model without --trust-remote-code: {lacking}"
