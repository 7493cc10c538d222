"""Stage ``eval_seeds``: seed mIoU at the best background threshold of a sweep, with FP/FN per class."""
from __future__ import annotations

from pipeline.stage import Stage
from pipeline.store import LabelStore
from stages.evaluate import evaluate_sweep

#: what scoring score maps over the threshold sweep reads
SWEEP_READS = ("cam.sweep", "data.score_split", "data.label_split", "data.max_images")


def score_ids(ctx) -> list[str] | None:
    """The images to score: those of ``data.score_split`` (None: every image with a mask)."""
    s = ctx.config.data.score_split
    return ctx.dataset(s).ids if s else None


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    return evaluate_sweep(ds, LabelStore(ctx.input("seeds")), cfg.cam.sweep, cfg.pseudo.workers, score_ids(ctx))


EVAL_SEEDS = Stage("eval_seeds", run, reads=SWEEP_READS, inputs=("seeds",), summary={"seed_miou": "miou"},
                   description="seed mIoU at the best background threshold, FP/FN")
