"""SWTformer V2's seed locating, prototypes, R-CAM and losses against an independent reference written from SIPE's
code (chenqi1126/SIPE, whose modules SWTformer takes: network/resnet50_SIPE.py, make_cam.py, eval_cam.py,
train_resnet50_SIPE.py), in float64 NumPy, on small fixed tensors (max abs error ≤ 1e-5); the paper profile's
readings (docs/swtformer.md) and its hyperparameter table.

The network's own tensors (the Swin stages, F_out, F_hie) feed both sides: what is compared is the method's rule
after the backbone, not the backbone (the Swin architecture test is the backbone's own).
"""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.swtformer import SWTformerConfig, SWTformerSeedsConfig, ccl_loss, gsc_loss, locate_seeds, structure_affinity, swtformer_spec
from pipeline.transforms import normalise
from stages.labels import threshold_labels
from stages.swtformer_seeds import image_swtformer_seeds
from tests.helpers import config_value

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], hff_dim=8)
SIPE = SWTformerSeedsConfig(views="flip_fused", features="hierarchical", absent="compete", scores="difference")


# ---- the reference: SIPE's behaviour, written out in NumPy (float64) --------------------------------------------

def ref_get_seed(norm_cam, label, feature, rule="relu"):
    """resnet50_SIPE.py:32-52 (get_seed): n×K×h×w maps, n×K labels, n×D×h×w features → one-hot seeds × label."""
    n, k, h, w = norm_cam.shape
    f = feature.reshape(n, -1, h * w)
    f = f / (np.sqrt((f ** 2).sum(1, keepdims=True)) + 1e-5)
    corr = np.einsum("ndi,ndj->nij", f, f)
    corr = np.maximum(corr, 0) if rule == "relu" else np.abs(corr)
    cam = norm_cam.reshape(n, k, h * w)
    inter = np.einsum("nij,ncj->nci", corr, cam)
    union = corr.sum(-1)[:, None, :] + cam.sum(-1)[..., None] - inter
    miou = inter / union
    miou[:, 0] *= 0.5
    seeds = np.eye(k)[miou.argmax(1)].transpose(0, 2, 1).reshape(n, k, h, w)
    return seeds * label[..., None, None]


def ref_prototypes(seeds, feature):
    """resnet50_SIPE.py:54-59: seeds resized to the features by nearest neighbour, the masked features averaged over
    every pixel (SIPE divides by h·w, not by the seed count: only the direction reaches the R-CAM)."""
    n, d, h, w = feature.shape
    s = F.interpolate(torch.from_numpy(np.ascontiguousarray(seeds)), size=(h, w), mode="nearest").numpy()
    return np.einsum("nkp,ndp->nkd", s.reshape(n, -1, h * w), feature.reshape(n, d, h * w)) / (h * w)


def ref_reactivate(prototypes, feature):
    """resnet50_SIPE.py:61-64: ReLU(cosine(feature, prototype)) per prototype (torch's eps 1e-8)."""
    dot = np.einsum("nkd,ndhw->nkhw", prototypes, feature)
    norms = np.sqrt((prototypes ** 2).sum(-1))[..., None, None] * np.sqrt((feature ** 2).sum(1))[:, None]
    return np.maximum(dot / np.maximum(norms, 1e-8), 0)


def ref_norm_cam(cam):
    """resnet50_SIPE.py:92-95 / 143-146: ReLU, max-normalised (+1e-5), background 1 − max first."""
    c = np.maximum(cam, 0)
    c = c / (c.reshape(*c.shape[:2], -1).max(-1)[..., None, None] + 1e-5)
    return np.concatenate([1 - c.max(1, keepdims=True), c], 1)


def ref_resize(x, size, align_corners):
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=size, mode="bilinear", align_corners=align_corners).numpy()


