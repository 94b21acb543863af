"""Progress of long work (MEIs, reconstructions, sampling, similarity, compare, prior training) for people.

A rich bar with what is being made, the count and an ETA on a terminal; nothing when the output
is not a terminal (logs, CI), so logs keep only the one-line summaries.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Progress:
    """Factory of progress bars; `enabled=None` shows them only when stderr is a terminal."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    @classmethod
    def quiet(cls) -> "Progress":
        return cls(False)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar for `total` units of work; yields advance(n)."""
        if not self.enabled:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn())
        with RichProgress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
