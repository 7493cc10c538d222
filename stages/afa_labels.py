"""AFA's label rules (Ru et al., CVPR 2022, Sec. 3.2–3.3): the CAM's scores at a background score,
background-softmaxed over each image's classes, optionally propagated over the learned affinity.

Used by AFA's training step (``stages/train_single_stage.py``, batched) and by its offline pseudo
labels (``stages/afa_pseudo_labels.py``, one image); the two-score reliable rule is
``stages.labels.reliable_labels``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.pairs import radius_mask
from stages.random_walk import propagate_maps


@dataclass
class PresentClasses:
    """The classes of each image of a batch, background first: ``index`` B×K (VOC ids, padded), ``valid`` B×K."""

    index: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> "PresentClasses":
        """From B×20 multi-hot image labels."""
        b = labels.shape[0]
        k = int(labels.sum(1).max()) + 1 if b else 1
        index = torch.zeros(b, k, dtype=torch.long, device=labels.device)
        valid = torch.zeros(b, k, dtype=torch.bool, device=labels.device)
        valid[:, 0] = True
        for i in range(b):
            cls_ids = torch.nonzero(labels[i] > 0)[:, 0] + 1
            index[i, 1:1 + len(cls_ids)] = cls_ids
            valid[i, 1:1 + len(cls_ids)] = True
        return cls(index, valid)

    @classmethod
    def all_of(cls, k: int, device: torch.device | str = "cpu") -> "PresentClasses":
        """One image whose K maps are all present (the stored seeds of one image)."""
        return cls(torch.arange(k + 1, device=device)[None], torch.ones(1, k + 1, dtype=torch.bool, device=device))

    def gather(self, cams: torch.Tensor) -> torch.Tensor:
        """B×20×h×w class maps → B×(K−1)×h×w maps of the present classes (padding: zeros)."""
        idx = (self.index[:, 1:] - 1).clamp_min(0)
        out = cams.gather(1, idx[:, :, None, None].expand(-1, -1, *cams.shape[-2:]))
        return out * self.valid[:, 1:, None, None]

    def to_labels(self, scores: torch.Tensor) -> torch.Tensor:
        """B×K×H×W scores → B×H×W VOC labels (argmax over the valid entries)."""
        scores = scores.masked_fill(~self.valid[:, :, None, None], float("-inf"))
        return self.index.gather(1, scores.argmax(1).flatten(1)).view(scores.shape[0], *scores.shape[-2:])


def normalise_batch_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AFA's CAM normalisation per map: ReLU, minus its minimum, over its maximum (→ [0, 1])."""
    cams = F.relu(cams)
    cams = cams - cams.flatten(2).amin(-1)[..., None, None]
    return cams / (cams.flatten(2).amax(-1)[..., None, None] + eps)


def background_softmax(cams: torch.Tensor, valid: torch.Tensor, bkg: float) -> torch.Tensor:
    """[bkg, CAM_1..CAM_K] softmax-normalised over each image's valid entries: B×(K+1)×h×w (AFA's scores)."""
    scores = torch.cat([torch.full_like(cams[:, :1], bkg), cams], 1)
    return scores.masked_fill(~valid[:, :, None, None], float("-inf")).softmax(1)


def propagate_scores(scores: torch.Tensor, affinity: torch.Tensor, radius: int, beta: float = 2.0,
                     log_t: int = 0, eps: float = 1e-5) -> torch.Tensor:
    """Random walk of B×K×h×w scores over the affinity B×N×N (N = h·w), pairs beyond ``radius`` cut
    (AFA's square neighbourhood): T = A^β / (column sums + eps) (AFA Eq. 7, the paper's α; the released code's
    eps 0.1, ``camutils.py:301``), ``stages.random_walk.propagate_maps``."""
    h, w = scores.shape[-2:]
    return propagate_maps(scores, affinity * radius_mask(h, w, radius, "chebyshev", affinity.device)[None], beta, log_t, eps)


def label_scores(cams: torch.Tensor, present: PresentClasses, bkg: float, size: tuple[int, int],
                 affinity: torch.Tensor | None = None, radius: int = 8, beta: float = 2.0, log_t: int = 0,
                 eps: float = 1e-5) -> torch.Tensor:
    """AFA's scores for one background score: B×K×H×W (background first).

    ``cams`` B×(K−1)×h×w are the normalised maps of the present classes. With an ``affinity`` (on the
    grid h×w) the background-softmax scores are propagated by the random walk. The result is resized to ``size``.
    """
    if affinity is None:
        return background_softmax(F.interpolate(cams, size=size, mode="bilinear", align_corners=False), present.valid, bkg)
    scores = propagate_scores(background_softmax(cams, present.valid, bkg), affinity, radius, beta, log_t, eps)
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