def ref_locate_and_reactivate(cam, t_out, hie, label, features="t_out", absent="masked", rule="relu"):
    """SIPE's seed locating → prototypes → R-CAM for n images: ``cam`` F_out n×C×h×w, ``label`` n×C multi-hot.

    absent="masked": SIPE's Net.forward (training, resnet50_SIPE.py:91-100), the maps × the label before get_seed;
    "compete": its CAM.forward (inference, :143-151), unmasked (get_seed masks after). features="hierarchical":
    F_hie's affinity, the maps resized to its grid first (corners aligned, :147); "t_out": Eq. 4's T_out (SIPE's
    x4), no resize. Returns (seeds, R-CAM)."""
    valid = np.concatenate([np.ones_like(label[:, :1]), label], 1)
    norm = ref_norm_cam(cam)
    if absent == "masked":
        norm = norm * valid[..., None, None]
    if features == "hierarchical":
        seeds = ref_get_seed(ref_resize(norm, hie.shape[-2:], True), valid, hie, rule)
    else:
        seeds = ref_get_seed(norm, valid, t_out, rule)
    return seeds, ref_reactivate(ref_prototypes(seeds, hie), hie)


def ref_train_forward(cam, t_out, hie, label, rule="relu"):
    """SIPE's Net.forward with Eq. 4's T_out as the seed features: seeds, R-CAM."""
    return ref_locate_and_reactivate(cam, t_out, hie, label, "t_out", "masked", rule)


def ref_cam_forward(cam2, t2, hie2, label, features="hierarchical", rule="relu"):
    """SIPE's CAM.forward (resnet50_SIPE.py:121-154) for one image: the view and its flip summed (F_out and the
    features, :140-141), then located with absent classes competing. Returns the R-CAM (C+1)×h×w."""
    fuse = lambda a: np.ascontiguousarray(a[0] + np.flip(a[1], -1))[None]
    return ref_locate_and_reactivate(fuse(cam2), fuse(t2), fuse(hie2), label[None], features, "compete", rule)[1][0]


def structured_tensors(seed=0):
    """Fixed tensors with structure a fresh network lacks: F_hie (8×12) and T_out (its 2×2 means, 4×6) of four
    regions — top left, top right, bottom left, bottom right — each along its own (orthogonal, signed) direction; F_out with
    class 3 on the top left, class 9 on the top right, the absent class 0 on the bottom right, the other 17 below
    zero (the bottom left is background)."""
    g = torch.Generator().manual_seed(seed)
    dirs = 3 * torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0][:4]  # orthogonal, signed
    region = torch.zeros(8, 12, dtype=torch.long)
    region[:, 6:] = 1
    region[6:, :6] = 2
    region[6:, 6:] = 3
    hie = dirs[region].permute(2, 0, 1)[None] + 0.3 * torch.randn(1, 8, 8, 12, generator=g, dtype=torch.float64)
    t_out = F.avg_pool2d(hie, 2) + 0.1 * torch.randn(1, 8, 4, 6, generator=g, dtype=torch.float64)
    f_out = torch.full((1, 20, 4, 6), -2.0, dtype=torch.float64) + 0.5 * torch.randn(1, 20, 4, 6, generator=g, dtype=torch.float64)
    f_out[0, 3, :3, :3] += 4
    f_out[0, 9, :3, 3:] += 4
    f_out[0, 0, 3:, 3:] += 4
    labels = torch.zeros(1, 20, dtype=torch.float64)
    labels[0, [3, 9]] = 1
    return f_out, t_out, hie, labels


def _net(present=(), seed=0, **kw):
    """A small V2 network whose class maps are below zero everywhere (bias −10) except for the classes ``present``
    (0-based) and one absent class (the first not present), which competes: a fresh head's normalised maps all
    peak at 1, so without this every image would be claimed by its absent classes."""
    torch.manual_seed(seed)
    model = swtformer_spec(SWTformerConfig(version=2, **{**SMALL, **kw})).build().eval()
    head = torch.nn.Conv2d(model.classifier.in_channels, 20, 1)
    with torch.no_grad():
        head.weight.copy_(model.classifier.weight)
        head.bias.fill_(-10.0)
        head.bias[[*present, min(set(range(20)) - set(present))]] = 0.0
    model.classifier = head
    return model


