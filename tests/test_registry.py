"""The editor registry: the built-in editors under their names, a user's editor by module path."""

import pytest

from editguard import get_editor
from editguard.editors.registry import available_editors


def test_builtin_editors_are_registered_under_their_names():
    for name in ["rome", "c-rome", "r-rome", "ft", "memit", "alphaedit"]:
        assert name in available_editors()
        assert get_editor(name).name == name


def test_user_editor_resolves_by_module_path(toy_importable):
    editor = get_editor("tests.toy_editors:ScaleRowEditor")
    assert editor.name == "scale-row"
    assert get_editor("tests.toy_editors:ScaleRowEditor", {"factor": 3}).hp.factor == 3.0
    with pytest.raises(ValueError, match=r"unknown scale-row hyperparameters \['scale'\]; valid: \['factor', 'row'\]"):
        get_editor("tests.toy_editors:ScaleRowEditor", {"scale": 3})


def test_safe_name_keeps_a_file_inside_its_folder(tmp_path):
    from editguard.cache import safe_name

    assert safe_name("../../x") == "____x" and safe_name("org/model") == "org_model"
    assert (tmp_path / safe_name("../../x.png")).resolve().parent == tmp_path.resolve()


def test_checked_report_refuses_what_is_not_an_edit_report():
    import pytest

    from editguard.editors.api import EditReport, checked_report

    class Editor:
        name = "mine"

    with pytest.raises(ValueError, match=r"editor 'mine': apply\(\) returned NoneType, expected an editguard"):
        checked_report(Editor(), None)
    with pytest.raises(ValueError, match=r"editor 'mine': EditReport.diagnostics must be JSON-able"):
        checked_report(Editor(), EditReport(touched=["w"], diagnostics={"x": object()}))
    report = EditReport(touched=["w"], diagnostics={"x": 1.0})
    assert checked_report(Editor(), report) is report


def test_an_editor_spec_that_is_no_class_or_factory_is_refused(tmp_path, monkeypatch):
    from editguard.editors.api import EditorNotFound

    (tmp_path / "odd_editors.py").write_text(
        "NOT_AN_EDITOR = 3\n\nclass NeedsArgs:\n    name = 'x'\n    def __init__(self, model_path):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EditorNotFound, match=r"odd_editors:NOT_AN_EDITOR names 3 \(int\), not an editor class"):
        get_editor("odd_editors:NOT_AN_EDITOR")
    with pytest.raises(EditorNotFound, match=r"odd_editors:NeedsArgs: cannot build it with no arguments.*model_path"):
        get_editor("odd_editors:NeedsArgs")
