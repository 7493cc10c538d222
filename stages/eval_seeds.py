"""Stage ``eval_seeds``: seed mIoU at the best background threshold of a sweep, with FP/FN per class."""
from __future__ import annotations

from pipeline.store import LabelStore
from stages.evaluate import evaluate_sweep


def score_ids(ctx) -> list[str] | None:
    s = ctx.config.data.score_split
    return ctx.run.dataset(s).ids if s else None


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.label_split)
    store = LabelStore(ctx.input_dir("make_seeds") / "seeds.zarr")
    return evaluate_sweep(ds, store, cfg.cam.sweep, cfg.pseudo.workers, score_ids(ctx))