def _parts(model, x):
    """The network's tensors of a batch: F_out, T_out, F_hie (float64 NumPy)."""
    with torch.no_grad():
        feats, t_out = model.stages(x)
        return [a.double().numpy() for a in (model.classifier(t_out), t_out, model.hff(feats))]


# ---- training: SIPE's Net.forward ------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["relu", "abs"])
@pytest.mark.parametrize("features,absent", [("t_out", "masked"), ("t_out", "compete"), ("hierarchical", "compete"),
                                             ("hierarchical", "masked")])
def test_reactivation_equals_sipe_on_structured_tensors(features, absent, rule):
    """``SWTformer.reactivated`` (seeds, prototypes, R-CAM) against SIPE's steps, for each reading."""
    model = _net(affinity=rule).double()
    f_out, t_out, hie, labels = structured_tensors()
    want_seeds, want_rcams = ref_locate_and_reactivate(*(a.numpy() for a in (f_out, t_out, hie, labels)), features, absent, rule)
    _, seeds, rcams = model.reactivated(f_out, t_out, hie, labels, features, absent)
    assert np.array_equal(seeds.numpy(), want_seeds)
    assert np.abs(rcams.numpy() - want_rcams).max() <= 1e-5
    seeded = set(np.unique(want_seeds.argmax(1)[want_seeds.max(1) > 0]))
    assert {0, 4, 10} <= seeded  # background and both classes seeded: the case is not degenerate
    assert all(want_rcams[0, k].max() > 0.5 for k in (0, 4, 10))


def test_absent_competitor_takes_tokens_only_when_competing():
    """SIPE's inference lets the absent class 0 claim the bottom region (its tokens then get no seed); masked
    first (training's rule), they go to a present map."""
    model = _net(affinity="relu").double()
    f_out, t_out, hie, labels = structured_tensors()
    unseeded = {a: (model.reactivated(f_out, t_out, hie, labels, "t_out", a)[1].sum(1) == 0).sum().item()
                for a in ("compete", "masked")}
    assert unseeded["masked"] == 0 and unseeded["compete"] > 0


@pytest.mark.parametrize("rule", ["relu", "abs"])
def test_training_seeds_and_rcam_equal_sipe_net_forward(rule):
    model = _net((2, 5, 7, 11, 12), affinity=rule)
    torch.manual_seed(3)
    x, labels = torch.randn(2, 3, 64, 64), torch.zeros(2, 20)
    labels[0, [2, 5]] = labels[1, [7, 11, 12]] = 1
    f_out, t_out, hie = _parts(model, x)
    want_seeds, want_rcams = ref_train_forward(f_out, t_out, hie, labels.double().numpy(), rule)
    with torch.no_grad():
        out = model.outputs(x, labels)
    assert torch.equal(out["seeds"], torch.from_numpy(want_seeds).float())
    assert (out["rcams"].double() - torch.from_numpy(want_rcams)).abs().max() <= 1e-5
    assert len(np.unique(want_seeds.argmax(1))) > 1  # more than the background is seeded: the test sees the rule


def test_abs_and_relu_locate_different_seeds_on_signed_tokens():
    """Eq. 4 as printed (|cos|) against SIPE's ReLU(cos) on tokens that point apart: the reference decides which
    is which, and the two rules differ on a fixed case (issue 40 item 7)."""
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(1, 6, 6, 12, generator=g, dtype=torch.float64)
    cams = torch.rand(1, 4, 6, 12, generator=g, dtype=torch.float64)
    valid = torch.ones(1, 4, dtype=torch.float64)
    got = {r: locate_seeds(cams, structure_affinity(tokens, r), valid).argmax(1) for r in ("abs", "relu")}
    for r in ("abs", "relu"):
        want = ref_get_seed(cams.numpy(), valid.numpy(), tokens.numpy(), r).argmax(1)
        assert np.array_equal(got[r].numpy(), want), r
    assert (got["abs"] != got["relu"]).sum() > 0


