"""Stage ``pretrain_NAME``: stand-in ``NAME`` (``models/standins.py``) trained to classify the procedural
corpus (``pipeline/corpus.py``), scored on the corpus's val split, its backbone stored for the flows.

Single-label cross-entropy with label smoothing over the 32 corpus classes on the shared training loop
(resumable, step-indexed batches); images are rendered at ``pretrain.train.crop_size`` and augmented
like every other training stage's (rescale, flip, colour jitter, crop). The backbone's weights go to
``backbone.safetensors`` in float16, with ``backbone.json`` holding their provenance; copied to
``models/pretrained/NAME.safetensors`` / ``NAME.json`` they are what ``weights: standin:NAME`` loads.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes

from models import ModelSpec
from models.standins import STANDINS
from pipeline.checkpoint import MODEL_FILE, save_weights
from pipeline.config import TrainConfig
from pipeline.corpus import CORPUS_CLASSES, corpus_image
from pipeline.runtime import Runtime
from pipeline.stage import Stage
from pipeline.transforms import normalise, train_transform
from stages.common import load_trained, run_training

#: the stand-in's backbone weights (float16) and, beside it, ``backbone.json``: their provenance
BACKBONE_FILE = "backbone.safetensors"
PRETRAIN_READS = ("pretrain", "seed", "amp")


@dataclass
class CorpusSamples:
    """Corpus training image ``i``, augmented, and its class."""

    seed: int
    cfg: TrainConfig

    def __call__(self, i: int, rng: np.random.Generator):
        img, k = corpus_image(self.seed, "train", i, self.cfg.crop_size)
        x, _ = train_transform(img, None, self.cfg.crop_size, self.cfg.scale_range, self.cfg.hflip, self.cfg.color_jitter, rng, self.cfg.brightness_shift)
        return x, k


def corpus_loss(model: torch.nn.Module, batch, step: int = 0, label_smoothing: float = 0.0) -> dict:
    images, labels = batch
    logits = model(images)
    return {"loss": F.cross_entropy(logits, labels, label_smoothing=label_smoothing),
            "accuracy": (logits.argmax(1) == labels).float().mean()}


@torch.no_grad()
def corpus_accuracy(model: torch.nn.Module, seed: int, n: int, size: int, batch: int = 64) -> float:
    """Top-1 accuracy on the first ``n`` corpus val images, rendered at ``size`` (no augmentation)."""
    right = 0
    for start in range(0, n, batch):
        items = [corpus_image(seed, "val", i, size) for i in range(start, min(n, start + batch))]
        x = torch.stack([normalise(img) for img, _ in items]).to(next(model.parameters()).device)
        right += int((model(x).argmax(1).cpu() == torch.tensor([k for _, k in items])).sum())
    return right / max(1, n)


def run(ctx) -> dict:
    name = ctx.stage.name.removeprefix("pretrain_")
    cfg = ctx.config.pretrain
    started = time.time()
    spec = ModelSpec("standin_classifier", dict(standin=name, img_size=cfg.train.crop_size, num_classes=len(CORPUS_CLASSES)))
    metrics = run_training(ctx, spec, CorpusSamples(cfg.corpus_seed, cfg.train), cfg.train_images,
                           lambda model: partial(corpus_loss, label_smoothing=cfg.label_smoothing), cfg.train)
    model = Runtime.from_config(ctx.config).to(load_trained(ctx.dir / MODEL_FILE))
    acc = corpus_accuracy(model, cfg.corpus_seed, cfg.val_images, cfg.train.crop_size)
    out = ctx.output(BACKBONE_FILE)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.backbone.state_dict().items()}
    run_info = json.loads((ctx.run.dir / "run.json").read_text())
    digest = hashlib.sha256(safetensors_bytes(state)).hexdigest()  # the file's bytes (written without header metadata)
    s = STANDINS[name]
    provenance = {
        "standin": name, "timm_name": s.timm_name, "architecture": s.config(), "used_by": s.used_by,
        "command": run_info.get("command") or f"python cli.py run-flow pretrain --profile {run_info.get('profile')}",
        "corpus": {"generator": "pipeline/corpus.py", "seed": cfg.corpus_seed, "classes": len(CORPUS_CLASSES),
                   "train_images": cfg.train_images, "val_images": cfg.val_images},
        "seed": ctx.config.seed, "train": cfg.train.model_dump(mode="json"), "label_smoothing": cfg.label_smoothing,
        "val_accuracy": round(acc, 4), "chance": round(1 / len(CORPUS_CLASSES), 4),
        "seconds": round(time.time() - started, 1), "torch": torch.__version__, "timm": timm.__version__,
        "threads": torch.get_num_threads(), "dtype": "float16", "sha256": digest,
    }
    save_weights(out, state, provenance, header=False)  # the sidecar's sha256 pairs it with the file
    return {**metrics, "val_accuracy": round(acc, 4), "sha256": digest[:16]}


def pretrain_stage(name: str) -> Stage:
    """The stage that pretrains stand-in ``name``."""
    return Stage(f"pretrain_{name}", run, reads=PRETRAIN_READS, writes=(MODEL_FILE, BACKBONE_FILE), reads_data=False,
                 description=f"stand-in {name} ({STANDINS[name].timm_name}) pretrained on the procedural corpus")


PRETRAIN_STAGES = [pretrain_stage(name) for name in STANDINS]
