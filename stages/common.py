"""Helpers the stage modules share: model loading from a stage's outputs, image tensors."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from models import create_model
from pipeline.checkpoint import load_weights
from pipeline.config import RunConfig
from pipeline.errors import UserError
from pipeline.parallel import map_images
from pipeline.store import open_for_stage


def classifier_from_config(cfg: RunConfig, for_inference: bool = False) -> torch.nn.Module:
    m = cfg.model
    # trained weights replace the initial ones at inference: do not fetch or read them again
    backbone = dict(name=m.backbone, pretrained=m.pretrained and not for_inference,
                    weights=None if for_inference else m.weights, patch_size=m.patch_size,
                    embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads)
    if m.arch == "vit_acr":
        return create_model("vit_acr_classifier", backbone=backbone, img_size=cfg.train_classifier.crop_size, num_classes=20)
    return create_model("vit_cam_classifier", backbone=backbone, img_size=cfg.train_classifier.crop_size,
                        num_classes=20, pooling=m.pooling, topk=m.topk)


def affinity_from_config(cfg: RunConfig, for_inference: bool = False) -> torch.nn.Module:
    a = cfg.affinity
    return create_model("affinity_net", backbone=a.backbone, dims=a.dims, pretrained=a.pretrained and not for_inference,
                        weights=None if for_inference else a.weights)


def segmentation_from_config(cfg: RunConfig, for_inference: bool = False) -> torch.nn.Module:
    s = cfg.segmentation
    # trained weights replace the initial ones at inference: do not fetch or read them again
    return create_model("segmentation_net", backbone=s.backbone, head=s.head, num_classes=21, output_stride=s.output_stride,
                        pretrained=s.pretrained and not for_inference, weights=None if for_inference else s.weights)


def afa_from_config(cfg: RunConfig, for_inference: bool = False) -> torch.nn.Module:
    a = cfg.afa
    return create_model("afa_mit", backbone=a.backbone, pretrained=a.pretrained and not for_inference,
                        weights=None if for_inference else a.weights, output_stride=a.output_stride,
                        embed_dims=a.embed_dims, depths=a.depths, num_heads=a.num_heads, num_classes=20,
                        pooling=a.pooling, topk=a.topk, decoder_dim=a.decoder_dim, attention_per_token=a.attention_per_token)


#: the training stages whose model a later stage may read, and how to build that model from the config
MODEL_BUILDERS = {"train_classifier": classifier_from_config, "train_segmentation": segmentation_from_config,
                  "train_single_stage": afa_from_config}


def model_source(ctx) -> tuple[str, object]:
    """The training stage a stage reads its model from (the first of its inputs that trains one) and its builder."""
    name = next(s for s in ctx.stage.inputs if s in MODEL_BUILDERS)
    return name, MODEL_BUILDERS[name]


@dataclass
class RunConfigWorker:
    """Base of the picklable per-image workers: carries the run config as a dict, parsed once per process."""

    config: dict

    @cached_property
    def cfg(self) -> RunConfig:
        return RunConfig.model_validate(self.config)


def load_trained(model: torch.nn.Module, stage_dir: Path) -> torch.nn.Module:
    state, _ = load_weights(stage_dir / "model.safetensors")
    model.load_state_dict(state)
    return model.eval()


_TRAINED: dict = {}


def trained_model(stage_dir: Path, build) -> torch.nn.Module:
    """The model trained in ``stage_dir``, loaded once per process (per-image workers call this per image).

    Keyed by the weights file and its modification time, so a retrained model is never served stale.
    """
    f = Path(stage_dir) / "model.safetensors"
    key = (str(f), f.stat().st_mtime_ns)
    if _TRAINED.get("key") != key:
        _TRAINED.clear()
        _TRAINED.update(key=key, model=load_trained(build(), Path(stage_dir)))
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


def fill_store(ctx, filename: str, attrs: dict, ids: list[str], make_worker, workers: int, desc: str):
    """Run a per-image stage into ``ctx.dir/filename``, skipping images already stored under this key.

    ``make_worker(store_path)`` returns the picklable per-image callable that writes one image.
    Returns the store and how many images were found done (a resumed stage).
    """
    store = open_for_stage(ctx.dir / filename, ctx.key, attrs)
    todo = [i for i in ids if i not in store]
    for _ in map_images(make_worker(store.path), todo, workers, desc):
        pass
    return store, len(ids) - len(todo)
