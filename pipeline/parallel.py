"""Per-image work in a pool of processes, with a progress bar."""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeline.progress import progress_bar


def _init_worker() -> None:
    import signal

    import torch
    torch.set_num_threads(1)
    # forked workers must not inherit the orchestrator's signal handlers (Prefect's SIGTERM hook)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def map_images(fn: Callable[[str], Any], ids: list[str], workers: int, desc: str) -> Iterator[Any]:
    """Yield ``fn(image_id)`` for every id (in completion order).

    ``workers`` > 1 runs a fork-started process pool whose workers use one torch thread each;
    ``fn`` writes its own outputs (per-image, atomic) and returns what the caller aggregates.
    """
    with progress_bar(desc, total=len(ids)) as advance:
        if workers <= 1 or len(ids) <= 1:
            for i in ids:
                yield fn(i)
                advance()
            return
        pool = mp.get_context("fork").Pool(min(workers, len(ids)), initializer=_init_worker)
        try:
            for out in pool.imap_unordered(fn, ids, chunksize=max(1, min(16, len(ids) // (4 * workers)))):
                yield out
                advance()
            pool.close()
        finally:
            pool.terminate() if pool._state != "CLOSE" else None
            pool.join()


def sum_arrays(items: Iterable[Any]):
    total = None
    for x in items:
        total = x if total is None else total + x
    return total
