"""SASFormer's equations (``models/sasformer.py``) against brute force, its network's attention grids, and the
affinity loss reaching every block's attention."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.sasformer import (PAPER_ALPHA, SASFormerConfig, SASFormerLoss, affinity_distance, affinity_loss,
                              block_affinity_loss, block_attention, resolve_alpha, sasformer)
from pipeline.config import validate_config
from pipeline.errors import UserError

TINY = dict(backbone="pvt_v2_b0", embed_dims=[8, 16, 16, 24], depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 2], decoder_dim=16)


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_block_attention_is_the_mean_over_layers_and_heads():
    g = torch.Generator().manual_seed(0)
    layers = [torch.rand(2, 3, 5, 4, generator=g).softmax(-1) for _ in range(3)]
    got = block_attention(layers)
    for b in range(2):
        for i in range(5):
            for k in range(4):
                want = sum(layers[n][b, h, i, k].item() for n in range(3) for h in range(3)) / 9
                assert got[b, i, k].item() == pytest.approx(want, abs=1e-6)
    thinned = [m * 0.5 for m in layers]  # rows of attention dropout's output: renormalised first
    assert torch.allclose(block_attention(thinned), got, atol=1e-6)


def test_block_affinity_loss_matches_a_loop_over_pixels():
    """Eq. 4–7 for one block, pixel by pixel: Y_i = Σ_k A_ik P'_k, softmax of Y_i and of P_i, L1 over classes,
    averaged over the unlabelled query positions."""
    g = torch.Generator().manual_seed(1)
    C, (h, w), (kh, kw) = 3, (4, 4), (2, 2)
    logits = torch.randn(1, C, 8, 8, generator=g)
    attention = torch.rand(1, h * w, kh * kw, generator=g).softmax(-1)
    unlabelled = torch.ones(1, 8, 8, dtype=torch.bool)
    unlabelled[0, :4, :4] = False  # the top-left quarter labelled: query rows 0–1, columns 0–1 left out
    got = block_affinity_loss(attention, logits, (h, w), (kh, kw), unlabelled, "l1").item()
    pk = F.interpolate(logits, size=(kh, kw), mode="bilinear", align_corners=False).softmax(1)[0]
    pq = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)[0]
    total, n = 0.0, 0
    for i in range(h * w):
        r, c = divmod(i, w)
        if r < 2 and c < 2:
            continue
        y = [sum(attention[0, i, k].item() * pk[ch, k // kw, k % kw].item() for k in range(kh * kw)) for ch in range(C)]
        p = [pq[ch, r, c].item() for ch in range(C)]
        total += sum(abs(a - b) for a, b in zip(_softmax(y), _softmax(p)))
        n += 1
    assert n == 12 and got == pytest.approx(total / n, rel=1e-5)


def test_distances_of_table_4_against_their_formulas():
    g = torch.Generator().manual_seed(2)
    y, p = torch.rand(6, 4, generator=g).softmax(-1), torch.rand(6, 4, generator=g).softmax(-1)
    assert torch.allclose(affinity_distance(y, p, "l1"), (y - p).abs().sum(-1))
    assert torch.allclose(affinity_distance(y, p, "l2"), ((y - p) ** 2).sum(-1))
    assert torch.allclose(affinity_distance(y, p, "kl"), F.kl_div(y.log(), p, reduction="none").sum(-1), atol=1e-6)
    assert torch.allclose(affinity_distance(y, p, "ce"), -(p * y.log()).sum(-1))
    assert torch.allclose(affinity_distance(p, p, "kl"), torch.zeros(6), atol=1e-6)


def test_affinity_loss_averages_the_blocks():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    un = torch.ones(2, 8, 8, dtype=torch.bool)
    a1, a2 = torch.rand(2, 16, 4, generator=g).softmax(-1), torch.rand(2, 4, 4, generator=g).softmax(-1)
    one = block_affinity_loss(a1, logits, (4, 4), (2, 2), un)
    two = block_affinity_loss(a2, logits, (2, 2), (2, 2), un)
    assert affinity_loss([a1, a2], logits, [(4, 4), (2, 2)], [(2, 2), (2, 2)], un).item() == pytest.approx((one + two).item() / 2)
    with pytest.raises(ValueError, match="does not match grids"):
        block_affinity_loss(a1, logits, (2, 2), (2, 2), un)


def test_attention_grids_follow_the_spatial_reduction():
    net = sasformer(output_stride=16, **TINY)
    out = net.forward_train(torch.randn(1, 3, 64, 96))
    assert out.query_sizes == [(16, 24), (8, 12), (4, 6), (4, 6)]  # strides 4, 8, 16, 16 (last merging at stride 1)
    assert out.key_sizes == [(2, 3), (2, 3), (2, 3), (4, 6)]  # reduction ratios 8, 4, 2, 1
    for a, q, k in zip(out.attention, out.query_sizes, out.key_sizes):
        assert a.shape == (1, q[0] * q[1], k[0] * k[1]) and torch.allclose(a.sum(-1), torch.ones(1, q[0] * q[1]), atol=1e-5)
    assert net(torch.randn(1, 3, 50, 70)).shape == (1, 21, 50, 70)


def _captured_step(net, loss, images, labels):
    """Run ``loss`` as training does, keeping the gradient of every block's A_l (Eq. 3)."""
    seen = {}
    forward_train = net.forward_train

    def capture(x):
        out = forward_train(x)
        for a in out.attention:
            a.retain_grad()  # fails if a block's A_l left the graph (detached)
        seen["out"] = out
        return out
    net.forward_train = capture
    loss(net, (images, labels))["loss"].backward()
    return seen["out"]


