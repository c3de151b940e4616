"""The one disk cache: what editguard computes once and keeps (baselines, templates, covariance
statistics, screens, downstream scores, converted models, MEND networks).

Every entry is a file keyed by a sha256 of what it depends on (`cache_key`), written atomically
(a temporary file renamed into place) under a file lock, with a `.sha256` file beside it that is
checked on every read: a truncated or tampered entry is reported and computed again, never used.
Nothing is ever unpickled: tensors are stored as safetensors, metadata as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class CacheWarning(UserWarning):
    """A cache entry failed its check and was computed again."""


def cache_dir() -> Path:
    """$EDITGUARD_CACHE, else $XDG_CACHE_HOME/editguard, else ~/.cache/editguard (created)."""
    root = os.environ.get("EDITGUARD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "editguard"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(*parts: Any, length: int = 20) -> str:
    """A short hex sha256 of JSON-able `parts` (what a cached value depends on)."""
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()[:length]


def safe_name(text: str) -> str:
    """`text` usable as one file-name component: path separators (hub ids hold slashes) and
    leading dots become "_", so a name such as `../../x` stays inside its folder."""
    return re.sub(r"[/\\\x00]", "_", str(text)).lstrip(".").replace("..", "__") or "_"


def unwritable_reason(path: str | os.PathLike, *, directory: bool = False) -> str:
    """Why `path` (a file, or with directory=True a folder) could not be written, or "" if it can:
    checked before a long run, so that its report is not lost at the end. Tried for real (a
    permission bit says nothing to root, nor about /proc or a read-only mount): the missing
    folders and the file are created, then removed again; an existing file is opened to append
    (not changed)."""
    path = Path(path).expanduser().absolute()
    if path.exists():
        if directory != path.is_dir():
            return f"{path} exists and is {'not ' if directory else ''}a directory"
        try:
            if directory:
                probe = path / f".editguard-write-check-{os.getpid()}"
                probe.touch(exist_ok=False)
                probe.unlink()
            else:
                with open(path, "ab"):
                    pass
        except OSError as err:
            return f"{path} is not writable ({err.strerror or err})"
        return ""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    missing = [p for p in (path if directory else path.parent, *(path if directory else path.parent).parents)
               if not p.exists()]
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        if not directory:
            path.open("xb").close()
            path.unlink()
    except OSError as err:
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
        return f"cannot create {path}: {err.strerror or err}{where}"
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
    return ""


def output_path_problem(flag: str, path: str | os.PathLike | None, *, directory: bool = False) -> str:
    """`"FLAG PATH: why; give a path you can write to"` when an output path cannot be written, else "":
    both front ends check their report/plot paths with it before the work starts."""
    problem = path and unwritable_reason(path, directory=directory)
    return f"{flag} {path}: {problem}; give a path you can write to" if problem else ""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def locked(path: Path):
    """Hold the file lock of cache entry `path` (parallel workers compute an entry once)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_entry(path: Path, data: bytes) -> None:
    """Store a cache entry and its checksum (call under `locked(path)`)."""
    write_atomic(path, data)
    write_atomic(_checksum_path(path), hashlib.sha256(data).hexdigest().encode())


def seal(path: Path) -> None:
    """Write the checksum of a file that another library wrote (a converted model)."""
    write_atomic(_checksum_path(path), file_sha256(path).encode())


def is_sealed(path: Path) -> bool:
    """Whether `path` exists and matches the checksum `seal` wrote."""
    checksum = _checksum_path(path)
    return path.exists() and checksum.exists() and checksum.read_text().strip() == file_sha256(path)


def read_entry(path: Path) -> bytes | None:
    """The entry's bytes if it exists and matches its checksum; None if absent. A damaged entry
    (no checksum, or a mismatch) is removed with a CacheWarning naming it (call under `locked`)."""
    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    checksum = _checksum_path(path)
    expected = checksum.read_text().strip() if checksum.exists() else None
    if expected != hashlib.sha256(data).hexdigest():
        why = "has no checksum file" if expected is None else "does not match its checksum"
        warnings.warn(f"cache entry {path} {why}; computing it again", CacheWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        checksum.unlink(missing_ok=True)
        return None
    return data


def cached_json(path: Path, compute: Callable[[], Any]) -> Any:
    """The JSON value cached at `path`, or `compute()` stored there first."""
    with locked(path):
        data = read_entry(path)
        if data is not None:
            return json.loads(data)
        value = compute()
        write_entry(path, json.dumps(value, default=str).encode())
        return value


def tensors_to_bytes(tensors: dict, meta: dict[str, Any] | None = None) -> bytes:
    """safetensors bytes of `tensors`, with `meta` (JSON-able) in the header's metadata."""
    from safetensors.torch import save

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return save(contiguous, metadata={"editguard": json.dumps(meta or {}, default=str)})


def tensors_from_bytes(data: bytes) -> tuple[dict, dict[str, Any]]:
    """The tensors and metadata of safetensors bytes written by `tensors_to_bytes`."""
    from safetensors.torch import load

    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads((header.get("__metadata__") or {}).get("editguard", "{}"))
    return load(data), meta


def cached_tensors(path: Path, compute: Callable[[], tuple[dict, dict[str, Any]]]) -> tuple[dict, dict[str, Any]]:
    """The (tensors, metadata) cached at `path` (safetensors), or `compute()` stored there first."""
    with locked(path):
        data = read_entry(path)
        if data is not None:
            return tensors_from_bytes(data)
        tensors, meta = compute()
        write_entry(path, tensors_to_bytes(tensors, meta))
        return tensors, meta
