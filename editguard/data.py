"""Where evaluation data comes from: a local data directory laid out like shared/data, or
(opt-in) a checksum-verified download of the few public files editguard reads."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import editguard.errors
from editguard.cache import cache_dir, file_sha256

__all__ = [
    "DataError", "PPL_CORPORA", "PUBLIC_FILES", "PublicFile", "TEXT_CORPORA", "data_file",
    "load_ppl_corpus", "load_text_corpus", "read_json", "resolve_data_dir",
]

DATA_ENV = "EDITGUARD_DATA"

_HOW_TO_SET = (
    "set it with the pytest option --editguard-data DIR, the environment variable "
    f"{DATA_ENV}=DIR, or the ini option editguard_data = DIR; DIR has the layout of "
    "shared/data (me-ppl/, counterfact/, wikitext-2-raw/ ...)"
)


class DataError(editguard.errors.DataError, ValueError):
    """Data missing or malformed; the message names the file (and record and field)."""


@dataclass(frozen=True)
class PublicFile:
    relpath: str  # path inside the data directory, e.g. "me-ppl/ME-PPL_50.json"
    url: str
    sha256: str


_ME_PPL_URL = "https://raw.githubusercontent.com/WanliYoung/Collapse-in-Model-Editing/main/data/ME-PPL/"
_COUNTERFACT_URL = ("https://raw.githubusercontent.com/Jometeorie/KnowledgeSpread/"
                    "d1a8d1ed5367e66010d4d9b081ab388b46c2438c/data/counterfact/")
_WIKITEXT_URL = ("https://raw.githubusercontent.com/Tylogi/TyloQuant/"
                 "7989d038b13ca737da11a95fb90e77ae059f33c0/data/wikitext-2-raw/")


def _public(folder: str, name: str, base_url: str, sha256: str) -> tuple[str, PublicFile]:
    relpath = f"{folder}/{name}"
    return relpath, PublicFile(relpath, base_url + name, sha256)


# Checksums are those of shared/data/SHA256SUMS.
PUBLIC_FILES: dict[str, PublicFile] = dict([
    _public("me-ppl", "ME-PPL_50.json", _ME_PPL_URL,
            "55f3b951d2c4287b90d9e511f256efb9d47461f0da408a17dac5ffcef685c4e4"),
    _public("me-ppl", "ME-PPL_1k.json", _ME_PPL_URL,
            "71e29fc5daf443b35ec16c8a9e91e1f4398b5b84ca7c25393639c066b65b5afb"),
    _public("me-ppl", "ME-PPL.json", _ME_PPL_URL,
            "c09b3d8191ffad954bf3b5e96dac84a7caf83d57c15e262b1d81ef6590742fb4"),
    _public("wikitext-2-raw", "wiki.test.raw", _WIKITEXT_URL,
            "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"),
    _public("counterfact", "counterfact-train.json", _COUNTERFACT_URL,
            "bb40e12c7b740d6859e521674cf438f063c7c3e444bc1b449e74cdd0900772d0"),
    _public("counterfact", "counterfact-val.json", _COUNTERFACT_URL,
            "4feb68cc1f85dcf3b285252a28f2b2193ff69971947619356236953be60ecd1f"),
    _public("counterfact", "counterfact-edit.json", _COUNTERFACT_URL,
            "20c225e6299b3c5b2c569bd9103aa212806e0d1e6e0c307de5c379773979b967"),
])

PPL_CORPORA: dict[str, str] = {
    "me-ppl-50": "me-ppl/ME-PPL_50.json",
    "me-ppl-1k": "me-ppl/ME-PPL_1k.json",
    "me-ppl": "me-ppl/ME-PPL.json",
}

TEXT_CORPORA: dict[str, str] = {
    "wikitext-2-raw": "wikitext-2-raw/wiki.test.raw",
}


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: `explicit` if given, else $EDITGUARD_DATA; it must exist."""
    if explicit is not None and str(explicit) != "":
        raw, origin = explicit, "given data directory"
    elif os.environ.get(DATA_ENV):
        raw, origin = os.environ[DATA_ENV], f"data directory from ${DATA_ENV}"
    else:
        raise DataError(f"no data directory configured: {_HOW_TO_SET}")
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise DataError(f"{origin} {path} does not exist or is not a directory; {_HOW_TO_SET}")
    return path.resolve()


def _cache_path(relpath: str) -> Path:
    return cache_dir() / "data" / relpath


def _verified(public: PublicFile, cached: Path) -> Path:
    """A cached download, checked against its sha256 on every use (a disk error or an edit since
    the download would otherwise go unnoticed)."""
    actual = file_sha256(cached)
    if actual != public.sha256:
        raise DataError(f"cached download {cached} is damaged: sha256 {actual}, expected {public.sha256}; "
                        f"delete it and rerun with --editguard-download (CLI: --download) to fetch it again")
    return cached


