"""Editor names -> "module:factory" strings, imported only when an editor is asked for (like
lm-eval's registry: the registry imports no implementation, and no editor imports the registry).

`easyedit:ALG` is EasyEdit's method ALG through the adapter (editguard.editors.easyedit, imported
only then). A user's editor is `package.module:Attr` (a class, or a factory called with no arguments, or
with `overrides=` when --hparams is given) or an entry point of the group `editguard.editors`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any

from editguard.editors.api import REQUIRED_EDITOR_PARTS, Editor, EditorNotFound

# name -> ("module:class", keyword arguments for the class)
BUILTIN_EDITORS: dict[str, tuple[str, dict[str, Any]]] = {
    "rome": ("editguard.editors.rome:ROME", {"consistent": False}),
    "c-rome": ("editguard.editors.rome:ROME", {"consistent": True}),
    "r-rome": ("editguard.editors.rome:ROME", {"consistent": True, "prefix_at_test": False}),
    "ft": ("editguard.editors.ft:FineTuneLInf", {}),
    "ft-l": ("editguard.editors.ft:FineTuneL", {}),
    "ft-m": ("editguard.editors.ft:FineTuneM", {}),
    "memit": ("editguard.editors.memit:MEMIT", {}),
    "alphaedit": ("editguard.editors.alphaedit:AlphaEdit", {}),
    "mend": ("editguard.editors.mend.editor:MEND", {}),
}

ENTRY_POINT_GROUP = "editguard.editors"
# `easyedit:ALG`: any alg_name EasyEdit registers, run by the adapter (EasyEdit is the user's install).
EASYEDIT_PREFIX = "easyedit:"
EASYEDIT_ADAPTER = "editguard.editors.easyedit:EasyEditEditor"


def _import(target: str):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def available_editors() -> list[str]:
    names = set(BUILTIN_EDITORS)
    names.update(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_editor(spec: str, overrides: dict[str, Any] | None = None, data_dir=None) -> Editor:
    """An editor by built-in name, entry-point name (group `editguard.editors`), or
    `module.path:attr` (a class or a factory called with no arguments)."""
    overrides = overrides or {}
    if spec.startswith(EASYEDIT_PREFIX):
        alg = spec[len(EASYEDIT_PREFIX):]
        if not alg:
            raise EditorNotFound(f"--editor={spec}: name EasyEdit's method after the colon, e.g. easyedit:ROME")
        return _import(EASYEDIT_ADAPTER)(alg, overrides=overrides, data_dir=data_dir)
    if spec in BUILTIN_EDITORS:
        target, kwargs = BUILTIN_EDITORS[spec]
        return _import(target)(overrides=overrides, data_dir=data_dir, **kwargs)
    factory = None
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise EditorNotFound(f"--editor={spec}: cannot import {attr!r} from {module_name!r}: {err}") from None
    else:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == spec:
                factory = ep.load()
                break
    if factory is None:
        raise EditorNotFound(
            f"unknown editor '{spec}'; available: {', '.join(available_editors())}, "
            f"EasyEdit's method ALG as easyedit:ALG, or a user editor as package.module:ClassName"
        )
    if not callable(factory):
        raise EditorNotFound(f"--editor={spec} names {factory!r} ({type(factory).__name__}), not an editor class "
                             f"or a factory function")
    if overrides:
        try:
            accepts = "overrides" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepts = False
        if not accepts:
            raise ValueError(f"--editor={spec} takes no hyperparameters (its factory has no `overrides` "
                             f"argument), but --hparams gave {sorted(overrides)}")
    try:
        editor = factory(overrides=overrides) if overrides else factory()
    except TypeError as err:
        # Most likely a constructor with required arguments: an editor is built from options alone.
        raise EditorNotFound(f"--editor={spec}: cannot build it with no arguments"
                             f"{' but overrides=' if overrides else ''}: {err}; give a class whose constructor "
                             f"needs none (hyperparameters come from --hparams) or a factory function") from None
    missing = [m for m in REQUIRED_EDITOR_PARTS if not hasattr(editor, m)]
    if missing:
        raise EditorNotFound(f"--editor={spec} gives {editor!r}, which lacks {', '.join(missing)} "
                             f"(see editguard.Editor)")
    return editor
