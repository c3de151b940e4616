"""Models: `registry` (named models and families; light), `tiny`, `loading` and `snapshot` (torch).

Names are imported on first use, so that reading the registry (help texts, option checks) does
not import torch.
"""

import importlib

_EXPORTS = {
    "DEFAULT_MODEL": "editguard.models.registry", "FAMILIES": "editguard.models.registry",
    "MODELS": "editguard.models.registry", "Family": "editguard.models.registry",
    "ModelSpec": "editguard.models.registry", "register_family": "editguard.models.registry",
    "ModelLoadError": "editguard.models.loading", "ModelUnderEdit": "editguard.models.loading",
    "load_model": "editguard.models.loading", "load_tokenizer": "editguard.models.loading",
    "RestoreError": "editguard.models.snapshot", "WeightSnapshot": "editguard.models.snapshot",
    "PristineModel": "editguard.models.snapshot", "weight_digests": "editguard.models.snapshot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'editguard.models' has no attribute {name!r}")
