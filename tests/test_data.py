from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from editguard import data
from editguard.cache import file_sha256
from editguard.data import (
    PPL_CORPORA,
    PUBLIC_FILES,
    DataError,
    PublicFile,
    data_file,
    load_ppl_corpus,
    load_text_corpus,
    resolve_data_dir,
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- ME-PPL and custom corpora ---------------------------------------------------------------

@pytest.mark.parametrize("name, count", [("me-ppl-50", 50), ("me-ppl-1k", 1000), ("me-ppl", 10000)])
def test_me_ppl_counts(data_dir, name, count):
    texts = load_ppl_corpus(name, data_dir)
    assert len(texts) == count
    assert all(isinstance(t, str) and t.strip() for t in texts)


def test_me_ppl_keeps_file_order(data_dir):
    raw = json.loads((data_dir / PPL_CORPORA["me-ppl-50"]).read_text(encoding="utf-8"))
    assert load_ppl_corpus("me-ppl-50", data_dir) == [r["Text"] for r in raw]


def test_data_dir_from_env(data_dir, monkeypatch):
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    assert len(load_ppl_corpus("me-ppl-50")) == 50


def test_custom_corpus_formats(tmp_path):
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps([{"Corpus": "x", "Text": "One."}, {"Text": "Two."}]))
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps(["One.", "Two."]))
    lines = tmp_path / "lines.txt"
    lines.write_text("One.\n\n   \nTwo.\r\n")
    for path in (objects, strings, lines):
        assert load_ppl_corpus(str(path)) == ["One.", "Two."], path


@pytest.mark.parametrize("records, index", [
    ([{"Text": "ok"}, {"Corpus": "C4"}], 1),               # missing Text
    ([{"Text": "ok"}, {"Text": "ok"}, {"Text": ""}], 2),    # empty Text
    ([{"Text": "ok"}, {"Text": 7}], 1),                     # wrong type
    ([{"Text": "ok"}, 3], 1),                               # not an object
])
def test_malformed_ppl_record_names_file_record_field(tmp_path, records, index):
    path = tmp_path / "broken-corpus.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as err:
        load_ppl_corpus(str(path))
    message = str(err.value)
    assert "broken-corpus.json" in message
    assert f"record {index}" in message
    assert "'Text'" in message


def test_ppl_top_level_must_be_list(tmp_path):
    path = tmp_path / "dict.json"
    path.write_text(json.dumps({"Text": "x"}))
    with pytest.raises(DataError, match="dict.json.*list"):
        load_ppl_corpus(str(path))


