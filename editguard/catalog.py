"""What is registered, by name: editors (built-in and installed), models and downstream tasks.
The front ends put these lists in their help texts, so that no help text lists names by hand.
Reading them imports no torch."""

from __future__ import annotations

from editguard.editors.registry import available_editors
from editguard.models.registry import MODELS
from editguard.tasks import TASKS


def registered_names() -> dict[str, str]:
    """{"editors", "models", "tasks"} -> comma-separated names, for Option.help_text."""
    return {"editors": ", ".join(available_editors()), "models": ", ".join(MODELS), "tasks": ", ".join(TASKS)}
