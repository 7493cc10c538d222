"""Stage ``train_single_stage``: AFA's single-stage training (classification, affinity, segmentation at once).

Each step (``AFALoss``):
1. L_cls: multi-label soft margin on the pooled scores.
2. Reliable CAM labels: CAMs (normalised, present classes only) with background at β_h and β_l
   (``afa.bkg_band``), PAR-refined (``afa.par``), combined by ``stages.labels.reliable_labels``. The CAMs are the
   batch's own (``afa.label_cams=train``) or a separate multi-scale + flip pass without gradient
   (``multiscale``, the released code), fused by ``afa.cam_fusion``.
3. L_aff (Eq. 5) of the AFA module against the affinity labels of (2) at feature resolution within ``afa.radius``.
4. Segmentation labels: the CAMs propagated by the random walk over the learned affinity (detached; with
   ``multiscale`` the largest scale's), PAR-refined (on the image's box with ``afa.par_on_box``) and combined in the
   same way; before ``afa.seg_propagated_from`` (and with ``afa.affinity=false``) the labels of (2). L_seg is the
   cross-entropy (``afa.seg_loss``: one CE, or the released code's background/foreground halves), L_reg the local
   consistency of the prediction.
L = L_cls + λ₁L_seg + λ₂L_aff + λ₃L_reg, with L_aff from ``afa.cls_warmup_steps`` and L_seg, L_reg
from ``afa.aff_warmup_steps`` (the paper's warm-up of the classification, then the affinity branch).
With ``afa.checkpoint`` the stage stores the released code's trained network instead (``store_released``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.afa import (AFAConfig, affinity_loss, affinity_targets, afa_spec, balanced_seg_loss, local_consistency_loss,
                        multiscale_cams_and_affinity, released_state_dict)
from pipeline.checkpoint import MODEL_FILE, load_model_weights, save_weights
from pipeline.config import ParConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.stage import Stage
from pipeline.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise, train_transform
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
    pad: str = "mean"  # ``afa.crop_pad``: black fills the padding as AFA's released crop does (datasets/voc.py:112)

    def __call__(self, i: int, rng: np.random.Generator):
        image = VOCFolder(self.root).image(self.ids[i])
        # a mask of ones comes back as 1 on image pixels and 255 on the crop's padding
        img, inside = train_transform(image, np.ones(image.shape[:2], np.uint8), self.cfg.crop_size, self.cfg.scale_range,
                                      self.cfg.hflip, self.cfg.color_jitter, rng, self.cfg.brightness_shift)
        if self.pad == "black":  # 0 then normalised, as the released random_crop (datasets/transforms.py:117-126)
            img = torch.where(inside[None] == 1, img, normalise(np.zeros((1, 1, 3), np.uint8)))
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

    def refine(self, images: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """PAR (``pseudo.par``) of B×K×h×w scores over ``images`` (the scores resized to them)."""
        p = self.par
        return par(images, scores, p.dilations, p.num_iter, p.w_rgb, p.w_pos, p.w_mix)

    def labels(self, rgb: torch.Tensor, routes: list[tuple[torch.Tensor, torch.Tensor | None]], present: PresentClasses,
               valid: torch.Tensor) -> list[torch.Tensor]:
        """Reliable labels (B×H×W) of each route (CAMs of the present classes, affinity or None: not propagated).

        A route's CAMs lie on its affinity's grid (anywhere without one). The score maps go through PAR in one call
        (its kernel is computed once), on the crop downscaled by ``afa.par_downscale``; with ``afa.par_on_box`` the
        propagated scores are refined image by image on the image's box instead (``box_refined``).
        """
        c, size = self.cfg, rgb.shape[-2:]
        small = (size[0] // c.par_downscale, size[1] // c.par_downscale)
        on_box = [c.par and c.par_on_box and aff is not None for _, aff in routes for _ in range(2)]
        scores = [label_scores(cams, present, bkg, size if box else small, aff, c.radius, c.beta, c.log_t, c.walk_eps)
                  for cams, aff in routes for bkg in (c.bkg_band[1], c.bkg_band[0])
                  for box in [c.par and c.par_on_box and aff is not None]]
        whole = [i for i, box in enumerate(on_box) if not box]
        if c.par and whole:
            images = F.interpolate(rgb, size=small, mode="bilinear", align_corners=False)
            refined = self.refine(images, torch.cat([scores[i] for i in whole], 1)).split([scores[i].shape[1] for i in whole], 1)
            for i, r in zip(whole, refined):
                scores[i] = r
        labs = [present.to_labels(box_refined(rgb, s, valid, c.par_downscale, self.refine) if box
                                  else F.interpolate(s, size=size, mode="bilinear", align_corners=False))
                for s, box in zip(scores, on_box)]
        return [reliable_labels(hi, lo).masked_fill(~valid, IGNORE_INDEX) for hi, lo in zip(labs[::2], labs[1::2])]

    def seg_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.seg_loss == "balanced":
            return balanced_seg_loss(logits, labels)
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)

    def step_labels(self, model: torch.nn.Module, images: torch.Tensor, rgb: torch.Tensor, labels: torch.Tensor,
                    valid: torch.Tensor, out, propagated: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's PAR labels of the CAM (L_aff's, B×H×W) and L_seg's labels (the propagated ones if ``propagated``)."""
        c = self.cfg
        present = PresentClasses.from_labels(labels)
        # the labels in float32 outside any autocast (amp), as at inference: the thresholds and the walk's
        # matrix powers are not to be rounded to bf16/fp16
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            if c.label_cams == "multiscale":  # a separate multi-scale pass (the released code's labels)
                ms, (aff, grid) = multiscale_cams_and_affinity(model.maps_and_affinity, images.float(), c.label_scales,
                                                               True, c.cam_fusion)
                cams = present.gather(ms)
                cams_on_grid = F.interpolate(cams, size=grid, mode="bilinear", align_corners=False)
            else:
                cams = cams_on_grid = present.gather(normalise_batch_cams(out.cam.detach().float()))
                aff = torch.sigmoid(out.aff.detach().float())
            found = self.labels(rgb, [(cams, None)] + ([(cams_on_grid, aff)] if propagated else []), present, valid)
        return found[0], found[-1]

    def __call__(self, model: torch.nn.Module, batch, step: int = 0) -> dict:
        images, labels, valid = batch
        c = self.cfg
        out = model.forward_train(images)
        zero = out.cls.new_zeros(())
        losses = {"cls": F.multilabel_soft_margin_loss(out.cls, labels), "aff": zero, "seg": zero, "reg": zero}
        total = c.cls_weight * losses["cls"]
        if step >= c.cls_warmup_steps and (c.affinity or step >= c.aff_warmup_steps):
            train_seg = step >= c.aff_warmup_steps
            propagated = train_seg and c.affinity and step >= c.seg_propagated_from
            rgb = to_rgb(images)
            cam_labels, seg_labels = self.step_labels(model, images, rgb, labels, valid, out, propagated)
            if c.affinity:
                grid = out.cam.shape[-2:]
                small = F.interpolate(cam_labels[:, None].float(), size=grid, mode="nearest")[:, 0].long()
                losses["aff"] = affinity_loss(out.aff, affinity_targets(small, c.radius))
                total = total + c.aff_weight * losses["aff"]
            if train_seg:
                seg = F.interpolate(out.seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
                losses["seg"] = self.seg_loss(seg, seg_labels)
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


def box_refined(rgb: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, downscale: int, refine) -> torch.Tensor:
    """B×K×H×W scores refined image by image on the image's box within the crop (``valid``'s bounding box): the box's
    pixels and scores cut out, ``refine(images downscaled by downscale, scores)`` (PAR resizes the scores to the
    images), the result resized back to the box; zeros outside it (AFA's released ``refine_cams_with_cls_label``,
    ``utils/camutils.py:200-223``)."""
    out = torch.zeros_like(scores)
    for i in range(scores.shape[0]):
        rows, cols = valid[i].any(1).nonzero()[:, 0], valid[i].any(0).nonzero()[:, 0]
        if not len(rows):
            continue
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        img = rgb[i:i + 1, :, y0:y1, x0:x1]
        h, w = img.shape[-2:]
        small = F.interpolate(img, size=(max(1, h // downscale), max(1, w // downscale)), mode="bilinear", align_corners=False)
        refined = refine(small, scores[i:i + 1, :, y0:y1, x0:x1])
        out[i, :, y0:y1, x0:x1] = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out


def store_released(ctx, spec, file: str) -> dict:
    """``afa.checkpoint``: the released code's trained network (a ``WeTr`` state dict, ``wetr_iter_*.pth``) mapped to
    this network (``models.afa.released_state_dict``, strict) and stored as this stage's model, without training."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"afa.checkpoint {file} does not exist: give the released AFA network (wetr_iter_*.pth, docs/afa.md) "
                        "or set afa.checkpoint=null to train")
    model = spec.for_inference().build()
    try:
        state = load_model_weights(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"afa.checkpoint {path} could not be read ({str(e).splitlines()[0][:120]}): give a torch or safetensors "
                        "state dict") from None
    model.load_state_dict(released_state_dict(state, model, spec.kwargs["backbone"], f"afa.checkpoint {path}"))
    save_weights(ctx.dir / MODEL_FILE, model.state_dict(), {"key": ctx.key, "stage": ctx.stage.name, "model": spec.to_json(),
                                                             "step": 0, "losses": {}, "checkpoint": str(path)})
    return {"steps": 0, "checkpoint": str(path), "tensors": len(state)}


def run(ctx) -> dict:
    cfg = ctx.config
    if cfg.afa.checkpoint:
        return store_released(ctx, afa_spec(cfg.afa), cfg.afa.checkpoint)
    ds = ctx.dataset(cfg.data.train_split)
    ids, labels = labelled_images(ds)
    tcfg = cfg.afa.train
    metrics = run_training(ctx, afa_spec(cfg.afa, num_classes=labels.shape[1]), SingleStageSamples(ds.root, ids, labels, tcfg, cfg.afa.crop_pad),
                           len(ids), lambda model: AFALoss(cfg.afa, cfg.pseudo.par), tcfg)
    # images without any image-level label (COCO's unannotated ones) are not trained on: counted here
    return {**metrics, "unlabelled_images": len(ds) - len(ids)}


#: every ``afa`` key but the one that only the pseudo-label stage reads
_AFA_TRAIN = tuple(f"afa.{k}" for k in AFAConfig.model_fields if k != "propagate")
TRAIN_SINGLE_STAGE = Stage("train_single_stage", run,
                           reads=(*_AFA_TRAIN, "pseudo.par", "seed", "amp", "data.train_split", "data.max_images"),
                           writes=(MODEL_FILE,),
                           description="AFA: classification, affinity from attention and segmentation trained at once")
