"""The reports of a run: JSON, terminal, Markdown, plots, comparison and merge.

Names are imported on first use: reading or writing a JSON report (the plugin's recorder does, in
every pytest run that edits) does not pay for rich, which only the terminal report needs.
"""

import importlib

_EXPORTS = {
    "RunInfo": "editguard.report.json_report",
    "load_report": "editguard.report.json_report",
    "write_report": "editguard.report.json_report",
    "render_report": "editguard.report.terminal",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'editguard.report' has no attribute {name!r}")
