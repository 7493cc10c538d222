"""What the stage modules share: the one training path, trained models from their checkpoints, the one
per-image loop into a label store, and image-label helpers."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models import ModelSpec
from pipeline.checkpoint import MODEL_FILE, load_weights
from pipeline.config import TrainConfig
from pipeline.distributed import TrainJob, run_training_job
from pipeline.errors import UserError
from pipeline.parallel import ImagePool, map_images
from pipeline.runtime import Runtime, resolve_device
from pipeline.stage import StageContext
from pipeline.progress import PROGRESS_FILE
from pipeline.store import PACK_MIN, open_for_stage, pack_stores
from pipeline.training import StepIndexedDataset


def run_training(ctx: StageContext, spec: ModelSpec, samples: Callable[[int, np.random.Generator], tuple], n_items: int,
                 make_loss: Callable[[torch.nn.Module], Callable], tcfg: TrainConfig) -> dict:
    """Every training stage's one path: seed, build ``spec``, train on sample ``i`` of ``n_items``, report.

    ``make_loss(model)`` returns ``loss(model, batch, step) -> dict`` (it may check the model first); it must
    be picklable (a dataclass or a module function), as the samples are: with ``devices`` > 1 the training
    runs in that many processes (``pipeline.distributed``), on the config's ``device`` under its ``amp``
    (the stage declares ``amp`` in its reads: it changes the result; the device and process count do not).
    The spec goes into the weights' sidecar, so later stages rebuild the network with ``trained_model``.
    """
    seed = ctx.config.seed
    _TRAINED.clear()  # an earlier stage's inference network leaves the GPU to the training
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch.manual_seed(seed)
    loss = make_loss(spec.for_inference().build())  # checks the architecture; the job builds (and loads) the weights
    job = TrainJob(spec.build, StepIndexedDataset(n_items, samples, seed), loss, tcfg, ctx.dir,
                   {"key": ctx.key, "stage": ctx.stage.name, "model": spec.to_json()}, ctx.stage.name, seed,
                   ctx.config.workers.loader_workers)
    last = run_training_job(job, Runtime.from_config(ctx.config), ctx.config.devices)
    return {"steps": tcfg.steps, "images": n_items, **{f"final_{k}": round(v, 5) for k, v in last.items()}}


def load_trained(weights: Path) -> torch.nn.Module:
    """The network trained into ``weights`` (a training stage's ``model.safetensors``), rebuilt from its sidecar."""
    state, meta = load_weights(weights)
    model = ModelSpec.from_json(meta["model"]).for_inference().build()
    model.load_state_dict(state)
    return model.eval()


_TRAINED: dict = {}


def trained_model(weights: Path, runtime: Runtime = Runtime()) -> torch.nn.Module:
    """``load_trained`` on ``runtime``'s device, once per process (per-image workers call this per image).

    Keyed by the weights file, its modification time and the device, so a retrained model is never served stale.
    """
    f = Path(weights)
    if f.is_dir():
        f = f / MODEL_FILE
    key = (str(f), f.stat().st_mtime_ns, runtime.device)
    if _TRAINED.get("key") != key:
        _TRAINED.clear()
        _TRAINED.update(key=key, model=runtime.to(load_trained(f)))
    return _TRAINED["model"]


def check_layers(layers: list[int] | None, depth: int, key: str) -> None:
    """Refuse block indices outside ``[-depth, depth)`` with one line naming the config key."""
    bad = [i for i in layers or [] if not -depth <= i < depth]
    if bad or layers == []:
        raise UserError(f"{key}={layers} names blocks the {depth}-block ViT does not have: use indices in [-{depth}, {depth})")


def labelled_images(ds) -> tuple[list[str], np.ndarray]:
    """The ids of a split's images with at least one foreground class, and their 20-way multi-hot labels."""
    labels = ds.label_matrix
    keep = labels.sum(1) > 0
    return [i for i, k in zip(ds.ids, keep) if k], labels[keep]


def labels_to_onehot_classes(label_vec: np.ndarray) -> list[int]:
    """Multi-hot over the 20 foreground classes → VOC class indices (1..20)."""
    return [int(c) + 1 for c in np.nonzero(label_vec)[0]]


def image_pool(ctx: StageContext, network: bool = False) -> ImagePool:
    """Where the stage's per-image work runs (the ``workers`` section).

    A ``network``'s inference stays in this process unless a remote Dask cluster takes it (it uses every core, or
    the GPU: there it takes ``workers.gpu_batch`` images of one size per forward pass). Other work (refinement,
    scoring) goes to the pool's processes or the cluster; where the device is a GPU the local pool's processes
    are spawned, not forked (CUDA, in use here, does not survive a fork), and run their torch refinement (PAR)
    on the GPU while the dense CRF runs on their CPU cores.
    """
    pool = ImagePool.of(ctx.config.workers)
    if resolve_device(ctx.config.device).type != "cpu":
        pool = replace(pool, start="spawn", batch=ctx.config.workers.gpu_batch if network else 1)
    return pool.in_process() if network else pool


def same_size_groups(images: dict[str, np.ndarray]) -> list[list[str]]:
    """The ids of ``images`` grouped by image size (in first-seen order): the batches a network can take at once.

    >>> a, b = np.zeros((2, 3, 3)), np.zeros((3, 2, 3))
    >>> same_size_groups({"x": a, "y": b, "z": a})
    [['x', 'z'], ['y']]
    """
    groups: dict[tuple, list[str]] = {}
    for i, im in images.items():
        groups.setdefault(im.shape, []).append(i)
    return list(groups.values())


def fill_store(ctx: StageContext, name: str, attrs: dict, ids: list[str], make_worker, pool: ImagePool):
    """The one per-image loop: run ``make_worker(store_path)`` on every image not yet stored under this key.

    The store is the stage's declared output ``name``; the worker writes one image atomically. An image counts as
    done when its entry is complete under this key (``LabelStore.complete_ids``: a deleted chunk is redone). Every
    ``PACK_MIN`` images the stage's stores pack their loose entries (``LabelStore.pack``; ``run_stage`` packs the rest).
    Returns the store and how many images were found done (a resumed stage).
    """
    store = open_for_stage(ctx.output(name), ctx.key, {"stage": ctx.stage.name, **attrs})
    done = set(store.complete_ids())
    todo = [i for i in ids if i not in done]
    stores = [ctx.output(w) for w in ctx.stage.writes if w.endswith(".zarr")]  # the worker may write several
    for k, _ in enumerate(map_images(make_worker(store.path), todo, pool, ctx.stage.name, ctx.dir / PROGRESS_FILE,
                                     len(ids) - len(todo)), 1):
        if k % PACK_MIN == 0:  # the loose entries written so far into packs: the store's file count stays low
            pack_stores(stores)
    return store, len(ids) - len(todo)