def test_gsc_equals_sipe_loss():
    """train_resnet50_SIPE.py:151-152: mean |CAM − IS_cam / (max + 1e-5)| over maps, pixels and the batch."""
    g = torch.Generator().manual_seed(1)
    cams, rcams = torch.rand(2, 4, 5, 6, generator=g), torch.rand(2, 4, 5, 6, generator=g) * 3
    r = rcams.double().numpy()
    want = np.abs(cams.double().numpy() - r / (r.reshape(2, 4, -1).max(-1)[..., None, None] + 1e-5)).mean()
    assert abs(gsc_loss(cams, rcams).item() - want) <= 1e-6


# ---- inference: SIPE's CAM.forward, make_cam.py, eval_cam.py -------------------------------------------------

@pytest.mark.parametrize("features", ["hierarchical", "t_out"])
def test_flip_fused_rcam_equals_sipe_cam_forward(features):
    model = _net((3, 9), affinity="relu")
    torch.manual_seed(5)
    x, labels = torch.randn(1, 3, 64, 96), torch.zeros(1, 20)  # sides multiples of the stride: no padding
    labels[0, [3, 9]] = 1
    f_out, t_out, hie = _parts(model, torch.cat([x, x.flip(-1)]))
    want = ref_cam_forward(f_out, t_out, hie, labels[0].double().numpy(), features)
    want = ref_resize(want[None], (64, 96), False)[0]  # make_cam.py:57
    with torch.no_grad():
        _, rcam = model.seed_maps(x, labels, "flip_fused", features, "compete")
    assert (rcam[0].double() - torch.from_numpy(want)).abs().max() <= 1e-5
    assert want.max() > 0.1  # something is re-activated (a fresh network's F_hie is nearly uniform: one map wins)
    with torch.no_grad():  # per view (ours before this reading) is a different map
        _, per_view = model.seed_maps(x, labels, "per_view", features, "compete")
    assert (per_view - rcam).abs().max() > 1e-3


def test_seed_scores_at_one_half_are_sipe_argmax_over_background_and_classes():
    """make_cam.py:56-70 + eval_cam.py:18-21 for one image at scale 1 with its flip: R-CAMs upsampled, summed,
    max-normalised (+1e-5), argmax over the background and the image's classes. Ours stores R_k / (R_k + R_B);
    its threshold ½ is that argmax, and the stored scores equal those of the reference's maps."""
    model = _net((3, 9), affinity="relu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    classes = [4, 10]  # VOC indices (1-based)
    labels = np.zeros(20)
    labels[[c - 1 for c in classes]] = 1
    x = normalise(image)[None]
    f_out, t_out, hie = _parts(model, torch.cat([x, x.flip(-1)]))
    rcam = ref_resize(ref_cam_forward(f_out, t_out, hie, labels, "hierarchical")[None], (64, 96), False)[0]
    rcam = rcam / (rcam.reshape(21, -1).max(-1)[:, None, None] + 1e-5)
    keys = np.array([0, *classes])
    sipe_label = keys[rcam[keys].argmax(0)]  # eval_cam.py:20-21
    _, scores = image_swtformer_seeds(model, image, classes, [1.0], True, locating=SIPE)
    r = rcam[keys]
    want_scores = 0.5 + (r[1:] - r[:1]) / 2
    assert np.abs(scores - want_scores).max() <= 1e-5
    assert np.array_equal(threshold_labels(scores, classes, np.array([0.5]))[0], sipe_label)
    assert set(np.unique(sipe_label)) == {0, *classes}
    _, ratio = image_swtformer_seeds(model, image, classes, [1.0], True, locating=SIPE.model_copy(update={"scores": "ratio"}))
    assert (threshold_labels(ratio, classes, np.array([0.5]))[0] != sipe_label).any()  # ties where R_B = 0


# ---- CCL (no reference anywhere): the docstring's hand-computed example -------------------------------------

def test_ccl_hand_computed_example():
    """The example of ``ccl_loss``' docstring, computed by hand: ½[(⅔·cos)² + (1 − cos)²] per present map."""
    cams = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]])
    rcams = torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]], [[0.0, 0.0]]]])
    valid = torch.tensor([[1.0, 1.0, 0.0]])
    c = 1 / math.sqrt(2)  # map 0: cos((1, 0), (1, 1)); map 1: cos((0, 1), (0, 2)) = 1; map 2 absent
    want = (0.5 * ((2 / 3 * c) ** 2 + (1 - c) ** 2) + 0.5 * (2 / 3) ** 2) / 2
    assert abs(want - 0.188113) < 1e-6
    assert abs(ccl_loss(cams, rcams, valid).item() - want) <= 1e-6


