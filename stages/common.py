"""What the stage modules share: the one training path, trained models from their checkpoints, the one
per-image loop into a label store, and image-label helpers."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models import ModelSpec
from pipeline.checkpoint import MODEL_FILE, load_weights
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.parallel import map_images
from pipeline.stage import StageContext
from pipeline.store import open_for_stage
from pipeline.training import StepIndexedDataset, train


def run_training(ctx: StageContext, spec: ModelSpec, samples: Callable[[int, np.random.Generator], tuple], n_items: int,
                 make_loss: Callable[[torch.nn.Module], Callable], tcfg: TrainConfig) -> dict:
    """Every training stage's one path: seed, build ``spec``, train on sample ``i`` of ``n_items``, report.

    ``make_loss(model)`` returns ``loss(model, batch, step) -> dict`` (it may check the model first).
    The spec goes into the weights' sidecar, so later stages rebuild the network with ``trained_model``.
    """
    seed = ctx.config.seed
    torch.manual_seed(seed)
    model = spec.build()
    loss = make_loss(model)
    last = train(model, StepIndexedDataset(n_items, samples, seed), loss, tcfg, ctx.dir,
                 {"key": ctx.key, "stage": ctx.stage.name, "model": spec.to_json()}, desc=ctx.stage.name)
    return {"steps": tcfg.steps, "images": n_items, **{f"final_{k}": round(v, 5) for k, v in last.items()}}


def load_trained(weights: Path) -> torch.nn.Module:
    """The network trained into ``weights`` (a training stage's ``model.safetensors``), rebuilt from its sidecar."""
    state, meta = load_weights(weights)
    model = ModelSpec.from_json(meta["model"]).for_inference().build()
    model.load_state_dict(state)
    return model.eval()


_TRAINED: dict = {}


def trained_model(weights: Path) -> torch.nn.Module:
    """``load_trained``, once per process (per-image workers call this per image).

    Keyed by the weights file and its modification time, so a retrained model is never served stale.
    """
    f = Path(weights)
    if f.is_dir():
        f = f / MODEL_FILE
    key = (str(f), f.stat().st_mtime_ns)
    if _TRAINED.get("key") != key:
        _TRAINED.clear()
        _TRAINED.update(key=key, model=load_trained(f))
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


def fill_store(ctx: StageContext, name: str, attrs: dict, ids: list[str], make_worker, workers: int):
    """The one per-image loop: run ``make_worker(store_path)`` on every image not yet stored under this key.

    The store is the stage's declared output ``name``; the worker writes one image atomically.
    Returns the store and how many images were found done (a resumed stage).
    """
    store = open_for_stage(ctx.output(name), ctx.key, {"stage": ctx.stage.name, **attrs})
    todo = [i for i in ids if i not in store]
    for _ in map_images(make_worker(store.path), todo, workers, ctx.stage.name):
        pass
    return store, len(ids) - len(todo)
