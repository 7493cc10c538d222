"""SWTformer: its equations against brute force and hand-computed values, the HFF's use of every stage, the
network's V1/V2 outputs and losses."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from models.swtformer import (HierarchicalFeatureFusion, SWTformerConfig, ccl_loss, class_activation_maps, class_prototypes,
                              gsc_loss, locate_seeds, reactivate, seed_overlap, structure_affinity, swtformer_losses, swtformer_spec,
                              valid_maps, with_background)

SMALL = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], hff_dim=8)


def net(version=2, **kw):
    torch.manual_seed(0)
    return swtformer_spec(SWTformerConfig(version=version, **{**SMALL, **kw})).build()


def test_cam_is_relu_then_max_normalised_and_background_is_one_minus_the_max():
    f = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]], [[1.0, 1.0], [0.5, -3.0]]]])
    cam = class_activation_maps(f)  # Eq. 1
    assert torch.allclose(cam[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]), atol=1e-5)
    assert torch.allclose(cam[0, 1], torch.tensor([[1.0, 1.0], [0.5, 0.0]]), atol=1e-5)
    m = with_background(cam)  # Eq. 3
    assert torch.allclose(m[0, 0], torch.tensor([[0.0, 0.0], [0.0, 1.0]]), atol=1e-4) and torch.equal(m[:, 1:], cam)


@pytest.mark.parametrize("rule", ["abs", "relu"])
def test_structure_affinity_is_the_cosine_of_every_token_pair(rule):
    """Eq. 4 (|cos|) and SIPE's ReLU(cos), the cosine with SIPE's 1e-5 added to each norm (resnet50_SIPE.py:39)."""
    t = torch.randn(2, 5, 3, 4)
    s = structure_affinity(t, rule)
    flat = t.flatten(2).double()
    for b, i, j in itertools.product(range(2), range(12), range(12)):
        a, c = flat[b, :, i], flat[b, :, j]
        cos = float(a @ c / ((a.norm() + 1e-5) * (c.norm() + 1e-5)))
        assert math.isclose(s[b, i, j].item(), abs(cos) if rule == "abs" else max(cos, 0.0), abs_tol=1e-6)
    t2 = torch.tensor([[[[1.0, -1.0]]]])  # opposite tokens: |cos| = 1, SIPE's ReLU gives 0
    want = torch.ones(1, 2, 2) if rule == "abs" else torch.eye(2)[None]
    assert torch.allclose(structure_affinity(t2, rule), want, atol=1e-4)


def test_seed_locating_matches_a_brute_force_overlap():
    torch.manual_seed(1)
    b, k, h, w = 2, 4, 3, 3
    cams = torch.rand(b, k, h, w)
    valid = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1]], dtype=torch.float32)
    cams = cams * valid[..., None, None]
    aff = structure_affinity(torch.randn(b, 6, h, w))
    seeds = locate_seeds(cams, aff, valid, bkg_weight=0.5)
    overlap = seed_overlap(cams, aff, 0.5)
    m = cams.flatten(2)
    for bi, i in itertools.product(range(b), range(h * w)):
        scores = []
        for c in range(k):
            inter = sum(aff[bi, i, j] * m[bi, c, j] for j in range(h * w))
            union = aff[bi, i].sum() + m[bi, c].sum() - inter
            scores.append(float(inter / union) * (0.5 if c == 0 else 1.0))
            assert math.isclose(overlap[bi, c, i].item(), scores[-1], abs_tol=1e-5)
        best = max(range(k), key=lambda c: scores[c])
        want = torch.zeros(k)
        want[best] = valid[bi, best]
        assert torch.equal(seeds[bi, :, i // w, i % w], want), (bi, i, scores)


def test_background_weight_decides_a_tie_for_the_object():
    aff = torch.ones(1, 2, 2)
    cams = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]]])  # background and one class overlap every token equally
    valid = torch.ones(1, 2)
    assert locate_seeds(cams, aff, valid, 0.5)[0, 1].tolist() == [[1.0, 1.0]]
    assert locate_seeds(cams, aff, valid, 2.0)[0, 0].tolist() == [[1.0, 1.0]]


def test_prototypes_are_masked_means_and_rcam_is_relu_cosine():
    feats = torch.randn(1, 3, 4, 4)
    seeds = torch.zeros(1, 2, 2, 2)
    seeds[0, 0, 0, 0] = 1  # the top-left quarter of the feature map (nearest upsampling ×2)
    p = class_prototypes(seeds, feats)
    assert torch.allclose(p[0, 0], feats[0, :, :2, :2].mean((-2, -1)), atol=1e-6)
    assert torch.equal(p[0, 1], torch.zeros(3))  # no seed: no prototype
    r = reactivate(p, feats)
    for y, x in itertools.product(range(4), range(4)):
        want = max(0.0, F.cosine_similarity(feats[0, :, y, x], p[0, 0], dim=0).item())
        assert math.isclose(r[0, 0, y, x].item(), want, abs_tol=1e-5)
    assert torch.equal(r[0, 1], torch.zeros(4, 4))


def test_gsc_is_the_mean_l1_to_the_max_normalised_rcam():
    cams = torch.tensor([[[[0.5, 1.0]], [[0.0, 0.2]]]])
    rcams = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.4]]]])  # normalised: [0.5, 1], [0, 1]
    assert math.isclose(gsc_loss(cams, rcams).item(), (0 + 0 + 0 + 0.8) / 4, abs_tol=1e-4)


def test_ccl_as_printed_over_the_present_maps():
    a = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]], [[3.0, 1.0]]]])
    b = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # cos 1, cos 0, (absent)
    valid = torch.tensor([[1.0, 1.0, 0.0]])
    want = (0.5 * (2 / 3) ** 2 + 0.5 * 1.0) / 2  # ½[(⅔·1)² + 0²] and ½[0 + 1²]
    assert math.isclose(ccl_loss(a, b, valid).item(), want, abs_tol=1e-5)
    # smallest at cos = 9/13, as printed
    cos = torch.linspace(0, 1, 1301)
    per = 0.5 * ((2 / 3 * cos) ** 2 + (1 - cos) ** 2)
    assert math.isclose(cos[per.argmin()].item(), 9 / 13, abs_tol=1e-3)


def test_hff_uses_all_four_stages():
    torch.manual_seed(0)
    hff = HierarchicalFeatureFusion([8, 16, 32, 64], dim=4)
    feats = [torch.randn(1, c, 16 // 2 ** i, 16 // 2 ** i, requires_grad=True) for i, c in enumerate([8, 16, 32, 64])]
    out = hff(feats)
    assert out.shape == (1, 16, 4, 4)  # 4·dim channels at stage 3's resolution
    grads = torch.autograd.grad(out.square().sum(), feats)
    for i, g in enumerate(grads):
        assert g.abs().sum() > 0, f"stage {i + 1} does not reach F_hie"
    for i in range(4):  # each stage changes F_hie
        changed = [f.detach().clone() for f in feats]
        changed[i] = torch.randn_like(changed[i])
        assert not torch.allclose(hff(changed), out), f"F_hie ignores stage {i + 1}"


def test_v1_and_v2_outputs_on_any_image_size():
    for version in (1, 2):
        model = net(version).eval()
        x = torch.randn(2, 3, 50, 70)  # not a multiple of the stride (16): padded, and the maps cropped back
        labels = torch.zeros(2, 20)
        labels[0, 3] = labels[1, 7] = 1
        with torch.no_grad():
            assert model.class_maps(x).shape == (2, 20, 4, 5) and model(x).shape == (2, 20)
            cam, rcam = model.seed_maps(x, labels)
        assert cam.shape == (2, 20, 50, 70) and rcam.shape == (2, 20 + version - 1, 50, 70)
        assert (model.hff is None) == (version == 1) and (torch.equal(cam, rcam)) == (version == 1)
        if version == 2:  # R-CAM for the background and where a class is in the image label
            assert rcam[:, 0].amax() > 0 and rcam[0, 4].amax() > 0 and rcam[0, 8].amax() == 0 and rcam[1, 8].amax() > 0


def test_losses_switch_and_reach_the_hff():
    images, labels = torch.randn(2, 3, 64, 64), torch.zeros(2, 20)
    labels[0, 1] = labels[1, 4] = 1
    v1 = swtformer_losses(net(1), images, labels)
    assert v1["gsc"] == 0 and v1["ccl"] == 0 and torch.equal(v1["loss"], v1["cls"])
    model = net(2)
    out = swtformer_losses(model, images, labels)
    assert out["gsc"] > 0 and out["ccl"] > 0
    assert torch.allclose(out["loss"], out["cls"] + out["gsc"] + out["ccl"])  # Eq. 7
    out["gsc"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.hff.sides.parameters())
    off = swtformer_losses(model, images, labels, gsc=False, ccl=False)
    assert off["gsc"] == 0 and off["ccl"] == 0


@pytest.mark.parametrize("detach", [True, False])
def test_hff_detach_keeps_gsc_out_of_the_early_stages(detach):
    model = net(2, hff_detach=detach)
    images, labels = torch.randn(1, 3, 64, 64), torch.zeros(1, 20)
    labels[0, 2] = 1
    out = model.outputs(images, labels)
    rcam_only = gsc_loss(out["cams"].detach(), out["rcams"])  # through the R-CAM path alone
    rcam_only.backward()
    first = model.backbone.layers[0].blocks[0].mlp.fc1.weight.grad
    assert (first is None or first.abs().sum() == 0) == detach


def test_valid_maps_put_the_background_first():
    assert valid_maps(torch.tensor([[0.0, 1.0]])).tolist() == [[1.0, 0.0, 1.0]]


def test_gsc_and_ccl_join_at_start_step():
    from stages.train_swtformer import SWTformerLoss
    model, labels = net(2), torch.zeros(2, 20)
    labels[:, 5] = 1
    batch = (torch.randn(2, 3, 64, 64), labels, None)
    loss = SWTformerLoss(gsc=True, ccl=True, start_step=10)
    before, after = loss(model, batch, step=9), loss(model, batch, step=10)
    assert before["gsc"] == 0 and before["ccl"] == 0 and torch.equal(before["loss"], before["cls"])
    assert after["gsc"] > 0 and after["ccl"] > 0
