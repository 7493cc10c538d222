"""The training loop shared by every training stage: deterministic batches, poly schedule,
checkpoints that resume exactly, a JSONL log and a PNG of the curves."""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.checkpoint import MODEL_FILE, load_train_state, read_meta, save_train_state, save_weights
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.progress import PROGRESS_FILE, log_line, on_terminal, progress_bar, progress_logger
from pipeline.runtime import Runtime


class StepIndexedDataset(Dataset):
    """Sample ``i`` of the whole run (i = step·batch + j) → one transformed training example.

    The image is entry ``i mod N`` of the epoch's permutation (epoch = i // N, permutation from
    ``(seed, epoch)``) and the augmentation draws from ``default_rng((seed, i))``; so the batch of
    any step is the same whether the run was interrupted or not, and whatever the worker count.
    """

    def __init__(self, n_items: int, load: Callable[[int, np.random.Generator], tuple], seed: int) -> None:
        self.n, self.load, self.seed = n_items, load, seed
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perm_cache[epoch]

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, i: int):
        epoch, j = divmod(int(i), self.n)
        return self.load(int(self._perm(epoch)[j]), np.random.default_rng([self.seed, 1, int(i)]))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then polynomial decay: lr·(1 − step/steps)^power."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (1 - step / max(1, cfg.steps)) ** cfg.poly_power


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Backbone at lr, heads at ``head_lr_mult``·lr (the groups carry ``lr_mult``)."""
    groups = [{"params": model.backbone_parameters(), "lr_mult": 1.0},
              {"params": model.head_parameters(), "lr_mult": cfg.head_lr_mult}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class LossStep(torch.nn.Module):
    """``loss_fn(model, batch, step)`` as a module's ``forward``: what DistributedDataParallel wraps.

    DDP synchronises the gradients of what runs inside ``forward``; the losses call the model's own methods
    (``forward_train``, ``class_maps``, ...), so the whole loss computation is the forward pass.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch, step: int) -> dict:
        return self.loss_fn(self.model, batch, step)


def rank_samples(start: int, steps: int, batch_size: int, rank: int, world: int) -> list[int]:
    """The sample indices that process ``rank`` of ``world`` trains on from step ``start``: its slice of
    every step's global batch (``batch_size`` samples ``step·batch_size + j``), in order.

    Every process takes ``batch_size / world`` of them, so the step's global batch — and so, with the
    gradients averaged over processes, the step — is the single-process one.

    >>> rank_samples(0, 2, 4, 1, 2)
    [2, 3, 6, 7]
    """
    per = batch_size // world
    return [s * batch_size + rank * per + j for s in range(start, steps) for j in range(per)]


def first_of_global_batch(x: torch.Tensor) -> torch.Tensor:
    """``x[:1]`` of the step's global batch: in DDP every process gets rank 0's first entry (its own first is
    another sample's), alone it is ``x[:1]``. For what a step draws once for its whole batch (ACR's view)."""
    first = x[:1].clone()
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(first, src=0)
    return first


def check_batch_split(batch_size: int, world: int, desc: str) -> None:
    """Refuse a global batch that ``world`` processes cannot share equally (one line naming the stage)."""
    if batch_size % world:
        raise UserError(f"batch_size={batch_size} of {desc} does not split over devices={world} processes: "
                        "use a batch size divisible by devices")


def _mean_over_processes(sums: dict[str, torch.Tensor], n: int, world: int) -> dict[str, float]:
    """The logged losses: each summed over ``n`` steps (tensors on the training device, read once per log line,
    not once per step), averaged over the steps and over the ``world`` processes."""
    keys = sorted(sums)
    t = torch.stack([sums[k] for k in keys]) / n
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(t)  # on the device: NCCL reduces GPU tensors, Gloo CPU ones
        t = t / world
    return dict(zip(keys, t.tolist()))


