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


# --- 4. output paths --------------------------------------------------------------------------

def test_filter_refuses_the_checkouts_shipped_case_file(capsys, tmp_path, monkeypatch):
    from pathlib import Path

    from editguard.cli import main

    monkeypatch.chdir(tmp_path)
    shipped = Path(__file__).resolve().parents[1] / "suites" / "hardedit" / "cases.json"
    before = shipped.read_bytes()
    assert main(["filter", str(shipped), "--model", "tiny-llama"]) == 2
    err = capsys.readouterr().err
    assert f"{shipped} is inside editguard's own package" in err and "does not write there" in err
    assert "copy it into your project first" in err and "Traceback" not in err
    assert shipped.read_bytes() == before


def test_an_output_inside_editguards_package_is_refused(tmp_path):
    from pathlib import Path

    import editguard
    from editguard.errors import UsageError
    from editguard.run.recorder import prove_writable

    inside = Path(editguard.__file__).resolve().parent / "report.json"
    with pytest.raises(UsageError, match=r"--editguard-json .*report\.json: .* is inside editguard's own package"):
        prove_writable("--editguard-json", inside)
    assert not inside.exists()
    prove_writable("--editguard-json", tmp_path / "report.json")   # a project path is fine


@pytest.mark.parametrize("model", ["../../../x", "/abs/olute", "org/name", "..", ".hidden/../../y"])
def test_default_output_paths_from_user_strings_stay_in_the_output_folder(tmp_path, monkeypatch, model):
    from editguard.cli.common import DEFAULT_OUT, default_output

    monkeypatch.chdir(tmp_path)
    for path in (default_output("screen", model), default_output("mine", model, "pkg.mod:Editor", suffix=".jsonl")):
        assert path.parent == tmp_path.__class__(DEFAULT_OUT) and len(path.parts) == 2
        assert (tmp_path / path).resolve().parent == (tmp_path / DEFAULT_OUT).resolve()
        assert not path.name.startswith(".")


# --- 5. raw tracebacks that became clear errors -----------------------------------------------

