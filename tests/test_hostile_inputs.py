"""Hostile and broken inputs (issue 27): every file, option and path a user hands editguard gets a
clear error naming where and what was expected, never a hang, a flood, a traceback or a write
into the installed package. One test per item of the issue (docs/notes/hostile.md lists them)."""

from __future__ import annotations

import json
import time

import pytest

from editguard.editors.hparams import HparamsFileError, load_hparams_file
from editguard.errors import SHOWN_MAX

# A "billion laughs" YAML file: 9 levels of 9 aliases, 9^8 strings once expanded.
ALIAS_BOMB = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n" + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


# --- 2. YAML and other configuration files ---------------------------------------------------

def test_yaml_alias_bomb_in_hparams_fails_fast(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 600
    start = time.perf_counter()
    with pytest.raises(HparamsFileError, match=r"bomb\.yaml: line 1: YAML anchors and aliases") as err:
        load_hparams_file(path)
    assert time.perf_counter() - start < 1.0
    assert len(str(err.value)) < 2 * SHOWN_MAX


@pytest.mark.parametrize("name, text", [("dup.yaml", "v_lr: 0.1\nlayer: 2\nv_lr: 0.5\n"),
                                        ("dup.json", '{"v_lr": 0.1, "layer": 2, "v_lr": 0.5}')])
def test_duplicate_hparams_key_is_an_error_naming_it(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(HparamsFileError, match=rf"{name.replace('.', '[.]')}: (line 3: )?key 'v_lr' is given twice"):
        load_hparams_file(tmp_path / name)


def test_hparams_error_never_embeds_an_unbounded_value(tmp_path):
    from editguard.editors.rome import RomeHparams

    path = tmp_path / "long.yaml"
    path.write_text("v_lr: " + "x" * 100_000 + "\n")
    overrides = load_hparams_file(path)
    with pytest.raises(ValueError, match=r"v_lr' must be float, got 'xxx.*\(100002 characters\)") as err:
        RomeHparams.check_overrides(overrides)
    assert len(str(err.value)) < 2 * SHOWN_MAX


def test_non_utf8_hparams_file_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("v_lr: 0.5  # réglé\n".encode("latin-1"))
    with pytest.raises(HparamsFileError, match=r"latin1\.yaml: not UTF-8 text \(byte 14"):
        load_hparams_file(path)


def test_bad_boolean_ini_value_is_a_usage_error_naming_the_key(pytester):
    pytester.makeini("[pytest]\neditguard_quality = maybe\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert "INTERNALERROR" not in out
    assert "ini key editguard_quality: expected a boolean" in out and "maybe" in out


# --- 3. caches --------------------------------------------------------------------------------

def _entry(tmp_path, value):
    from editguard.cache import cached_json

    return cached_json(tmp_path / "entry.json", lambda: value)


@pytest.mark.parametrize("damage", ["entry is a directory", "checksum is a directory", "entry empty and sealed",
                                    "checksum empty", "entry is a symlink"])
def test_cache_entry_that_is_not_a_regular_file_or_empty_is_recomputed(tmp_path, damage):
    import hashlib

    from editguard.cache import CacheWarning, is_sealed

    entry, checksum = tmp_path / "entry.json", tmp_path / "entry.json.sha256"
    assert _entry(tmp_path, {"ppl": 12.5}) == {"ppl": 12.5}
    if damage == "entry is a directory":
        entry.unlink()
        entry.mkdir()
        (entry / "inside").write_text("x")
    elif damage == "checksum is a directory":
        checksum.unlink()
        checksum.mkdir()
    elif damage == "entry empty and sealed":
        entry.write_bytes(b"")
        checksum.write_text(hashlib.sha256(b"").hexdigest())
    elif damage == "checksum empty":
        checksum.write_bytes(b"")
    else:
        (tmp_path / "elsewhere.json").write_bytes(entry.read_bytes())
        entry.unlink()
        entry.symlink_to(tmp_path / "elsewhere.json")
    assert not is_sealed(entry)
    with pytest.warns(CacheWarning, match=r"cache entry .*entry\.json .*; computing it again"):
        assert _entry(tmp_path, {"ppl": 13.0}) == {"ppl": 13.0}   # recomputed, not the damaged value
    assert entry.is_file() and not entry.is_symlink() and checksum.is_file() and is_sealed(entry)
    assert _entry(tmp_path, {"ppl": 99.0}) == {"ppl": 13.0}       # and the new entry is used again


# --- 1. calibration files ---------------------------------------------------------------------

CALIBRATION = {"model": "m", "fingerprint": "f", "editor": "rome", "n_cases": 20, "date": "2026-11-29",
               "editguard_version": "0.1", "bounds": {"update_norm_rel_max": 1.2, "denominator_ratio_min": 0.2,
                                                      "ppl_max_ratio": 2.5}}


def _config(editor: str):
    from editguard.options import OPTIONS_BY_NAME
    from editguard.run.config import RunConfig

    given = {"editor": editor, "model": "m"}
    return RunConfig.from_options(lambda name: given.get(name, OPTIONS_BY_NAME[name].default))


@pytest.fixture
def project_calibration(tmp_path, monkeypatch):
    """A project calibration file of model m (fingerprint f), made with `editor`, in EDITGUARD_SUITES."""
    monkeypatch.setenv("EDITGUARD_SUITES", str(tmp_path / "suites"))
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))

    def write(bounds=None, editor="rome", raw: str | None = None):
        path = tmp_path / "suites" / "calibration" / f"m-{editor}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {**CALIBRATION, "editor": editor, "bounds": {**CALIBRATION["bounds"], **(bounds or {})}}
        path.write_text(raw if raw is not None else json.dumps(doc))
        return path
    return write


@pytest.mark.parametrize("key, raw, expected", [
    ("ppl_max_ratio", "NaN", "expected a finite number > 0, got nan"),
    ("update_norm_rel_max", "-Infinity", "expected a finite number > 0, got -inf"),
    ("denominator_ratio_min", "-0.5", "expected a finite number ≥ 0, got -0.5"),
    ("ppl_max_ratio", "\"2\"", "expected a number, got '2'"),
    ("ppl_max_ratio", "true", "expected a number, got True"),
])
def test_calibration_file_bounds_are_validated_like_the_options(project_calibration, key, raw, expected):
    from editguard.calibration import CalibrationError
    from editguard.run.session import resolve_gates

    text = json.dumps(CALIBRATION).replace(f'"{key}": {CALIBRATION["bounds"][key]}', f'"{key}": {raw}')
    path = project_calibration(raw=text)
    with pytest.raises(CalibrationError) as err:
        resolve_gates(_config("rome"), "m", "f")
    option = {"ppl_max_ratio": "--ppl-max-ratio", "update_norm_rel_max": "--update-norm-max",
              "denominator_ratio_min": "--denominator-ratio-min"}[key]
    assert str(err.value) == f"calibration file {path}: bounds.{key} (the bound of {option}): {expected}"


def test_calibration_file_is_refused_when_made_with_another_editor_than_its_name(project_calibration):
    from editguard.calibration import CalibrationError, find_calibration

    path = project_calibration(raw=json.dumps({**CALIBRATION, "editor": "memit"}))   # named m-rome.json
    with pytest.raises(CalibrationError, match=rf"{path}: made with editor 'memit', but its name says rome"):
        find_calibration("m", "f", "rome")


def test_rome_calibration_serves_the_rome_family_only_and_the_header_says_so(project_calibration):
    from editguard.run.session import resolve_gates

    project_calibration()
    for editor in ("rome", "c-rome", "r-rome"):
        gates = resolve_gates(_config(editor), "m", "f")
        assert gates.thresholds.update_norm_rel_max == 1.2 and gates.thresholds.ppl_max_ratio == 2.5
        assert gates.calibration.startswith("gates calibrated on 20 normal cases of m with rome")
        assert ("serving" in gates.calibration) == (editor != "rome")
        assert gates.warning == ""
    for editor in ("memit", "ft-l", "mypkg.editors:Mine"):
        gates = resolve_gates(_config(editor), "m", "f")
        assert gates.thresholds == _config(editor).thresholds      # the uncalibrated defaults
        assert gates.calibration.endswith(f"(a rome calibration does not serve {editor})")
        assert (f"the calibration of m was made with rome, and a rome calibration serves rome, c-rome, r-rome "
                f"only: {editor} is gated by the uncalibrated defaults") in gates.warning
    project_calibration(editor="memit", bounds={"update_norm_rel_max": 0.9})   # memit's own calibration
    gates = resolve_gates(_config("memit"), "m", "f")
    assert gates.thresholds.update_norm_rel_max == 0.9 and gates.warning == ""
    assert gates.calibration.startswith("gates calibrated on 20 normal cases of m with memit (")
