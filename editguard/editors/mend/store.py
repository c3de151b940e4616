"""The disk cache of trained MEND editors, `$EDITGUARD_CACHE/mend/`, keyed by the model's
fingerprint, the training data, the hyperparameters, the number of steps and MEND_VERSION.

An editor is `<fingerprint>-<key>.safetensors` (the network's state_dict, with the
metadata and the training log as JSON in its header) and `<...>.json` beside it (the metadata
alone, read to list the editors without loading their networks). The model's name is not in the
file name: the same weights under a registered name, a directory or a Hub id share the editor.
Both are written and read with `editguard.cache` (atomic, checksummed, locked): nothing is
unpickled, and a file that fails its checksum is refused with a CacheWarning, never loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from editguard.cache import cache_dir, locked, read_entry, tensors_from_bytes, tensors_to_bytes, write_entry
from editguard.cases import EditCase
from editguard.editors.mend.hparams import ARCHITECTURE_FIELDS, MendHparams, edited_matrices
from editguard.editors.mend.network import MendNetwork
from editguard.editors.mend.training import MEND_VERSION, TrainedMend, data_hash, train_mend, trained_key
from editguard.models.loading import ModelUnderEdit

NETWORK_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".json"


def mend_cache_dir() -> Path:
    path = cache_dir() / "mend"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _network_path(directory: Path, fingerprint: str, key: str) -> Path:
    return directory / f"{fingerprint}-{key}{NETWORK_SUFFIX}"


def _write(path: Path, data: bytes) -> None:
    with locked(path):
        write_entry(path, data)


def _read(path: Path) -> bytes | None:
    with locked(path):
        return read_entry(path)


def save_trained(trained: TrainedMend, directory: Path | None = None) -> Path:
    """Write the editor as <fingerprint>-<key>.safetensors with a .json of its metadata beside it."""
    directory = Path(directory) if directory is not None else mend_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = _network_path(directory, trained.fingerprint, trained.key)
    meta = {"mend_version": MEND_VERSION, "model": trained.model_name, "fingerprint": trained.fingerprint,
            "data_hash": trained.data_hash, "steps": trained.steps, "hparams": asdict(trained.hparams),
            "key": trained.key, "seconds": trained.seconds, "summary": trained.summary()}
    _write(path, tensors_to_bytes(trained.network.state_dict(), {**meta, "log": trained.log}))
    # The index is written last: an editor is listed only once its network is in place.
    _write(path.with_suffix(INDEX_SUFFIX), json.dumps(meta, indent=1, default=list).encode())
    trained.path = path
    return path


def load_trained(path: Path, mue: ModelUnderEdit) -> TrainedMend | None:
    """The editor stored at `path`; None if there is none or if the file fails its checksum
    (then it is refused with a CacheWarning and removed, never loaded)."""
    data = _read(Path(path))
    if data is None:
        return None
    state, meta = tensors_from_bytes(data)
    hp = MendHparams().with_overrides(meta["hparams"])
    network = MendNetwork(edited_matrices(mue, hp), hp).to(mue.device)
    network.load_state_dict(state)
    network.eval()
    return TrainedMend(network, hp, meta["fingerprint"], meta["model"], meta["data_hash"], meta["steps"],
                       meta.get("log", []), meta.get("seconds", 0.0), Path(path))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def cached_editors(mue: ModelUnderEdit, hp: MendHparams, match: Sequence[str] = ARCHITECTURE_FIELDS) -> list[dict]:
    """Metadata of the editors cached for this model (fingerprint) and MEND_VERSION whose
    hyperparameters equal `hp`'s in the fields `match` (default: those that shape the network),
    longest-trained first (then newest)."""
    want = _plain({k: getattr(hp, k) for k in match})
    found = []
    for network_path in mend_cache_dir().glob(f"{mue.fingerprint}-*{NETWORK_SUFFIX}"):
        index_path = network_path.with_suffix(INDEX_SUFFIX)
        data = _read(index_path)
        if data is None:
            continue
        meta = json.loads(data)
        hparams = meta.get("hparams") or {}
        if (meta.get("mend_version") == MEND_VERSION and meta.get("fingerprint") == mue.fingerprint
                and {k: hparams.get(k) for k in match} == want):
            found.append({**meta, "path": str(network_path), "mtime": index_path.stat().st_mtime})
    return sorted(found, key=lambda m: (m["steps"], m["mtime"]), reverse=True)


def train_and_cache(mue: ModelUnderEdit, cases: Sequence[EditCase], hp: MendHparams, steps: int,
                    loc_texts: Sequence[str] = (), progress: Callable[[int, dict], None] | None = None,
                    retrain: bool = False) -> tuple[TrainedMend, bool]:
    """The editor cached under (fingerprint, data, hparams, steps, MEND_VERSION), trained and saved
    first if there is none (or `retrain`, or the cached one fails its checksum). Returns it and
    whether it was trained now."""
    key = trained_key(mue.fingerprint, data_hash(cases, loc_texts), hp, steps)
    if not retrain:
        cached = load_trained(_network_path(mend_cache_dir(), mue.fingerprint, key), mue)
        if cached is not None:
            return cached, False
    trained = train_mend(mue, cases, hp, steps, progress=progress, loc_texts=loc_texts)
    save_trained(trained)
    return trained, True
