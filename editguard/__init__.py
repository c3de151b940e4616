"""editguard: does a knowledge edit break the model? Library API (no pytest needed).

    from editguard import EditCase, check, get_editor, load_model, measure_baseline

Names are imported on first use, so that `import editguard` (and the pytest plugin, which every
pytest run in the environment loads) does not pay for importing torch.
"""

import importlib

_EXPORTS = {
    "EditCase": "editguard.cases",
    "EditReport": "editguard.editors.api",
    "Editor": "editguard.editors.api",
    "get_editor": "editguard.editors.registry",
    "Thresholds": "editguard.gates",
    "Verdict": "editguard.gates",
    "ModelUnderEdit": "editguard.models.loading",
    "load_model": "editguard.models.loading",
    "check": "editguard.guard",
    "measure_baseline": "editguard.guard",
    "perplexity": "editguard.metrics.perplexity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'editguard' has no attribute {name!r}")
