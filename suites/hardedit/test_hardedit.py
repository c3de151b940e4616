"""HardEdit-style cases written by this project (cases.json, made by make_cases.py): a
one-word, widely known subject starts the prompt. As the paper kept only cases whose ROME edit
collapsed GPT-2-XL, the suite runs the cases that passed `editguard filter` (ROME) for the
model under test, or all cases when the file holds no filter for it."""

from pathlib import Path

from editguard.mining import filtered_cases
from editguard.suites import CaseList

CASE_FILE = Path(__file__).with_name("cases.json")


def edit_cases(settings):
    cases, flt = filtered_cases(CASE_FILE, settings.model, editor="rome")
    if flt is None:
        return CaseList(cases, f"all {len(cases)} HardEdit-style cases (no ROME filter recorded for {settings.model})")
    pending = len(flt.get("pending", ()))
    collapsed = len(cases) - pending
    where = f"filter in {CASE_FILE.parent.name}/{CASE_FILE.name}"
    if pending:
        return CaseList(cases, f"{collapsed} HardEdit-style cases whose single ROME edit collapsed {settings.model} "
                               f"+ {pending} not yet filtered ({where} is incomplete)")
    return CaseList(cases, f"{collapsed} HardEdit-style cases whose single ROME edit collapsed {settings.model} "
                           f"({where})")


def test_edit_keeps_model_intact(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
