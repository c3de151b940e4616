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
"""

from __future__ import annotations

import importlib
import inspect
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

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


def _builtin_editors() -> dict[str, Any]:
    from editguard.editors.rome import ROME

    return {
        "rome": lambda **kw: ROME(consistent=False, **kw),
        "c-rome": lambda **kw: ROME(consistent=True, **kw),
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
