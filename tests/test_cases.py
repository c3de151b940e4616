from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from editguard import cases as cases_module
from editguard.cases import CaseError, EditCase, load_counterfact, read_cases, write_cases


@pytest.fixture(scope="module")
def counterfact(data_dir) -> list[EditCase]:
    return load_counterfact(data_dir)


def _record(case_id=0, **changes) -> dict:
    record = {
        "case_id": case_id,
        "prompt": "The mother tongue of Danielle Darrieux is",
        "target_new": "English",
        "subject": "Danielle Darrieux",
        "ground_truth": "French",
        "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
        "locality_prompt": "Michel Rocard is a native speaker of",
        "locality_ground_truth": "French",
    }
    record.update(changes)
    return record


def _write_counterfact(root: Path, records: list, split: str = "train") -> Path:
    path = root / "counterfact" / f"counterfact-{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=4))
    return path


# --- CounterFact --------------------------------------------------------------------------------

def test_counterfact_all_cases(counterfact):
    assert len(counterfact) == 21919
    assert [c.case_id for c in counterfact] == [str(i) for i in range(21919)]
    assert sum(c.subject_first for c in counterfact) == 17575
    assert all(c.source == "counterfact" for c in counterfact)


def test_counterfact_splits(data_dir):
    sizes = {split: len(load_counterfact(data_dir, splits=(split,))) for split in ("train", "val", "edit")}
    assert sizes == {"train": 10000, "val": 1919, "edit": 10000}
    with pytest.raises(ValueError, match="unknown CounterFact split"):
        load_counterfact(data_dir, splits=("test",))


def test_counterfact_record_round_trip(data_dir, counterfact):
    raw = json.loads((data_dir / "counterfact" / "counterfact-train.json").read_text(encoding="utf-8"))[0]
    case = next(c for c in counterfact if c.case_id == str(raw["case_id"]))
    assert case.text == raw["prompt"]
    assert case.prompt.count("{}") == 1
    assert case.subject == raw["subject"]
    assert case.target_new == raw["target_new"]
    assert case.target_true == raw["ground_truth"]
    assert case.paraphrases == (raw["rephrase_prompt"],)
    assert case.neighborhood == (raw["locality_prompt"],)


def test_counterfact_first_case(counterfact):
    first = counterfact[0]
    assert first.prompt == "The mother tongue of {} is"
    assert first.subject == "Danielle Darrieux"
    assert (first.target_new, first.target_true) == ("English", "French")
    assert not first.subject_first


def test_counterfact_cached(data_dir, counterfact):
    again = load_counterfact(data_dir)
    assert again == counterfact
    assert again is not counterfact  # callers get their own list
    assert again[0] is counterfact[0]


def test_counterfact_small_layout(tmp_path):
    _write_counterfact(tmp_path, [_record(5), _record(1, prompt="Danielle Darrieux speaks")], "train")
    _write_counterfact(tmp_path, [_record(3)], "val")
    loaded = load_counterfact(tmp_path, splits=("train", "val"))
    assert [c.case_id for c in loaded] == ["1", "3", "5"]
    assert loaded[0].prompt == "{} speaks" and loaded[0].subject_first


