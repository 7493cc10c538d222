"""Stage ``eval_seeds``: seed mIoU at the best background threshold of a sweep, with FP/FN per class, and the
background threshold that ``pseudo.bkg_threshold: auto`` uses (``threshold.json``).

The threshold rule (``choose_threshold``): where the scored split has masks, the threshold of
``cam.sweep`` with the best mIoU on them — the field tunes it on train masks (IRN, AFA) — and, when that
best lies at the sweep's edge (``cam.sweep_widen``), the sweep goes on past the edge by halving
(``widen_sweep``); where no image has a mask, Otsu's threshold of the per-pixel top scores
(``stages.evaluate.otsu_threshold``).
"""
from __future__ import annotations

import json

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text
from pipeline.stage import Stage
from pipeline.store import LabelStore
from stages.common import image_pool
from stages.evaluate import evaluate_sweep, otsu_threshold, scored_ids

#: what scoring score maps over the threshold sweep reads
SWEEP_READS = ("cam.sweep", "cam.sweep_widen", "data.score_split", "data.label_split", "data.max_images")
#: the chosen background threshold, its rule and the sweep: {"threshold", "rule", "sweep": [[t, mIoU], ...]}
THRESHOLD = "threshold.json"


def score_ids(ctx) -> list[str] | None:
    """The images to score: those of ``data.score_split`` (None: every image with a mask)."""
    s = ctx.config.data.score_split
    return ctx.dataset(s).ids if s else None


def widen_sweep(sweep: list[float], best: float, floor: float = 1e-4, ceiling: float = 0.995) -> list[float]:
    """The thresholds to try beyond the sweep's edge when its best threshold lies there, else none.

    At the lower edge t₀: t₀/2, t₀/4, … down to ``floor``; at the upper edge t₁: 1 − (1 − t₁)/2, … up to
    ``ceiling`` (halving the distance to 0 or to 1). A peaked map's best threshold can lie far below a
    sweep chosen for another dataset; the rule follows it without a constant tuned to one dataset.

    >>> widen_sweep([0.01, 0.05, 0.1], 0.01)
    [0.005, 0.0025, 0.00125, 0.000625, 0.0003125, 0.00015625]
    >>> widen_sweep([0.5, 0.9], 0.9), widen_sweep([0.01, 0.05, 0.1], 0.05)
    ([0.95, 0.975, 0.9875, 0.99375], [])
    """
    out: list[float] = []
    if best == min(sweep):
        t = best / 2
        while t >= floor:
            out.append(t)
            t /= 2
    elif best == max(sweep):
        t = 1 - (1 - best) / 2
        while t <= ceiling:
            out.append(round(t, 10))
            t = 1 - (1 - t) / 2
    return out


def choose_threshold(ctx, store: LabelStore) -> dict:
    """Score the maps of ``store`` over ``cam.sweep`` and choose the background threshold by rule (module
    docstring); writes ``threshold.json`` and returns the metrics (``threshold``, ``threshold_rule``)."""
    cfg = ctx.config
    if not len(store):  # e.g. ACR's unrefined seeds outside grad_aff mode: no maps, no threshold
        rule = "no maps to score (the store is empty)"
        atomic_write_text(ctx.output(THRESHOLD), json.dumps({"threshold": None, "rule": rule, "sweep": []}))
        return {"miou": None, "threshold": None, "images": 0, "sweep": {}, "threshold_rule": rule}
    ds = ctx.dataset(cfg.data.label_split)
    only = score_ids(ctx)
    n = len(scored_ids(ds, store, only))
    if only is not None and not n and scored_ids(ds, store):
        raise UserError(f"data.score_split={cfg.data.score_split} has no image with a mask among the "
                        f"{cfg.data.label_split} images that get labels: choose a split that overlaps data.label_split")
    sweep = sorted(cfg.cam.sweep)
    out = evaluate_sweep(ds, store, sweep, image_pool(ctx), only, f"{ctx.stage.name} sweep") if n else None
    widened = []
    if out is not None and out["miou"] is not None and cfg.cam.sweep_widen:
        widened = widen_sweep(sweep, out["threshold"])
        if widened:  # one more pass over the thresholds beyond the edge; the best of all wins
            more = evaluate_sweep(ds, store, widened, image_pool(ctx), only, f"{ctx.stage.name} sweep (widened)")
            merged = {**out["sweep"], **more["sweep"]}
            out = (more if more["miou"] is not None and more["miou"] > out["miou"] else out) | {"sweep": merged}
            sweep = sorted({*sweep, *widened})
    if out is not None and out["miou"] is not None:
        rule = f"best mIoU of cam.sweep on {n} masks of {cfg.data.score_split or cfg.data.label_split}"
        if widened:
            rule += f" (widened past its edge to {min(sweep):g}–{max(sweep):g})"
        if out["threshold"] in (min(sweep), max(sweep)):
            rule += " (at the edge of the sweep: widen cam.sweep to look further)"
    else:
        why = "no masks to score" if out is None else "the masks hold no scorable pixel"
        out = {"miou": None, "threshold": round(otsu_threshold(store, store.ids(), image_pool(ctx)), 4), "images": 0,
               "sweep": {}}
        rule = f"Otsu's threshold of the top scores ({why})"
    per_t = [[t, out["sweep"][f"{t:g}"]] for t in sweep] if out["sweep"] else []
    atomic_write_text(ctx.output(THRESHOLD), json.dumps({"threshold": out["threshold"], "rule": rule, "sweep": per_t}))
    return {**out, "threshold_rule": rule}


def miou_at(threshold_file, t: float) -> float | None:
    """The mIoU that the sweep in a ``threshold.json`` found at threshold ``t`` (None if ``t`` was not swept)."""
    sweep = json.loads(threshold_file.read_text())["sweep"]
    return next((m for s, m in sweep if abs(s - t) < 1e-9), None)


def run(ctx) -> dict:
    return choose_threshold(ctx, LabelStore(ctx.input("seeds")))


EVAL_SEEDS = Stage("eval_seeds", run, reads=SWEEP_READS, writes=(THRESHOLD,), inputs=("seeds",), summary={"seed_miou": "miou"},
                   version=3,  # 2: writes threshold.json; 3: widens the sweep past its edge
                   description="seed mIoU at the best background threshold (the auto threshold), FP/FN")