# ---- the paper profile ----------------------------------------------------------------------------------------

def _paper():
    from workflows import get_flow
    return get_flow("swtformer_voc").resolve("paper", [])


def _table_rows():
    """The rows of docs/swtformer.md's hyperparameter table: (key, ours as written)."""
    text = (ROOT / "docs" / "swtformer.md").read_text()
    table = text.split("## Hyperparameters", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines() if line.startswith("| `")]
    return [(r[0].strip("`"), re.match(r"`([^`]*)`", r[-1]).group(1)) for r in rows]  # ours: its first `value`


def test_docs_hyperparameter_table_is_the_paper_profile():
    """Every row's "ours" cell is what ``--profile paper`` resolves to (issue 35 item 4)."""
    cfg, rows = _paper(), _table_rows()
    assert len(rows) >= 20
    for key, ours in rows:
        value = config_value(cfg, key)
        written = None if ours == "null" else eval(ours, {"true": True, "false": False})  # noqa: S307 (our own docs)
        assert value == written, f"{key}: docs say {ours}, the paper profile has {value!r}"


def test_paper_profile_readings():
    cfg = _paper()
    assert cfg.swtformer.affinity == "abs"  # Eq. 4 as printed
    seeds = cfg.swtformer_seeds
    assert (seeds.views, seeds.features, seeds.absent, seeds.scores) == ("flip_fused", "t_out", "compete", "difference")
    smoke = __import__("workflows").get_flow("swtformer_voc").resolve("smoke", [])
    default = __import__("workflows").get_flow("swtformer_voc").resolve("default", [])
    for c in (smoke, default):  # the from-scratch profiles keep their measured behaviour
        assert c.swtformer.affinity == "abs" and c.swtformer_seeds == SWTformerSeedsConfig()


def test_paper_profile_builds_swin_tiny():
    """The paper profile's Swin is timm's swin_tiny_patch4_window7_224: patch 4, dim 96, depths (2, 2, 6, 2),
    heads (3, 6, 12, 24), window 7 (Liu et al. Table 1), and the HFF's 128-channel sides; no weights fetched."""
    c = _paper().swtformer
    spec = swtformer_spec(SWTformerConfig(**{**c.model_dump(), "pretrained": False, "weights": None}))
    model = spec.build()
    swin = model.backbone
    assert swin.patch_embed.patch_size == (4, 4) and swin.embed_dim == 96
    assert [len(layer.blocks) for layer in swin.layers] == [2, 2, 6, 2]
    assert [layer.blocks[0].attn.num_heads for layer in swin.layers] == [3, 6, 12, 24]
    assert swin.layers[0].blocks[0].window_size == (7, 7) and model.stride == 32
    assert [s.out_channels for s in model.hff.sides] == [128] * 4 and model.classifier.in_channels == 768
