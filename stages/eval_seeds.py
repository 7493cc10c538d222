"""Stage ``eval_seeds``: the background threshold that ``pseudo.bkg_threshold: auto`` uses (``threshold.json``),
chosen without reading a mask, and the seeds' score: mIoU at that threshold, and at the best threshold of a sweep
(``best_threshold_miou``, as IRN and the papers report CAMs), with FP/FN per class.

The threshold rule (``choose_threshold``, docs/labels.md; ``pseudo.bkg_rule``): ``otsu_global``, Otsu's threshold of
the per-pixel top scores of every labelled image (``stages.evaluate.otsu_threshold``); ``otsu_image``, each image's own
Otsu threshold of its top scores (``image_otsu_threshold``; ``threshold.json`` then names the rule, ``PER_IMAGE``, and
``miou`` is the seeds' at it) — statistics of the maps alone, so the labels do not change when masks are removed
(CONTRACT.md, "Ground truth and datasets"). With a calibration split
(``pseudo.calibrate``) it is the threshold of ``cam.sweep`` with the best mIoU on that split's masks, widened past
the sweep's edge by halving where the best lies there (``cam.sweep_widen``, ``widen_sweep``). Scores are taken on
the scored images (``data.score_split``, or every labelled image with a mask) less the calibration images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text
from pipeline.parallel import map_images, sum_arrays
from pipeline.metrics import scores
from pipeline.runs import calibration_images
from pipeline.stage import Stage
from pipeline.store import LabelStore
from pipeline.voc import VOCFolder
from stages.common import image_pool
from stages.evaluate import (SweepWorker, histogram_otsu, label_confusion, otsu_threshold, score_report, scored_ids,
                             top_score_histogram)
from stages.labels import threshold_labels

#: what scoring score maps over the threshold sweep, and choosing their threshold, reads
SWEEP_READS = ("cam.sweep", "cam.sweep_widen", "pseudo.bkg_rule", "pseudo.calibrate", "data.score_split", "data.label_split",
               "data.max_images")
#: ``threshold.json``'s threshold under ``pseudo.bkg_rule: otsu_image``: each image its own (``image_otsu_threshold``)
PER_IMAGE = "otsu_image"
#: the chosen background threshold, its rule and the scored sweep:
#: {"threshold", "rule", "sweep": [[t, mIoU], ...], "best_threshold", "best_miou"}
THRESHOLD = "threshold.json"


def image_otsu_threshold(maps: np.ndarray, bins: int = 256) -> float:
    """The background threshold of one image by ``pseudo.bkg_rule: otsu_image``: Otsu's threshold of its per-pixel top
    scores m(x) = max_c M_c(x) (K×H×W maps in [0, 1]) in a ``bins``-bin histogram over [0, 1],

        t = argmax over bin centres t_k of  ω₀(t_k) ω₁(t_k) (μ₀(t_k) − μ₁(t_k))²

    (ω₀, μ₀: the weight and mean of the bins up to t_k; ω₁, μ₁: those above; ``skimage.filters.threshold_otsu``, the
    rule of ``stages.evaluate.otsu_threshold`` on one image's scores). A pixel is foreground where m(x) > t. 0.5
    when the scores fill fewer than two bins (no split to make) or there are no maps.

    Top scores 0.1, 0.1, 0.5, 0.9 in 10 bins (centres 0.15, 0.55, 0.95): splitting after 0.15 gives
    ½·½·(0.15 − 0.75)² = 0.09, after 0.55 gives ¾·¼·(0.2833 − 0.95)² = 0.0833, so t = 0.15:

    >>> image_otsu_threshold(np.array([[[0.1, 0.1, 0.5, 0.9]]]), bins=10)
    0.15
    """
    return round(histogram_otsu(top_score_histogram(maps, bins), bins), 10)


@dataclass
class PerImageRuleConfusion:
    """Per image: the C×C confusion of the seeds at the image's own threshold (``image_otsu_threshold``)."""
    root: Path
    store: Path

    def __call__(self, image_id: str) -> np.ndarray:
        folder, st = VOCFolder(self.root), LabelStore(self.store)
        maps = st.read(image_id).astype(np.float32)
        label = threshold_labels(maps, st.read_attrs(image_id)["classes"], np.array([image_otsu_threshold(maps)]))[0]
        return label_confusion(image_id, folder.mask(image_id), label, folder.num_classes)


def calibration(ctx) -> list[str] | None:
    """The calibration images of a stage's run (``pipeline.runs.calibration_images``), None without calibration."""
    return calibration_images(ctx.config, ctx.dataset)


def score_ids(ctx) -> list[str] | None:
    """The images to score: those of ``data.score_split`` (None: every image with a mask), less the calibration
    images (``pseudo.calibrate``), which are never scored."""
    s = ctx.config.data.score_split
    ids = ctx.dataset(s).ids if s else None
    cal = calibration(ctx)
    if cal:
        left = set(cal)
        ids = [i for i in (ids if ids is not None else ctx.dataset(ctx.config.data.label_split).ids) if i not in left]
    return ids


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


def sweep_confusions_of(ctx, store: LabelStore, ids: list[str], thresholds: list[float], what: str) -> np.ndarray | None:
    """T×C×C confusions of the maps of ``store`` on the masks of ``ids`` at every threshold (None: no image)."""
    if not ids:
        return None
    return sum_arrays(map_images(SweepWorker(ctx.run.voc_root, store.path, thresholds), ids, image_pool(ctx),
                                 f"{ctx.stage.name} {what}"))


def best_of_sweep(ctx, store: LabelStore, ids: list[str], sweep: list[float], widen: bool, what: str) -> dict | None:
    """The threshold of ``sweep`` (widened past its edge with ``widen``: ``widen_sweep``) with the best mIoU on the masks
    of ``ids``: ``{"threshold", "miou", "sweep": {t: mIoU}, "confusions": {t: C×C}}``, or None when nothing can be
    scored."""
    sweep = sorted(set(sweep))
    conf = sweep_confusions_of(ctx, store, ids, sweep, what)
    if conf is None:
        return None
    per_t = {t: scores(c)["miou"] for t, c in zip(sweep, conf)}
    if np.isnan(list(per_t.values())).all():  # every mask void: nothing to choose by
        return None
    best = max(per_t, key=lambda t: (not np.isnan(per_t[t]), per_t[t] if not np.isnan(per_t[t]) else 0, -t))
    confusions = dict(zip(sweep, conf))
    more = widen_sweep(sweep, best) if widen else []
    if more:  # one more pass over the thresholds beyond the edge; the best of all wins
        wide = best_of_sweep(ctx, store, ids, more, False, f"{what} (widened)")
        if wide is not None:
            per_t.update(wide["sweep"])
            confusions.update(wide["confusions"])
            if wide["miou"] > per_t[best]:
                best = wide["threshold"]
    return {"threshold": best, "miou": per_t[best], "sweep": per_t, "confusions": confusions}


def labelling_threshold(ctx, store: LabelStore) -> tuple[float, str, dict]:
    """The threshold that labels the maps of ``store`` (module docstring), its rule, and the calibration metrics (empty
    without calibration). ``choose_threshold`` runs it under the labelling policy (``StageContext.label_free``)."""
    cfg = ctx.config
    cal = calibration(ctx)
    sweep = sorted(cfg.cam.sweep)
    if cal is None and cfg.pseudo.bkg_rule == PER_IMAGE:  # the label-free rules: the maps alone
        t = PER_IMAGE
        rule = f"each image's own Otsu threshold of its top scores ({len(store)} images; no mask read)"
        calibrated = {}
    elif cal is None:
        t = round(otsu_threshold(store, store.ids(), image_pool(ctx)), 4)
        rule = f"Otsu's threshold of the top scores of {len(store)} images (no mask read)"
        calibrated = {}
    else:
        have = set(store.ids())
        ids = [i for i in cal if i in have]
        found = best_of_sweep(ctx, store, ids, sweep, cfg.cam.sweep_widen, "calibration sweep")
        if found is None:
            raise UserError(f"pseudo.calibrate.split={cfg.pseudo.calibrate.split}: its {len(ids)} masks hold no scorable "
                            "pixel: choose a calibration split whose masks label objects")
        t = found["threshold"]
        lo, hi = min(found["sweep"]), max(found["sweep"])
        rule = f"best mIoU of cam.sweep on the {len(ids)} masks of calibration split {cfg.pseudo.calibrate.split}"
        if lo < min(sweep) or hi > max(sweep):
            rule += f" (widened past its edge to {lo:g}–{hi:g})"
        if t in (lo, hi):
            rule += " (at the edge of the sweep: widen cam.sweep to look further)"
        calibrated = {"calibration": {"split": cfg.pseudo.calibrate.split, "images": len(ids)},
                      "calibration_miou": round(float(found["miou"]), 5)}
    return t, rule, calibrated


def choose_threshold(ctx, store: LabelStore) -> dict:
    """The background threshold of the maps of ``store`` by rule (module docstring), and their score; writes
    ``threshold.json`` and returns the metrics: ``threshold``, ``threshold_rule``, ``miou`` (and FP/FN, IoU) at that
    threshold, ``best_threshold`` and ``best_threshold_miou`` of the sweep on the scored images."""
    cfg = ctx.config
    if not len(store):  # e.g. ACR's unrefined seeds outside grad_aff mode: no maps, no threshold
        rule = "no maps to score (the store is empty)"
        atomic_write_text(ctx.output(THRESHOLD), json.dumps({"threshold": None, "rule": rule, "sweep": []}))
        return {"miou": None, "threshold": None, "images": 0, "sweep": {}, "threshold_rule": rule,
                "best_threshold": None, "best_threshold_miou": None}
    with ctx.label_free():  # the threshold reaches the labels: no mask of a labelled image but the calibration split's
        t, rule, calibrated = labelling_threshold(ctx, store)
    sweep = sorted(cfg.cam.sweep)
    ds = ctx.dataset(cfg.data.label_split)
    only = score_ids(ctx)
    scored = scored_ids(ds, store, only)
    if cfg.data.score_split is not None and not scored and scored_ids(ds, store):
        raise UserError(f"data.score_split={cfg.data.score_split} has no image with a mask among the "
                        f"{cfg.data.label_split} images that get labels: choose a split that overlaps data.label_split")
    per_image = t == PER_IMAGE
    report = best_of_sweep(ctx, store, scored, sweep if per_image else [*sweep, t], cfg.cam.sweep_widen, "sweep")
    out = {"miou": None, "images": len(scored), "best_threshold": None, "best_threshold_miou": None}
    per_t: list = []
    if report is not None:  # the sweep holds t; each image's own t: its confusions apart
        at_rule = (sum_arrays(map_images(PerImageRuleConfusion(ctx.run.voc_root, store.path), scored, image_pool(ctx),
                                         f"{ctx.stage.name} per-image rule")) if per_image else report["confusions"][t])
        out = {**score_report(at_rule), "images": len(scored), "best_threshold": report["threshold"],
               "best_threshold_miou": float(report["miou"])}
        per_t = [[k, round(float(m), 5)] for k, m in sorted(report["sweep"].items())]
        out["miou"] = None if np.isnan(out["miou"]) else out["miou"]
    atomic_write_text(ctx.output(THRESHOLD), json.dumps({"threshold": t, "rule": rule, "sweep": per_t, "miou": out["miou"],
                                                         "best_threshold": out["best_threshold"],
                                                         "best_miou": out["best_threshold_miou"]}))
    return {**out, "threshold": t, "threshold_rule": rule, "sweep": {f"{k:g}": m for k, m in per_t}, **calibrated}


def miou_at(threshold_file, t: float | str) -> float | None:
    """The mIoU that the sweep in a ``threshold.json`` found at threshold ``t`` (None if ``t`` was not swept); for
    ``t`` = ``PER_IMAGE``, the seeds' mIoU at each image's own threshold, if that is the file's rule."""
    chosen = json.loads(threshold_file.read_text())
    if isinstance(t, str):
        return chosen.get("miou") if chosen.get("threshold") == t else None
    return next((m for s, m in chosen["sweep"] if abs(s - t) < 1e-9), None)


def run(ctx) -> dict:
    return choose_threshold(ctx, LabelStore(ctx.input("seeds")))


EVAL_SEEDS = Stage("eval_seeds", run, reads=SWEEP_READS, writes=(THRESHOLD,), inputs=("seeds",),
                   summary={"seed_miou": "miou", "seed_miou_best_threshold": "best_threshold_miou"}, masks="score",
                   version=4,  # 2: writes threshold.json; 3: widens the sweep past its edge; 4: the threshold reads no mask
                   description="the background threshold by a label-free rule; seed mIoU at it and at the sweep's best, FP/FN")
