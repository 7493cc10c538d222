"""Stage ``eval_pseudo_labels``: pseudo-label mIoU (ignored pixels skipped) and coverage."""
from __future__ import annotations

from pipeline.store import LabelStore
from stages.eval_seeds import score_ids
from stages.evaluate import evaluate_labels


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.label_split)
    store = LabelStore(ctx.input_dir("make_pseudo_labels") / "pseudo_labels.zarr")
    return evaluate_labels(ds, store, cfg.pseudo.workers, "eval_pseudo_labels", score_ids(ctx))
