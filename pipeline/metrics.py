"""Segmentation metrics exactly as ../shared/CONTRACT.md fixes them.

Rows of the confusion matrix are ground truth, columns are predictions. Pixels whose ground
truth is ``ignore_index`` (or outside ``[0, num_classes)``) are skipped, and so are pixels whose
prediction is ``ignore_index``: that is how pseudo labels with ignored regions are scored, with
their coverage reported beside the mIoU.
"""
from __future__ import annotations

import numpy as np

from pipeline.voc import IGNORE_INDEX


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Confusion matrix ``conf[g, p]`` = number of pixels with ground truth g predicted as p.

    >>> confusion_matrix(np.array([0, 1, 1, 255]), np.array([0, 1, 0, 1]), 2).tolist()
    [[1, 0], [1, 1]]
    """
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred differ in size: {gt.size} vs {pred.size}")
    keep = (gt >= 0) & (gt < num_classes) & (gt != ignore_index) & (pred != ignore_index)
    keep &= (pred >= 0) & (pred < num_classes)
    idx = gt[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def scores(conf: np.ndarray) -> dict:
    """Scores of a confusion matrix.

    ``iou_c = TP / (row_c + col_c - TP)`` (NaN where the denominator is 0); ``miou`` is the mean
    over classes that occur in the ground truth (row sum > 0). ``fp_c = (col_c - TP)/(row_c + col_c - TP)``
    and ``fn_c = (row_c - TP)/(row_c + col_c - TP)`` as in SEAM/ACR.

    >>> s = scores(np.array([[1, 0], [1, 1]]))
    >>> round(s["miou"], 4), s["pixel_acc"]
    (0.5, 0.6666666666666666)
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    rows = conf.sum(1)
    cols = conf.sum(0)
    union = rows + cols - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        fp = np.where(union > 0, (cols - tp) / union, np.nan)
        fn = np.where(union > 0, (rows - tp) / union, np.nan)
        acc_c = np.where(rows > 0, tp / rows, np.nan)
    present = rows > 0
    total = conf.sum()
    return {
        "miou": float(np.nanmean(iou[present])) if present.any() else float("nan"),
        "iou": [float(x) for x in iou],
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(np.nanmean(acc_c[present])) if present.any() else float("nan"),
        "fp": [float(x) for x in fp],
        "fn": [float(x) for x in fn],
        "present": [bool(x) for x in present],
    }


def coverage(pred: np.ndarray, gt: np.ndarray | None = None, ignore_index: int = IGNORE_INDEX) -> tuple[int, int]:
    """(labelled pixels, counted pixels) of a pseudo label: the fraction of pixels not ``ignore_index``.

    When ``gt`` is given only pixels with valid ground truth are counted, so void borders do not
    lower the coverage.
    """
    pred = np.asarray(pred)
    valid = np.ones(pred.shape, bool) if gt is None else (np.asarray(gt) != ignore_index)
    return int(((pred != ignore_index) & valid).sum()), int(valid.sum())
