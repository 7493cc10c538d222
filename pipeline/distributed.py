"""Training stages in several processes: DistributedDataParallel over ``devices`` processes, or under ``torchrun``.

A training stage hands its work to ``run_training_job`` as a ``TrainJob`` (how to build the network, the
samples, the loss, the schedule). With one process it trains here. With ``devices: N > 1`` it starts N
processes (``torch.multiprocessing`` spawn), rank r on ``cuda:r`` with NCCL or on the CPU with Gloo, each
training on its slice of every step's global batch (``pipeline.training.rank_samples``); rank 0 writes
the checkpoints, the log and the weights, and this process waits for them, so the flow stays one
Prefect run in one process. A process that dies takes the others down (its parent's death kills a
rank too): the stage fails, and a rerun resumes from the last checkpoint like any training.

Under ``torchrun --nproc_per_node N cli.py run-flow ...`` every process runs the CLI: rank 0 runs the
flow, the other ranks ``follow``: they wait for rank 0 to broadcast each training stage's job, train
their slice of it, and stop when the flow ends.
"""
from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from pipeline.parallel import Portable
from pipeline.runtime import Runtime, launched_world
from pipeline.training import StepIndexedDataset, check_batch_split, train

#: how long a torchrun follower waits for rank 0's next job (rank 0 runs the per-image stages meanwhile)
FOLLOW_TIMEOUT = timedelta(days=7)
#: under torchrun: the ranks' group for the jobs (Gloo, CPU objects, FOLLOW_TIMEOUT; training uses the default
#: group) and this rank's runtime (its local GPU)
_CONTROL: dict[str, Any] = {}


@dataclass
class TrainJob:
    """One training stage's work, picklable: ``build()`` makes the network (after ``torch.manual_seed(seed)``)."""

    build: Callable[[], torch.nn.Module]
    dataset: StepIndexedDataset
    loss: Callable
    cfg: Any  # TrainConfig (or a stage's view of one)
    out_dir: Path
    meta: dict
    desc: str
    seed: int
    loader_workers: int = 0


def train_job(job: TrainJob, runtime: Runtime) -> dict:
    """Build the network and train it in this process (one rank of a process group, or alone)."""
    torch.manual_seed(job.seed)
    model = job.build()
    return train(model, job.dataset, job.loss, job.cfg, job.out_dir, job.meta, job.desc, runtime, job.loader_workers)


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a rendezvous or a local server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a killed flow leaves no rank training)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the ranks end at their next collective's timeout
        pass


def _init_group(runtime: Runtime) -> None:
    # a rank that aborts (SIGABRT from C++, SIGSEGV) prints every thread's Python stack before it dies
    faulthandler.enable(all_threads=True)
    if runtime.on_gpu:
        torch.cuda.set_device(runtime.torch_device)
    dist.init_process_group("nccl" if runtime.on_gpu else "gloo", rank=runtime.rank, world_size=runtime.world)


def _rank_main(rank: int, packed: Portable, world: int, port: int, runtime: Runtime, threads: int) -> None:
    _die_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rt = runtime.for_rank(rank, world)
    if not rt.on_gpu:
        torch.set_num_threads(threads)
    _init_group(rt)
    try:
        train_job(packed.unpack(), rt)
    finally:
        dist.destroy_process_group()


def run_training_job(job: TrainJob, runtime: Runtime, devices: int) -> dict:
    """Train ``job`` in ``devices`` processes (or, under torchrun, with the followers); returns the final losses."""
    if _CONTROL:  # under torchrun: lead the ranks
        check_batch_split(job.cfg.batch_size, dist.get_world_size(), job.desc)  # here, not in every rank
        dist.broadcast_object_list([Portable(job)], src=0, group=_CONTROL["group"])
        return train_job(job, _CONTROL["runtime"])
    if devices <= 1:
        return train_job(job, runtime)
    check_batch_split(job.cfg.batch_size, devices, job.desc)
    threads = job.cfg.threads or max(1, torch.get_num_threads() // devices)
    torch.multiprocessing.start_processes(_rank_main, args=(Portable(job), devices, free_port(), runtime, threads),
                                          nprocs=devices, join=True, start_method="spawn")
    from pipeline.checkpoint import MODEL_FILE, load_weights
    return load_weights(job.out_dir / MODEL_FILE)[1].get("losses", {})


def join_launched_group(runtime: Runtime) -> bool:
    """Under torchrun (``WORLD_SIZE`` > 1): join its process group (each rank on its local GPU); True if joined."""
    rank, world = launched_world()
    if world <= 1:
        return False
    local = int(os.environ.get("LOCAL_RANK", rank))
    rt = Runtime(f"cuda:{local}" if runtime.on_gpu else runtime.device, runtime.amp, rank, world)
    _init_group(rt)
    _CONTROL.update(group=dist.new_group(backend="gloo", timeout=FOLLOW_TIMEOUT), runtime=rt)
    return True


def leave_launched_group() -> None:
    """Destroy this process's process groups (the default one and the jobs' Gloo group) before it exits.

    A process that exits with its groups alive leaves their C++ worker threads joinable while the interpreter
    tears down, and ``std::thread``'s destructor then aborts the process (``terminate called without an
    active exception``, SIGABRT): the followers and rank 0 under torchrun did exactly that after every flow."""
    if dist.is_initialized():
        dist.destroy_process_group()  # every group, the jobs' one included
    _CONTROL.clear()


def follow() -> None:
    """A torchrun rank > 0: train every job that rank 0 broadcasts, until it broadcasts the end (None); then
    leave the process groups."""
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=_CONTROL["group"])
        if box[0] is None:
            leave_launched_group()
            return
        train_job(box[0].unpack(), _CONTROL["runtime"])


def end_followers() -> None:
    """Rank 0 under torchrun, when the flow has ended: release the followers and leave the process groups. (A
    rank 0 that fails exits non-zero instead, and torchrun stops the other ranks.)"""
    if _CONTROL and dist.get_rank() == 0:
        dist.broadcast_object_list([None], src=0, group=_CONTROL["group"])
        leave_launched_group()
