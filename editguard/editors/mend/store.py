"""The disk cache of trained MEND editors, `$EDITGUARD_CACHE/mend/`, keyed by the model's
fingerprint, the training data, the hyperparameters, the number of steps and MEND_VERSION."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from editguard.cache import cache_dir
from editguard.cases import EditCase
from editguard.editors.mend.hparams import ARCHITECTURE_FIELDS, MendHparams, edited_matrices
from editguard.editors.mend.network import MendNetwork
from editguard.editors.mend.training import MEND_VERSION, TrainedMend, data_hash, train_mend, trained_key
from editguard.models.loading import ModelUnderEdit


def mend_cache_dir() -> Path:
    path = cache_dir() / "mend"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_stem(model_name: str, fingerprint: str) -> str:
    return f"{model_name.replace('/', '_')}-{fingerprint}"


def save_trained(trained: TrainedMend, directory: Path | None = None) -> Path:
    """Write the editor as <model>-<fingerprint>-<key>.pt with a .json of its metadata beside it."""
    directory = Path(directory) if directory is not None else mend_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{_file_stem(trained.model_name, trained.fingerprint)}-{trained.key}"
    meta = {"mend_version": MEND_VERSION, "model": trained.model_name, "fingerprint": trained.fingerprint,
            "data_hash": trained.data_hash, "steps": trained.steps, "hparams": asdict(trained.hparams),
            "key": trained.key, "seconds": trained.seconds, "summary": trained.summary()}
    path = directory / f"{stem}.pt"
    tmp = path.with_suffix(".pt.part")
    torch.save({"meta": meta, "state": trained.network.state_dict(), "log": trained.log}, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=list))
    trained.path = path
    return path


def load_trained(path: Path, mue: ModelUnderEdit) -> TrainedMend:
    blob = torch.load(path, map_location=mue.device, weights_only=False)
    meta = blob["meta"]
    hp = MendHparams().with_overrides({k: v for k, v in meta["hparams"].items()})
    network = MendNetwork(edited_matrices(mue, hp), hp).to(mue.device)
    network.load_state_dict(blob["state"])
    network.eval()
    return TrainedMend(network, hp, meta["fingerprint"], meta["model"], meta["data_hash"], meta["steps"],
                       blob.get("log", []), meta.get("seconds", 0.0), Path(path))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def cached_editors(mue: ModelUnderEdit, hp: MendHparams, match: Sequence[str] = ARCHITECTURE_FIELDS) -> list[dict]:
    """Metadata of the editors cached for this model (fingerprint) and MEND_VERSION whose
    hyperparameters equal `hp`'s in the fields `match` (default: those that shape the network),
    longest-trained first (then newest)."""
    want = _plain({k: getattr(hp, k) for k in match})
    found = []
    for meta_path in mend_cache_dir().glob(f"{_file_stem(mue.name, mue.fingerprint)}-*.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        hparams = meta.get("hparams") or {}
        if (meta.get("mend_version") == MEND_VERSION and meta.get("fingerprint") == mue.fingerprint
                and {k: hparams.get(k) for k in match} == want and meta_path.with_suffix(".pt").exists()):
            found.append({**meta, "path": str(meta_path.with_suffix(".pt")), "mtime": meta_path.stat().st_mtime})
    return sorted(found, key=lambda m: (m["steps"], m["mtime"]), reverse=True)


def train_and_cache(mue: ModelUnderEdit, cases: Sequence[EditCase], hp: MendHparams, steps: int,
                    loc_texts: Sequence[str] = (), progress: Callable[[int, dict], None] | None = None,
                    retrain: bool = False) -> tuple[TrainedMend, bool]:
    """The editor cached under (fingerprint, data, hparams, steps, MEND_VERSION), trained and saved
    first if there is none (or `retrain`). Returns it and whether it was trained now."""
    key = trained_key(mue.fingerprint, data_hash(cases, loc_texts), hp, steps)
    path = mend_cache_dir() / f"{_file_stem(mue.name, mue.fingerprint)}-{key}.pt"
    if path.exists() and not retrain:
        return load_trained(path, mue), False
    trained = train_mend(mue, cases, hp, steps, progress=progress, loc_texts=loc_texts)
    save_trained(trained)
    return trained, True
