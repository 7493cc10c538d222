"""Random-walk propagation of class maps with a semantic affinity (PSA, Ahn & Kwak 2018, Eq. 4–5; AFA Eq. 7)."""
from __future__ import annotations

import torch


def transition_matrix(affinity: torch.Tensor, beta: float = 2.0, log_t: int = 0, eps: float = 1e-5) -> torch.Tensor:
    """T = A^β / (column sums + eps), then T ← T·T ``log_t`` times (so T^(2^log_t)).

    ``affinity`` N×N or B×N×N, non-negative; the power is element-wise (β sharpens the affinity). A sparse N×N
    affinity (``models.affinity_net.sparse_affinity``) gives the sparse T of its stored pairs (β > 0, so the
    pairs it leaves out are 0 in A^β as in the dense T); ``log_t`` must then be 0 (T·T fills in).

    >>> a = torch.tensor([[1., 1., 0.], [1., 1., 0.], [0., 0., 1.]])
    >>> torch.equal(transition_matrix(a.to_sparse(), 2.0).to_dense(), transition_matrix(a, 2.0))
    True
    """
    if affinity.is_sparse:
        if log_t:
            raise ValueError("a sparse transition matrix is not squared: propagate multiplies by it 2^log_t times")
        a = affinity.coalesce()
        values, col = a.values().clamp_min(0) ** beta, a.indices()[1]
        col_sums = values.new_zeros(a.shape[1]).index_add_(0, col, values)
        return torch.sparse_coo_tensor(a.indices(), values / (col_sums[col] + eps), a.shape, check_invariants=False)
    a = affinity.clamp_min(0) ** beta
    t = a / (a.sum(dim=-2, keepdim=True) + eps)
    for _ in range(log_t):
        t = t @ t
    return t


def propagate(cams: torch.Tensor, affinity: torch.Tensor, beta: float = 2.0, log_t: int = 0, eps: float = 1e-5) -> torch.Tensor:
    """Propagate ``cams`` (C×N or B×C×N) by the random walk: returns cams @ T.

    A sparse N×N ``affinity`` walks every map over the same T by 2^log_t sparse products (O(2^t·C·nnz)).

    >>> a = torch.tensor([[1., 1., 0.], [1., 1., 0.], [0., 0., 1.]])
    >>> propagate(torch.tensor([[1., 0., 0.]]), a, beta=1.0, eps=0.0).tolist()
    [[0.5, 0.5, 0.0]]
    """
    n, c = affinity.shape[-1], cams.shape[-2]
    if affinity.is_sparse:
        t_transposed = transition_matrix(affinity, beta, 0, eps).t().coalesce()
        flat = cams.reshape(-1, n).T  # N×(B·C)
        for _ in range(1 << log_t):
            flat = torch.sparse.mm(t_transposed, flat)
        return flat.T.reshape(cams.shape)
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

    A sparse N×N affinity serves every map of the batch (``propagate``).

    The one way every stage walks maps (ACR's seeds over the AffinityNet or the attention, AFA's scores
    over its learned affinity); ``propagate`` on the flattened maps.

    >>> a = torch.eye(2)[None]
    >>> propagate_maps(torch.ones(1, 1, 1, 2), a, beta=1.0).shape
    torch.Size([1, 1, 1, 2])
    """
    b, k, h, w = maps.shape
    return propagate(maps.reshape(b, k, h * w), affinity, beta=beta, log_t=log_t, eps=eps).reshape(b, k, h, w)
