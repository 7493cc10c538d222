"""Per-image work in a pool of processes or on a Dask cluster, with a progress bar.

``ImagePool`` says where (the ``workers`` config section); ``map_images`` runs a per-image function
there. The function writes its own outputs (per image, atomically: a stage's label store) and returns
what the caller aggregates, so every executor leaves the same files:

- ``local``: a fork-started process pool on this machine (one torch thread per process);
- ``dask``: the tasks go to a ``dask.distributed`` cluster — the scheduler at ``workers.address`` or a
  ``LocalCluster`` of ``workers.processes`` single-threaded worker processes. Its workers must import this
  project (the same install) and see the run folder and the data at the same paths (a shared
  filesystem). A worker that dies mid-stage loses nothing: the scheduler gives its images to another
  worker, and an image counts only once its atomic write is done.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.progress import progress_bar


def _init_worker() -> None:
    import signal

    import torch
    torch.set_num_threads(1)
    # forked workers must not inherit the orchestrator's signal handlers (Prefect's SIGTERM hook)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(frozen=True)
class ImagePool:
    """Where a per-image stage runs its images (the ``workers`` config section)."""

    executor: str = "local"  # local | dask
    address: str | None = None  # dask scheduler; None: a local cluster
    processes: int = 1  # local pool size / local cluster size
    batch: int = 1  # ids per call of ``fn.batch`` where the function has one (a network's inference on a GPU)
    start: str = "fork"  # how a local pool starts its processes: spawn where CUDA is in use (it does not survive fork)

    @classmethod
    def of(cls, workers: Any) -> "ImagePool":
        """The pool that a config's ``workers`` section (or a stage's view of it) describes."""
        return cls(workers.executor, workers.address, workers.processes)

    def in_process(self) -> "ImagePool":
        """This pool for work that stays in this process unless a remote cluster takes it (a network: it uses every
        core or the GPU; a local Dask cluster's workers on this machine would each load it onto the same GPU)."""
        return self if self.executor == "dask" and self.address else replace(self, executor="local", processes=1)


class Portable:
    """``fn`` packed for a fresh process (a Dask worker, a spawned DDP rank): pickled together with the modules
    that register the run config's sections, imported before it is unpickled (a per-image worker holds
    a view of the run config, which only a process that knows every section can read)."""

    def __init__(self, fn: Callable) -> None:
        import pickle

        from pipeline.config import section_modules
        from pipeline.voc import current_mask_policy
        self.modules = section_modules()
        self.payload = pickle.dumps(fn)
        self.mask_policy = current_mask_policy()  # the packing stage's (pipeline.stage.Stage.masks), set where unpacked

    def unpack(self) -> Callable:
        import hashlib
        import importlib
        import pickle
        digest = hashlib.sha1(self.payload).hexdigest()
        if _UNPACKED.get("digest") != digest:  # once per process and function, not per image
            for m in self.modules:
                importlib.import_module(m)
            _UNPACKED.update(digest=digest, fn=pickle.loads(self.payload))
        from pipeline.voc import adopt_mask_policy
        adopt_mask_policy(self.mask_policy)  # this worker (thread) works for the packing stage until the next unpack
        return _UNPACKED["fn"]

    def __call__(self, *args: Any) -> Any:
        return self.unpack()(*args)


_UNPACKED: dict[str, Any] = {}
_CLIENTS: dict[str, Any] = {}


def dask_client(address: str | None, processes: int):
    """A ``dask.distributed`` client of the scheduler at ``address`` (or of a local cluster), one per process."""
    key = address or f"local:{processes}"
    if key not in _CLIENTS:
        from dask.distributed import Client, LocalCluster
        if address:
            try:
                client = Client(address, timeout="10s")
            except OSError as e:
                from pipeline.errors import UserError
                raise UserError(f"workers.address={address}: no Dask scheduler answers ({type(e).__name__}): start one "
                                "(`dask scheduler`) or set workers.address=null for a local cluster") from None
            threaded = [a for a, w in client.scheduler_info()["workers"].items() if w.get("nthreads", 1) > 1]
            if threaded:  # a worker's tasks share its process's model (recorded attention) and caches: one at a time
                client.close()
                from pipeline.errors import UserError
                raise UserError(f"workers.address={address}: worker {threaded[0]} runs several threads; start the "
                                "workers with `dask worker ADDRESS --nthreads 1` (one process per core or GPU)")
        else:
            import dask
            # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers: glibc then hands every large
            # torch buffer back to the OS and faults it in again, and PAR ran 1.7x slower per image (1.08 s vs
            # 0.64 s at ~400 px, bench/bench_scale.py); the workers keep glibc's default
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                cluster = LocalCluster(n_workers=processes, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
        if not _CLIENTS:
            atexit.register(close_dask_clients)
        _CLIENTS[key] = client
    return _CLIENTS[key]


def check_executor(workers: Any) -> None:
    """Before any stage: a ``workers.address`` must reach a Dask scheduler (one ``UserError`` line if not), not
    hours later at the first per-image stage. The client is kept for the stages."""
    if workers.executor == "dask" and workers.address:
        dask_client(workers.address, workers.processes)


def close_dask_clients() -> None:
    for client in _CLIENTS.values():
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()
    _CLIENTS.clear()


def _on_dask(fn: Callable[[str], Any], ids: list[str], pool: ImagePool, advance) -> Iterator[Any]:
    from dask.distributed import as_completed
    client = dask_client(pool.address, pool.processes)
    # pure=False: every image is one task even if two calls look alike; retries: a task whose worker died
    # is rescheduled by the scheduler anyway, these cover an exception on a worker (e.g. a transient read)
    futures = client.map(Portable(fn), ids, pure=False, retries=2)
    try:
        for fut in as_completed(futures):
            yield fut.result()
            advance()
    finally:
        client.cancel(futures)


def map_images(fn: Callable[[str], Any], ids: list[str], pool: ImagePool, desc: str, status: Path | None = None,
               done: int = 0) -> Iterator[Any]:
    """Yield ``fn(image_id)`` for every id (in completion order), on ``pool``; the progress (of ``done`` + ``ids``
    images) is shown, logged and kept in ``status`` (``pipeline.progress.progress_bar``).

    With ``pool.batch`` > 1 a function with a ``batch(ids) -> list`` method gets that many ids per call (in this
    process: a network on a GPU, which groups them by size).
    A local pool of more than one process is fork-started, its workers use one torch thread each.
    """
    workers = pool.processes
    with progress_bar(desc, total=done + len(ids), completed=done, status=status) as advance:
        if pool.batch > 1 and hasattr(fn, "batch") and not (pool.executor == "dask" and ids):
            for k in range(0, len(ids), pool.batch):
                for out in fn.batch(ids[k:k + pool.batch]):
                    yield out
                    advance()
            return
        if pool.executor == "dask" and ids:
            yield from _on_dask(fn, ids, pool, advance)
            return
        if workers <= 1 or len(ids) <= 1:
            for i in ids:
                yield fn(i)
                advance()
            return
        procs = mp.get_context(pool.start).Pool(min(workers, len(ids)), initializer=_init_worker)
        task = Portable(fn) if pool.start == "spawn" else fn  # a spawned process imports what a forked one inherits
        try:
            for out in procs.imap_unordered(task, ids, chunksize=max(1, min(16, len(ids) // (4 * workers)))):
                yield out
                advance()
            procs.close()
        finally:
            procs.terminate() if procs._state != "CLOSE" else None
            procs.join()


def sum_arrays(items: Iterable[Any]):
    total = None
    for x in items:
        total = x if total is None else total + x
    return total
