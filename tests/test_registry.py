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
