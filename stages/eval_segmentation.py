"""Stage ``eval_segmentation``: multi-scale + flip inference on val, optional dense CRF, val mIoU.

Predictions are stored in ``predictions.zarr`` (so ``cli.py show`` can draw them).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.runtime import Runtime
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import fill_store, image_pool, same_size_groups, trained_model
from stages.crf import dense_crf
from stages.evaluate import evaluate_labels

PREDICTIONS = "predictions.zarr"


@torch.no_grad()
def batch_probs(model: torch.nn.Module, images: list[np.ndarray], scales: list[float], flip: bool,
                runtime: Runtime = Runtime()) -> np.ndarray:
    """Mean softmax over scales (and flips), at the images' size: B×C×H×W, for uint8 images of one size that go
    through the network together (the model on ``runtime``)."""
    x = runtime.to(torch.stack([normalise(im) for im in images]))
    b, (h, w) = len(images), images[0].shape[:2]
    total, n = 0, 0
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        with runtime.autocast():
            logits = model(batch)
        p = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False).softmax(1)
        total = total + p[:b] + (p[b:].flip(-1) if flip else 0)
        n += 2 if flip else 1
    return (total / n).cpu().numpy()


def multiscale_probs(model: torch.nn.Module, image: np.ndarray, scales: list[float], flip: bool,
                     runtime: Runtime = Runtime()) -> np.ndarray:
    """Mean softmax over scales (and flips), at the image's size: C×H×W (the model on ``runtime``)."""
    return batch_probs(model, [image], scales, flip, runtime)[0]


@dataclass
class CRFRefinement:
    """The dense CRF (``pseudo.crf``) of an image's probabilities, as a ``PredictWorker`` refinement."""

    crf: ConfigView

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        c = self.crf
        return dense_crf(image, probs, c.n_iter, c.pos_xy_std, c.pos_w, c.bi_xy_std, c.bi_rgb_std, c.bi_w)


@dataclass
class PredictWorker:
    """A segmenter's arg-max labels of images (multi-scale + flip: ``segmentation.eval_scales`` / ``eval_flip``)
    into a label store, its probabilities first passed through ``refine`` (picklable) when given."""

    config: ConfigView
    model: Path  # any segmenter's weights (models.protocols.Segmenter)
    root: Path
    out: Path
    refine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (uint8 image, K×H×W probs) -> probs

    def __call__(self, image_id: str) -> None:
        self.batch([image_id])

    def batch(self, image_ids: list[str]) -> list[None]:
        """The predictions of several images, those of one size in one forward pass (``ImagePool.batch`` on a GPU)."""
        s = self.config.segmentation
        folder = VOCFolder(self.root)
        rt = Runtime.from_config(self.config)
        model = trained_model(self.model, rt)
        images = {i: folder.image(i) for i in image_ids}
        for group in same_size_groups(images):
            for i, probs in zip(group, batch_probs(model, [images[i] for i in group], s.eval_scales, s.eval_flip, rt)):
                if self.refine is not None:
                    probs = self.refine(images[i], probs)
                LabelStore(self.out).write(i, probs.argmax(0).astype(np.uint8))
        return [None] * len(image_ids)


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.segmentation.eval_split)
    # inference uses torch's threads (or the GPU) in one process; with the CRF, the pool's processes run the
    # network (one torch thread each, or spawned beside the GPU) and the CRF
    refine = CRFRefinement(cfg.pseudo.crf) if cfg.segmentation.eval_crf else None
    store, _ = fill_store(ctx, PREDICTIONS, {"kind": "labels"}, ds.ids,
                          lambda out: PredictWorker(cfg, ctx.input("model"), ds.root, out, refine),
                          image_pool(ctx, network=refine is None))
    out = evaluate_labels(ds, store, image_pool(ctx), ctx.stage.name)
    out.pop("coverage", None)
    return out


EVAL_SEGMENTATION = Stage("eval_segmentation", run,
                          reads=("amp", "segmentation.eval_scales", "segmentation.eval_flip", "segmentation.eval_crf",
                                 "segmentation.eval_split", "pseudo.crf", "data.max_images"),
                          writes=(PREDICTIONS,), inputs=("model",), summary={"seg_miou": "miou"}, masks="score",
                          description="multi-scale (+CRF) inference on val, mIoU")
