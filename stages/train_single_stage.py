"""Stage ``train_single_stage``: AFA's single-stage training (classification, affinity, segmentation at once).

Each step (``AFALoss``):
1. L_cls: multi-label soft margin on the pooled scores.
2. Reliable CAM labels: the batch's own CAMs (normalised, present classes only) with background at
   β_h and β_l (``afa.bkg_band``), PAR-refined (``afa.par``), combined by ``stages.labels.reliable_labels``.
3. L_aff (Eq. 5) of the AFA module against the affinity labels of (2) at feature resolution within ``afa.radius``.
4. Segmentation labels: the CAMs propagated by the random walk over the learned affinity (detached),
   PAR-refined and combined in the same way (``afa.affinity=false``: the labels of (2)); L_seg is the
   cross-entropy, L_reg the local consistency of the prediction.
L = L_cls + λ₁L_seg + λ₂L_aff + λ₃L_reg, with L_aff from ``afa.cls_warmup_steps`` and L_seg, L_reg
from ``afa.aff_warmup_steps`` (the paper's warm-up of the classification, then the affinity branch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.afa import AFAConfig, affinity_loss, affinity_targets, afa_spec, local_consistency_loss
from pipeline.checkpoint import MODEL_FILE
from pipeline.config import ParConfig, TrainConfig
from pipeline.stage import Stage
from pipeline.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform
from pipeline.voc import IGNORE_INDEX, VOCFolder
from stages.afa_labels import PresentClasses, label_scores, normalise_batch_cams
from stages.common import labelled_images, run_training
from stages.labels import reliable_labels
from stages.refine import par


@dataclass
class SingleStageSamples:
    """Image ``i`` of a split, augmented: (image, 20-way multi-hot label, validity of each crop pixel)."""

    root: Path
    ids: list[str]
    labels: np.ndarray
    cfg: TrainConfig

    def __call__(self, i: int, rng: np.random.Generator):
        image = VOCFolder(self.root).image(self.ids[i])
        # a mask of ones comes back as 1 on image pixels and 255 on the crop's padding
        img, inside = train_transform(image, np.ones(image.shape[:2], np.uint8), self.cfg.crop_size, self.cfg.scale_range,
                                      self.cfg.hflip, self.cfg.color_jitter, rng, self.cfg.brightness_shift)
        return img, torch.from_numpy(self.labels[i]), inside == 1


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Normalised B×3×H×W → RGB in 0..255 (for PAR and L_reg)."""
    mean = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1).to(images)
    std = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1).to(images)
    return (images * std + mean) * 255


@dataclass
class AFALoss:
    """One AFA training step's losses (module docstring)."""

    cfg: AFAConfig
    par: ParConfig

    def labels(self, rgb: torch.Tensor, cams: torch.Tensor, present: PresentClasses, valid: torch.Tensor,
               affinities: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Reliable labels (B×H×W) of the CAMs, once per entry of ``affinities`` (None: no propagation).

        All score maps of a step go through PAR in one call (its kernel is computed once).
        """
        c, size = self.cfg, rgb.shape[-2:]
        small = (size[0] // c.par_downscale, size[1] // c.par_downscale)
        scores = [label_scores(cams, present, bkg, small, aff, c.radius, c.beta, c.log_t)
                  for aff in affinities for bkg in (c.bkg_band[1], c.bkg_band[0])]
        if c.par:
            p = self.par
            refined = par(F.interpolate(rgb, size=small, mode="bilinear", align_corners=False), torch.cat(scores, 1),
                          p.dilations, p.num_iter, p.w_rgb, p.w_pos, p.w_mix)
            scores = list(refined.split([s.shape[1] for s in scores], 1))
        labs = [present.to_labels(F.interpolate(s, size=size, mode="bilinear", align_corners=False)) for s in scores]
        return [reliable_labels(hi, lo).masked_fill(~valid, IGNORE_INDEX) for hi, lo in zip(labs[::2], labs[1::2])]

    def __call__(self, model: torch.nn.Module, batch, step: int = 0) -> dict:
        images, labels, valid = batch
        c = self.cfg
        out = model.forward_train(images)
        zero = out.cls.new_zeros(())
        losses = {"cls": F.multilabel_soft_margin_loss(out.cls, labels), "aff": zero, "seg": zero, "reg": zero}
        total = c.cls_weight * losses["cls"]
        if step >= c.cls_warmup_steps and (c.affinity or step >= c.aff_warmup_steps):
            train_seg = step >= c.aff_warmup_steps
            rgb = to_rgb(images)
            present = PresentClasses.from_labels(labels)
            # the labels in float32 outside any autocast (amp), as at inference: the thresholds and the walk's
            # matrix powers are not to be rounded to bf16/fp16
            with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
                cams = present.gather(normalise_batch_cams(out.cam.detach().float()))
                affinities: list[torch.Tensor | None] = [None]
                if train_seg and c.affinity:
                    affinities.append(torch.sigmoid(out.aff.detach().float()))
                found = self.labels(rgb, cams, present, valid, affinities)
            cam_labels, seg_labels = found[0], found[-1]
            if c.affinity:
                grid = out.cam.shape[-2:]
                small = F.interpolate(cam_labels[:, None].float(), size=grid, mode="nearest")[:, 0].long()
                losses["aff"] = affinity_loss(out.aff, affinity_targets(small, c.radius))
                total = total + c.aff_weight * losses["aff"]
            if train_seg:
                seg = F.interpolate(out.seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
                losses["seg"] = F.cross_entropy(seg, seg_labels, ignore_index=IGNORE_INDEX)
                total = total + c.seg_weight * losses["seg"]
                if c.reg:
                    size = [max(1, round(s * c.reg_scale)) for s in images.shape[-2:]]
                    probs = F.interpolate(out.seg, size=size, mode="bilinear", align_corners=False).softmax(1)
                    losses["reg"] = local_consistency_loss(
                        F.interpolate(rgb, size=size, mode="bilinear", align_corners=False), probs,
                        F.interpolate(valid[:, None].float(), size=size, mode="nearest")[:, 0],
                        c.reg_kernel, c.reg_sigma_rgb, c.reg_sigma_xy)
                    total = total + c.reg_weight * losses["reg"]
        return {"loss": total, **losses}


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.train_split)
    ids, labels = labelled_images(ds)
    tcfg = cfg.afa.train
    return run_training(ctx, afa_spec(cfg.afa), SingleStageSamples(ds.root, ids, labels, tcfg), len(ids),
                        lambda model: AFALoss(cfg.afa, cfg.pseudo.par), tcfg)


#: every ``afa`` key but the one that only the pseudo-label stage reads
_AFA_TRAIN = tuple(f"afa.{k}" for k in AFAConfig.model_fields if k != "propagate")
TRAIN_SINGLE_STAGE = Stage("train_single_stage", run,
                           reads=(*_AFA_TRAIN, "pseudo.par", "seed", "amp", "data.train_split", "data.max_images"),
                           writes=(MODEL_FILE,),
                           description="AFA: classification, affinity from attention and segmentation trained at once")
