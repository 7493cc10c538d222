"""Stage ``eval_pseudo_labels``: pseudo-label mIoU (ignored pixels skipped) and coverage."""
from __future__ import annotations

from pipeline.stage import Stage
from pipeline.store import LabelStore
from stages.eval_seeds import score_ids
from stages.evaluate import evaluate_labels


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    return evaluate_labels(ds, LabelStore(ctx.input("labels")), cfg.pseudo.workers, ctx.stage.name, score_ids(ctx))


EVAL_PSEUDO_LABELS = Stage("eval_pseudo_labels", run, reads=("data.score_split", "data.label_split", "data.max_images"),
                           inputs=("labels",), summary={"pseudo_miou": "miou", "pseudo_coverage": "coverage"},
                           description="pseudo-label mIoU and coverage")
