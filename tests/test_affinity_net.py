"""AffinityNet (PSA): pair offsets, pairwise affinity, the balanced loss, dense affinity for the random walk."""
import math

import numpy as np
import torch

from models import create_model
from models.affinity_net import affinity_loss, dense_affinity, labels_at_stride, pairwise_affinity, sparse_affinity
from models.pairs import pair_offsets


def test_offsets_cover_the_disc_once_per_pair():
    for r in (1, 2, 3, 5, 8):
        offs = pair_offsets(r)
        disc = {(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if 0 < dy * dy + dx * dx < r * r}
        assert len(offs) == len(set(offs)) == len(disc) // 2
        assert {o for o in offs} | {(-dy, -dx) for dy, dx in offs} == disc


def test_pairwise_matches_dense_affinity():
    torch.manual_seed(0)
    f = torch.randn(1, 4, 5, 6)
    offs = pair_offsets(3)
    pairs = pairwise_affinity(f, offs)
    dense = dense_affinity(f[0], 3)
    h, w = 5, 6
    for a, (dy, dx) in zip(pairs, offs):
        for y in range(h):
            for x in range(w):
                y2, x2 = y + dy, x + dx
                if 0 <= y2 < h and 0 <= x2 < w:
                    expected = math.exp(-float((f[0, :, y, x] - f[0, :, y2, x2]).abs().mean()))
                    got = a[0, y, x - max(0, -dx)]
                    assert abs(float(got) - expected) < 1e-6
                    assert abs(float(dense[y * w + x, y2 * w + x2]) - expected) < 1e-6
    assert torch.allclose(dense.diagonal(), torch.ones(h * w))
    assert float(dense[0, 3]) == 0.0  # (0,0)–(0,3) is at distance 3, not within radius 3
    assert torch.allclose(dense, dense.T)


def test_sparse_affinity_holds_the_dense_one_and_only_the_pairs_within_the_radius():
    torch.manual_seed(1)
    f = torch.randn(6, 7, 9, dtype=torch.float64)
    for r in (1, 2, 5):
        n = 7 * 9
        brute = torch.zeros(n, n, dtype=torch.float64)  # exp(−mean|f_i − f_j|) for ‖p_i − p_j‖ < r, pixel by pixel
        for i in range(n):
            for j in range(n):
                (yi, xi), (yj, xj) = divmod(i, 9), divmod(j, 9)
                if (yi - yj) ** 2 + (xi - xj) ** 2 < r * r:
                    brute[i, j] = math.exp(-float((f[:, yi, xi] - f[:, yj, xj]).abs().mean()))
        sparse = sparse_affinity(f, r)
        assert sparse.is_coalesced() and sparse._nnz() == int((brute > 0).sum())
        torch.testing.assert_close(sparse.to_dense(), brute, rtol=0, atol=1e-12)
        torch.testing.assert_close(dense_affinity(f, r), brute, rtol=0, atol=1e-12)


def test_balanced_loss_by_hand():
    # a 1×1×3 row: labels [fg 1, fg 1, bg 0]; radius 2 → offsets (0,1) only in a single row
    labels = torch.tensor([[[1, 1, 0]]])
    aff = [torch.tensor([[[0.8, 0.3]]])]  # a(p0,p1) = 0.8 (same fg), a(p1,p2) = 0.3 (fg vs bg)
    out = affinity_loss(aff, labels, [(0, 1)], eps=0.0)
    assert math.isclose(float(out["fg"]), -math.log(0.8), rel_tol=1e-6)
    assert math.isclose(float(out["neg"]), -math.log(0.7), rel_tol=1e-6)
    assert float(out["bg"]) == 0.0  # no background pair
    assert math.isclose(float(out["loss"]), -math.log(0.8) / 4 - math.log(0.7) / 2, rel_tol=1e-6)
    # an ignored label removes its pairs
    out = affinity_loss(aff, torch.tensor([[[1, 255, 0]]]), [(0, 1)], eps=0.0)
    assert float(out["loss"]) == 0.0


def test_labels_at_stride_and_features():
    lab = torch.arange(16 * 20).view(1, 16, 20) % 7
    small = labels_at_stride(lab, 8, (2, 3))
    assert small[0, 0, 0] == lab[0, 4, 4] and small[0, 1, 1] == lab[0, 12, 12]
    assert small[0, 0, 2] == 255  # the cell centre (4, 20) lies past the 20-pixel-wide image
    net = create_model("affinity_net", backbone="resnet18", dims=(8, 8, 16)).eval()
    with torch.no_grad():
        f = net(torch.rand(1, 3, 45, 70))
    assert f.shape == (1, 32, 6, 9)
    assert np.isfinite(f.numpy()).all()
