"""Per-model gate calibration: the bound rule, `editguard calibrate` on a tiny model (stored in the
cache and as a repository copy, found again by fingerprint), and the plugin using the calibrated
bounds of the model under test, with explicit options winning and the header saying which."""

import json

import pytest

from editguard import load_model
from editguard.calibration import (
    BOUND_RULE,
    Calibration,
    CalibrationError,
    calibrated_thresholds,
    calibration_note,
    derive_bounds,
    find_calibration,
    read_calibration,
    store,
)
from editguard.cli import main
from editguard.gates import Thresholds

pytestmark = pytest.mark.usefixtures("one_thread")


def _dist(low, high):
    return {"n": 2, "min": low, "median": (low + high) / 2, "max": high}


def test_bounds_follow_the_stated_rule():
    normal = {"update_norm_rel": _dist(0.05, 0.11), "denominator_ratio": _dist(0.52, 1.08),
              "ppl_ratio": _dist(0.99, 1.02), "blast_radius": _dist(0.01, 0.02)}
    bounds = derive_bounds(normal, None)
    assert bounds["update_norm_rel_max"] == pytest.approx(3 * 0.11)
    assert bounds["denominator_ratio_min"] == pytest.approx(0.52 / 3)
    assert bounds["ppl_max_ratio"] == 2.0  # normal perplexity moves by 2%: the default stands
    assert set(bounds) == {"update_norm_rel_max", "denominator_ratio_min", "ppl_max_ratio"}  # blast: recorded only
    # Collapsing edits known within the margin: the bound moves to the midpoint, below them.
    close = derive_bounds(normal, {"update_norm_rel_min": 0.2, "denominator_ratio_max": 0.3})
    assert close["update_norm_rel_max"] == pytest.approx((0.11 + 0.2) / 2)
    assert close["denominator_ratio_min"] == pytest.approx((0.52 + 0.3) / 2)
    far = derive_bounds(normal, {"update_norm_rel_min": 25.0, "denominator_ratio_max": 0.001})
    assert far == bounds
    assert derive_bounds({"ppl_ratio": _dist(1.0, 1.5)}, None)["ppl_max_ratio"] == pytest.approx(2.5)
    assert "3 × the largest normal" in BOUND_RULE


def test_explicit_options_win_and_the_note_says_where_bounds_come_from():
    doc = {"model": "m", "fingerprint": "f", "editor": "rome", "n_cases": 20, "date": "2026-11-29",
           "editguard_version": "0.1", "bounds": {"update_norm_rel_max": 1.2, "denominator_ratio_min": 0.2}}
    calibration = Calibration(doc)
    t = calibrated_thresholds(Thresholds(), calibration, {"update_norm_rel_max": 0.5})
    assert (t.update_norm_rel_max, t.denominator_ratio_min, t.ppl_max) == (0.5, 0.2, 1000.0)
    assert calibration_note("m", calibration) == (
        "gates calibrated on 20 normal cases of m with rome (2026-11-29, editguard 0.1)", "")
    note, warning = calibration_note("tiny-llama", None)
    assert note == "uncalibrated defaults — run `editguard calibrate --model tiny-llama`"
    assert "calibrated on smollm2-135m, not on tiny-llama" in warning
    assert calibration_note("smollm2-135m", None)[1] == ""  # the defaults' own model: no warning


def test_a_damaged_calibration_file_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "m", "bounds": {}}))
    with pytest.raises(CalibrationError, match=r"c.json: missing fields \['fingerprint', 'editor', 'n_cases'"):
        read_calibration(path)
    path.write_text(json.dumps({"model": "m", "fingerprint": "f", "editor": "rome", "n_cases": 1, "date": "d",
                                "editguard_version": "v", "bounds": {"blast_max": 1}}))
    with pytest.raises(CalibrationError, match=r"unknown bounds \['blast_max'\]"):
        read_calibration(path)


