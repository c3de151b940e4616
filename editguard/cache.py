"""The one disk cache: what editguard computes once and keeps (baselines, templates, covariance
statistics, screens, downstream scores, converted models, MEND networks).

Every entry is a file keyed by a sha256 of what it depends on (`cache_key`), written atomically
(a temporary file renamed into place) under a file lock, with a `.sha256` file beside it that is
checked on every read: a truncated or damaged entry is reported and computed again, never used.
So is an entry (or checksum) that is not a regular file (a directory, a link, a pipe) or is empty.
The checksum guards against corruption (a crash mid-write, a full disk, a bad copy), not
tampering: whoever can write the cache can rewrite an entry and its checksum together; keep the
cache where only you can write (docs: concepts/gates.md).
Nothing is ever unpickled: tensors are stored as safetensors, metadata as JSON.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import stat
import struct
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from editguard.errors import CacheError, ReportError


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


def package_dirs() -> list[Path]:
    """The folders of editguard's own packages, installed or checked out (an editable install's
    checkout): editguard, pytest_editguard and the shipped suites (editguard_suites, the checkout's
    suites/). Found without importing them."""
    here = Path(__file__).resolve().parent
    dirs = [here, here.parent / "pytest_editguard"]
    for name in ("pytest_editguard", "editguard_suites"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p).resolve() for p in spec.submodule_search_locations)
    if (here.parent / "pyproject.toml").is_file() and (here.parent / "suites" / "__init__.py").is_file():
        dirs.append(here.parent / "suites")
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def inside_package(path: str | os.PathLike) -> Path | None:
    """The folder of editguard's own package that `path` lies in (package_dirs), else None:
    nothing is ever written there (it would vanish with the next install, or change the checkout's
    shipped suites)."""
    resolved = Path(path).expanduser().resolve()
    return next((d for d in package_dirs() if resolved.is_relative_to(d)), None)


def unwritable_reason(path: str | os.PathLike, *, directory: bool = False) -> str:
    """Why `path` (a file, or with directory=True a folder) could not be written, or "" if it can:
    checked before a long run, so that its report is not lost at the end. Tried for real (a
    permission bit says nothing to root, nor about /proc or a read-only mount): the missing
    folders and the file are created, then removed again; an existing file is opened to append
    (not changed)."""
    path = Path(path).expanduser().absolute()
    package = inside_package(path)
    if package is not None:
        return (f"{path} is inside editguard's own package ({package}: installed or checked out); editguard never "
                f"writes there")
    if path.exists():
        if directory != path.is_dir():
            return f"{path} exists and is {'not ' if directory else ''}a directory"
        if not directory and not path.is_file():
            return (f"{path} is not a regular file (a device, a pipe or a socket); editguard writes its outputs "
                    f"through a temporary file renamed into place")
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
    """Write `data` to `path` so that no reader ever sees a partial file. A path that exists and is
    not a regular file (/dev/full, /dev/stdout, a pipe) is never replaced; that, a full disk or any
    other failure is a ReportError naming the path (and nothing is left behind)."""
    path = Path(path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise ReportError(f"cannot write {path}: it is not a regular file (a device, a pipe or a directory); "
                          f"give a file path")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        why = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise ReportError(f"cannot write {path}: {why}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_entry(path: Path, data: bytes) -> None:
    """Store a cache entry and its checksum (call under `locked(path)`); whatever stands in their
    place and is not a file (a directory) is removed first."""
    for target in (path, _checksum_path(path)):
        if os.path.lexists(target) and _not_a_file(target) not in ("", "is empty"):
            _discard(target)
    write_atomic(path, data)
    write_atomic(_checksum_path(path), hashlib.sha256(data).hexdigest().encode())


def seal(path: Path) -> None:
    """Write the checksum of a file that another library wrote (a converted model)."""
    write_atomic(_checksum_path(path), file_sha256(path).encode())


def _not_a_file(path: Path) -> str:
    """Why `path` cannot be a cache entry or checksum ("" when it is a non-empty regular file):
    a directory, a link, a pipe or an empty file are refused, whatever the checksum says."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "is missing"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_size == 0:
        return "is empty"
    return ""


def _discard(path: Path) -> None:
    """Remove a refused cache entry or checksum, whatever it is; CacheError when it cannot be."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise CacheError(f"cache entry {path} is damaged and cannot be removed ({err.strerror or err}); "
                         f"remove it by hand") from None


def is_sealed(path: Path) -> bool:
    """Whether `path` is a non-empty regular file that matches the checksum `seal` wrote."""
    checksum = _checksum_path(path)
    if _not_a_file(path) or _not_a_file(checksum):
        return False
    try:
        return checksum.read_text().strip() == file_sha256(path)
    except (OSError, UnicodeDecodeError):
        return False


def read_entry(path: Path) -> bytes | None:
    """The entry's bytes if it exists and matches its checksum; None if absent. A damaged entry
    (no checksum, a mismatch, an entry or checksum that is not a non-empty regular file) is
    removed with a CacheWarning naming it (call under `locked`)."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    checksum = _checksum_path(path)
    why = _not_a_file(path)
    if not why:
        problem = _not_a_file(checksum)
        why = "has no checksum file" if problem == "is missing" else f"has a checksum file that {problem}"
        why = "" if not problem else why
    data = expected = None
    if not why:
        try:
            data = path.read_bytes()
            expected = checksum.read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            why = f"cannot be read ({getattr(err, 'strerror', None) or err})"
    if not why and expected != hashlib.sha256(data).hexdigest():
        why = "does not match its checksum"
    if why:
        warnings.warn(f"cache entry {path} {why}; computing it again", CacheWarning, stacklevel=3)
        _discard(path)
        _discard(checksum)
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