def test_counterfact_reparsed_after_change(tmp_path):
    path = _write_counterfact(tmp_path, [_record(1)])
    assert len(load_counterfact(tmp_path, splits=("train",))) == 1
    path.write_text(json.dumps([_record(1), _record(2)]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert len(load_counterfact(tmp_path, splits=("train",))) == 2


@pytest.mark.parametrize("record, field, expected", [
    ({k: v for k, v in _record(7).items() if k != "ground_truth"}, "ground_truth", "missing"),
    (_record(7, subject="Someone Else"), "prompt", "does not occur"),
    (_record(7, target_new=["English"]), "target_new", "expected str"),
    (_record(7, rephrase_prompt=None), "rephrase_prompt", "expected str"),
    (_record(7, target_new="French"), "target_new", "different"),
])
def test_counterfact_malformed_record(tmp_path, record, field, expected):
    _write_counterfact(tmp_path, [_record(6), record])
    with pytest.raises(CaseError) as err:
        load_counterfact(tmp_path, splits=("train",))
    message = str(err.value)
    assert "counterfact-train.json" in message
    assert "record 1" in message
    assert "7" in message  # case_id
    assert f"'{field}'" in message
    assert expected in message


def test_counterfact_wrong_case_id_type(tmp_path):
    _write_counterfact(tmp_path, [_record("12")])
    with pytest.raises(CaseError, match=r"counterfact-train.json: record 0: field 'case_id': expected int"):
        load_counterfact(tmp_path, splits=("train",))


def test_counterfact_not_a_list(tmp_path):
    _write_counterfact(tmp_path, {"cases": []})
    with pytest.raises(CaseError, match="counterfact-train.json.*list"):
        load_counterfact(tmp_path, splits=("train",))


def test_counterfact_duplicate_ids(tmp_path):
    _write_counterfact(tmp_path, [_record(1)], "train")
    _write_counterfact(tmp_path, [_record(1)], "val")
    with pytest.raises(CaseError, match="case_id 1 occurs again"):
        load_counterfact(tmp_path, splits=("train", "val"))


# --- EditCase -------------------------------------------------------------------------------------

def test_edit_case_properties():
    case = EditCase("c1", "{} is the capital of", "Paris", "Rome", "France", paraphrases=["p"])
    assert case.text == "Paris is the capital of"
    assert case.subject_first
    assert case.paraphrases == ("p",)  # lists become tuples
    hash(case)
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.subject = "Rome"  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, field", [
    ({"case_id": ""}, "case_id"),
    ({"subject": ""}, "subject"),
    ({"target_new": ""}, "target_new"),
    ({"prompt": "no placeholder"}, "prompt"),
    ({"prompt": "{} and {}"}, "prompt"),
    ({"target_new": "France"}, "target_new"),
    ({"paraphrases": "not a tuple"}, "paraphrases"),
    ({"neighborhood": (1,)}, "neighborhood"),
])
def test_edit_case_validation(kwargs, field):
    base = dict(case_id="c9", prompt="{} is the capital of", subject="Paris", target_new="Rome", target_true="France")
    with pytest.raises(CaseError) as err:
        EditCase(**{**base, **kwargs})
    assert f"'{field}'" in str(err.value)
    if kwargs.get("case_id") != "":
        assert "c9" in str(err.value)


def test_edit_case_without_target_true():
    assert EditCase("c", "The {} is", "sky", "green").target_true is None


# --- the project's case files -------------------------------------------------------------------

def test_write_read_round_trip(tmp_path, counterfact):
    cases = counterfact[:3] + [EditCase("own-1", "{} was born in", "Ünïcödé Person", "Oslo", None, (), ("x",),
                                        "hardedit")]
    path = write_cases(tmp_path / "sub" / "cases.json", cases, extra={"model": "smollm2-135m"})
    assert read_cases(path) == cases
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["model"] == "smollm2-135m"
    assert [p.name for p in path.parent.iterdir()] == ["cases.json"]


def test_read_cases_list_and_extra_fields(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"case_id": 3, "prompt": "{} plays", "subject": "Toko", "target_new": "piano",
                                 "score": 0.5, "paraphrases": ["Toko is good at"]}]))
    [case] = read_cases(path)
    assert case == EditCase("3", "{} plays", "Toko", "piano", paraphrases=("Toko is good at",))


@pytest.mark.parametrize("record, field", [
    ({"case_id": "a", "prompt": "{} x", "target_new": "y"}, "subject"),
    ({"case_id": "a", "prompt": "x", "subject": "s", "target_new": "y"}, "prompt"),
    ({"case_id": "a", "prompt": "{} x", "subject": "s", "target_new": "y", "paraphrases": "p"}, "paraphrases"),
])
def test_read_cases_errors(tmp_path, record, field):
    path = tmp_path / "mine.json"
    good = {"case_id": "ok", "prompt": "{} x", "subject": "s", "target_new": "y"}
    path.write_text(json.dumps({"cases": [good, record]}))
    with pytest.raises(CaseError) as err:
        read_cases(path)
    message = str(err.value)
    assert "mine.json: record 1 (case_id a)" in message
    assert f"'{field}'" in message


def test_read_cases_bad_top_level(tmp_path):
    path = tmp_path / "top.json"
    path.write_text(json.dumps({"items": []}))
    with pytest.raises(CaseError, match="top.json"):
        read_cases(path)
    with pytest.raises(CaseError, match="not found"):
        read_cases(tmp_path / "absent.json")


def test_write_cases_rejects_cases_key(tmp_path):
    with pytest.raises(ValueError):
        write_cases(tmp_path / "x.json", [], extra={"cases": []})


@pytest.mark.parametrize("module", ["data", "cases"])
def test_library_modules_do_not_import_pytest(module):
    source = (Path(cases_module.__file__).parent / f"{module}.py").read_text()
    assert "import pytest" not in source
