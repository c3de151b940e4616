"""editguard: does a knowledge edit break the model? Library API (no pytest needed).

    from editguard import load_model, get_editor, perplexity, check, measure_baseline
"""

from editguard.editors import EditReport, Editor, get_editor
from editguard.gates import Thresholds, Verdict
from editguard.models import ModelUnderEdit, load_model

__all__ = [
    "EditCase", "EditReport", "Editor", "ModelUnderEdit", "Thresholds", "Verdict",
    "check", "get_editor", "load_model", "measure_baseline", "perplexity",
]


def __getattr__(name):
    # Imported lazily: these pull in the data and case modules.
    if name == "EditCase":
        from editguard.cases import EditCase

        return EditCase
    if name in ("check", "measure_baseline"):
        import editguard.guard as guard

        return getattr(guard, name)
    if name == "perplexity":
        from editguard.metrics.perplexity import perplexity

        return perplexity
    raise AttributeError(name)
