"""Stage ``train_sasformer``: SASFormer's single-stage training (``models/sasformer.py``) of SegFormer on sparse
labels: partial cross-entropy on the labelled pixels plus α times the hierarchical attention affinity loss over
the encoder's four blocks. α is ``sasformer.alpha``, or the paper's for ``data.sparse.kind`` (1.2 scribbles, 0.2
points); α = 0 trains the SegFormer baseline on the same network, data and schedule. The crop's padding is labelled
``CROP_PADDING`` in the batches (the reference code's −2), apart from the unlabelled pixels (255)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models.sasformer import CROP_PADDING, SASFormerLoss, resolve_alpha, sasformer_spec
from pipeline.checkpoint import MODEL_FILE
from pipeline.stage import Stage
from pipeline.store import LabelStore
from pipeline.transforms import normalise, train_transform
from pipeline.voc import IGNORE_INDEX, VOCFolder
from stages.common import run_training
from stages.train_segmentation import SegmentationSamples

#: the unlabelled pixels' value while the crop pads with IGNORE_INDEX (no VOC class and not 255)
_UNLABELLED_IN_TRANSIT = 254


def mark_padding(label: np.ndarray, transform) -> tuple:
    """Run ``transform(label')`` (which pads its crop with 255) on the label with its unlabelled pixels moved to 254,
    then give them 255 back and the padding ``CROP_PADDING``: the crop's padding told apart from the unlabelled.

    >>> pad = lambda lab: np.pad(lab, ((0, 0), (0, 1)), constant_values=IGNORE_INDEX)
    >>> mark_padding(np.array([[3, 255]], np.uint8), pad).tolist()
    [[3, 255, -2]]
    """
    if (label == _UNLABELLED_IN_TRANSIT).any():
        raise ValueError(f"label value {_UNLABELLED_IN_TRANSIT} is reserved while cropping")
    out = np.asarray(transform(np.where(label == IGNORE_INDEX, _UNLABELLED_IN_TRANSIT, label).astype(np.uint8))).astype(np.int64)
    padding = out == IGNORE_INDEX
    out[out == _UNLABELLED_IN_TRANSIT] = IGNORE_INDEX
    out[padding] = CROP_PADDING
    return out


#: the reference code's random_resize aspect range (configs/voc2012/Segformerb4_512_3.json:60)
REFERENCE_ASPECT_RANGE = (0.9, 1.1)


def reference_augment(image: np.ndarray, label: np.ndarray, crop: int, scale_range: tuple[float, float], shift: float,
                      rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's training augmentation (``sasformer.augment: reference``), in its order:
    ``trans_seq`` (Segformerb4_512_3.json:47) random_hflip (p 0.5), random_resize (scale s ~ U(scale_range), aspect
    a ~ U(0.9, 1.1), size (⌊w·√a·s⌋, ⌊h·s/√a⌋), the image bicubic and the label nearest:
    cv2_aug_transforms.py:389-392, 447-455), random_crop (min(crop, side) at a random place, :620); then the collate's
    padding to crop×crop at a random offset, the image 0 and the label −2 (collate.py:116-147); then the trainer's
    brightness shift, one integer in [−shift, shift] added to every pixel, padding included, rounded and clipped
    (trainer.py:194-199); ImageNet normalisation. PIL's bicubic and nearest stand in for OpenCV's (the same
    filters up to their kernels' rounding). Returns the 3×crop×crop image and the int64 label (255 unlabelled).

    >>> img, lab = reference_augment(np.zeros((4, 6, 3), np.uint8), np.full((4, 6), 255, np.uint8), 8, (1.0, 1.0), 0, np.random.default_rng(0))
    >>> tuple(img.shape), sorted(set(lab.flatten().tolist()))
    ((3, 8, 8), [-2, 255])
    """
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    h, w = label.shape
    s, a = rng.uniform(*scale_range), rng.uniform(*REFERENCE_ASPECT_RANGE)
    size = (max(1, int(w * np.sqrt(a) * s)), max(1, int(h * np.sqrt(1.0 / a) * s)))
    image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BICUBIC))
    label = np.asarray(Image.fromarray(np.ascontiguousarray(label)).resize(size, Image.NEAREST))
    h, w = label.shape
    th, tw = min(crop, h), min(crop, w)
    y0, x0 = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
    image, label = image[y0:y0 + th, x0:x0 + tw], label[y0:y0 + th, x0:x0 + tw]
    up, left = int(rng.integers(0, crop - th + 1)), int(rng.integers(0, crop - tw + 1))
    canvas = np.zeros((crop, crop, 3), np.float32)
    canvas[up:up + th, left:left + tw] = image
    lab = np.full((crop, crop), CROP_PADDING, np.int64)
    lab[up:up + th, left:left + tw] = label
    if shift > 0:
        canvas = canvas + int(rng.integers(-int(shift), int(shift) + 1))
    canvas = np.clip(np.around(canvas), 0, 255).astype(np.uint8)
    return normalise(canvas), torch.from_numpy(lab)


@dataclass
class SparseCropSamples(SegmentationSamples):
    """``SegmentationSamples`` whose labels mark the crop's padding ``CROP_PADDING`` (int64 labels); ``augment``:
    ``pipeline`` (the shared ``train_transform``) or ``reference`` (``reference_augment``)."""

    augment: str = "pipeline"

    def __call__(self, i: int, rng: np.random.Generator):
        label = LabelStore(self.labels).read(self.ids[i])
        if self.augment == "reference":
            return reference_augment(VOCFolder(self.root).image(self.ids[i]), label, self.cfg.crop_size, self.cfg.scale_range,
                                     self.cfg.brightness_shift, rng)
        result = {}

        def transform(lab: np.ndarray) -> np.ndarray:
            img, out = train_transform(VOCFolder(self.root).image(self.ids[i]), lab, self.cfg.crop_size, self.cfg.scale_range,
                                       self.cfg.hflip, self.cfg.color_jitter, rng, self.cfg.brightness_shift)
            result["image"] = img
            return out.numpy()

        lab = torch.from_numpy(mark_padding(label, transform))
        return result["image"], lab


def run(ctx) -> dict:
    cfg = ctx.config
    s = cfg.sasformer
    store = LabelStore(ctx.input("labels"))
    ids = store.ids()
    alpha = resolve_alpha(s.alpha, cfg.data.sparse.kind)
    loss = SASFormerLoss(alpha, tuple(s.blocks), s.distance, s.block_reduction, s.partial_ce_at)
    metrics = run_training(ctx, sasformer_spec(s, VOCFolder(ctx.run.voc_root).num_classes), SparseCropSamples(ctx.run.voc_root, ids, store.path, s.train, s.augment),
                           len(ids), lambda model: loss, s.train)
    return {**metrics, "labels": ctx.input_stage("labels"), "alpha": alpha, "blocks": list(s.blocks), "distance": s.distance}


TRAIN_SASFORMER = Stage("train_sasformer", run,
                        reads=("amp", "sasformer", "seed", "data.train_split", "data.max_images", "data.sparse.kind"),
                        writes=(MODEL_FILE,), inputs=("labels",),
                        description="SASFormer: SegFormer on sparse labels + the hierarchical attention affinity loss")
