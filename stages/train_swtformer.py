"""Stage ``train_classifier`` of SWTformer: the Swin Transformer CAM classifier (V1), or with HFF, seed locating,
background-aware prototypes and L_GSC + L_CCL (V2), on the image-level labels.

``models.swtformer.swtformer_losses`` gives L = L_CLS (+ L_GSC + L_CCL for V2, each switched by
``swtformer.gsc`` / ``swtformer.ccl``: Table 3; both from ``swtformer.start_step`` on); the schedule is the
``train_classifier`` section's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.swtformer import swtformer_losses, swtformer_spec
from pipeline.checkpoint import MODEL_FILE
from pipeline.stage import Stage
from stages.common import run_training
from stages.train_classifier import classifier_samples


@dataclass
class SWTformerLoss:
    """Eq. 7, with L_GSC and L_CCL from ``start_step`` on."""

    gsc: bool
    ccl: bool
    start_step: int = 0

    def __call__(self, model: torch.nn.Module, batch, step: int = 0) -> dict:
        images, labels, _ = batch
        on = step >= self.start_step
        return swtformer_losses(model, images, labels, self.gsc and on, self.ccl and on)


def run(ctx) -> dict:
    cfg = ctx.config
    samples, n = classifier_samples(ctx)
    return run_training(ctx, swtformer_spec(cfg.swtformer, num_classes=samples.labels.shape[1]), samples, n,
                        lambda model: SWTformerLoss(cfg.swtformer.gsc, cfg.swtformer.ccl, cfg.swtformer.start_step), cfg.train_classifier)


TRAIN_SWTFORMER = Stage(
    "train_classifier", run,
    reads=("swtformer", "train_classifier", "seed", "amp", "data.train_split", "data.max_images"),
    writes=(MODEL_FILE,), description="SWTformer's Swin Transformer classifier (V1 CAM; V2 + HFF, prototypes, L_GSC, L_CCL)")
