"""Stage ``eval_seeds``: seed mIoU at the best background threshold of a sweep, with FP/FN per class, and the
background threshold that ``pseudo.bkg_threshold: auto`` uses (``threshold.json``).

The threshold rule (``choose_threshold``): where the scored split has masks, the threshold of
``cam.sweep`` with the best mIoU on them — the field tunes it on train masks (IRN, AFA); where no image
has a mask, Otsu's threshold of the per-pixel top scores (``stages.evaluate.otsu_threshold``).
"""
from __future__ import annotations

import json

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text
from pipeline.stage import Stage
from pipeline.store import LabelStore
from stages.evaluate import evaluate_sweep, otsu_threshold, scored_ids

#: what scoring score maps over the threshold sweep reads
SWEEP_READS = ("cam.sweep", "data.score_split", "data.label_split", "data.max_images")
#: the chosen background threshold, its rule and the sweep: {"threshold", "rule", "sweep": [[t, mIoU], ...]}
THRESHOLD = "threshold.json"


def score_ids(ctx) -> list[str] | None:
    """The images to score: those of ``data.score_split`` (None: every image with a mask)."""
    s = ctx.config.data.score_split
    return ctx.dataset(s).ids if s else None


def choose_threshold(ctx, store: LabelStore) -> dict:
    """Score the maps of ``store`` over ``cam.sweep`` and choose the background threshold by rule (module
    docstring); writes ``threshold.json`` and returns the metrics (``threshold``, ``threshold_rule``)."""
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    only = score_ids(ctx)
    n = len(scored_ids(ds, store, only))
    if only is not None and not n and scored_ids(ds, store):
        raise UserError(f"data.score_split={cfg.data.score_split} has no image with a mask among the "
                        f"{cfg.data.label_split} images that get labels: choose a split that overlaps data.label_split")
    out = evaluate_sweep(ds, store, cfg.cam.sweep, cfg.pseudo.workers, only, f"{ctx.stage.name} sweep") if n else None
    if out is not None and out["miou"] is not None:
        rule = f"best mIoU of cam.sweep on {n} masks of {cfg.data.score_split or cfg.data.label_split}"
        if out["threshold"] in (min(cfg.cam.sweep), max(cfg.cam.sweep)):
            rule += " (at the edge of cam.sweep: widen it to look further)"
    else:
        why = "no masks to score" if out is None else "the masks hold no scorable pixel"
        out = {"miou": None, "threshold": round(otsu_threshold(store, store.ids(), cfg.pseudo.workers), 4), "images": 0,
               "sweep": {}}
        rule = f"Otsu's threshold of the top scores ({why})"
    per_t = [[t, out["sweep"][f"{t:g}"]] for t in cfg.cam.sweep] if out["sweep"] else []
    atomic_write_text(ctx.output(THRESHOLD), json.dumps({"threshold": out["threshold"], "rule": rule, "sweep": per_t}))
    return {**out, "threshold_rule": rule}


def miou_at(threshold_file, t: float) -> float | None:
    """The mIoU that the sweep in a ``threshold.json`` found at threshold ``t`` (None if ``t`` was not swept)."""
    sweep = json.loads(threshold_file.read_text())["sweep"]
    return next((m for s, m in sweep if abs(s - t) < 1e-9), None)


def run(ctx) -> dict:
    return choose_threshold(ctx, LabelStore(ctx.input("seeds")))


EVAL_SEEDS = Stage("eval_seeds", run, reads=SWEEP_READS, writes=(THRESHOLD,), inputs=("seeds",), summary={"seed_miou": "miou"},
                   version=2,  # 2: writes threshold.json
                   description="seed mIoU at the best background threshold (the auto threshold), FP/FN")
