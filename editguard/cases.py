"""Edit cases: what to edit, and how to check it. Loads CounterFact (EasyEdit format) and the
project's own case files."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import editguard.errors
from editguard.data import DataError, data_file, read_json

__all__ = ["CaseError", "COUNTERFACT_SPLITS", "EditCase", "load_counterfact", "read_cases", "write_cases"]

COUNTERFACT_SPLITS = ("train", "val", "edit")


class CaseError(editguard.errors.DataError, ValueError):
    """A malformed edit case; the message names the case (and file, record) and the field.

    `detail` is the message without its "where" prefix, so loaders can re-prefix it."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


@dataclass(frozen=True)
class EditCase:
    case_id: str
    prompt: str  # with "{}" where the subject goes, exactly one "{}"
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighborhood: tuple[str, ...] = ()  # prompts whose answers must not change
    source: str = ""  # "counterfact", "hardedit", ...

    def __post_init__(self) -> None:
        def fail(field: str, expected: str, value: Any) -> None:
            detail = f"field '{field}': expected {expected}, got {value!r:.80}"
            raise CaseError(f"case {self.case_id!r}: {detail}", detail)

        for name in ("case_id", "subject", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                fail(name, "a non-empty string (not only whitespace)", value)
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            fail("prompt", 'a string with exactly one "{}" where the subject goes', self.prompt)
        if self.target_true is not None and (not isinstance(self.target_true, str) or not self.target_true.strip()):
            fail("target_true", "None or a non-empty string (not only whitespace)", self.target_true)
        if self.target_new == self.target_true:
            fail("target_new", f"a different answer than target_true ({self.target_true!r})", self.target_new)
        for name in ("paraphrases", "neighborhood"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
                fail(name, "a list or tuple of strings", value)
            # Frozen: lists from JSON become tuples so cases stay hashable.
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.source, str):
            fail("source", "a string", self.source)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)

    @property
    def subject_first(self) -> bool:
        return self.prompt.startswith("{}")


def _where(path: Path, index: int, case_id: Any = None) -> str:
    where = f"{path}: record {index}"
    return where if case_id is None else f"{where} (case_id {case_id})"


# EasyEdit's counterfact-*.json record: field -> expected type.
_COUNTERFACT_FIELDS = {
    "case_id": int, "prompt": str, "target_new": str, "subject": str, "ground_truth": str,
    "rephrase_prompt": str, "locality_prompt": str, "locality_ground_truth": str,
}


