"""Progress bars for long work (covariance, mining, full-corpus perplexity)."""

from __future__ import annotations


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n):
        pass


class _RichBar:
    def __init__(self, description: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._progress = Progress("[progress.description]{task.description}", BarColumn(),
                                  MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()
        return False

    def advance(self, n):
        self._progress.advance(self._task, n)


def progress_bar(description: str, total: int, enabled: bool = True):
    """A transient rich progress bar (a no-op when disabled), used as a context manager."""
    return _RichBar(description, total) if enabled else _NoBar()
