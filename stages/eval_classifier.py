"""Stage ``eval_classifier``: the mean average precision (mAP) of the flow's image classifier on ``data.val_split``.

Every image of the split (capped by ``data.max_images``) goes through the trained classifier once — at
scale 1.0, without a flip, normalised as the seed stages normalise it (``pipeline.transforms.normalise``),
on the config's ``device`` under its ``amp`` as they run — and its 20 class scores are ranked per class
against the images' multi-hot labels (``average_precision``).
``map`` is the mean AP over the classes with at least one positive image in the split; a class without
one has no AP (``null`` in ``ap``) and stays out of the mean. It fills ``inspect``'s ``summary.cls_map``.

The model is whatever the ``model`` input's training stage trained, as long as it gives class scores
(``models.protocols.ClassMapModel.class_scores`` → B×20: the scores its classification loss trains).
"""
from __future__ import annotations

import numpy as np
import torch

from models.protocols import ClassMapModel
from pipeline.progress import progress_bar
from pipeline.runtime import Runtime
from pipeline.stage import Stage
from pipeline.transforms import normalise
from pipeline.voc import CLASS_NAMES
from stages.common import trained_model

#: the foreground classes, in the order of the 20 scores and of ``VOCDataset.label_matrix``'s columns
FOREGROUND = CLASS_NAMES[1:]


def average_precision(scores, targets):
    """Average precision: the area under the precision-recall curve, as a sum over score thresholds.

    Parameters
    ----------
    scores : (N,) or (N, C) array_like of float
        Scores of ``N`` items (for ``C`` classes); higher means more likely positive. Only their order
        matters.
    targets : array_like of bool or {0, 1}, same shape as ``scores``
        Whether each item is a positive (of each class).

    Returns
    -------
    ap : float or (C,) ndarray of float
        The average precision (of each class); NaN where there is no positive item.

    Notes
    -----
    The definition of scikit-learn's ``average_precision_score``: with the distinct scores taken as
    thresholds from the highest down, the n-th threshold ``t_n`` has precision ``P_n`` and recall ``R_n``
    of the items scored ``>= t_n``, and

        AP = sum_n (R_n - R_{n-1}) * P_n,    R_0 = 0.

    Items with equal scores fall on the same side of every threshold, so ties are one step of the curve
    (their order in the input does not matter). Equivalently, AP is the mean over the positive items of
    the precision among the items scored at least as high as each. No interpolation (unlike VOC2007's
    11-point AP); a class with no positive has no curve and gets NaN.

    Examples
    --------
    >>> average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])  # scikit-learn's example
    0.8333333333333333

    A positive and a negative tied at 0.5 are one step (precision 1/2 at recall 1/2), whatever their order:

    >>> average_precision([0.5, 0.5, 0.2], [1, 0, 1]), average_precision([0.5, 0.5, 0.2], [0, 1, 1])
    (0.5833333333333333, 0.5833333333333333)
    >>> average_precision([[0.9, 0.1], [0.2, 0.3]], [[1, 0], [0, 0]])  # per column; no positive: NaN
    array([ 1., nan])
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(targets)
    if s.shape != y.shape or s.ndim not in (1, 2):
        raise ValueError(f"scores {s.shape} and targets {y.shape} must be one (N,) or (N, C) shape")
    if np.isnan(s).any():
        raise ValueError("scores hold NaN: they cannot be ranked")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("targets must be 0/1 (or bool)")
    if s.ndim == 1:
        return float(average_precision(s[:, None], y[:, None])[0])
    out = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        pos = y[:, c].astype(bool)
        if not pos.any():
            continue
        order = np.argsort(-s[:, c], kind="stable")
        ranked, hits = s[order, c], pos[order]
        # the last item of each group of equal scores: one threshold per distinct score
        last = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1]
        tp = np.cumsum(hits)[last]
        precision = tp / (last + 1)
        recall = tp / tp[-1]
        out[c] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return out


@torch.no_grad()
def image_scores(model: ClassMapModel, image: np.ndarray, runtime: Runtime = Runtime()) -> np.ndarray:
    """The 20 class scores (float64) of one H×W×3 uint8 image: scale 1.0, no flip (the model on ``runtime``)."""
    with runtime.autocast():
        scores = model.class_scores(runtime.to(normalise(image)[None]))
    return scores[0].double().cpu().numpy()


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.val_split)
    names = ds.class_names[1:]  # the dataset's foreground classes (VOC 20, COCO 80), in the scores' order
    if not len(ds):
        return {"map": None, "ap": dict.fromkeys(names), "positives": dict.fromkeys(names, 0),
                "classes": 0, "images": 0}
    runtime = Runtime.from_config(cfg)
    model = trained_model(ctx.input("model"), runtime)
    rows = []
    with progress_bar(ctx.stage.name, total=len(ds)) as advance:
        for image_id in ds.ids:
            rows.append(image_scores(model, ds.image(image_id), runtime))
            advance()
    targets = ds.label_matrix > 0
    ap = average_precision(np.stack(rows), targets)
    scored = ~np.isnan(ap)
    return {"map": round(float(ap[scored].mean()), 5) if scored.any() else None,
            "ap": {name: (round(float(v), 5) if ok else None) for name, v, ok in zip(names, ap, scored)},
            "positives": dict(zip(names, targets.sum(0).tolist())),
            "classes": int(scored.sum()), "images": len(ds)}


EVAL_CLASSIFIER = Stage("eval_classifier", run, reads=("amp", "data.val_split", "data.max_images"), inputs=("model",),
                        summary={"cls_map": "map"},
                        description="mAP of the trained classifier's image scores on data.val_split (scale 1, no flip)")
