"""Every error editguard raises on purpose is an EditguardError of one kind, with its exit code."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil

import pytest

import editguard
from editguard import errors

KINDS = (errors.UsageError, errors.DataError, errors.ModelLoadError, errors.EditorError, errors.CacheError,
         errors.ReportError)
ERROR_SUFFIXES = ("Error", "NotFound", "NotReady", "NotTrained", "Stopped")


def every_module():
    names = [editguard.__name__]
    for info in pkgutil.walk_packages(editguard.__path__, prefix="editguard."):
        names.append(info.name)
    return [importlib.import_module(name) for name in names]   # skipping none: an import error fails here


def editguard_exception_classes():
    found = {}
    for module in every_module():
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("editguard"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_module_is_walked():
    names = {m.__name__ for m in every_module()}
    assert {"editguard.errors", "editguard.cli", "editguard.models.loading", "editguard.editors.mend.editor",
            "editguard.report.compare"} <= names


def test_every_error_class_is_an_editguard_error_of_one_kind():
    classes = editguard_exception_classes()
    errorish = {name: cls for name, cls in classes.items() if cls.__name__.endswith(ERROR_SUFFIXES)}
    # the classes issue 26 names, so that a rename cannot empty the check
    assert {"editguard.cases.CaseError", "editguard.data.DataError", "editguard.models.sources.ModelLoadError",
            "editguard.editors.api.EditorNotFound", "editguard.editors.api.EditorNotReady",
            "editguard.editors.mend.editor.MendNotTrained", "editguard.guard.SequenceStopped",
            "editguard.guard.SequenceStepError", "editguard.report.merge.MergeError",
            "editguard.report.compare.CompareError", "editguard.calibration.CalibrationError",
            "editguard.editors.hparams.HparamsFileError", "editguard.editors.covariance.StatsFileError",
            "editguard.models.snapshot.RestoreError"} <= set(errorish)
    outside = [name for name, cls in errorish.items() if not issubclass(cls, errors.EditguardError)]
    assert not outside, f"derive these from a kind in editguard.errors: {outside}"
    kindless = [name for name, cls in errorish.items()
                if cls is not errors.EditguardError and not issubclass(cls, KINDS)]
    assert not kindless, f"derive these from one of {[k.__name__ for k in KINDS]}: {kindless}"


@pytest.mark.parametrize("cls, builtin", [
    ("editguard.cases.CaseError", ValueError), ("editguard.data.DataError", ValueError),
    ("editguard.models.sources.ModelLoadError", RuntimeError), ("editguard.editors.api.EditorNotFound", LookupError),
    ("editguard.report.compare.CompareError", ValueError), ("editguard.guard.SequenceStopped", RuntimeError),
])
def test_old_builtin_bases_are_kept(cls, builtin):
    assert issubclass(editguard_exception_classes()[cls], builtin)


def test_exit_codes():
    assert (errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE) == (0, 1, 2)
    assert all(kind.exit_code == errors.EXIT_USAGE for kind in KINDS)
    assert errors.EditguardError.exit_code == 2


def test_errors_is_a_leaf():
    tree = ast.parse(inspect.getsource(errors))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.startswith("editguard")]