def test_ppl_invalid_json_names_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[{\"Text\": ")
    with pytest.raises(DataError, match="bad.json.*not valid JSON"):
        load_ppl_corpus(str(path))


def test_unknown_corpus_lists_registered_names():
    with pytest.raises(DataError) as err:
        load_ppl_corpus("no-such-corpus")
    assert all(name in str(err.value) for name in PPL_CORPORA)


def test_wikitext_lines(data_dir):
    lines = load_text_corpus("wikitext-2-raw", data_dir)
    assert len(lines) == 2891
    assert lines[0] == "= Robert Boulter ="
    assert not any("\r" in line or not line for line in lines)


def test_text_corpus_from_path(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(b"  first line \r\n\r\nsecond\r\n")
    assert load_text_corpus(str(path)) == ["first line", "second"]
    with pytest.raises(DataError, match="wikitext-2-raw"):
        load_text_corpus(str(tmp_path / "missing.txt"))


# --- data directory and data files ------------------------------------------------------------

def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir()
    from_env.mkdir()
    monkeypatch.setenv("EDITGUARD_DATA", str(from_env))
    assert resolve_data_dir(explicit) == explicit.resolve()
    assert resolve_data_dir() == from_env.resolve()


def test_resolve_data_dir_unset_explains_options(monkeypatch):
    monkeypatch.delenv("EDITGUARD_DATA", raising=False)
    with pytest.raises(DataError) as err:
        resolve_data_dir()
    message = str(err.value)
    for hint in ("--editguard-data", "EDITGUARD_DATA", "editguard_data", "me-ppl/", "counterfact/"):
        assert hint in message


def test_resolve_data_dir_missing_dir(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        resolve_data_dir(tmp_path / "nowhere")


def test_missing_file_error_text(tmp_path):
    with pytest.raises(DataError) as err:
        data_file("me-ppl/ME-PPL_50.json", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "me-ppl" / "ME-PPL_50.json") in message
    assert f"data directory: {tmp_path.resolve()}" in message
    assert "--editguard-data" in message and "EDITGUARD_DATA" in message
    assert "--editguard-download" in message


def test_public_files_match_shared_checksums(data_dir):
    for relpath, public in PUBLIC_FILES.items():
        assert public.relpath == relpath
        assert public.url.startswith("https://raw.githubusercontent.com/") and public.url.endswith(Path(relpath).name)
        assert file_sha256(data_dir / relpath) == public.sha256, relpath


def _fake_public_file(tmp_path, monkeypatch, content: bytes, sha256: str) -> str:
    source = tmp_path / "upstream" / "sample.json"
    source.parent.mkdir()
    source.write_bytes(content)
    relpath = "fake/sample.json"
    monkeypatch.setitem(PUBLIC_FILES, relpath, PublicFile(relpath, source.as_uri(), sha256))
    return relpath


def test_download_verifies_and_caches(tmp_path, monkeypatch, cache):
    content = json.dumps(["A sentence."]).encode()
    relpath = _fake_public_file(tmp_path, monkeypatch, content, hashlib.sha256(content).hexdigest())
    monkeypatch.delenv("EDITGUARD_DATA", raising=False)

    with pytest.raises(DataError, match="--editguard-download"):
        data_file(relpath)
    path = data_file(relpath, download=True)
    assert path == cache / "data" / relpath
    assert path.read_bytes() == content
    assert [p.name for p in path.parent.iterdir()] == ["sample.json"]  # no temp file left

    (tmp_path / "upstream" / "sample.json").unlink()  # a second call must use the cache
    assert data_file(relpath, tmp_path / "upstream", download=True) == path


def test_download_prefers_data_dir(tmp_path, monkeypatch, cache):
    relpath = _fake_public_file(tmp_path, monkeypatch, b"x", "0" * 64)
    local = tmp_path / "local"
    (local / "fake").mkdir(parents=True)
    (local / relpath).write_bytes(b"local")
    assert data_file(relpath, local, download=True) == local.resolve() / relpath
    assert not (cache / "data").exists()


def test_download_checksum_mismatch(tmp_path, monkeypatch, cache):
    relpath = _fake_public_file(tmp_path, monkeypatch, b"tampered", "0" * 64)
    with pytest.raises(DataError) as err:
        data_file(relpath, tmp_path, download=True)
    message = str(err.value)
    assert PUBLIC_FILES[relpath].url in message
    assert "0" * 64 in message
    assert hashlib.sha256(b"tampered").hexdigest() in message
    target_dir = cache / "data" / "fake"
    assert not target_dir.exists() or list(target_dir.iterdir()) == []


def test_download_unknown_file_is_refused(tmp_path, cache):
    with pytest.raises(DataError, match="not one of the downloadable files"):
        data_file("nothing/here.json", tmp_path, download=True)


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"editguard" * 100_000)
    assert file_sha256(path) == hashlib.sha256(b"editguard" * 100_000).hexdigest()


def test_library_does_not_import_pytest():
    source = Path(data.__file__).read_text()
    assert "import pytest" not in source


def test_a_damaged_cached_download_is_refused_on_use(tmp_path, monkeypatch, cache):
    content = json.dumps(["A sentence."]).encode()
    relpath = _fake_public_file(tmp_path, monkeypatch, content, hashlib.sha256(content).hexdigest())
    monkeypatch.delenv("EDITGUARD_DATA", raising=False)
    path = data_file(relpath, download=True)
    path.write_bytes(content[:-3])   # truncated on disk after the download
    with pytest.raises(DataError) as err:
        data_file(relpath, download=True)
    message = str(err.value)
    assert f"cached download {path} is damaged" in message
    assert "delete it and rerun with --editguard-download" in message


def test_an_empty_perplexity_corpus_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"perplexity corpus '.*empty.txt' holds no sentences"):
        load_ppl_corpus(str(empty))
