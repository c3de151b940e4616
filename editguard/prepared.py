"""What `editguard prepare` made for a fingerprint, read back: the per-fingerprint folder and its
steps' manifests (`Prepared`: what the suites, the calibration lookup and the run header read), and
the merge of sharded runs' pieces (`editguard merge DIR...`, `editguard prepare --merge`). The
pipeline that makes them is editguard.prepare.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editguard.cache import locked, safe_name, write_atomic
from editguard.errors import DataError
from editguard.suite_files import PREPARED_NAMES, prepared_dir

__all__ = ["PIECE_KIND", "Folder", "Prepared", "find_prepared", "is_piece_folder", "merge_pieces", "prepare_command"]

PREPARE_SCHEMA = 1

PIECE_KIND = "editguard-prepare-piece"   # the `kind` of a shard's piece file (screen chunk, mining log)


def prepare_command(model: str) -> str:
    """The one command that prepares `model`."""
    return f"editguard prepare --model {model}"

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, doc: Any) -> None:
    write_atomic(path, (json.dumps(doc, indent=1, ensure_ascii=False, default=str) + "\n").encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"prepared file {path}: cannot read it ({err}); remove it to make it again") from None


class Folder:
    """One fingerprint's prepared folder: manifests and step outputs."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        self.path = prepared_dir(fingerprint)

    def manifest(self, step: str) -> dict[str, Any] | None:
        path = self.path / f"manifest-{step}.json"
        return _read_json(path) if path.is_file() else None

    def finished(self, step: str, options: dict[str, Any]) -> dict[str, Any] | None:
        found = self.manifest(step)
        return found if found is not None and found.get("options") == _jsonable(options) else None

    def write_manifest(self, step: str, model: str, options: dict, seconds: float, files: list[Path],
                       summary: dict[str, Any]) -> dict[str, Any]:
        doc = {"schema": PREPARE_SCHEMA, "step": step, "model": model, "fingerprint": self.fingerprint,
               "made": _now(), "seconds": round(seconds, 3), "options": _jsonable(options),
               "files": [str(Path(f).relative_to(self.path)) for f in files], "summary": _jsonable(summary)}
        _write_json(self.path / f"manifest-{step}.json", doc)
        return doc

    def remember_name(self, model: str) -> None:
        index = self.path.parent / PREPARED_NAMES
        with locked(index):
            names = _read_json(index) if index.is_file() else {}
            if names.get(model) != self.fingerprint:
                names[model] = self.fingerprint
                _write_json(index, names)


def _jsonable(doc: Any) -> Any:
    return json.loads(json.dumps(doc, default=str))


# --- what the suites and the plugin read --------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """What `prepare` made for one fingerprint (the steps' manifests)."""
    fingerprint: str
    folder: Path
    manifests: dict[str, dict[str, Any]]

    @property
    def layer(self) -> int | None:
        m = self.manifests.get("layer")
        return m["summary"]["layer"] if m else None

    def hardcf_path(self, editor: str = "rome") -> Path | None:
        return self._made_for(editor, "mine", "hardcf")

    def calibration_path(self, editor: str = "rome") -> Path | None:
        return self._made_for(editor, "calibrate", "calibration")

    def _made_for(self, editor: str, step: str, stem: str) -> Path | None:
        """The file `step` wrote for `editor`, when its manifest says it was made with that editor."""
        m = self.manifests.get(step)
        if m and m["options"].get("editor") == editor:
            path = self.folder / f"{stem}-{safe_name(editor)}.json"
            return path if path.is_file() else None
        return None

    def describe(self) -> str:
        """The run header's sentence: which prepared files, for which fingerprint, made when."""
        parts = []
        for step, what in (("layer", "edit layer"), ("mine", "hardcf list"), ("calibrate", "calibration")):
            m = self.manifests.get(step)
            if m:
                files = (", ".join(str(self.folder / f) for f in m["files"][:1])
                         or str(self.folder / f"manifest-{step}.json"))
                extra = f" {m['summary']['layer']}" if step == "layer" else ""
                parts.append(f"{what}{extra} ({files}, made {m['made']} as {m['model']})")
        return f"prepared for fingerprint {self.fingerprint}: " + "; ".join(parts)


