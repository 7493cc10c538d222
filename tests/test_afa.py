"""AFA: the MiT encoder, the AFA module's labels and losses, propagation, L_reg and the training schedule,
checked against brute-force loops and hand-computed values."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.afa import afa_spec, affinity_logits, affinity_loss, affinity_targets, local_consistency_loss
from models.mix_transformer import MixTransformer
from models.pairs import radius_mask
from pipeline.config import run_config_type
from pipeline.errors import UserError
from stages.afa_labels import PresentClasses, background_softmax, propagate_scores
from stages.afa_pseudo_labels import propagated_scores
from stages.labels import reliable_labels
from stages.train_single_stage import AFALoss

SMALL = dict(embed_dims=[8, 16, 16, 24], depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])


@pytest.mark.parametrize("stride,grid", [(16, (6, 7)), (8, (12, 13))])
def test_mit_last_stage_stride_and_recorded_attention(stride, grid):
    enc = MixTransformer("pvt_v2_b0", output_stride=stride, **SMALL)
    feats = enc(torch.randn(2, 3, 96, 100))
    assert [f.shape[1] for f in feats] == [8, 16, 16, 24]
    assert feats[0].shape[-2:] == (24, 25) and feats[-1].shape[-2:] == grid
    n = grid[0] * grid[1]
    maps = enc.attention.select()
    assert len(maps) == 1 and maps[0].shape == (2, 2, n, n)  # last stage: 1 block × 2 heads, full N×N
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 2, n), atol=1e-5)  # softmax rows
    assert maps[0].requires_grad  # kept in the graph for the AFA module
    assert enc.attention_maps == 2


def test_mit_rejects_a_backbone_that_is_not_one():
    with pytest.raises(UserError, match="pvt_v2"):
        MixTransformer("resnet18")


def test_radius_mask_and_affinity_targets_match_brute_force():
    rng = np.random.default_rng(0)
    h, w, r = 4, 5, 2
    lab = torch.from_numpy(rng.choice([0, 3, 7, 255], size=(2, h, w)))
    got = affinity_targets(lab, r)
    mask = radius_mask(h, w, r, "chebyshev")
    for b in range(2):
        for (i, (y1, x1)), (j, (y2, x2)) in itertools.product(enumerate(itertools.product(range(h), range(w))), repeat=2):
            near = abs(y1 - y2) <= r and abs(x1 - x2) <= r
            assert bool(mask[i, j]) == near
            a, c = int(lab[b, y1, x1]), int(lab[b, y2, x2])
            want = 255 if (not near or a == 255 or c == 255) else int(a == c)
            assert int(got[b, i, j]) == want


def test_affinity_loss_by_hand():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]]])
    targets = torch.tensor([[[1, 0], [0, 255]]])
    s = torch.sigmoid(logits)
    want = 0.5 * (1 - s[0, 0, 0]) / 2 + 0.5 * (s[0, 0, 1] + s[0, 1, 0]) / 3
    assert torch.allclose(affinity_loss(logits, targets), want)


def test_affinity_from_attention_is_symmetric_and_fuses_heads():
    proj = torch.nn.Conv2d(4, 1, 1)
    attns = [torch.rand(2, 2, 5, 5).softmax(-1) for _ in range(2)]
    a = affinity_logits(attns, proj)
    assert a.shape == (2, 5, 5) and torch.allclose(a, a.transpose(1, 2))
    s = torch.cat(attns, 1)
    s = s + s.transpose(-1, -2)
    want = (proj.weight.view(1, 4, 1, 1) * s).sum(1) + proj.bias
    assert torch.allclose(a, want, atol=1e-6)


def test_background_softmax_and_propagation_by_hand():
    cams = torch.tensor([[[[0.9, 0.1, 0.0]]]])  # one class on a 1×3 grid
    valid = torch.tensor([[True, True]])
    s = background_softmax(cams, valid, 0.5)
    assert torch.allclose(s.sum(1), torch.ones(1, 1, 3))
    assert torch.allclose(s[0, 1, 0, 0], torch.sigmoid(torch.tensor(0.4)))
    aff = torch.tensor([[[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]]])
    got = propagate_scores(s, aff, radius=1, beta=2.0)
    a = aff[0] * torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1.0]])  # radius 1 cuts the (0, 2) pair
    a = a**2
    t = a / a.sum(0, keepdim=True)
    assert torch.allclose(got[0].flatten(1), s[0].flatten(1) @ t, atol=1e-5)


def test_invalid_classes_get_no_score_and_no_label():
    present = PresentClasses.from_labels(torch.tensor([[0.0] * 2 + [1.0] + [0.0] * 17, [1.0] * 2 + [0.0] * 18]))
    assert present.index.tolist() == [[0, 3, 0], [0, 1, 2]] and present.valid.tolist() == [[True, True, False], [True] * 3]
    cams = torch.zeros(2, 20, 1, 2)
    cams[0, 2] = 0.9  # class 3 in image 0
    cams[1, 1, 0, 1] = 0.9  # class 2 in image 1, right pixel
    g = present.gather(cams)
    s = background_softmax(g, present.valid, 0.5)
    assert s[0, 2].abs().max() == 0  # padding entry: zero probability
    assert present.to_labels(s).tolist() == [[[3, 3]], [[0, 2]]]


def test_reliable_labels():
    hi = torch.tensor([5, 0, 0, 5])
    lo = torch.tensor([5, 5, 0, 5])
    assert reliable_labels(hi, lo).tolist() == [5, 255, 0, 5]


def test_local_consistency_loss_matches_brute_force():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.uniform(0, 255, (1, 3, 4, 5)).astype(np.float32))
    probs = torch.from_numpy(rng.uniform(size=(1, 3, 4, 5)).astype(np.float32)).softmax(1)
    valid = torch.ones(1, 4, 5)
    valid[0, 0, 0] = 0
    got = local_consistency_loss(img, probs, valid, kernel_size=3, sigma_rgb=40.0, sigma_xy=2.0)
    total = 0.0
    for y1, x1 in itertools.product(range(4), range(5)):
        if not valid[0, y1, x1]:
            continue
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):
            y2, x2 = y1 + dy, x1 + dx
            if (dy, dx) == (0, 0) or not (0 <= y2 < 4 and 0 <= x2 < 5) or not valid[0, y2, x2]:
                continue
            k = np.exp(-(dy**2 + dx**2) / 8.0 - float(((img[0, :, y1, x1] - img[0, :, y2, x2]) ** 2).sum()) / 3200.0)
            total += k * (1 - float((probs[0, :, y1, x1] * probs[0, :, y2, x2]).sum()))
    assert abs(float(got) - total / 19) < 1e-5
    one_hot = F.one_hot(torch.zeros(1, 4, 5, dtype=torch.long), 3).permute(0, 3, 1, 2).float()
    assert float(local_consistency_loss(img, one_hot, valid)) == 0.0  # a constant prediction is consistent


def test_propagated_scores_without_affinity_is_the_background_softmax():
    cams = np.zeros((2, 4, 4), np.float32)
    cams[0, :2] = 1.0
    cams[1, 2:] = 0.8
    cfg = run_config_type()().afa
    s = propagated_scores(cams, None, (0, 0), 0.3, cfg)
    assert s.shape == (3, 4, 4)
    assert (s.argmax(0)[:2] == 1).all() and (s.argmax(0)[2:] == 2).all()
    aff = torch.eye(4)  # a walk that stays put on a 2×2 grid: the same argmax after the round trip
    s2 = propagated_scores(cams, aff, (2, 2), 0.3, cfg)
    assert (s2.argmax(0) == s.argmax(0)).all()


def _tiny_afa():
    cfg = run_config_type().model_validate({"afa": {**SMALL, "backbone": "pvt_v2_b0", "weights": None, "decoder_dim": 8, "cls_warmup_steps": 2,
                                                    "aff_warmup_steps": 4}, "pseudo": {"par": {"num_iter": 2}}})
    torch.manual_seed(0)
    return cfg, afa_spec(cfg.afa).build()


def test_afa_loss_follows_the_warm_up_schedule():
    cfg, model = _tiny_afa()
    b, s = 2, 64
    images = torch.randn(b, 3, s, s)
    labels = torch.zeros(b, 20)
    labels[0, 3] = labels[1, 5] = labels[1, 8] = 1
    valid = torch.ones(b, s, s, dtype=torch.bool)
    loss = AFALoss(cfg.afa, cfg.pseudo.par)
    grads = {}
    for step in (0, 2, 4):
        model.zero_grad()
        out = loss(model, (images, labels, valid), step)
        out["loss"].backward()
        grads[step] = {name: (p.grad is not None and float(p.grad.abs().sum()) > 0)
                       for name, p in [("attn_proj", model.attn_proj.weight), ("decoder", model.decoder.classify.weight)]}
        active = {k for k in ("aff", "seg", "reg") if float(out[k].detach()) > 0}
        assert active == {0: set(), 2: {"aff"}, 4: {"aff", "seg", "reg"}}[step], (step, out)
    assert grads[0] == {"attn_proj": False, "decoder": False}
    assert grads[2] == {"attn_proj": True, "decoder": False}
    assert grads[4] == {"attn_proj": True, "decoder": True}


def test_afa_net_inference_shapes():
    cfg, model = _tiny_afa()
    model.eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        assert model(x).shape == (1, 21, 70, 90)
        cams = model.class_maps(x)
        aff, grid = model.affinity(x)
    assert cams.shape[:2] == (1, 20) and tuple(cams.shape[-2:]) == grid
    n = grid[0] * grid[1]
    assert aff.shape == (1, n, n) and torch.allclose(aff, aff.transpose(1, 2)) and 0 < float(aff.min())
