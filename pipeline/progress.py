"""Progress bars (rich) for long stages; quiet when the output is not a terminal."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(desc: str, total: int, completed: int = 0, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n=1)``. Shown on a terminal (or with WSSS_PROGRESS=1) when ``enabled``; silent otherwise."""
    show = enabled and (sys.stderr.isatty() or os.environ.get("WSSS_PROGRESS") == "1")
    if not show:
        yield lambda n=1: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=False) as prog:
        task = prog.add_task(desc, total=total, completed=completed)
        yield lambda n=1: prog.advance(task, n)
