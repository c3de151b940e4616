"""The Editor protocol, what an edit reports, and the editor registry.

A user's editing algorithm is one class with `name`, `touched_parameters` and `apply`:

    class ScaleRow:
        name = "scale-row"
        def touched_parameters(self, model, cases):
            return [model.family.rewrite_weight(model.edit_layer)]
        def apply(self, model, cases):
            w = model.parameter(self.touched_parameters(model, cases)[0])
            with torch.no_grad():
                w[0] *= 100
            return EditReport(touched=self.touched_parameters(model, cases))

and is selected with `--editor=package.module:ScaleRow` or registered under the entry point
group `editguard.editors`.

Built-in editors keep their hyperparameters in a frozen dataclass derived from `Hparams`
(per-family defaults, `for_family(family, overrides)`, unknown or mistyped keys rejected with
the list of valid ones); `load_hparams_file` reads an overrides file (.json, .yaml, .yml).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import importlib.metadata
import json
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import torch

from editguard.cases import EditCase
from editguard.models.loading import ModelUnderEdit


@dataclass
class EditReport:
    """What an editor did: the parameters it changed and its own diagnostics.

    `diagnostics` holds JSON-able numbers (ROME: numerator and denominators, key cosine,
    update norms, v* norm); `vectors` holds tensors for analysis (k̄, kᵘ, v*), never serialised.
    """

    touched: list[str]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    # A prefix the editor wants prepended to prompts when its edit is tested (C-ROME's cure).
    test_prefix: str = ""


@runtime_checkable
class Editor(Protocol):
    name: str

    def touched_parameters(self, model: ModelUnderEdit, cases: Sequence[EditCase]) -> list[str]:
        """Names of the parameters `apply` may change; the harness snapshots them first."""

    def apply(self, model: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        """Edit the weights in place so that each case's prompt yields its target_new."""

    def hparams(self, model: ModelUnderEdit) -> dict[str, Any]:
        """The hyperparameters used on this model, for the report."""


class EditorNotFound(LookupError):
    pass


# --- hyperparameters ----------------------------------------------------------------------

@dataclass(frozen=True)
class Hparams:
    """Base of an editor's hyperparameters: a frozen dataclass whose every field has a default.

    Subclasses set `EDITOR` (the name used in error messages), `FAMILY_DEFAULTS` (family ->
    field values replacing the class defaults, with the config they come from in a comment) and
    optionally `MODEL_DEFAULTS` (registered model name -> values measured on that model, applied
    on top). `for_family(family, overrides, model)` is the one way to get the values an edit runs with.
    Override keys must be fields; values are checked against the field's type (an int is
    accepted for a float, a list for a tuple) so that a typo in a file fails before any edit.
    """

    EDITOR: ClassVar[str] = "editor"
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    MODEL_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def valid_keys(cls) -> list[str]:
        return sorted(f.name for f in fields(cls))

    @classmethod
    def check_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """`overrides` with values converted to the fields' types; ValueError naming the
        unknown keys (and listing the valid ones) or the mistyped value."""
        if not isinstance(overrides, dict):
            raise ValueError(f"{cls.EDITOR} hyperparameters must be a mapping of name: value, got {overrides!r}")
        valid = cls.valid_keys()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"unknown {cls.EDITOR} hyperparameters {unknown}; valid: {valid}")
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # annotations naming types that cannot be resolved: check keys only
            hints = {}
        return {key: _coerce(f"{cls.EDITOR} hyperparameter '{key}'", value, hints.get(key, Any))
                for key, value in overrides.items()}

    @classmethod
    def for_family(cls, family: str, overrides: dict[str, Any] | None = None, model: str | None = None):
        base = replace(cls(), **{**cls.FAMILY_DEFAULTS.get(family, {}), **cls.MODEL_DEFAULTS.get(model, {})})
        return base.with_overrides(overrides or {})

    def with_overrides(self, overrides: dict[str, Any]):
        return replace(self, **self.check_overrides(overrides))


