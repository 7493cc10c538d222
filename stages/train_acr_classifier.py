"""Stage ``train_classifier`` of ACR: the class-token ViT trained with all-pairs attention consistency.

Each batch is paired with a random view of it (``acr.transforms``); ``models.acr.acr_losses`` gives
L = w·(L_cls(x) + L_cls(f(x))) + α·L_act + β·L_aff (``acr.cls_loss``, ``acr.consistency_l1``), with α and β
switched on by ``models.acr.consistency_weight`` (``acr.start_step``, ``acr.ramp_steps``). The network's own
choices (``acr.head_input``, ``acr.pos_embed``, ``acr.stem_std``) are part of its model spec.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.acr import ACRConfig, acr_classifier_spec, acr_losses, consistency_weight, view_seed
from models.token_views import sample_view
from pipeline.checkpoint import MODEL_FILE
from pipeline.errors import UserError
from pipeline.stage import Stage
from pipeline.training import first_of_global_batch
from stages.common import check_layers, run_training
from stages.train_classifier import CLASSIFIER_READS, classifier_samples


@dataclass
class ACRLoss:
    """``models.acr.acr_losses`` with a view drawn from the batch's own seed."""

    cfg: ACRConfig
    crop_size: int

    def __call__(self, model: torch.nn.Module, batch, step: int = 0) -> dict:
        images, labels, seeds = batch
        c = self.cfg
        # one view for the step's global batch, whichever process holds which slice of it
        view = sample_view(view_seed(first_of_global_batch(seeds)), c.transforms, c.resize_range, self.crop_size,
                           model.patch_size)
        on = consistency_weight(step, c.start_step, c.ramp_steps)
        return acr_losses(model, images, labels, view, c.alpha * on, c.beta * on, c.layers, c.cls_loss, c.consistency_l1)


def run(ctx) -> dict:
    cfg = ctx.config
    crop = cfg.train_classifier.crop_size
    samples, n = classifier_samples(ctx)

    def make_loss(model) -> ACRLoss:
        if crop % model.patch_size:
            raise UserError(f"train_classifier.crop_size={crop} is not a multiple of the patch size {model.patch_size}: "
                            "ACR's flips and rotations permute whole patches only")
        check_layers(cfg.acr.layers, model.num_layers, "acr.layers")
        return ACRLoss(cfg.acr, crop)

    metrics = run_training(ctx, acr_classifier_spec(cfg.model, crop, cfg.acr, num_classes=samples.labels.shape[1]), samples, n,
                           make_loss, cfg.train_classifier)
    # images without any image-level label (COCO's unannotated ones) are not trained on: counted here
    return {**metrics, "unlabelled_images": len(ctx.dataset(cfg.data.train_split)) - n}


TRAIN_ACR_CLASSIFIER = Stage(
    "train_classifier", run,
    reads=(*CLASSIFIER_READS, "acr.alpha", "acr.beta", "acr.layers", "acr.transforms", "acr.resize_range",
           "acr.start_step", "acr.ramp_steps", "acr.cls_loss", "acr.consistency_l1", "acr.head_input", "acr.pos_embed",
           "acr.stem_std"),
    writes=(MODEL_FILE,), description="class-token ViT classifier with ACR's attention consistency across views")