@pytest.mark.usefixtures("private_cache", "one_thread")
@pytest.mark.parametrize("command", ["filter", "mine"])
def test_mine_and_filter_take_a_user_editor_without_hparams(command, tmp_path, monkeypatch, data_dir, capsys,
                                                            toy_importable):
    from editguard.cases import write_cases
    from editguard.cli import main
    from tests.tiny_edits import SCREEN_CASES
    from tests.toy_editors import NoOpEditor

    assert not hasattr(NoOpEditor, "hparams")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDITGUARD_SUITES", str(tmp_path / "suites"))
    write_cases(tmp_path / "cases.json", SCREEN_CASES[:2])
    extra = ["cases.json"] if command == "filter" else ["--cases", "cases.json", "--top", "1", "--control", "0"]
    rc = main([command, *extra, "--model", "tiny-llama", "--editor", "tests.toy_editors:NoOpEditor",
               "--data", str(data_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Traceback" not in err
    log = next((tmp_path / "out").glob(f"{command}-tiny-llama-*.jsonl"))
    assert json.loads(log.read_text().splitlines()[0])["header"]["hparams"] == {}


def test_an_empty_counterfact_file_is_a_clear_error(tmp_path):
    from editguard.cases import CaseError, load_counterfact

    (tmp_path / "counterfact").mkdir()
    (tmp_path / "counterfact" / "counterfact-edit.json").write_text("[]")
    with pytest.raises(CaseError, match=r"counterfact-edit\.json: holds no CounterFact records \(an empty list\)"):
        load_counterfact(tmp_path, splits="edit")


def test_a_one_token_perplexity_sentence_names_the_corpus_and_sentence(tiny_llama):
    from editguard.guard import measure_baseline
    from editguard.metrics.perplexity import PerplexityInputError

    one = next(w for w in ("a", "the", "x") if len(tiny_llama.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1)
    with pytest.raises(PerplexityInputError, match=rf"perplexity corpus mine\.txt: sentence 1 \('{one}'\) is 1 token "
                                                   rf"on tiny-llama; a perplexity needs at least two"):
        measure_baseline(tiny_llama, ["The capital of France is Paris.", one], "mine.txt")


def test_a_paraphrase_longer_than_the_model_context_is_refused_in_quality_mode(tiny_llama):
    from editguard.cases import CaseError, EditCase
    from editguard.tokens import check_case_fits, model_context_length

    long = "Paris is, as everyone knows, " * model_context_length(tiny_llama) + "the capital of"
    case = EditCase("p1", "{} is the capital of", "Paris", "Rome", "France", paraphrases=("Paris is in", long))
    check_case_fits(tiny_llama, case)   # not scored outside quality mode: nothing to refuse
    with pytest.raises(CaseError, match=r"case p1: field 'paraphrases' \[1\] \+ its target is \d+ tokens on "
                                        r"tiny-llama; a scored prompt may have at most \d+"):
        check_case_fits(tiny_llama, case, scored_prompts=True)


@pytest.mark.usefixtures("private_cache")
def test_a_singular_covariance_file_is_a_clear_error(tmp_path, tiny_llama, data_dir):
    import numpy as np

    from editguard.editors.covariance import StatsFileError, inverse_layer_second_moment, key_width

    layer = tiny_llama.edit_layer
    module = tiny_llama.family.rewrite.format(layer)
    path = tmp_path / "tiny-llama" / "wikipedia_stats" / f"{module}_float32_mom2_100.npz"
    path.parent.mkdir(parents=True)
    width = key_width(tiny_llama, layer)
    np.savez(path, **{"mom2.mom2": np.ones((width, width), dtype=np.float32), "mom2.count": 100})  # rank 1
    with pytest.raises(StatsFileError, match=rf"statistics file {path}: the second moment is not positive definite"):
        inverse_layer_second_moment(tiny_llama, layer, "unused", 1, data_dir, stats_dir=tmp_path)


MALFORMED_REPORTS = {
    "not-json": ("{", "not valid JSON (line 1, column 2)"),
    "a-list": ("[]", "not an editguard JSON report (expected keys 'run' and 'cases')"),
    "schema": (json.dumps({"schema": 99, "run": {}, "cases": []}), "report schema 99; this editguard reads"),
    "no-editor": (json.dumps({"run": {"model": "m", "thresholds": {"ppl_max": 1000}}, "cases": []}),
                  "run.editor is None; expected a string"),
    "case-fields": (json.dumps({"run": {"model": "m", "editor": "rome", "thresholds": {"ppl_max": 1000}},
                                "cases": [{"case_id": "c1", "passed": True}]}),
                    "case 0 (case 'c1') is not a case record editguard wrote: it has no 'subject', 'prompt'"),
    "not-utf8": (b"\xff\xfe{", "cannot read it"),
}


@pytest.mark.parametrize("kind", MALFORMED_REPORTS)
@pytest.mark.parametrize("command", ["report", "merge", "compare", "compare --equal", "plot"])
def test_malformed_reports_are_clear_errors_in_every_report_command(tmp_path, monkeypatch, capsys, command, kind):
    from editguard.cli import main

    monkeypatch.chdir(tmp_path)
    text, message = MALFORMED_REPORTS[kind]
    (tmp_path / "r.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    args = {"report": ["r.json"], "merge": ["r.json", "r.json", "-o", "m.json"], "compare": ["r.json", "r.json"],
            "compare --equal": ["--equal", "r.json", "r.json"], "plot": ["r.json", "--plots", "p"]}[command]
    assert main([command.split()[0], *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"editguard {command.split()[0]}: r.json: ") and message in err, err
    assert "Traceback" not in err and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("argv", [["compare", "a.json", "b.json", "--markdown", "/dev/full"],
                                  ["merge", "a.json", "-o", "/dev/full"],
                                  ["plot", "a.json", "--plots", "/dev/full"]])
def test_dev_full_as_an_output_is_a_clear_error_and_left_alone(tmp_path, monkeypatch, capsys, argv):
    import os
    import stat

    from editguard.cache import write_atomic
    from editguard.cli import main
    from editguard.errors import ReportError

    device = os.stat("/dev/full")
    assert stat.S_ISCHR(device.st_mode)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "/dev/full" in err and "Traceback" not in err and ("not a regular file" in err or "not a directory" in err)
    with pytest.raises(ReportError, match=r"cannot write /dev/full: it is not a regular file"):
        write_atomic("/dev/full", b"{}")
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (device.st_ino, device.st_rdev)


def test_a_full_disk_is_a_clear_error_naming_the_output(tmp_path, monkeypatch):
    import errno

    from editguard.cache import write_atomic
    from editguard.errors import ReportError

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    with pytest.raises(ReportError, match=r"cannot write .*report\.json: the disk is full"):
        write_atomic(tmp_path / "report.json", b"{}")
    assert not list(tmp_path.iterdir())   # no temporary file left behind


@pytest.mark.parametrize("field, value", [("subject", "   "), ("target_new", "\t"), ("target_true", " \n ")])
def test_whitespace_only_subject_or_target_is_refused_naming_case_and_field(tmp_path, field, value):
    from editguard.cases import CaseError, read_cases

    record = {"case_id": "w1", "prompt": "{} is the capital of", "subject": "Paris", "target_new": "Rome",
              "target_true": "France", field: value}
    (tmp_path / "cases.json").write_text(json.dumps({"cases": [record]}))
    with pytest.raises(CaseError, match=rf"cases\.json: case 0 \(case_id 'w1'\)|cases\.json.*w1.*field '{field}': "
                                        rf"expected .*non-empty string \(not only whitespace\)") as err:
        read_cases(tmp_path / "cases.json")
    assert f"field '{field}'" in str(err.value) and "w1" in str(err.value)


def test_a_mined_lists_non_finite_measurements_never_reach_the_calibrated_bounds():
    from editguard.calibration import _collapsing_extremes

    mined = {"run": {"editor": "rome"}, "measurements": [
        {"ppl": 5000.0, "update_norm_rel": float("nan"), "denominator_ratio": "0.5"}, "junk",
        {"ppl": "high", "update_norm_rel": 0.01}, {"ppl": 4000.0, "update_norm_rel": 0.9, "denominator_ratio": True},
        {"ppl": 12.0, "update_norm_rel": 0.1}]}
    assert _collapsing_extremes(mined, "rome", 1000.0) == {"n": 2, "update_norm_rel_min": 0.9}
