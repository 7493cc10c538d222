"""Progress of long stages: a rich bar on a terminal, plain log lines when nobody watches one (nohup, SLURM), and a
``progress.json`` in the stage's folder that ``inspect`` shows while the stage runs.

``progress_bar(desc, total)`` yields ``advance(n=1, info=None)``: ``info`` (a training stage's losses) fills the
bar's last column on a terminal and ends the plain lines. Plain lines come every tenth of the work or every minute,
whichever is first, with done/total, rate and ETA; a training stage logs its own line every ``log_every`` steps
(``log_line``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: seconds between two writes of a stage's progress.json, and at most between two plain lines
STATUS_EVERY, LOG_EVERY = 2.0, 60.0
PROGRESS_FILE = "progress.json"


def on_terminal() -> bool:
    """Whether a person watches stderr (or WSSS_PROGRESS=1 asks for the bar anyway)."""
    return sys.stderr.isatty() or os.environ.get("WSSS_PROGRESS") == "1"


def progress_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run (the lines reach the Prefect UI too), else the ``wsss`` logger
    writing to stderr."""
    try:
        from prefect.logging import get_run_logger
        return get_run_logger()
    except Exception:  # outside a Prefect run
        logger = logging.getLogger("wsss")
        if not logger.handlers:
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter("%(asctime)s | %(message)s", "%H:%M:%S"))
            logger.addHandler(h)
            logger.setLevel(logging.INFO)
            logger.propagate = False
        return logger


def duration(seconds: float) -> str:
    """``3725`` → ``'1h02m05s'``; ``65`` → ``'1m05s'``; ``9.4`` → ``'9s'``."""
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def log_line(desc: str, done: int, total: int, unit: str, rate: float, info: str = "") -> str:
    """One plain progress line: ``desc 120/1000 steps (12%) 3.1 steps/s ETA 4m44s loss=0.31``."""
    eta = duration((total - done) / rate) if rate > 0 else "?"
    return f"{desc} {done}/{total} {unit} ({100 * done / max(total, 1):.0f}%) {rate:.2f} {unit}/s ETA {eta} {info}".rstrip()


def write_status(path: Path, done: int, total: int, unit: str) -> None:
    from pipeline.fsutil import atomic_write_text
    atomic_write_text(path, json.dumps({"done": done, "total": total, "unit": unit, "updated": time.time(),
                                        "pid": os.getpid()}))


@contextlib.contextmanager
def progress_bar(desc: str, total: int, completed: int = 0, enabled: bool = True, status: Path | None = None,
                 unit: str = "images", plain: bool = True) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, info=None)`` (module docstring). ``enabled`` off: nothing is shown, logged or written
    (a DDP rank other than 0); ``status``: the progress.json to keep up to date; ``plain`` off: no plain lines (the
    caller logs its own)."""
    if not enabled:
        yield lambda n=1, info=None: None
        return
    show = on_terminal()
    logger = progress_logger() if plain and not show else None
    state = {"done": completed, "wrote": 0.0, "logged": time.time(), "at": completed, "t0": time.time()}
    step = max(1, (total - completed) // 10)

    def note(n: int = 1, info: str | None = None) -> None:
        state["done"] += n
        done, now = state["done"], time.time()
        if status is not None and (now - state["wrote"] >= STATUS_EVERY or done >= total):
            write_status(status, done, total, unit)
            state["wrote"] = now
        if logger is not None and (done - state["at"] >= step or now - state["logged"] >= LOG_EVERY or done >= total):
            rate = (done - completed) / max(now - state["t0"], 1e-9)
            logger.info(log_line(desc, done, total, unit, rate, info or ""))
            state["logged"], state["at"] = now, done

    if status is not None:
        write_status(status, completed, total, unit)
    if not show:
        yield note
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False) as prog:
        task = prog.add_task(desc, total=total, completed=completed, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            prog.update(task, advance=n, **({"info": info} if info is not None else {}))
            note(n, info)

        yield advance
