"""Stage ``eval_sparse_labels``: how good and how dense the sparse annotations are — mIoU over the labelled pixels
against the masks (``accuracy`` of the annotation) and ``coverage`` (the labelled fraction of the valid pixels)."""
from __future__ import annotations

from pipeline.stage import Stage
from pipeline.store import LabelStore
from stages.common import image_pool
from stages.evaluate import evaluate_labels


def run(ctx) -> dict:
    cfg = ctx.config
    store = LabelStore(ctx.input("labels"))
    out = evaluate_labels(ctx.dataset(cfg.data.train_split), store, image_pool(ctx), ctx.stage.name)
    out["annotated"] = len(store)
    return out


EVAL_SPARSE_LABELS = Stage("eval_sparse_labels", run, reads=("data.train_split", "data.max_images"), inputs=("labels",),
                           summary={"sparse_miou": "miou", "sparse_coverage": "coverage"}, masks="score",
                           description="sparse annotations' mIoU over labelled pixels and coverage")
