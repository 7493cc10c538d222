"""Labelling rules: score maps → labels. Each rule exists here once; every stage that labels calls it.

- ``with_background``: the CAM papers' scores [t, CAM_1..CAM_K] for a background score t;
- ``threshold_labels``: the class of the top map where it beats t, else background (seeds at a threshold);
- ``reliable_labels``: two background scores (low, high) → reliable labels, 255 between (IRN / PSA / AFA).

Labels are VOC indices (0 background, 1..20) with ``pipeline.voc.IGNORE_INDEX`` (255) for ignored pixels.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.voc import IGNORE_INDEX


def with_background(cams: np.ndarray, bkg: float) -> np.ndarray:
    """(K+1)×H×W float32 scores [t, CAM_1..CAM_K] of K×H×W maps, with the constant background score t = ``bkg``.

    >>> with_background(np.ones((1, 1, 2)), 0.3)[:, 0].tolist()
    [[0.30000001192092896, 0.30000001192092896], [1.0, 1.0]]
    """
    return np.concatenate([np.full((1, *cams.shape[1:]), bkg, np.float32), cams.astype(np.float32)])


def threshold_labels(cams: np.ndarray, classes: list[int], thresholds: np.ndarray) -> np.ndarray:
    """T×H×W uint8 labels, one per background threshold t: the class of the top map where it exceeds t, else 0.

    ``cams`` K×H×W are the maps of ``classes`` (VOC indices). The same labels as the argmax of
    ``with_background(cams, t)`` (ties go to the background in both), for all thresholds in one pass.

    >>> threshold_labels(np.array([[[0.2, 0.6]]]), [5], np.array([0.1, 0.5])).tolist()
    [[[5, 5]], [[0, 5]]]
    """
    h, w = cams.shape[-2:]
    if len(classes) == 0:
        return np.zeros((len(thresholds), h, w), np.uint8)
    top = cams.max(0)
    cls = np.asarray(classes, np.uint8)[cams.argmax(0)]
    return np.where(top[None] > np.asarray(thresholds)[:, None, None], cls[None], 0).astype(np.uint8)


def reliable_labels(label_high: torch.Tensor, label_low: torch.Tensor) -> torch.Tensor:
    """Reliable labels from the labels at a high and a low background score (IRN's conf_fg / conf_bg, AFA's β_h / β_l):
    foreground where the high-score label is foreground, background where both are background, 255 (ignored)
    where only the low-score label says foreground.

    >>> reliable_labels(torch.tensor([3, 0, 0]), torch.tensor([3, 3, 0])).tolist()
    [3, 255, 0]
    """
    out = label_high.masked_fill(label_high == 0, IGNORE_INDEX)
    return out.masked_fill((label_high == 0) & (label_low == 0), 0)
