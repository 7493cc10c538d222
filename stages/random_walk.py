"""Random-walk propagation of class maps with a semantic affinity (PSA, Ahn & Kwak 2018, Eq. 4–5; AFA Eq. 7)."""
from __future__ import annotations

import torch


def transition_matrix(affinity: torch.Tensor, beta: float = 2.0, log_t: int = 0, eps: float = 1e-5) -> torch.Tensor:
    """T = A^β / (column sums + eps), then T ← T·T ``log_t`` times (so T^(2^log_t)).

    ``affinity`` N×N or B×N×N, non-negative; the power is element-wise (β sharpens the affinity).
    """
    a = affinity.clamp_min(0) ** beta
    t = a / (a.sum(dim=-2, keepdim=True) + eps)
    for _ in range(log_t):
        t = t @ t
    return t


def propagate(cams: torch.Tensor, affinity: torch.Tensor, beta: float = 2.0, log_t: int = 0, eps: float = 1e-5) -> torch.Tensor:
    """Propagate ``cams`` (C×N or B×C×N) by the random walk: returns cams @ T.

    >>> a = torch.tensor([[1., 1., 0.], [1., 1., 0.], [0., 0., 1.]])
    >>> propagate(torch.tensor([[1., 0., 0.]]), a, beta=1.0, eps=0.0).tolist()
    [[0.5, 0.5, 0.0]]
    """
    n, c = affinity.shape[-1], cams.shape[-2]
    if (1 << log_t) * c < log_t * n:
        # the same product, cheaper for few maps: (cams @ T0) @ T0 ... 2^log_t times, O(2^t·C·N²) not O(t·N³)
        t0 = transition_matrix(affinity, beta, 0, eps)
        for _ in range(1 << log_t):
            cams = cams @ t0
        return cams
    return cams @ transition_matrix(affinity, beta, log_t, eps)


def propagate_maps(maps: torch.Tensor, affinity: torch.Tensor, beta: float = 2.0, log_t: int = 0,
                   eps: float = 1e-5) -> torch.Tensor:
    """Propagate score maps over the affinity of their grid: B×K×h×w maps, B×N×N affinity (N = h·w) → B×K×h×w.

    The one way every stage walks maps (ACR's seeds over the AffinityNet or the attention, AFA's scores
    over its learned affinity); ``propagate`` on the flattened maps.

    >>> a = torch.eye(2)[None]
    >>> propagate_maps(torch.ones(1, 1, 1, 2), a, beta=1.0).shape
    torch.Size([1, 1, 1, 2])
    """
    b, k, h, w = maps.shape
    return propagate(maps.reshape(b, k, h * w), affinity, beta=beta, log_t=log_t, eps=eps).reshape(b, k, h, w)
