"""The training loop shared by every training stage: deterministic batches, poly schedule,
checkpoints that resume exactly, a JSONL log and a PNG of the curves."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.checkpoint import MODEL_FILE, load_train_state, save_train_state, save_weights
from pipeline.config import TrainConfig
from pipeline.progress import progress_bar


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


def train(model: torch.nn.Module, dataset: StepIndexedDataset, loss_fn: Callable[[torch.nn.Module, tuple, int], dict],
          cfg: TrainConfig, out_dir: Path, meta: dict, desc: str, workers: int = 0) -> dict:
    """Run (or continue) training; returns the final logged losses.

    ``loss_fn(model, batch, step)`` returns a dict of scalar tensors with a ``loss`` entry (``step``
    counts from 0, for losses with their own schedule). Every
    ``checkpoint_every`` steps the full training state goes to ``out_dir/checkpoint.safetensors``;
    a run that finds a checkpoint with the same ``meta['key']`` continues from it. At the end the
    weights go to ``out_dir/model.safetensors`` (``MODEL_FILE``, its sidecar with ``meta``) and the curves to ``out_dir/curves.png``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = out_dir / "checkpoint.safetensors"
    log_path = out_dir / "log.jsonl"
    opt = make_optimizer(model, cfg)
    start = 0
    if ckpt.is_file() and (out_dir / "checkpoint.json").is_file():
        side = json.loads((out_dir / "checkpoint.json").read_text())
        if side.get("key") == meta.get("key"):
            start = load_train_state(ckpt, model, opt)["step"]
    if start == 0:
        log_path.unlink(missing_ok=True)
    else:  # keep the log lines up to the checkpoint
        lines = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start] if log_path.is_file() else []
        log_path.write_text("".join(ln + "\n" for ln in lines))
    model.train()
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=range(start * cfg.batch_size, cfg.steps * cfg.batch_size),
                        num_workers=workers, persistent_workers=False,
                        # its own generator: the loader must not draw from the global RNG that the
                        # checkpoint restores, or a resumed run's dropout would shift
                        generator=torch.Generator().manual_seed(dataset.seed))
    last: dict = {}
    t0 = time.time()
    running: dict[str, float] = {}
    with progress_bar(desc, total=cfg.steps, completed=start) as advance, open(log_path, "a") as log:
        for step, batch in enumerate(loader, start=start):
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            losses = loss_fn(model, batch, step)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            advance()
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                n = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
                last = {k: v / n for k, v in running.items()}
                running = {}
                log.write(json.dumps({"step": done, "lr": lr, "seconds": round(time.time() - t0, 2), **last}) + "\n")
                log.flush()
            if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save_train_state(ckpt, model, opt, done, meta)
    save_weights(out_dir / MODEL_FILE, model.state_dict(), {**meta, "step": cfg.steps, "losses": last})
    ckpt.unlink(missing_ok=True)
    (out_dir / "checkpoint.json").unlink(missing_ok=True)
    from pipeline.plots import plot_curves
    plot_curves(log_path, out_dir / "curves.png", title=desc)
    return last
