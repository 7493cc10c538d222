"""Pixel pairs for affinity learning: which pairs lie within a radius, and the label of a pair.

Both rules exist here once. The two papers that learn affinity from labels use different
neighbourhoods, so the neighbourhood is named: ``euclidean`` (PSA / IRN: ‖Δ‖ < r) and
``chebyshev`` (AFA's ``get_mask_by_radius``: |Δy| ≤ r and |Δx| ≤ r).
"""
from __future__ import annotations

from typing import Literal

import torch

from pipeline.voc import IGNORE_INDEX

Neighbourhood = Literal["euclidean", "chebyshev"]


def within_radius(dy: torch.Tensor, dx: torch.Tensor, radius: int, neighbourhood: Neighbourhood) -> torch.Tensor:
    """Whether the offset (dy, dx) lies within ``radius``: dy² + dx² < r² (euclidean) or max(|dy|, |dx|) ≤ r (chebyshev).

    >>> d = torch.tensor([0, 1, 2, 2])
    >>> within_radius(d, d, 2, "euclidean").tolist(), within_radius(d, d, 2, "chebyshev").tolist()
    ([True, True, False, False], [True, True, True, True])
    """
    if neighbourhood == "euclidean":
        return dy * dy + dx * dx < radius * radius
    return (dy.abs() <= radius) & (dx.abs() <= radius)


def radius_mask(h: int, w: int, radius: int, neighbourhood: Neighbourhood, device=None) -> torch.Tensor:
    """N×N bool (N = h·w, row-major): True for the pairs of grid cells within ``radius``.

    >>> radius_mask(1, 3, 1, "chebyshev").int().tolist()
    [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    """
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return within_radius(ys[:, None] - ys[None], xs[:, None] - xs[None], radius, neighbourhood)


def pair_offsets(radius: int, neighbourhood: Neighbourhood = "euclidean") -> list[tuple[int, int]]:
    """Offsets (dy, dx) ≠ 0 within ``radius``, one of each ± pair (the half plane dy > 0 or dy = 0, dx > 0; PSA's order).

    >>> pair_offsets(2)
    [(0, 1), (1, -1), (1, 0), (1, 1)]
    """
    r = torch.arange(-radius, radius + 1)
    return [(int(dy), int(dx)) for dy in r for dx in r
            if (dy > 0 or (dy == 0 and dx > 0)) and within_radius(dy, dx, radius, neighbourhood)]


def pair_labels(label_a: torch.Tensor, label_b: torch.Tensor) -> torch.Tensor:
    """The label of the pairs (a, b): 1 where both pixels carry the same class (background included),
    0 where they differ, 255 (ignored) where either pixel is 255.

    >>> pair_labels(torch.tensor([1, 1, 0, 255]), torch.tensor([1, 0, 0, 2])).tolist()
    [1, 0, 1, 255]
    """
    out = (label_a == label_b).long()
    return out.masked_fill((label_a == IGNORE_INDEX) | (label_b == IGNORE_INDEX), IGNORE_INDEX)
