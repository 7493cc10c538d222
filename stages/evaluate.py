"""Scoring stored labels against ground truth: ``eval_seeds`` (threshold sweep), ``eval_pseudo_labels``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.filters import threshold_otsu

from pipeline.metrics import confusion_matrix, coverage, scores
from pipeline.parallel import ImagePool, map_images, sum_arrays
from pipeline.store import LabelStore
from pipeline.voc import NUM_CLASSES, VOCDataset, VOCFolder
from stages.labels import threshold_labels


def sweep_confusions(gt: np.ndarray, cams: np.ndarray, classes: list[int], thresholds: np.ndarray,
                     num_classes: int = NUM_CLASSES) -> np.ndarray:
    """T×C×C confusion matrices of the seeds at every threshold, in one pass (C = ``num_classes``, the dataset's)."""
    preds = threshold_labels(cams, classes, thresholds)
    valid = (gt < num_classes).ravel()
    g = gt.ravel()[valid].astype(np.int64)
    out = np.empty((len(thresholds), num_classes, num_classes), np.int64)
    for t, p in enumerate(preds):
        idx = g * num_classes + p.ravel()[valid]
        out[t] = np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)
    return out


@dataclass
class SweepWorker:
    root: Path
    store: Path
    thresholds: list[float]

    def __call__(self, image_id: str) -> np.ndarray:
        st = LabelStore(self.store)
        folder = VOCFolder(self.root)
        return sweep_confusions(folder.mask(image_id), st.read(image_id).astype(np.float32), st.read_attrs(image_id)["classes"],
                                np.asarray(self.thresholds), folder.num_classes)


def label_confusion(image_id: str, gt: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """The C×C confusion (C = ``num_classes``, the dataset's) of one image's label ``pred`` against its mask ``gt``;
    a size mismatch names the image."""
    if pred.shape != gt.shape:
        raise ValueError(f"{image_id}: label {pred.shape} and mask {gt.shape} differ in size")
    return confusion_matrix(gt, pred, num_classes)


@dataclass
class ScoreWorker:
    root: Path
    store: Path

    def __call__(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        folder = VOCFolder(self.root)
        gt = folder.mask(image_id)
        pred = LabelStore(self.store).read(image_id)
        return label_confusion(image_id, gt, pred, folder.num_classes), np.array(coverage(pred, gt))


def scored_ids(ds: VOCDataset, store: LabelStore, only: list[str] | None = None) -> list[str]:
    have = set(store.ids())
    keep = set(only) if only is not None else None
    return [i for i in ds.ids if i in have and ds.has_mask(i) and (keep is None or i in keep)]


def score_report(conf: np.ndarray) -> dict:
    s = scores(conf)
    return {"miou": s["miou"], "pixel_acc": s["pixel_acc"], "mean_acc": s["mean_acc"],
            "iou": s["iou"], "fp": s["fp"], "fn": s["fn"], "present": s["present"]}


def evaluate_sweep(ds: VOCDataset, store: LabelStore, thresholds: list[float], pool: ImagePool, only: list[str] | None = None,
                   desc: str = "sweep") -> dict:
    ids = scored_ids(ds, store, only)
    conf = sum_arrays(map_images(SweepWorker(ds.root, store.path, thresholds), ids, pool, desc))
    per_t = [scores(c)["miou"] for c in conf]
    if np.isnan(per_t).all():  # every mask void: nothing to choose by
        return {"miou": None, "threshold": None, "images": len(ids), "sweep": {}}
    best = int(np.nanargmax(per_t))
    return {**score_report(conf[best]), "threshold": thresholds[best], "images": len(ids),
            "sweep": {f"{t:g}": round(m, 5) for t, m in zip(thresholds, per_t)}}


@dataclass
class TopScoreHistogram:
    store: Path
    bins: int

    def __call__(self, image_id: str) -> np.ndarray:
        return top_score_histogram(LabelStore(self.store).read(image_id).astype(np.float32), self.bins)


def top_score_histogram(maps: np.ndarray, bins: int) -> np.ndarray:
    """Counts of the per-pixel top score max_c M_c of K×H×W maps in ``bins`` bins over [0, 1] (zeros without maps:
    an image without classes has no scores to split)."""
    if not len(maps):
        return np.zeros(bins, np.int64)
    return np.histogram(maps.max(0), bins=bins, range=(0.0, 1.0))[0]


def histogram_otsu(counts: np.ndarray | None, bins: int) -> float:
    """Otsu's threshold (``skimage.filters.threshold_otsu``) of a top-score histogram over [0, 1] (bin centres
    (k + ½)/bins); 0.5 with fewer than two occupied bins (no split to make)."""
    if counts is None or np.count_nonzero(counts) < 2:
        return 0.5
    return float(threshold_otsu(hist=(counts, (np.arange(bins) + 0.5) / bins)))


def otsu_threshold(store: LabelStore, ids: list[str], pool: ImagePool, bins: int = 256) -> float:
    """The mask-free background threshold: Otsu's threshold (``skimage.filters.threshold_otsu``) of the
    per-pixel top score max_c M_c over every image of ``store`` (maps in [0, 1], ``bins`` bins).

    Otsu splits the top scores into the two classes of least within-class variance — activated
    (foreground) and not (background) — without a mask. With fewer than two occupied bins it is 0.5.
    """
    return histogram_otsu(sum_arrays(map_images(TopScoreHistogram(store.path, bins), ids, pool, "otsu")), bins)


def evaluate_labels(ds: VOCDataset, store: LabelStore, pool: ImagePool, desc: str, only: list[str] | None = None) -> dict:
    ids = scored_ids(ds, store, only)
    conf, cov = None, np.zeros(2, np.int64)
    for c, n in map_images(ScoreWorker(ds.root, store.path), ids, pool, desc):
        conf = c if conf is None else conf + c
        cov += n
    if conf is None:  # no image to score (no masks): nothing is measured
        return {"miou": None, "coverage": None, "images": 0}
    return {**score_report(conf), "coverage": float(cov[0] / max(1, cov[1])), "images": len(ids)}
