"""HardEdit-style cases written by this project (cases.json, made by make_cases.py): a
one-word, widely known subject starts the prompt. As the paper kept only cases whose ROME edit
collapsed GPT-2-XL, the suite runs the cases that passed `editguard filter` (ROME) for the
model under test, or all cases when the file holds no filter for it.

The project's copy (editguard-suites/hardedit/cases.json, or under $EDITGUARD_SUITES) is read
before the shipped file: `editguard filter` records its outcome there, as it never writes into
an installed package."""

from pathlib import Path

from editguard.mining import filtered_cases
from editguard.suite_files import find_suite_file, suite_file_label
from editguard.suites import CaseList

SHIPPED_CASE_FILE = Path(__file__).with_name("cases.json")


def edit_cases(settings):
    case_file = find_suite_file("hardedit", "cases.json") or SHIPPED_CASE_FILE
    cases, flt = filtered_cases(case_file, settings.model, editor="rome")
    if flt is None:
        return CaseList(cases, f"all {len(cases)} HardEdit-style cases (no ROME filter recorded for {settings.model})")
    pending = len(flt.get("pending", ()))
    collapsed = len(cases) - pending
    where = f"filter in {suite_file_label(case_file)}"
    if pending:
        return CaseList(cases, f"{collapsed} HardEdit-style cases whose single ROME edit collapsed {settings.model} "
                               f"+ {pending} not yet filtered ({where} is incomplete)")
    description = f"{collapsed} HardEdit-style cases whose single ROME edit collapsed {settings.model} ({where})"
    empty = f"no HardEdit-style case collapses {settings.model} with one ROME edit ({where}): nothing to test"
    return CaseList(cases, description, empty_reason=empty if not cases else "")


def test_edit_keeps_model_intact(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