def _coerce(what: str, value: Any, hint: Any) -> Any:
    """`value` as type `hint` (bool, int, float, str, tuple[...], X | None, Any) or ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(what, value, option)
            except ValueError:
                continue
        raise ValueError(f"{what} must be {_type_name(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{what} must be {_type_name(hint)} (a list), got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(what, v, args[0]) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{what} must be {_type_name(hint)} ({len(args)} items), got {value!r}")
        return tuple(_coerce(what, v, a) for v, a in zip(value, args))
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(hint)
    if ok is None:
        return value
    if not ok(value):
        raise ValueError(f"{what} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return float(value) if hint is float else value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")


class HparamsFileError(ValueError):
    """An hyperparameter file that cannot be read: wrong extension, bad syntax, not a mapping."""


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML 1.1 reads 5e-4 (no dot) as a string; numbers written so are floats here, as in
        JSON and YAML 1.2."""

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def load_hparams_file(path) -> dict[str, Any]:
    """Editor hyperparameter overrides from a .json, .yaml or .yml file: a mapping of name:
    value (validated later by the editor, which lists its valid keys)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise HparamsFileError(f"hyperparameter file {path}: unsupported extension {suffix or '(none)'!r}; "
                               f"use .json, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise HparamsFileError(f"hyperparameter file {path}: cannot read it: {err}") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise HparamsFileError(f"hyperparameter file {path}: invalid JSON: {err}") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as err:
            raise HparamsFileError(f"hyperparameter file {path}: invalid YAML: {err}") from None
        if data is None:
            data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise HparamsFileError(f"hyperparameter file {path}: expected a mapping of name: value at the top level, "
                               f"got {type(data).__name__}")
    return data


# --- registry -----------------------------------------------------------------------------

def _builtin_editors() -> dict[str, Any]:
    from editguard.editors.alphaedit import AlphaEdit
    from editguard.editors.ft import FineTuneLInf
    from editguard.editors.memit import MEMIT
    from editguard.editors.mend import MEND
    from editguard.editors.rome import ROME

    return {
        "rome": lambda **kw: ROME(consistent=False, **kw),
        "c-rome": lambda **kw: ROME(consistent=True, **kw),
        "r-rome": lambda **kw: ROME(consistent=True, prefix_at_test=False, **kw),
        "ft": FineTuneLInf,
        "memit": MEMIT,
        "alphaedit": AlphaEdit,
        "mend": MEND,
    }


def available_editors() -> list[str]:
    names = set(_builtin_editors())
    names.update(ep.name for ep in importlib.metadata.entry_points(group="editguard.editors"))
    return sorted(names)


def get_editor(spec: str, overrides: dict[str, Any] | None = None, data_dir=None) -> Editor:
    """An editor by built-in name, entry-point name (group `editguard.editors`), or
    `module.path:attr` (a class or a factory called with no arguments)."""
    overrides = overrides or {}
    builtins = _builtin_editors()
    if spec in builtins:
        return builtins[spec](overrides=overrides, data_dir=data_dir)
    factory = None
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise EditorNotFound(f"--editor={spec}: cannot import {attr!r} from {module_name!r}: {err}") from None
    else:
        for ep in importlib.metadata.entry_points(group="editguard.editors"):
            if ep.name == spec:
                factory = ep.load()
                break
    if factory is None:
        raise EditorNotFound(
            f"unknown editor '{spec}'; available: {', '.join(available_editors())}, "
            f"or give a user editor as package.module:ClassName"
        )
    if overrides:
        try:
            accepts = "overrides" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepts = False
        if not accepts:
            raise ValueError(f"--editor={spec} takes no hyperparameters (its factory has no `overrides` "
                             f"argument), but --hparams gave {sorted(overrides)}")
        editor = factory(overrides=overrides)
    else:
        editor = factory()
    missing = [m for m in ("name", "touched_parameters", "apply") if not hasattr(editor, m)]
    if missing:
        raise EditorNotFound(f"--editor={spec} gives {editor!r}, which lacks {', '.join(missing)} (see editguard.Editor)")
    return editor