def find_prepared(fingerprint: str) -> Prepared | None:
    """The prepared steps of the weights with `fingerprint` (layer, mined list, calibration); None
    when none of them was made."""
    folder = Folder(fingerprint)
    manifests = {step: m for step in ("layer", "mine", "calibrate") if (m := folder.manifest(step)) is not None}
    return Prepared(fingerprint, folder.path, manifests) if manifests else None


def _fold_mine_pieces(folder: Folder, log: Path, editor: str) -> None:
    """Append the records of the shards' mining logs (shards/) that the main log lacks; the
    header must be the main log's (the same mining run)."""
    pieces = sorted((folder.path / "shards").glob(f"mine-{editor}-*-of-*.jsonl"))
    if not pieces:
        return
    main_lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    have = {json.loads(line)["case_id"] for line in main_lines[1:] if line.strip()}
    header = main_lines[0] if main_lines else None
    added = []
    for piece in pieces:
        lines = piece.read_text(encoding="utf-8").splitlines()
        if not lines:
            continue
        if header is None:
            header = lines[0]
        elif json.loads(lines[0]) != json.loads(header):
            raise DataError(f"{piece}: a mining log of another run (its header differs from {log}'s)")
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except ValueError:
                continue   # a line cut off when that shard was killed: the case is mined again
            if record["case_id"] not in have:
                have.add(record["case_id"])
                added.append(line)
    if header is not None and (added or not main_lines):
        write_atomic(log, ("\n".join([header, *main_lines[1:], *added]) + "\n").encode())


# --- merging shards' pieces -----------------------------------------------------------------

def is_piece_folder(path: Path) -> bool:
    """Whether `path` holds pieces of sharded prepare runs (screen chunks or shard mining logs)."""
    path = Path(path)
    return path.is_dir() and (any(path.rglob("screen-chunks/chunk-*.json")) or any(path.rglob("shards/mine-*.jsonl")))


def merge_pieces(sources: list[Path]) -> list[Path]:
    """Gather the pieces of sharded runs from `sources` (prepared folders, or folders holding them,
    e.g. CI artifacts) into this machine's prepared folders (by the fingerprint each piece names),
    and fold the shards' mining logs into the main log. Returns the prepared folders touched; the
    next `editguard prepare` there finds every piece done."""
    touched: dict[str, Path] = {}
    for source in sources:
        source = Path(source)
        if not source.exists():
            raise DataError(f"--merge {source}: no such folder")
        found = False
        for chunk in sorted(source.rglob("screen-chunks/chunk-*.json")):
            piece = _read_json(chunk)
            if not isinstance(piece, dict) or piece.get("kind") != PIECE_KIND:
                raise DataError(f"{chunk}: not a piece of `editguard prepare --shard` (no kind {PIECE_KIND!r})")
            target = prepared_dir(piece["fingerprint"])
            dest = target / "screen-chunks" / chunk.name
            if dest.resolve() != chunk.resolve():
                if dest.is_file() and _read_json(dest).get("options") != piece["options"]:
                    raise DataError(f"{chunk}: another screen ({piece['options']}) than {dest}'s; "
                                    f"pieces of one prepare share its options")
                write_atomic(dest, chunk.read_bytes())
            touched[piece["fingerprint"]] = target
            found = True
        for log in sorted(source.rglob("shards/mine-*.jsonl")):
            lines = log.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0]).get("header") if lines else None
            if not isinstance(header, dict) or "fingerprint" not in header:
                raise DataError(f"{log}: not a mining log of `editguard prepare --shard` (no header line)")
            target = prepared_dir(header["fingerprint"])
            dest = target / "shards" / log.name
            if dest.resolve() != log.resolve():
                write_atomic(dest, log.read_bytes())
            touched[header["fingerprint"]] = target
            found = True
        if not found:
            raise DataError(f"--merge {source}: holds no piece of a sharded prepare "
                            f"(screen-chunks/chunk-*.json, shards/mine-*.jsonl)")
    for fingerprint, target in touched.items():
        for log in sorted((target / "shards").glob("mine-*-*-of-*.jsonl")):
            editor = log.name.removeprefix("mine-").rsplit("-", 3)[0]
            _fold_mine_pieces(Folder(fingerprint), target / f"mine-{editor}.jsonl", editor)
    return list(touched.values())