def _download(public: PublicFile, dest: Path) -> Path:
    """Fetch `public.url` to `dest`; the file appears only once its checksum matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(public.url, timeout=60) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError) as e:
                raise DataError(f"could not download {public.url} (for {public.relpath}): {e}") from e
        actual = h.hexdigest()
        if actual != public.sha256:
            raise DataError(
                f"checksum mismatch for {public.url} (for {public.relpath}): "
                f"expected sha256 {public.sha256}, got {actual}; the file was not kept"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def data_file(relpath: str, data_dir: str | os.PathLike | None = None, *, download: bool = False) -> Path:
    """Path of `relpath` inside the data directory; with download=True, a public file missing
    there is taken from (or fetched into) the editguard cache."""
    try:
        root: Path | None = resolve_data_dir(data_dir)
        dir_error = None
    except DataError as e:
        root, dir_error = None, e
    if root is not None and (root / relpath).is_file():
        return root / relpath

    public = PUBLIC_FILES.get(relpath)
    if download and public is not None:
        cached = _cache_path(relpath)
        if cached.is_file():
            return _verified(public, cached)
        return _download(public, cached)

    if download:
        fix = f"{relpath} is not one of the downloadable files ({', '.join(sorted(PUBLIC_FILES))})"
    elif public is not None:
        fix = "or pass download=True (pytest: --editguard-download) to fetch it"
    else:
        fix = "it cannot be downloaded"
    if root is None:
        raise DataError(f"cannot find data file {relpath}: {dir_error}; {fix}")
    raise DataError(
        f"data file {root / relpath} not found (data directory: {root}); point --editguard-data or "
        f"{DATA_ENV} at a copy of shared/data that has {relpath}; {fix}"
    )


def read_json(path: Path) -> Any:
    """Parse a JSON file; errors name the file and position."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e}") from None


def _read_lines(path: Path) -> list[str]:
    """Non-blank lines, stripped (wiki.test.raw has CRLF endings; \\r goes with the strip)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _texts_from_json(path: Path, data: Any) -> list[str]:
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of {{\"Corpus\", \"Text\"}} objects or of strings at the top "
            f"level, got {type(data).__name__}"
        )
    texts = []
    for i, record in enumerate(data):
        if isinstance(record, str):
            text = record
            where = f"{path}: record {i}"
        elif isinstance(record, dict):
            text = record.get("Text")
            where = f"{path}: record {i}, field 'Text'"
        else:
            raise DataError(
                f"{path}: record {i}: expected an object with a non-empty string field 'Text' "
                f"(or a string), got {type(record).__name__}"
            )
        if not isinstance(text, str) or not text.strip():
            missing = isinstance(record, dict) and "Text" not in record
            got = "no such field" if missing else f"{type(text).__name__} {text!r:.60}"
            raise DataError(f"{where}: expected a non-empty string, got {got}")
        texts.append(text)
    return texts


def load_ppl_corpus(name_or_path: str, data_dir: str | os.PathLike | None = None,
                    download: bool = False) -> list[str]:
    """Sentences for perplexity: a registered name (PPL_CORPORA) or a file, either JSON
    ([{"Corpus", "Text"}] or [str]) or .txt with one sentence per line. An empty corpus is an
    error: a perplexity over no text would be NaN."""
    sentences = _read_ppl_corpus(name_or_path, data_dir, download)
    if not any(s.strip() for s in sentences):
        raise DataError(f"perplexity corpus '{name_or_path}' holds no sentences; give a corpus with text "
                        f"({', '.join(PPL_CORPORA)} or a .json/.txt file)")
    return sentences


def _read_ppl_corpus(name_or_path: str, data_dir, download: bool) -> list[str]:
    if name_or_path in PPL_CORPORA:
        path = data_file(PPL_CORPORA[name_or_path], data_dir, download=download)
        return _texts_from_json(path, read_json(path))
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise DataError(
            f"unknown perplexity corpus '{name_or_path}': not a registered name "
            f"({', '.join(PPL_CORPORA)}) and no such file"
        )
    if path.suffix.lower() in (".txt", ".raw"):
        return _read_lines(path)
    return _texts_from_json(path, read_json(path))


def load_text_corpus(name_or_path: str = "wikitext-2-raw", data_dir: str | os.PathLike | None = None,
                     download: bool = False) -> list[str]:
    """Plain text lines (non-blank, stripped), e.g. for covariance statistics."""
    if name_or_path in TEXT_CORPORA:
        path = data_file(TEXT_CORPORA[name_or_path], data_dir, download=download)
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise DataError(
                f"unknown text corpus '{name_or_path}': not a registered name "
                f"({', '.join(TEXT_CORPORA)}) and no such file"
            )
    return _read_lines(path)