def test_calibrate_command_on_a_tiny_model(tmp_path, monkeypatch, data_dir, capsys):
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDITGUARD_SUITES", str(tmp_path / "suites"))
    assert main(["calibrate", "--model", "tiny-llama", "--cases", "2", "--data", str(data_dir)]) == 0
    copy = tmp_path / "suites" / "calibration" / "tiny-llama-rome.json"
    doc = json.loads(copy.read_text())
    mue = load_model("tiny-llama")
    assert (doc["model"], doc["fingerprint"], doc["editor"], doc["n_cases"]) == ("tiny-llama", mue.fingerprint,
                                                                                "rome", 2)
    assert len(doc["cases"]) == 2 and doc["ppl_bos"] == "never" and doc["rule"] == BOUND_RULE
    for key in ("denominator_ratio", "update_norm_rel", "blast_radius", "ppl_ratio"):
        values = [row[key] for row in doc["cases"]]
        assert doc["distributions"][key]["min"] == min(values) and doc["distributions"][key]["max"] == max(values)
    assert doc["bounds"] == derive_bounds(doc["distributions"], doc["collapsing"])
    assert doc["bounds"]["update_norm_rel_max"] == pytest.approx(3 * max(r["update_norm_rel"] for r in doc["cases"]))
    out = capsys.readouterr().out
    assert "gates calibrated on 2 normal cases of tiny-llama with rome" in out
    # Found again: from the cache by fingerprint; C-ROME falls back to ROME's; another model's weights: none.
    assert find_calibration("tiny-llama", mue.fingerprint, "rome").doc == doc
    assert find_calibration("tiny-llama", mue.fingerprint, "c-rome").doc == doc
    assert find_calibration("tiny-llama", "0000000000000000", "rome") is None
    # The repository copy alone (cache cleared) is found too, and only for the same fingerprint.
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "other-cache"))
    assert find_calibration("tiny-llama", mue.fingerprint, "rome").doc == doc
    assert find_calibration("tiny-llama", "0000000000000000", "rome") is None


SUITE = '''
from editguard.cases import EditCase

def edit_cases(settings):
    from editguard.suites import CaseList
    return CaseList([EditCase("t2", "The mother tongue of {} is", "Danielle Darrieux", "English", "French")], "one")

def test_edit(edit_case, edit_guard):
    edit_guard.check(edit_case)
'''


def test_the_plugin_uses_the_models_calibration_and_explicit_options_win(pytester, tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDITGUARD_SUITES", str(tmp_path / "suites"))
    pytester.makepyfile(test_suite=SUITE)
    args = ["--model=tiny-llama", "-p", "no:cacheprovider", "--editguard-json=r.json"]

    def run(*extra):
        result = pytester.runpytest_subprocess(*args, *extra)
        assert result.ret == 0, result.stdout.str()
        return result, json.loads((pytester.path / "r.json").read_text())["run"]

    result, header = run()
    assert header["calibration"] == "uncalibrated defaults — run `editguard calibrate --model tiny-llama`"
    assert header["thresholds"] == Thresholds().to_dict()
    result.stdout.fnmatch_lines(["*CalibrationWarning: editguard: the gate defaults were calibrated on smollm2-135m, "
                                 "not on tiny-llama*"])

    fingerprint = load_model("tiny-llama").fingerprint
    store(Calibration({"model": "tiny-llama", "fingerprint": fingerprint, "editor": "rome", "n_cases": 20,
                       "date": "2026-11-29", "editguard_version": "test",
                       "bounds": {"update_norm_rel_max": 1.6, "denominator_ratio_min": 0.25, "ppl_max_ratio": 2.0}}))
    result, header = run()
    assert header["calibration"] == "gates calibrated on 20 normal cases of tiny-llama with rome (2026-11-29, " \
                                    "editguard test)"
    assert (header["thresholds"]["update_norm_rel_max"], header["thresholds"]["denominator_ratio_min"]) == (1.6, 0.25)
    result.stdout.fnmatch_lines(["*update_norm_rel_max=1.6 (gates calibrated on 20 normal cases of tiny-llama*"])
    assert "CalibrationWarning" not in result.stdout.str()

    _, header = run("--editguard-update-norm-max=0.5")
    assert (header["thresholds"]["update_norm_rel_max"], header["thresholds"]["denominator_ratio_min"]) == (0.5, 0.25)
    assert header["calibration"].endswith("; given explicitly: update_norm_rel_max")
