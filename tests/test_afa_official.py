"""AFA's ``paper`` profile against the released code (rulixiang/afa), issues 35, 39 and 41.

Each reference below is written from what the released code does (its file and line in the comments), with
loops and plain tensor arithmetic, independently of the project's functions; the project's result must match it
on small fixed tensors within 1e-5 (labels: exactly). The weight-file tests fabricate a state dict in the
released ``WeTr`` layout (random tensors, the official names and shapes): nothing is downloaded.
"""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.afa import (AFAConfig, AFANet, afa_mit, afa_spec, balanced_seg_loss, multiscale_cams_and_affinity,
                        released_state_dict)
from models.backbones import AttentionRecorder
from models.mix_transformer import MixTransformer
from pipeline.config import ParConfig
from pipeline.errors import UserError
from stages.afa_labels import PresentClasses, label_scores
from stages.refine import par
from stages.train_single_stage import AFALoss, to_rgb
from tests.helpers import config_value
from workflows.registry import get_flow

TOL = 1e-5
SMALL = dict(embed_dims=[8, 16, 16, 24], depths=[1, 1, 1, 2], num_heads=[1, 1, 2, 2])  # 2 last blocks × 2 heads


def small_afa(**kw) -> AFANet:
    torch.manual_seed(0)
    return afa_mit("mit_b0", output_stride=16, decoder_dim=16, **SMALL, **kw).eval()


# ---------------------------------------------------------------- issue 41: the AFA module's input

def block_inputs(enc: MixTransformer) -> list:
    """The input of each last-stage block's attention (what ``self.q`` and ``self.kv`` see), recorded by hooks."""
    seen = []
    for blk in enc.net.stages[-1].blocks:
        blk.attn.register_forward_pre_hook(lambda _m, args, store=seen: store.append(args[0]))
    return seen


def ref_logits(attn, x: torch.Tensor) -> torch.Tensor:
    """wetr/mix_transformer.py:96-107 with sr_ratio 1: q = xW_qᵀ + b_q, [k, v] = xW_kvᵀ + b_kv, per head q_h·k_hᵀ."""
    b, n, c = x.shape
    heads = attn.num_heads
    d = c // heads
    q = x @ attn.q.weight.T + attn.q.bias
    k = (x @ attn.kv.weight.T + attn.kv.bias)[..., :c]
    out = torch.empty(b, heads, n, n)
    for h in range(heads):
        out[:, h] = q[..., h * d:(h + 1) * d] @ k[..., h * d:(h + 1) * d].transpose(1, 2)
    return out


def test_logit_recorder_gives_q_dot_k_before_scale_and_softmax():
    torch.manual_seed(0)
    enc = MixTransformer("mit_b0", output_stride=16, attention="logits", **SMALL).eval()
    blocks = enc.net.stages[-1].blocks
    soft = AttentionRecorder(blocks, "softmax")  # the softmax maps of the same forward, recorded beside
    inputs = block_inputs(enc)
    with torch.no_grad():
        enc(torch.randn(2, 3, 64, 80))
    got = enc.attention.select()
    assert len(got) == 2 and got[0].shape == (2, 2, 20, 20)
    for blk, x, g, s in zip(blocks, inputs, got, soft.select()):
        assert (g - ref_logits(blk.attn, x)).abs().max() <= TOL
        scale = blk.attn.head_dim ** -0.5
        assert (torch.softmax(g * scale, -1) - s).abs().max() <= 1e-6  # softmax(scale·logits) = our softmax maps
        assert (g < 0).any() and (g.sum(-1) - 1).abs().max() > 0.1  # logits, not probabilities


def test_afa_module_reads_the_raw_logits_as_the_released_wetr():
    """model_attn_aff.py:73-76: σ(attn_proj(cat(attns[-2:]) + its transpose)), attns the raw q·kᵀ."""
    model = small_afa(attention="logits")
    inputs = block_inputs(model.encoder)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        aff, grid = model.affinity(x)
    blocks = model.encoder.net.stages[-1].blocks
    maps = [ref_logits(blk.attn, i)[0] for blk, i in zip(blocks, inputs)]  # 2 blocks × 2 heads × N × N
    s = torch.cat(maps)
    w, bias = model.attn_proj.weight.view(-1), model.attn_proj.bias
    want = torch.sigmoid(sum(w[c] * (s[c] + s[c].T) for c in range(len(w))) + bias)
    assert grid == (4, 4) and (aff[0] - want).abs().max() <= TOL


# ---------------------------------------------------------------- items 1-2: the label CAMs

def fake_forward(weight: torch.Tensor):
    """A fixed network standing in for the released ``cam_only`` forward: maps from 4×4-pooled pixels (not flip
    symmetric, negative values), an affinity from their Gram matrix."""
    def forward(x):
        f = F.avg_pool2d(x, 4)
        maps = torch.einsum("kc,bchw->bkhw", weight, f) - 0.3
        flat = f.flatten(2)
        aff = torch.sigmoid(flat.transpose(1, 2) @ flat)
        return maps, aff, tuple(f.shape[-2:])
    return forward


