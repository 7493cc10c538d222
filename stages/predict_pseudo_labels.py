"""Stage ``make_pseudo_labels`` of the sparse flows: a trained segmentation network's predictions on
``data.label_split`` (multi-scale + flip, ``segmentation.eval_scales`` / ``eval_flip``) stored as pseudo labels.
A method may refine the probabilities before the arg-max (APro: ``stages/apro_pseudo_labels.py``)."""
from __future__ import annotations

from collections.abc import Callable

from pipeline.stage import Stage
from stages.common import fill_store, image_pool
from stages.eval_segmentation import PredictWorker
from stages.make_pseudo_labels import PSEUDO_LABELS


def predict_pseudo_labels(ctx, refine: Callable | None = None, route: str = "prediction") -> dict:
    """Every image of ``data.label_split`` into the stage's pseudo-label store, refined by ``refine`` (picklable)."""
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    # a refinement is CPU work per image: then the pool's processes run the network and the refinement
    fill_store(ctx, PSEUDO_LABELS, {"kind": "labels", "route": route}, ds.ids,
               lambda out: PredictWorker(cfg, ctx.input("model"), ds.root, out, refine),
               image_pool(ctx, network=refine is None))
    return {"images": len(ds), "route": route}


#: what the prediction of pseudo labels reads (a refining method's stage adds its own keys)
PREDICT_READS = ("amp", "segmentation.eval_scales", "segmentation.eval_flip", "data.label_split", "data.max_images")
PREDICTED_PSEUDO_LABELS = Stage("make_pseudo_labels", predict_pseudo_labels, reads=PREDICT_READS, writes=(PSEUDO_LABELS,),
                                inputs=("model",), description="the segmentation network's predictions as pseudo labels")