def _counterfact_case(path: Path, index: int, record: Any) -> EditCase:
    if not isinstance(record, dict):
        raise CaseError(f"{_where(path, index)}: expected a JSON object, got {type(record).__name__}")
    case_id = record.get("case_id")
    where = _where(path, index, case_id if isinstance(case_id, int) else None)
    for field, kind in _COUNTERFACT_FIELDS.items():
        if field not in record:
            raise CaseError(f"{where}: field '{field}' is missing (expected {kind.__name__})")
        value = record[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CaseError(f"{where}: field '{field}': expected {kind.__name__}, "
                            f"got {type(value).__name__} {value!r:.60}")
    prompt, subject = record["prompt"], record["subject"]
    at = prompt.find(subject) if subject else -1
    if at < 0:
        raise CaseError(f"{where}: field 'prompt': subject {subject!r} (field 'subject') "
                        f"does not occur in prompt {prompt!r}")
    try:
        return EditCase(
            case_id=str(case_id),
            prompt=prompt[:at] + "{}" + prompt[at + len(subject):],
            subject=subject,
            target_new=record["target_new"],
            target_true=record["ground_truth"],
            paraphrases=(record["rephrase_prompt"],),
            neighborhood=(record["locality_prompt"],),
            source="counterfact",
        )
    except CaseError as e:
        raise CaseError(f"{where}: {e.detail}") from None


@functools.lru_cache(maxsize=16)
def _load_counterfact_file(path: str, mtime_ns: int, size: int) -> tuple[EditCase, ...]:
    # Keyed on mtime and size so an edited file is parsed again.
    file = Path(path)
    try:
        data = read_json(file)
    except DataError as e:
        raise CaseError(str(e)) from None
    if not isinstance(data, list):
        raise CaseError(f"{file}: expected a JSON list of CounterFact records, got {type(data).__name__}")
    if not data:
        raise CaseError(f"{file}: holds no CounterFact records (an empty list); expected the split's records, "
                        f"e.g. from the ROME release (editguard --download fetches them)")
    return tuple(_counterfact_case(file, i, record) for i, record in enumerate(data))


def load_counterfact(data_dir: str | os.PathLike | None = None, splits: Iterable[str] = COUNTERFACT_SPLITS,
                     download: bool = False) -> list[EditCase]:
    """CounterFact cases from counterfact/counterfact-{split}.json, sorted by case id."""
    if isinstance(splits, str):
        splits = (splits,)
    cases: list[EditCase] = []
    seen: dict[str, Path] = {}
    for split in splits:
        if split not in COUNTERFACT_SPLITS:
            raise ValueError(f"unknown CounterFact split '{split}'; expected some of {', '.join(COUNTERFACT_SPLITS)}")
        path = data_file(f"counterfact/counterfact-{split}.json", data_dir, download=download).resolve()
        stat = path.stat()
        for case in _load_counterfact_file(str(path), stat.st_mtime_ns, stat.st_size):
            if case.case_id in seen:
                raise CaseError(f"{path}: case_id {case.case_id} occurs again (also in {seen[case.case_id]})")
            seen[case.case_id] = path
            cases.append(case)
    return sorted(cases, key=lambda c: int(c.case_id))


# EasyEdit's ZsRE record (zsre_mend_eval.json, zsre_mend_train.json): field -> expected type. `cond`
# and `pred` (MEND's conditioning string, the model's prediction) are not read.
_ZSRE_FIELDS = {"src": str, "subject": str, "alt": str, "answers": list, "rephrase": str, "loc": str, "loc_ans": str}


def _zsre_case(path: Path, index: int, record: Any) -> EditCase:
    """An EasyEdit ZsRE record as a case: src with the subject as "{}", alt the new answer, the first
    of `answers` that is not alt the true one (None when alt is every answer, as in 17 of the first
    1,000 training records), rephrase the paraphrase, loc (a Natural Questions prompt) the
    neighbourhood. Its id: `case_id` where the record has one, else the record's index."""
    if not isinstance(record, dict):
        raise CaseError(f"{_where(path, index)}: expected a JSON object, got {type(record).__name__}")
    case_id = record.get("case_id", index)
    where = _where(path, index, case_id if "case_id" in record else None)
    for field, kind in _ZSRE_FIELDS.items():
        if field not in record:
            raise CaseError(f"{where}: field '{field}' is missing (EasyEdit's ZsRE record; expected {kind.__name__})")
        value = record[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CaseError(f"{where}: field '{field}': expected {kind.__name__}, "
                            f"got {type(value).__name__} {value!r:.60}")
    for field in ("src", "subject", "alt"):
        if not record[field]:
            raise CaseError(f"{where}: field '{field}': expected a non-empty string, got ''")
    answers = record["answers"]
    if not answers or not all(isinstance(a, str) and a for a in answers):
        raise CaseError(f"{where}: field 'answers': expected a non-empty list of strings, got {answers!r:.60}")
    prompt, subject = record["src"], record["subject"]
    at = prompt.find(subject) if subject else -1
    if at < 0:
        raise CaseError(f"{where}: field 'src': subject {subject!r} (field 'subject') does not occur in "
                        f"src {prompt!r}")
    try:
        return EditCase(case_id=str(case_id), prompt=prompt[:at] + "{}" + prompt[at + len(subject):],
                        subject=subject, target_new=record["alt"],
                        target_true=next((a for a in answers if a != record["alt"]), None),
                        paraphrases=(record["rephrase"],), neighborhood=(record["loc"],), source="zsre")
    except CaseError as e:
        raise CaseError(f"{where}: {e.detail}") from None


def _case_format(records: list) -> str:
    """The format of a list of case records, by the first record's fields: EasyEdit's CounterFact,
    EasyEdit's ZsRE, or editguard's own."""
    first = records[0] if records and isinstance(records[0], dict) else {}
    if "src" in first and "alt" in first:
        return "zsre"
    if "ground_truth" in first and "rephrase_prompt" in first:
        return "counterfact"
    return "editguard"


_CASE_FIELDS = tuple(f.name for f in fields(EditCase))
_REQUIRED = ("case_id", "prompt", "subject", "target_new")


def _case_from_dict(path: Path, index: int, record: Any) -> EditCase:
    if not isinstance(record, dict):
        raise CaseError(f"{_where(path, index)}: expected a JSON object, got {type(record).__name__}")
    case_id = record.get("case_id")
    if isinstance(case_id, int) and not isinstance(case_id, bool):
        case_id = str(case_id)  # CounterFact-style numeric ids
    where = _where(path, index, case_id if isinstance(case_id, str) else None)
    for field in _REQUIRED:
        if field not in record:
            raise CaseError(f"{where}: field '{field}' is missing (expected a string)")
    kwargs = {name: record[name] for name in _CASE_FIELDS if name in record}
    kwargs["case_id"] = case_id
    if kwargs.get("source") is None:
        kwargs.pop("source", None)
    for name in ("paraphrases", "neighborhood"):
        if name in kwargs:
            if not isinstance(kwargs[name], list):
                raise CaseError(f"{where}: field '{name}': expected a list of strings, "
                                f"got {type(kwargs[name]).__name__}")
            kwargs[name] = tuple(kwargs[name])
    try:
        return EditCase(**kwargs)
    except CaseError as e:
        raise CaseError(f"{where}: {e.detail}") from None


def read_cases(path: str | os.PathLike) -> list[EditCase]:
    """Cases from a case file: the project's ({"cases": [...], ...} or a top-level list), or a list
    of EasyEdit's CounterFact records (case_id, prompt, subject, target_new, ground_truth,
    rephrase_prompt, locality_prompt, locality_ground_truth) or ZsRE records (src, subject, alt,
    answers, rephrase, loc, loc_ans), told apart by the first record's fields."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"case file {path} not found")
    try:
        data = read_json(path)
    except DataError as e:
        raise CaseError(str(e)) from None
    records = data.get("cases") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise CaseError(f'{path}: expected a JSON object {{"cases": [...]}} or a JSON list of case objects, '
                        f"got {type(data).__name__}" + (" without a 'cases' list" if isinstance(data, dict) else ""))
    read = {"zsre": _zsre_case, "counterfact": _counterfact_case, "editguard": _case_from_dict}[_case_format(records)]
    return [read(path, i, record) for i, record in enumerate(records)]


def write_cases(path: str | os.PathLike, cases: Iterable[EditCase], extra: dict | None = None) -> Path:
    """Write cases (plus top-level keys from `extra`) as {"cases": [...], ...}; atomic."""
    extra = dict(extra or {})
    if "cases" in extra:
        raise ValueError("write_cases: 'extra' must not contain the key 'cases'")
    records = []
    for case in cases:
        record = {name: getattr(case, name) for name in _CASE_FIELDS}
        record["paraphrases"] = list(case.paraphrases)
        record["neighborhood"] = list(case.neighborhood)
        records.append(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: readers never see a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"cases": records, **extra}, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