def _log_step(line: str) -> float:
    """The step of a ``log.jsonl`` line; infinity for a line that is not a whole JSON object (torn by a kill).

    >>> _log_step('{"step": 20, "loss": 0.5}'), _log_step('{"step": 30, "lo')
    (20, inf)
    """
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def train(model: torch.nn.Module, dataset: StepIndexedDataset, loss_fn: Callable[[torch.nn.Module, tuple, int], dict],
          cfg: TrainConfig, out_dir: Path, meta: dict, desc: str, runtime: Runtime = Runtime(),
          loader_workers: int = 0) -> dict:
    """Run (or continue) training; returns the final logged losses (averaged over processes).

    ``loss_fn(model, batch, step)`` returns a dict of scalar tensors with a ``loss`` entry (``step``
    counts from 0, for losses with their own schedule). Every
    ``checkpoint_every`` steps the full training state goes to ``out_dir/checkpoint.safetensors``;
    a run that finds a checkpoint with the same ``meta['key']`` continues from it. At the end the
    weights go to ``out_dir/model.safetensors`` (``MODEL_FILE``, its sidecar with ``meta``) and the curves to ``out_dir/curves.png``.

    ``runtime``: the model and batches go to its device, the loss runs under its autocast (fp16 with
    gradient scaling). In process ``rank`` of ``world`` (a process group set up by ``pipeline.distributed``)
    the step's global batch is split over the processes (``rank_samples``), the gradients are averaged by
    DistributedDataParallel, and rank 0 alone writes checkpoints, the log and the weights.
    ``loader_workers`` processes prepare the batches (each sample is the same whoever prepares it).
    """
    rank, world = runtime.rank, runtime.world
    lead = rank == 0
    check_batch_split(cfg.batch_size, world, desc)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = out_dir / "checkpoint.safetensors"
    log_path = out_dir / "log.jsonl"
    model = runtime.to(model)
    opt = make_optimizer(model, cfg)
    scaler = runtime.grad_scaler()
    start = 0
    if ckpt.is_file() and read_meta(ckpt).get("key") == meta.get("key"):  # the header's step belongs to its weights
        start = load_train_state(ckpt, model, opt, scaler)["step"]
    if lead and start == 0:
        log_path.unlink(missing_ok=True)
    elif lead:  # keep the log lines up to the checkpoint (a line torn by a kill mid-write is dropped)
        lines = [ln for ln in log_path.read_text().splitlines() if _log_step(ln) <= start] if log_path.is_file() else []
        log_path.write_text("".join(ln + "\n" for ln in lines))
    if world > 1:  # each process its own dropout masks (the same in every rank otherwise), reproducible on resume
        torch.manual_seed(int(np.random.default_rng([dataset.seed, 3, rank, start]).integers(1 << 62)))
    model.train()
    step_fn: torch.nn.Module = LossStep(model, loss_fn)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        if runtime.on_gpu:  # batch statistics over the global batch, as in one process (SyncBatchNorm: CUDA only)
            from timm.layers import convert_sync_batchnorm  # keeps the activation of timm's BatchNormAct2d
            step_fn = convert_sync_batchnorm(step_fn)
        # some losses leave heads unused for their first steps (AFA's warm-up): those stay without gradient
        step_fn = DistributedDataParallel(step_fn, device_ids=[runtime.torch_device.index] if runtime.on_gpu else None,
                                          find_unused_parameters=True)
    loader = DataLoader(dataset, batch_size=cfg.batch_size // world,
                        sampler=rank_samples(start, cfg.steps, cfg.batch_size, rank, world),
                        num_workers=loader_workers, persistent_workers=False, pin_memory=runtime.on_gpu,
                        prefetch_factor=4 if loader_workers else None,
                        # its own generator: the loader must not draw from the global RNG that the
                        # checkpoint restores, or a resumed run's dropout would shift
                        generator=torch.Generator().manual_seed(dataset.seed))
    last: dict = {}
    t0 = time.time()
    running: dict[str, torch.Tensor] = {}
    plain = progress_logger() if lead and not on_terminal() else None  # nohup, SLURM: a line every log_every steps
    with progress_bar(desc, total=cfg.steps, completed=start, enabled=lead, status=out_dir / PROGRESS_FILE,
                      unit="steps", plain=False) as advance, \
            open(log_path, "a") if lead else contextlib.nullcontext() as log:
        for step, batch in enumerate(loader, start=start):
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            batch = runtime.to(batch, non_blocking=True)
            with runtime.autocast():
                losses = step_fn(batch, step)
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            for k, v in losses.items():
                running[k] = running[k] + v.detach().double() if k in running else v.detach().double()
            done = step + 1
            info = None
            if done % cfg.log_every == 0 or done == cfg.steps:
                n = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
                last = _mean_over_processes(running, n, world)
                running = {}
                info = " ".join(f"{k}={v:.4f}" for k, v in last.items())
                if lead:
                    log.write(json.dumps({"step": done, "lr": lr, "seconds": round(time.time() - t0, 2), **last}) + "\n")
                    log.flush()
                if plain is not None:
                    rate = (done - start) / max(time.time() - t0, 1e-9)
                    plain.info(log_line(desc, done, cfg.steps, "steps", rate,
                                        f"{info} lr={lr:.2e} {rate * cfg.batch_size:.1f} images/s"))
            advance(1, info)
            if lead and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save_train_state(ckpt, model, opt, done, meta, scaler)
    if lead:
        save_weights(out_dir / MODEL_FILE, model.state_dict(), {**meta, "step": cfg.steps, "losses": last})
        ckpt.unlink(missing_ok=True)
        (out_dir / "checkpoint.json").unlink(missing_ok=True)
        from pipeline.plots import plot_curves
        plot_curves(log_path, out_dir / "curves.png", title=desc)
    return last
