"""Stage ``make_pseudo_labels`` of the sparse flows: a trained segmentation network's predictions on
``data.label_split`` (multi-scale + flip, ``segmentation.eval_scales`` / ``eval_flip``) stored as pseudo labels.
A method may refine the probabilities before the arg-max (APro: ``stages/apro_pseudo_labels.py``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.runtime import Runtime
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.voc import VOCFolder
from stages.common import fill_store, image_pool, same_size_groups, trained_model
from stages.eval_segmentation import batch_probs
from stages.make_pseudo_labels import PSEUDO_LABELS


@dataclass
class PseudoPredictWorker:
    config: ConfigView
    model: Path  # any segmenter's weights
    root: Path
    out: Path
    refine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (uint8 image, K×H×W probs) -> probs

    def __call__(self, image_id: str) -> None:
        self.batch([image_id])

    def batch(self, image_ids: list[str]) -> list[None]:
        """The labels of several images, those of one size in one forward pass (``ImagePool.batch`` on a GPU)."""
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


def predict_pseudo_labels(ctx, refine: Callable | None = None, route: str = "prediction") -> dict:
    """Every image of ``data.label_split`` into the stage's pseudo-label store, refined by ``refine`` (picklable)."""
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    # a refinement is CPU work per image: then the pool's processes run the network and the refinement
    fill_store(ctx, PSEUDO_LABELS, {"kind": "labels", "route": route}, ds.ids,
               lambda out: PseudoPredictWorker(cfg, ctx.input("model"), ds.root, out, refine),
               image_pool(ctx, network=refine is None))
    return {"images": len(ds), "route": route}


#: what the prediction of pseudo labels reads (a refining method's stage adds its own keys)
PREDICT_READS = ("amp", "segmentation.eval_scales", "segmentation.eval_flip", "data.label_split", "data.max_images")
PREDICTED_PSEUDO_LABELS = Stage("make_pseudo_labels", predict_pseudo_labels, reads=PREDICT_READS, writes=(PSEUDO_LABELS,),
                                inputs=("model",), description="the segmentation network's predictions as pseudo labels")
