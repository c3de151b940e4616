"""Where a model's weights come from: `--model` as a registered name, a local directory, or a
Hugging Face Hub id with an optional revision (`org/name@rev`, a branch, tag or commit hash).

A Hub id resolves to a snapshot directory of the local Hugging Face cache (HF_HUB_CACHE, else
HF_HOME/hub, else ~/.cache/huggingface/hub, read from the environment at each call), offline;
only with `download` (pytest: --editguard-download; CLI: --download) is a missing snapshot
fetched, with huggingface_hub's progress bars. The cache's layout is huggingface_hub's business:
this module only calls its functions (snapshot_download, scan_cache_dir).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import editguard.errors
from editguard.errors import UsageError
from editguard.models.registry import MODELS

# What a download fetches: configuration, tokenizer files and safetensors weights (never pickled
# .bin/.pt/.ckpt files, never other frameworks' copies of the weights). Remote code (*.py) only
# when it is trusted.
DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "tokenizer*")
TRUST_REMOTE_CODE_HINT = ("pass --editguard-trust-remote-code (CLI: --trust-remote-code; library: "
                          "trust_remote_code=True) if you trust the code that model's files contain")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


class ModelLoadError(editguard.errors.ModelLoadError, RuntimeError):
    pass


@dataclass(frozen=True)
class ModelSource:
    """A parsed `--model`: kind "registered" (`name` a key of MODELS), "directory" (`name` a
    path) or "hub" (`name` a Hub repository id, `revision` a branch, tag or commit; None: main)."""

    spec: str
    kind: str
    name: str
    revision: str | None = None

    @property
    def hub_id(self) -> str | None:
        """The Hub repository id the weights come from (a registered Hub model's too); None otherwise."""
        if self.kind == "hub":
            return self.name
        spec = MODELS.get(self.name) if self.kind == "registered" else None
        return spec.source if spec is not None and spec.kind == "hub" else None

    @property
    def label(self) -> str:
        return f"{self.hub_id}@{self.revision}" if self.revision else str(self.hub_id)


def parse_model_spec(spec: str, flag: str = "--model") -> ModelSource:
    """`spec` as a ModelSource; UsageError naming `flag` for a malformed `id@revision`, and
    ModelLoadError for an explicit path (./x, /x, ~/x) that is not a directory."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"{flag}: expected a registered name, a model directory or a Hugging Face Hub id, "
                         f"got {spec!r}")
    if spec in MODELS:
        return ModelSource(spec, "registered", spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource(spec, "directory", str(path))
    if spec.startswith((".", "/", "~")):   # an explicit path; "org/name" is a Hub id
        raise ModelLoadError(f"--model={spec}: no such directory ({path.absolute()}); expected a model directory, "
                             f"a Hugging Face Hub id (org/name, org/name@revision) or one of {', '.join(MODELS)}")
    repo_id, at, revision = spec.partition("@")
    if at and (not repo_id or not revision or "@" in revision or not _REVISION.fullmatch(revision)):
        got = "an empty id" if not repo_id else "an empty revision" if not revision else f"revision {revision!r}"
        raise UsageError(f"{flag}={spec}: expected a Hub id with an optional revision, ORG/NAME@REVISION (a branch, "
                         f"tag or commit hash, e.g. HuggingFaceTB/SmolLM2-135M@main); got {got}")
    registered = MODELS.get(repo_id)
    if registered is not None:
        if registered.kind != "hub":
            raise UsageError(f"{flag}={spec}: {repo_id} is a registered {registered.kind} model; a revision "
                             f"(@{revision}) applies to Hugging Face Hub ids only")
        return ModelSource(spec, "registered", repo_id, revision)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(f"{flag}={spec}: not a registered name ({', '.join(MODELS)}), an existing directory, "
                         f"or a valid Hugging Face Hub id: {err}") from None
    return ModelSource(spec, "hub", repo_id, revision or None)


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache as huggingface_hub defines it, read from the environment now
    (huggingface_hub reads it once, at import): HF_HUB_CACHE, else HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub (~/.cache/huggingface/hub)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def cached_revisions(repo_id: str, cache: Path) -> list[str]:
    """The revisions of `repo_id` the cache holds: its refs (branches, tags) and commit hashes."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    found: list[str] = []
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
                found += sorted(revision.refs) + [revision.commit_hash]
    return found


def hub_snapshot(source: ModelSource, download: bool = False, trust_remote_code: bool = False) -> Path:
    """The snapshot directory of a Hub source in the local cache; with `download`, fetched first
    when the cache lacks it (progress bars on). ModelLoadError naming the id, the revision, the
    cache searched and the ways out."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision, cache = source.hub_id, source.revision, hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    held = cached_revisions(repo_id, cache)
    if download:
        return _download(source, cache, trust_remote_code)
    wanted = f"revision {revision!r}" if revision else "its main revision"
    if held:
        raise ModelLoadError(
            f"model {source.spec!r}: the Hugging Face cache {cache} holds {repo_id} but not {wanted}; it holds "
            f"revisions {', '.join(held)}. Pick one of those (--model={repo_id}@REVISION), or fetch this one: rerun "
            f"with --editguard-download (CLI: --download)")
    raise ModelLoadError(
        f"model {source.spec!r}: Hub id {repo_id} ({wanted}) is not in the Hugging Face cache {cache} (set by "
        f"HF_HUB_CACHE, else HF_HOME/hub), and editguard does not download weights unless asked. Either rerun with "
        f"--editguard-download (CLI: --download) to fetch it, or run `huggingface-cli download {repo_id}"
        f"{' --revision ' + revision if revision else ''}` on a machine with network access and copy its cache "
        f"here; or pass --model=/path/to/a/local/model/dir, or a registered name ({', '.join(MODELS)})")


def _download(source: ModelSource, cache: Path, trust_remote_code: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    patterns = list(DOWNLOAD_PATTERNS) + (["*.py"] if trust_remote_code else [])
    bars_were_off = are_progress_bars_disabled()
    enable_progress_bars()
    try:
        return Path(snapshot_download(source.hub_id, revision=source.revision, cache_dir=cache,
                                      allow_patterns=patterns))
    except Exception as err:  # network, authentication, unknown repository or revision: huggingface_hub's words
        raise ModelLoadError(f"model {source.spec!r}: downloading {source.label} into {cache} failed: "
                             f"{type(err).__name__}: {err}") from None
    finally:
        if bars_were_off:
            disable_progress_bars()


def needs_remote_code(directory: Path) -> str:
    """Why loading the model in `directory` would run code from its files ("" where it would not):
    its config.json maps AutoModelForCausalLM to its own class (auto_map) and its model_type is not
    one transformers implements."""
    config_path = Path(directory) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return ""   # no readable config (a GGUF directory): transformers' own error says so
    if not isinstance(config, dict):
        return ""
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    model_type = config.get("model_type")
    from transformers import CONFIG_MAPPING

    known = isinstance(model_type, str) and model_type in CONFIG_MAPPING
    if "AutoModelForCausalLM" in auto_map and not known:
        return (f"its config.json maps AutoModelForCausalLM to {auto_map['AutoModelForCausalLM']!r}, code shipped "
                f"with the model (model_type {model_type!r} is not one transformers implements)")
    if "AutoConfig" in auto_map and not known:
        return f"its config.json maps AutoConfig to {auto_map['AutoConfig']!r}, code shipped with the model"
    return ""