def ref_multi_scale_cam_with_aff_mat(forward, inputs, scales):
    """utils/camutils.py:115-147: scale 1 first, then each other scale in order; per scale the images and their
    mirror, maps resized to H×W, max with the mirror flipped back, ReLU; sum; minus the minimum, over the maximum
    + 1e-5; the affinity list indexed by argmax(scales)."""
    b, _, h, w = inputs.shape
    order = [1.0] + [s for s in scales if s != 1.0]
    cams, affs = [], []
    for s in order:
        x = inputs if s == 1.0 else F.interpolate(inputs, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
        m, a, _ = forward(torch.cat([x, x.flip(-1)], 0))
        affs.append(a)
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        cams.append(torch.relu(torch.max(m[:b], m[b:].flip(-1))))
    cam = torch.stack(cams).sum(0)
    out = torch.empty_like(cam)
    for i in range(b):
        for k in range(cam.shape[1]):
            c = cam[i, k] - cam[i, k].min()
            out[i, k] = c / (c.max() + 1e-5)
    return out, affs[int(np.argmax(scales))][:b]


@pytest.mark.parametrize("size", [(64, 64), (37, 45)])
def test_multiscale_label_cams_match_the_released_rule(size):
    torch.manual_seed(1)
    forward = fake_forward(torch.randn(5, 3))
    x = torch.randn(2, 3, *size)
    want_cam, want_aff = ref_multi_scale_cam_with_aff_mat(forward, x, [1.0, 0.5, 1.5])
    cam, (aff, grid) = multiscale_cams_and_affinity(forward, x, [1.0, 0.5, 1.5], True, "released")
    assert (cam - want_cam).abs().max() <= TOL
    assert aff.shape == want_aff.shape and (aff - want_aff).abs().max() <= TOL
    assert grid == (int(1.5 * size[0]) // 4, int(1.5 * size[1]) // 4)


# ---------------------------------------------------------------- item 3: the random walk

def ref_radius_mask(h, w, radius):
    """dist_train_voc.py:153-171 (get_mask_by_radius)."""
    mask = np.zeros((h * w, h * w))
    for i in range(h * w):
        y, x = divmod(i, w)
        for yy in range(max(0, y - radius), min(h, y + radius + 1)):
            for xx in range(max(0, x - radius), min(w, x + radius + 1)):
                mask[i, yy * w + xx] = mask[yy * w + xx, i] = 1
    return torch.from_numpy(mask)


def ref_propagate_with_bkg(cams, aff, mask, keys, bkg):
    """camutils.py:275-315 for one image: [bkg, cams] of the valid keys softmaxed over the keys, times
    T_ij = (A_ij·mask_ij)² / (Σ_i (A_ij·mask_ij)² + 0.1)."""
    k, h, w = cams.shape
    a = (aff * mask) ** 2
    t = torch.empty_like(a)
    for j in range(a.shape[1]):
        t[:, j] = a[:, j] / (a[:, j].sum() + 0.1)
    x = torch.cat([torch.full((1, h, w), bkg, dtype=cams.dtype), cams])[keys].reshape(len(keys), -1)
    return (torch.softmax(x, 0) @ t).reshape(len(keys), h, w)


def test_random_walk_uses_the_released_normalisation():
    torch.manual_seed(2)
    h, w, radius = 4, 5, 2
    cams = torch.rand(1, 20, h, w, dtype=torch.float64)
    aff = torch.rand(1, h * w, h * w, dtype=torch.float64)
    labels = torch.zeros(1, 20)
    labels[0, [2, 11]] = 1
    present = PresentClasses.from_labels(labels)
    got = label_scores(present.gather(cams), present, 0.35, (h, w), aff, radius, 2.0, 0, eps=0.1)[0]
    want = ref_propagate_with_bkg(cams[0], aff[0], ref_radius_mask(h, w, radius), [0, 3, 12], 0.35)
    assert (got - want).abs().max() <= TOL
    away = label_scores(present.gather(cams), present, 0.35, (h, w), aff, radius, 2.0, 0)[0]  # the contract's 1e-5
    assert (away - want).abs().max() > 1e-3


# ---------------------------------------------------------------- item 4: L_seg

def test_balanced_seg_loss_is_the_released_background_foreground_halves():
    torch.manual_seed(3)
    logits = torch.randn(2, 21, 6, 7)
    labels = torch.randint(0, 4, (2, 6, 7))
    labels[0, :2] = 255
    logp = torch.log_softmax(logits, 1)
    bg, fg = [], []
    for b in range(2):
        for y in range(6):
            for x in range(7):
                c = int(labels[b, y, x])
                if c != 255:
                    (bg if c == 0 else fg).append(-float(logp[b, c, y, x]))
    want = 0.5 * np.mean(bg) + 0.5 * np.mean(fg)  # dist_train_voc.py:143-151
    assert abs(float(balanced_seg_loss(logits, labels)) - want) <= TOL
    assert abs(float(F.cross_entropy(logits, labels, ignore_index=255)) - want) > 1e-3  # the paper's single CE differs


# ---------------------------------------------------------------- items 1, 3, 6: one step's labels

def ref_reliable(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """dist_train_voc.py:326-328 / camutils.py:185-187: the high-background label, 255 where it says background, 0
    where both say background."""
    out = hi.clone()
    out[hi == 0] = 255
    out[(hi + lo) == 0] = 0
    return out


def ref_step_labels(model, images, cls_labels, box, p: ParConfig, radius, low=0.35, high=0.55):
    """The labels of one released training step (dist_train_voc.py:304-342) for a batch whose image ``i`` fills
    ``box[i]`` = (y0, y1, x0, x1) of the crop: (refined_pseudo_label, refined_aff_label)."""
    b, _, h, w = images.shape
    rgb = to_rgb(images)  # PAR is blind to the colour scale: 0-255 here, 0-1 in the released code
    refine = lambda img, m: par(img, m, p.dilations, p.num_iter, p.w_rgb, p.w_pos, p.w_mix)  # noqa: E731
    cams, aff = ref_multi_scale_cam_with_aff_mat(model.maps_and_affinity, images, [1.0, 0.5, 1.5])
    keys = [[0] + [int(c) + 1 for c in torch.nonzero(cls_labels[i])[:, 0]] for i in range(b)]
    # refine_cams_with_bkg_v2 (camutils.py:149-189): the whole crop at half size, labels kept inside the box
    small = F.interpolate(rgb, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
    pseudo = []
    for bkg in (high, low):
        lab = torch.full((b, h, w), 255, dtype=torch.long)
        scores = F.interpolate(torch.cat([torch.full((b, 1, h, w), bkg), cams], 1), size=(h // 2, w // 2),
                               mode="bilinear", align_corners=False)
        for i, (y0, y1, x0, x1) in enumerate(box):
            r = refine(small[i:i + 1], scores[i:i + 1, keys[i]].softmax(1))
            r = F.interpolate(r, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
            lab[i, y0:y1, x0:x1] = torch.tensor(keys[i])[r][y0:y1, x0:x1]
        pseudo.append(lab)
    refined_pseudo = ref_reliable(*pseudo)
    # the propagated labels: valid CAMs at the affinity's grid, the walk, then PAR on the box (camutils.py:200-223)
    gh, gw = int(h * 1.5) // 16, int(w * 1.5) // 16
    valid_cam = F.interpolate(cams * cls_labels[:, :, None, None], size=(gh, gw), mode="bilinear", align_corners=False)
    mask = ref_radius_mask(gh, gw, radius).float()
    prop = []
    for bkg in (high, low):
        full = torch.zeros(b, 21, h, w)
        for i in range(b):
            walked = ref_propagate_with_bkg(valid_cam[i], aff[i], mask, keys[i], bkg)
            full[i, keys[i]] = F.interpolate(walked[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        lab = torch.full((b, h, w), 255, dtype=torch.long)
        for i, (y0, y1, x0, x1) in enumerate(box):
            img = rgb[i:i + 1, :, y0:y1, x0:x1]
            img = F.interpolate(img, size=((y1 - y0) // 2, (x1 - x0) // 2), mode="bilinear", align_corners=False)
            r = refine(img, full[i:i + 1, keys[i], y0:y1, x0:x1])
            r = F.interpolate(r, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0].argmax(0)
            lab[i, y0:y1, x0:x1] = torch.tensor(keys[i])[r]
        prop.append(lab)
    return refined_pseudo, ref_reliable(*prop)


def paper_afa(**kw) -> AFAConfig:
    a = get_flow("afa_voc").resolve("paper", []).afa
    return a.model_copy(update=kw)


def test_one_steps_labels_are_the_released_steps():
    model = small_afa(attention="logits", cam_fusion="released")
    torch.manual_seed(4)
    images = torch.randn(2, 3, 64, 64)
    images = F.avg_pool2d(images, 5, 1, 2)  # smoother, so PAR has edges to follow
    cls = torch.zeros(2, 20)
    cls[0, 4] = 1
    cls[1, [0, 14]] = 1
    box = [(0, 64, 0, 64), (6, 58, 10, 50)]
    valid = torch.zeros(2, 64, 64, dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(box):
        valid[i, y0:y1, x0:x1] = True
    cfg = get_flow("afa_voc").resolve("paper", [])
    a = cfg.afa.model_copy(update={"radius": 2})
    loss = AFALoss(a, cfg.pseudo.par)
    walks = []
    import stages.train_single_stage as stage

    def recorded(*args, **kw):
        walks.append(args[8] if len(args) > 8 else kw.get("eps"))
        return label_scores(*args, **kw)
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage, "label_scores", recorded)
        out = model.forward_train(images)
        cam_labels, seg_labels = loss.step_labels(model, images, to_rgb(images), cls, valid, out, True)
    assert walks == [1e-1] * 4  # the walk's normalisation of camutils.py:301 (the labels alone barely see it)
    want_cam, want_seg = ref_step_labels(model, images, cls, box, cfg.pseudo.par, radius=2)
    assert torch.equal(cam_labels, want_cam)
    assert torch.equal(seg_labels, want_seg)
    assert (want_seg != want_cam).any() and (want_cam == 0).any() and (want_cam == 255).any()


def test_schedule_and_weights_follow_the_released_iterations(monkeypatch):
    """dist_train_voc.py:339-350: L_cls alone while n_iter <= 2000; then L_cls + 0.1 L_seg + 0.1 L_aff, L_seg on
    the PAR labels of the CAM while n_iter <= 6000 and on the propagated labels after; no L_reg."""
    model = small_afa(attention="logits", cam_fusion="released")
    cfg = get_flow("afa_voc").resolve("paper", [])
    loss = AFALoss(cfg.afa, cfg.pseudo.par)
    asked = []

    def fake_labels(self, model, images, rgb, labels, valid, out, propagated):
        asked.append(propagated)
        lab = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
        lab[:, :, :20] = 5
        return lab, lab
    monkeypatch.setattr(AFALoss, "step_labels", fake_labels)
    batch = (torch.randn(2, 3, 64, 64), torch.eye(20)[[4, 5]], torch.ones(2, 64, 64, dtype=torch.bool))
    for step in (2000, 2001, 6000, 6001):
        with torch.no_grad():
            r = loss(model, batch, step)
        if step <= 2000:
            assert float(r["loss"]) == float(r["cls"]) and float(r["seg"]) == float(r["aff"]) == 0
        else:
            assert abs(float(r["loss"]) - float(r["cls"] + 0.1 * r["seg"] + 0.1 * r["aff"])) <= TOL
            assert float(r["seg"]) > 0 and float(r["aff"]) > 0 and float(r["reg"]) == 0
    assert asked == [False, False, True]


# ---------------------------------------------------------------- item 7: norm layers and training settings

def test_norm_layers_are_left_out_of_training():
    """dist_train_voc.py:247-258 with model_attn_aff.py:48-53: encoder parameters whose name holds "norm" at lr 0."""
    model = small_afa(train_norm=False)
    names = {id(p): n for n, p in model.encoder.named_parameters()}
    trained = {names[id(p)] for p in model.backbone_parameters()}
    frozen = set(names.values()) - trained
    assert frozen and all("norm" in n for n in frozen) and not any("norm" in n for n in trained)
    official = official_encoder_layout(SMALL["embed_dims"], SMALL["num_heads"], SMALL["depths"])
    assert len(frozen) == sum("norm" in n for n in official)  # as many as the released rule's lr-0 group
    everything = small_afa()
    assert len(everything.backbone_parameters()) == len(list(everything.encoder.parameters()))


def test_the_crop_is_padded_with_black_as_the_released_crop(tmp_path):
    """datasets/transforms.py:110-126 with datasets/voc.py:112: the image pasted on a black canvas, then normalised
    ((0 − 123.675)/58.395, … per channel); the padding is outside the image box (255 in every label)."""
    from PIL import Image
    from pipeline.config import TrainConfig
    from stages.train_single_stage import SingleStageSamples
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(root / "JPEGImages" / "a.jpg", quality=100)
    tcfg = TrainConfig(crop_size=48, scale_range=(1.0, 1.0), hflip=False, color_jitter=0.0)
    img, _, inside = SingleStageSamples(root, ["a"], np.zeros((1, 20), np.float32), tcfg, "black")(0, np.random.default_rng(0))
    black = (torch.tensor([0.0, 0.0, 0.0]) - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    assert int(inside.sum()) == 20 * 30
    assert (img[:, ~inside] - black[:, None]).abs().max() <= TOL
    mean, _, _ = SingleStageSamples(root, ["a"], np.zeros((1, 20), np.float32), tcfg)(0, np.random.default_rng(0))
    assert torch.equal(mean[:, inside], img[:, inside]) and (mean[:, ~inside].abs().max() < 0.05)  # the mean colour: ≈ 0


def test_decoder_fusion_starts_as_mmcvs_conv_module():
    """The released linear_fuse is an mmcv ConvModule (segformer_head.py:49-54): its conv He-normal with fan_out
    (std √(2/256) for 256 outputs of a 1×1 kernel), no bias; BatchNorm weight 1, bias 0."""
    torch.manual_seed(0)
    conv, bn = afa_mit("mit_b0", decoder_dim=256, decoder_init="mmcv", **SMALL).decoder.fuse[:2]
    assert conv.bias is None and abs(float(conv.weight.detach().std()) / math.sqrt(2 / 256) - 1) < 0.05
    assert torch.equal(bn.weight, torch.ones(256)) and torch.equal(bn.bias, torch.zeros(256))
    torch_default = afa_mit("mit_b0", decoder_dim=256, **SMALL).decoder.fuse[0].weight
    assert float(torch_default.detach().std()) < 0.5 * math.sqrt(2 / 256)  # torch's kaiming_uniform(a=√5) over fan_in 4·256


# ---------------------------------------------------------------- issue 35 item 3: the released trained network

def official_encoder_layout(dims, heads, depths, sr=(8, 4, 2, 1), mlp=4, in_ch=3) -> dict[str, tuple]:
    """The state dict of the released MixVisionTransformer (wetr/mix_transformer.py:56-372): names and shapes."""
    out = {}
    for s in range(4):
        c, prev, k = dims[s], (in_ch if s == 0 else dims[s - 1]), (7 if s == 0 else 3)
        out |= {f"patch_embed{s + 1}.proj.weight": (c, prev, k, k), f"patch_embed{s + 1}.proj.bias": (c,),
                f"patch_embed{s + 1}.norm.weight": (c,), f"patch_embed{s + 1}.norm.bias": (c,)}
        for j in range(depths[s]):
            p = f"block{s + 1}.{j}."
            out |= {p + "norm1.weight": (c,), p + "norm1.bias": (c,), p + "attn.q.weight": (c, c), p + "attn.q.bias": (c,),
                    p + "attn.kv.weight": (2 * c, c), p + "attn.kv.bias": (2 * c,), p + "attn.proj.weight": (c, c),
                    p + "attn.proj.bias": (c,), p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                    p + "mlp.fc1.weight": (mlp * c, c), p + "mlp.fc1.bias": (mlp * c,),
                    p + "mlp.dwconv.dwconv.weight": (mlp * c, 1, 3, 3), p + "mlp.dwconv.dwconv.bias": (mlp * c,),
                    p + "mlp.fc2.weight": (c, mlp * c), p + "mlp.fc2.bias": (c,)}
            if sr[s] > 1:
                out |= {p + "attn.sr.weight": (c, c, sr[s], sr[s]), p + "attn.sr.bias": (c,),
                        p + "attn.norm.weight": (c,), p + "attn.norm.bias": (c,)}
        out |= {f"norm{s + 1}.weight": (c,), f"norm{s + 1}.bias": (c,)}
    return out


def official_wetr_layout(dims, heads, depths, embed=256, prefix="module.") -> dict[str, tuple]:
    """WeTr (model_attn_aff.py:11-41) saved from DistributedDataParallel (dist_train_voc.py:421)."""
    out = {f"encoder.{k}": v for k, v in official_encoder_layout(dims, heads, depths).items()}
    for i, c in enumerate(dims):  # segformer_head.py:43-56 (ConvModule: a conv without bias, then SyncBN)
        out |= {f"decoder.linear_c{i + 1}.proj.weight": (embed, c), f"decoder.linear_c{i + 1}.proj.bias": (embed,)}
    out |= {"decoder.linear_fuse.conv.weight": (embed, 4 * embed, 1, 1), "decoder.linear_fuse.bn.weight": (embed,),
            "decoder.linear_fuse.bn.bias": (embed,), "decoder.linear_fuse.bn.running_mean": (embed,),
            "decoder.linear_fuse.bn.running_var": (embed,), "decoder.linear_fuse.bn.num_batches_tracked": (),
            "decoder.linear_pred.weight": (21, embed, 1, 1), "decoder.linear_pred.bias": (21,),
            "attn_proj.weight": (1, 2 * heads[-1] if depths[-1] >= 2 else heads[-1], 1, 1), "attn_proj.bias": (1,),
            "classifier.weight": (20, dims[-1], 1, 1)}
    return {prefix + k: v for k, v in out.items()}


def fabricate(layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in layout.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    return sd


MIT_B1 = dict(dims=[64, 128, 320, 512], heads=[1, 2, 5, 8], depths=[2, 2, 2, 2])


def ref_segformer_head(sd, feats, embed=256):
    """segformer_head.py:58-81 in eval mode: per level Linear on the tokens, c4..c2 resized to c1, cat(c4, c3, c2, c1),
    1×1 conv, BatchNorm (running statistics, eps 1e-5), ReLU, linear_pred."""
    n, _, h, w = feats[0].shape
    ups = []
    for lvl in (4, 3, 2, 1):
        f = feats[lvl - 1]
        tok = f.flatten(2).transpose(1, 2) @ sd[f"module.decoder.linear_c{lvl}.proj.weight"].T + sd[f"module.decoder.linear_c{lvl}.proj.bias"]
        x = tok.transpose(1, 2).reshape(n, embed, *f.shape[-2:])
        ups.append(x if lvl == 1 else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False))
    x = torch.einsum("oc,bchw->bohw", sd["module.decoder.linear_fuse.conv.weight"][:, :, 0, 0], torch.cat(ups, 1))
    bn = lambda k: sd[f"module.decoder.linear_fuse.bn.{k}"].view(1, -1, 1, 1)  # noqa: E731
    x = torch.relu((x - bn("running_mean")) / torch.sqrt(bn("running_var") + 1e-5) * bn("weight") + bn("bias"))
    return torch.einsum("oc,bchw->bohw", sd["module.decoder.linear_pred.weight"][:, :, 0, 0], x) \
        + sd["module.decoder.linear_pred.bias"].view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def released_b1(tmp_path_factory):
    sd = fabricate(official_wetr_layout(**MIT_B1))
    path = tmp_path_factory.mktemp("afa") / "wetr_iter_20000.pth"
    torch.save(sd, path)  # what the released script writes (dist_train_voc.py:421)
    return path, sd


def test_released_checkpoint_maps_every_tensor_and_computes_the_same_heads(released_b1):
    path, sd = released_b1
    a = paper_afa()
    model = afa_spec(a).for_inference().build().eval()
    mapped = released_state_dict(torch.load(path, weights_only=True), model, a.backbone, str(path))
    missing, unexpected = model.load_state_dict(mapped, strict=True)
    assert not missing and not unexpected and len(mapped) == len(model.state_dict())
    # the encoder's tensors are the file's (SegFormer names → timm's), the heads computed as the released ones
    assert torch.equal(model.encoder.net.stages[3].blocks[1].attn.kv.weight, sd["module.encoder.block4.1.attn.kv.weight"])
    assert torch.equal(model.encoder.net.stages[0].blocks[0].mlp.dwconv.weight, sd["module.encoder.block1.0.mlp.dwconv.dwconv.weight"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.encoder(x)
        seg = model.decoder(feats)
        cam = model.class_maps(x)
    assert (seg - ref_segformer_head(sd, feats)).abs().max() <= TOL * max(1.0, float(seg.abs().max()))
    want_cam = torch.einsum("kc,bchw->bkhw", sd["module.classifier.weight"][:, :, 0, 0], feats[-1])  # model_attn_aff.py:79
    assert (cam - want_cam).abs().max() <= TOL * max(1.0, float(cam.abs().max()))


def test_a_released_checkpoint_of_another_variant_is_refused_in_one_line(tmp_path):
    b0 = fabricate(official_wetr_layout(dims=[32, 64, 160, 256], heads=[1, 2, 5, 8], depths=[2, 2, 2, 2]))
    a = paper_afa()
    model = afa_spec(a).for_inference().build()
    with pytest.raises(UserError) as e:
        released_state_dict(b0, model, a.backbone, "afa.checkpoint b0.pth")
    msg = str(e.value)
    assert "\n" not in msg and "b0.pth" in msg and "mit_b1" in msg and "mis-shaped" in msg
    extra = fabricate(official_wetr_layout(**MIT_B1)) | {"module.extra.weight": torch.zeros(1)}
    with pytest.raises(UserError, match="unexpected.*extra"):
        released_state_dict(extra, model, a.backbone)
    short = fabricate(official_wetr_layout(**MIT_B1))
    del short["module.attn_proj.bias"]
    with pytest.raises(UserError, match="missing.*attn_proj.bias"):
        released_state_dict(short, model, a.backbone)


# ---------------------------------------------------------------- issue 35 items 4-5: the hyperparameter table

#: key → (the released value, where it is set). docs/afa.md holds the same table (checked below).
RELEASED = {
    "afa.backbone": ("mit_b1", "configs/voc_attn_reg.yaml:2"),
    "afa.output_stride": (16, "configs/voc_attn_reg.yaml:3 (stride [4, 2, 2, 1])"),
    "afa.decoder_dim": (256, "scripts/dist_train_voc.py:229"),
    "afa.pooling": ("gmp", "launch/run_sbatch_attn_reg.sh:20 (--pooling gmp)"),
    "afa.attention": ("logits", "wetr/mix_transformer.py:107,123"),
    "afa.attention_per_token": (False, "wetr/model_attn_aff.py:73-75"),
    "afa.label_cams": ("multiscale", "scripts/dist_train_voc.py:304"),
    "afa.label_scales": ([1.0, 0.5, 1.5], "configs/voc_attn_reg.yaml:35"),
    "afa.cam_fusion": ("released", "utils/camutils.py:115-147"),
    "afa.bkg_band": ([0.35, 0.55], "scripts/dist_train_voc.py:44-45"),
    "afa.radius": (8, "scripts/dist_train_voc.py:41"),
    "afa.beta": (2.0, "utils/camutils.py:293 (n_pow)"),
    "afa.log_t": (0, "utils/camutils.py:294 (n_log_iter)"),
    "afa.walk_eps": (0.1, "utils/camutils.py:301"),
    "afa.par_downscale": (2, "utils/camutils.py:149,213"),
    "afa.par_on_box": (True, "utils/camutils.py:208-221"),
    "afa.seg_loss": ("balanced", "scripts/dist_train_voc.py:143-151"),
    "afa.reg": (False, "scripts/dist_train_voc.py:343,350 (commented out)"),
    "afa.cls_weight": (1.0, "scripts/dist_train_voc.py:350"),
    "afa.seg_weight": (0.1, "scripts/dist_train_voc.py:350"),
    "afa.aff_weight": (0.1, "scripts/dist_train_voc.py:350"),
    "afa.cls_warmup_steps": (2001, "scripts/dist_train_voc.py:347 (n_iter <= cam_iters 2000: L_cls alone)"),
    "afa.aff_warmup_steps": (2001, "scripts/dist_train_voc.py:347-350 (L_seg and L_aff start together)"),
    "afa.seg_propagated_from": (6001, "scripts/dist_train_voc.py:339 (n_iter <= 6000: the PAR labels)"),
    "afa.train_norm": (False, "scripts/dist_train_voc.py:256"),
    "afa.crop_pad": ("black", "datasets/voc.py:112 (mean_rgb=[0,0,0])"),
    "afa.decoder_init": ("mmcv", "wetr/segformer_head.py:49-54 (mmcv ConvModule)"),
    "afa.train.steps": (20000, "configs/voc_attn_reg.yaml:25"),
    "afa.train.batch_size": (4, "configs/voc_attn_reg.yaml:24 × launch/run_sbatch_attn_reg.sh:20 (2 per GPU × 2)"),
    "afa.train.crop_size": (512, "launch/run_sbatch_attn_reg.sh:15 (the config's 320 is overridden)"),
    "afa.train.scale_range": ([0.5, 2.0], "configs/voc_attn_reg.yaml:12"),
    "afa.train.hflip": (True, "scripts/dist_train_voc.py:192"),
    "afa.train.color_jitter": (0.0, "datasets/voc.py:107 (commented out)"),
    "afa.train.optimizer": ("adamw", "configs/voc_attn_reg.yaml:41"),
    "afa.train.lr": (6e-5, "configs/voc_attn_reg.yaml:42"),
    "afa.train.head_lr_mult": (10.0, "scripts/dist_train_voc.py:261,266"),
    "afa.train.weight_decay": (0.01, "configs/voc_attn_reg.yaml:44"),
    "afa.train.warmup_steps": (1500, "configs/voc_attn_reg.yaml:47"),
    "afa.train.poly_power": (1.0, "configs/voc_attn_reg.yaml:49"),
    "pseudo.par.num_iter": (10, "scripts/dist_train_voc.py:234"),
    "pseudo.par.dilations": ([1, 2, 4, 8, 12, 24], "scripts/dist_train_voc.py:234"),
    "pseudo.bkg_threshold": (0.45, "configs/voc_attn_reg.yaml:31"),
    "cam.scales": ([1.0, 0.5, 1.5], "configs/voc_attn_reg.yaml:35"),
    "cam.flip": (True, "utils/camutils.py:89"),
    "amp": ("off", "scripts/dist_train_voc.py (no autocast)"),
    "segmentation.eval_scales": ([1.0, 0.5, 0.75], "scripts/test_msc_flip.py:184"),
    "segmentation.eval_flip": (True, "scripts/test_msc_flip.py:59"),
    "segmentation.eval_crf": (True, "scripts/test_msc_flip.py:195"),
    "pseudo.crf.bi_xy_std": (64, "scripts/test_msc_flip.py:110"),
    "pseudo.crf.bi_rgb_std": (5, "scripts/test_msc_flip.py:111"),
    "pseudo.crf.bi_w": (4, "scripts/test_msc_flip.py:112"),
}


def test_paper_profile_takes_every_released_value():
    cfg = get_flow("afa_voc").resolve("paper", [])
    wrong = {k: (config_value(cfg, k), v) for k, (v, _) in RELEASED.items()
             if not (config_value(cfg, k) == v or (isinstance(v, float) and math.isclose(config_value(cfg, k), v)))}
    assert not wrong
    multi = get_flow("afa_voc_multistage").resolve("paper", [])
    assert multi.afa == cfg.afa


def test_docs_table_lists_the_same_values():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "afa.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", text, re.M))
    for key, (value, where) in RELEASED.items():
        assert key in rows, key
        assert rows[key] == str(value).replace("'", ""), key
        assert where.split(" ")[0] in text, where


def test_default_and_smoke_keep_their_from_scratch_choices():
    for profile in ("default", "smoke"):
        a = get_flow("afa_voc").resolve(profile, []).afa
        assert (a.attention, a.label_cams, a.cam_fusion, a.walk_eps, a.seg_loss, a.seg_propagated_from,
                a.par_on_box, a.train_norm, a.crop_pad, a.decoder_init, a.checkpoint) == (
            "softmax", "train", "sum", 1e-5, "ce", 0, False, True, "mean", "torch", None)


def test_run_flow_labels_a_dataset_with_the_released_network_without_training(released_b1, tmp_path, env):
    """``run-flow afa_voc --profile paper --set afa.checkpoint=FILE``: the training stage stores the mapped file (no
    step trained) and the flow labels the images with it (tiny synthetic data; the paper profile otherwise)."""
    from pipeline.checkpoint import load_weights
    from pipeline.store import LabelStore
    from tests.helpers import cli, inspect_json
    path, sd = released_b1
    run_dir = tmp_path / "run"
    sets = [f"afa.checkpoint={path}", "data.train_split=train", "data.label_split=train", "data.score_split=null",
            "data.max_images=2", "data.synthetic.train=2", "data.synthetic.val=2", "data.synthetic.min_size=64",
            "data.synthetic.max_size=64", "workers.processes=1", "workers.loader_workers=0", "segmentation.eval_crf=false"]
    r = cli("run-flow", "afa_voc", "--profile", "paper", "--run-dir", run_dir, *[x for s in sets for x in ("--set", s)], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    info = inspect_json(run_dir, env)
    train = next(s for s in info["stages"] if s["name"] == "train_single_stage")
    assert train["status"] == "completed" and train["metrics"]["steps"] == 0
    state, meta = load_weights(run_dir / "stages" / "train_single_stage" / "model.safetensors")
    assert meta["checkpoint"] == str(path)
    assert torch.equal(state["attn_proj.weight"], sd["module.attn_proj.weight"])
    assert torch.equal(state["encoder.net.stages.3.blocks.0.attn.q.weight"], sd["module.encoder.block4.0.attn.q.weight"])
    labels = LabelStore(run_dir / "stages" / "make_pseudo_labels" / "pseudo_labels.zarr")
    assert len(labels.ids()) == 2 and info["summary"]["pseudo_miou"] is not None


def test_paper_network_starts_from_segformers_mit_b1_file(tmp_path):
    """wetr/model_attn_aff.py:23-27: SegFormer's ImageNet mit_b1.pth, its classifier popped, loaded strictly."""
    layout = official_encoder_layout(MIT_B1["dims"], MIT_B1["heads"], MIT_B1["depths"]) | {"head.weight": (1000, 512),
                                                                                         "head.bias": (1000,)}
    sd = fabricate(layout, seed=5)
    path = tmp_path / "mit_b1.pth"
    torch.save(sd, path)
    model = afa_spec(paper_afa(weights=str(path))).build()
    assert torch.equal(model.encoder.net.stages[2].blocks[1].attn.sr.weight, sd["block3.1.attn.sr.weight"])
    assert torch.equal(model.encoder.net.patch_embed.proj.weight, sd["patch_embed1.proj.weight"])


def test_make_seeds_takes_the_networks_rule_and_default_seeds_are_unchanged():
    """``make_seeds`` asks the network for its multi-scale maps: the default AFA network's are the shared rule's (the
    seeds of every run so far), the paper network's the released rule's; batched images come out as if alone."""
    from models.cam_classifier import multiscale_cams, normalise_cams
    from pipeline.transforms import normalise
    from stages.make_seeds import batch_cams
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 72, 3)).astype(np.uint8) for _ in range(2)]
    classes = [[1, 5], [20]]
    default = small_afa()
    got = batch_cams(default, images, classes, [1.0, 0.5], True)
    for im, c, g in zip(images, classes, got):
        want = normalise_cams(multiscale_cams(default, normalise(im), [1.0, 0.5], True)[[k - 1 for k in c]])
        assert np.abs(g - want.numpy()).max() <= TOL
    paper = small_afa(cam_fusion="released", attention="logits")
    got = batch_cams(paper, images, classes, [1.0, 0.5, 1.5], True)
    for im, c, g in zip(images, classes, got):
        with torch.no_grad():
            want, _ = ref_multi_scale_cam_with_aff_mat(paper.maps_and_affinity, normalise(im)[None], [1.0, 0.5, 1.5])
        assert np.abs(g - want[0, [k - 1 for k in c]].numpy()).max() <= TOL