def test_the_loss_reaches_the_attention_of_all_four_blocks():
    torch.manual_seed(0)
    net = sasformer(output_stride=16, **TINY)
    images, labels = torch.randn(2, 3, 64, 64), torch.full((2, 64, 64), 255)
    labels[:, 20:30, 20:30] = 5
    out = _captured_step(net, SASFormerLoss(1.2), images, labels)
    assert len(out.attention) == 4
    for block, a in enumerate(out.attention, 1):
        assert a.grad is not None and a.grad.abs().sum() > 0, f"block {block}'s attention does not reach the loss"
        # A_l is the block's own attention: the mean of its layers' recorded maps, in the graph of its queries
        maps = net.encoder.stage_attention[block - 1].select()
        assert len(maps) == TINY["depths"][block - 1] and torch.allclose(a, block_attention(maps))
    # Table 3: only the chosen blocks contribute
    net.zero_grad()
    out = _captured_step(sasformer(output_stride=16, **TINY), SASFormerLoss(1.2, blocks=(1, 3)), images, labels)
    assert [a.grad is not None for a in out.attention] == [True, False, True, False]


def test_alpha_zero_is_the_segformer_baseline():
    torch.manual_seed(0)
    net = sasformer(output_stride=16, **TINY)
    images, labels = torch.randn(1, 3, 64, 64), torch.full((1, 64, 64), 255)
    labels[:, :10] = 0
    r = SASFormerLoss(0.0)(net, (images, labels))
    assert r["affinity"].item() == 0 and r["loss"].item() == pytest.approx(r["partial_ce"].item())


def test_alpha_by_annotation_kind_and_config_ranges():
    assert PAPER_ALPHA == {"scribble": 1.2, "point": 0.2}
    assert resolve_alpha(None, "point") == 0.2 and resolve_alpha(0.5, "scribble") == 0.5
    assert SASFormerConfig().blocks == [1, 2, 3, 4] and SASFormerConfig().distance == "l1"
    for key, value in (("blocks", [0, 5]), ("blocks", []), ("alpha", -1), ("distance", "cos")):
        with pytest.raises(UserError, match=f"sasformer.{key}"):
            validate_config({"sasformer": {key: value}})
