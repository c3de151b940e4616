from editguard.editors.base import EditReport, Editor, EditorNotFound, available_editors, get_editor

__all__ = ["EditReport", "Editor", "EditorNotFound", "available_editors", "get_editor"]
