"""ACR's ``paper`` profile against the released code (OpenNLPLab/ACR_WSSS), issues 35, 39 (items 8-13) and 40 (1-5).

Every reference here is written from what the released code does (file:line of the official repository in the
comments), with plain tensor arithmetic and independently of the project's functions: the released ViT-hybrid
forward (its ResNetV2 with the released weight standardisation, the DPT hook on block 12, the bilinear position
embedding), the released loss (``train_acr.py``), the released seeds (``infer_cam.py`` + ``DPT/ACR.py:getam``) and
the released optimiser (``tool/torchutils.py``). The project's results must match within 1e-5. The weights come
from a file fabricated in the official layout (timm's ``jx_vit_base_resnet50_384`` names, random tensors; the
ResNet at its real shapes, the transformer narrowed to 48 channels × 3 heads × 12 blocks to keep the test fast),
loaded strictly through ``models/weights.py``; nothing is downloaded. The comparisons run in float64 (both sides):
through this deep random network float32's own rounding is ~1e-3 on the logits (the reference in float32 against
itself in float64), which would hide a real difference of that size; in float64 they agree to ~1e-12.
"""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.acr import (RELEASED, ACRConfig, acr_losses, affinity_refinement, bilinear_pos_embed,
                        gradient_localization, seed_affinity, vit_acr_classifier)
from models.cam_classifier import minmax_normalise_cams, normalise_cams
from models.std_conv import ReleasedStdConv2dSame, standardise_weight
from models.token_views import View
from models.weights import recording_matches
from pipeline.errors import UserError
from pipeline.runtime import Runtime
from pipeline.training import lr_at, make_optimizer
from pipeline.transforms import random_resize_long, train_transform
from stages.acr_seeds import image_acr_seeds
from stages.train_acr_classifier import ACRLoss
from tests.helpers import config_value
from workflows.registry import get_flow

TOL = 1e-5
EMBED, DEPTH, HEADS = 48, 12, 3  # the narrowed transformer (the real one: 768, 12, 12)
STAGES, WIDTHS = (3, 4, 9), (256, 512, 1024)  # models/vision_transformer_hybrid.py:158, models/resnetv2.py:315


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On the shared 2-core machine two OpenMP threads make these small forwards 20× slower; one is plenty."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------ a weight file in the released layout
def official_hybrid_file(seed: int = 0) -> dict[str, torch.Tensor]:
    """``jx_vit_base_resnet50_384-9fd3c705.pth`` as ACR's vendored timm names it (``DPT/vit.py:556`` →
    ``models/vision_transformer_hybrid.py:44-46, 153-168``): ``cls_token``, ``pos_embed`` (1 + 24² tokens: 384/16),
    ``patch_embed.backbone.stem.{conv,norm}``, ``...stages.{s}.blocks.{b}.{conv,norm}{1,2,3}`` and a first-block
    ``downsample.{conv,norm}`` (``models/resnetv2.py:171-228``), ``patch_embed.proj`` (1×1, 1024 →),
    ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head`` (1000 ImageNet classes).
    Conv filters get scales spread over three decades (as trained filters have): the released (w − mean)/(std + 1e-5)
    and timm's (w − mean)/√(var + 1e-8) then differ visibly."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape, std=0.05):
        return torch.randn(*shape, generator=g) * std

    def conv(o, i, k):
        return t(o, i, k, k) * 10 ** (-3 * torch.rand(o, 1, 1, 1, generator=g))

    def norm(c):
        return 1 + t(c, std=0.2), t(c, std=0.2)

    sd = {"cls_token": t(1, 1, EMBED, std=0.5), "pos_embed": t(1, 1 + 24 * 24, EMBED, std=0.5),
          "patch_embed.backbone.stem.conv.weight": conv(64, 3, 7)}
    sd["patch_embed.backbone.stem.norm.weight"], sd["patch_embed.backbone.stem.norm.bias"] = norm(64)
    prev = 64
    for s, (depth, out) in enumerate(zip(STAGES, WIDTHS)):
        mid = out // 4
        for j in range(depth):
            b = f"patch_embed.backbone.stages.{s}.blocks.{j}."
            if j == 0:
                sd[b + "downsample.conv.weight"] = conv(out, prev, 1)
                sd[b + "downsample.norm.weight"], sd[b + "downsample.norm.bias"] = norm(out)
            for n, (o, i, k) in enumerate([(mid, prev if j == 0 else out, 1), (mid, mid, 3), (out, mid, 1)], 1):
                sd[f"{b}conv{n}.weight"] = conv(o, i, k)
                sd[f"{b}norm{n}.weight"], sd[f"{b}norm{n}.bias"] = norm(o)
        prev = out
    sd |= {"patch_embed.proj.weight": t(EMBED, 1024, 1, 1), "patch_embed.proj.bias": t(EMBED)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = norm(EMBED)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = norm(EMBED)
        sd |= {b + "attn.qkv.weight": t(3 * EMBED, EMBED, std=0.3), b + "attn.qkv.bias": t(3 * EMBED),
               b + "attn.proj.weight": t(EMBED, EMBED, std=0.15), b + "attn.proj.bias": t(EMBED),
               b + "mlp.fc1.weight": t(4 * EMBED, EMBED, std=0.15), b + "mlp.fc1.bias": t(4 * EMBED),
               b + "mlp.fc2.weight": t(EMBED, 4 * EMBED, std=0.07), b + "mlp.fc2.bias": t(EMBED)}
    sd["norm.weight"], sd["norm.bias"] = norm(EMBED)
    return sd | {"head.weight": t(1000, EMBED), "head.bias": t(1000)}


def build(path: Path, **network) -> torch.nn.Module:
    """Our ACR classifier from ``path`` through the strict loader, with the paper profile's network choices."""
    choices = {k: RELEASED[k] for k in ("head_input", "pos_embed", "stem_std")} | network
    torch.manual_seed(1)  # the head (ours as the released cls_head: a fresh nn.Linear, DPT/ACR.py:88)
    backbone = dict(name="vit_base_r50_s16_384", pretrained=False, weights=str(path), embed_dim=EMBED, depth=DEPTH,
                    num_heads=HEADS)
    return vit_acr_classifier(backbone, img_size=384, num_classes=20, **choices).eval().double()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(our model, the file's tensors, the file): the fabricated file saved as the official .pth and loaded by ours."""
    sd = official_hybrid_file()
    path = tmp_path_factory.mktemp("acr") / "jx_vit_base_resnet50_384-9fd3c705.pth"
    torch.save(sd, path)
    return build(path), {k: v.double() for k, v in sd.items()}, path


# ----------------------------------------------------------- the released network, written from its code
def same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TF 'SAME' padding (models/layers/padding.py:18-33): total max((⌈i/s⌉ − 1)·s + k − i, 0), the odd pixel after."""
    ih, iw = x.shape[-2:]
    ph, pw = (max((math.ceil(i / s) - 1) * s + k - i, 0) for i in (ih, iw))
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)


def std_weight(w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """models/layers/std_conv.py:56-59: (w − mean)/(std + eps) per output filter, biased std, eps 1e-5 (line 48)."""
    flat = w.reshape(w.shape[0], -1).double()
    mean = flat.mean(1, keepdim=True)
    std = ((flat - mean) ** 2).mean(1, keepdim=True).sqrt()
    return ((flat - mean) / (std + eps)).reshape(w.shape).to(w.dtype)


def std_conv(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    """StdConv2dSame (std_conv.py:40-65): SAME padding (static where it can be, the same numbers), standardised w."""
    return F.conv2d(same_pad(x, w.shape[-1], stride), std_weight(w), None, stride)


def group_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool, groups: int = 32) -> torch.Tensor:
    """GroupNormAct (layers/norm_act.py:69-85): 32 groups, eps 1e-5, then ReLU unless apply_act=False."""
    n, c, h, wd = x.shape
    g = x.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + 1e-5)).reshape(n, c, h, wd) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    return y.clamp(min=0) if relu else y


def resnet_stem_and_stages(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """ResNetV2(layers=(3, 4, 9), preact=False, stem 'same', StdConv2dSame) of vision_transformer_hybrid.py:116-132,
    158 as models/resnetv2.py runs it: stem 7×7/2 conv, norm + ReLU, 3×3/2 max pool with -inf SAME padding
    (277-308, pool2d_same.py:34-38); stages of strides 1, 2, 2 (340); non-preact bottlenecks (201-216): conv1 1×1,
    norm1 + ReLU, conv2 3×3 (the stage's stride), norm2 + ReLU, conv3 1×1, norm3, ReLU(x + shortcut), the first
    block's shortcut a 1×1 strided conv + norm without ReLU (219-228); no final norm (353)."""
    p = "patch_embed.backbone."
    x = std_conv(x, sd[p + "stem.conv.weight"], 2)
    x = group_norm(x, sd[p + "stem.norm.weight"], sd[p + "stem.norm.bias"], relu=True)
    x = F.max_pool2d(same_pad(x, 3, 2, -math.inf), 3, 2)
    for s, depth in enumerate(STAGES):
        for j in range(depth):
            b = f"{p}stages.{s}.blocks.{j}."
            stride = (1 if s == 0 else 2) if j == 0 else 1
            shortcut = x
            if j == 0:
                shortcut = group_norm(std_conv(x, sd[b + "downsample.conv.weight"], stride),
                                      sd[b + "downsample.norm.weight"], sd[b + "downsample.norm.bias"], relu=False)
            y = group_norm(std_conv(x, sd[b + "conv1.weight"], 1), sd[b + "norm1.weight"], sd[b + "norm1.bias"], True)
            y = group_norm(std_conv(y, sd[b + "conv2.weight"], stride), sd[b + "norm2.weight"], sd[b + "norm2.bias"], True)
            y = group_norm(std_conv(y, sd[b + "conv3.weight"], 1), sd[b + "norm3.weight"], sd[b + "norm3.bias"], False)
            x = (y + shortcut).clamp(min=0)
    return x


def bilinear(grid: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resampling of B×C×h×w by hand: half-pixel centres clamped at the border (align_corners=False: what
    F.interpolate(mode='bilinear') does by default and cv2.resize's INTER_LINEAR does, no antialias) or the
    corner-aligned grid (align_corners=True)."""
    def taps(n_in, n_out):
        i = torch.arange(n_out, dtype=torch.float64)
        if align_corners:
            src = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        else:
            src = ((i + 0.5) * n_in / n_out - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).clamp(0, 1)

    (y0, y1, wy), (x0, x1, wx) = taps(grid.shape[-2], size[0]), taps(grid.shape[-1], size[1])
    g = grid.double()
    rows = g[..., y0, :] * (1 - wy)[:, None] + g[..., y1, :] * wy[:, None]
    return (rows[..., x0] * (1 - wx) + rows[..., x1] * wx).to(grid.dtype)


def resize_pos_embed(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """models/vision_transformer.py:490-504: the class token's embedding kept, the s×s grid resized bilinearly."""
    s = int(math.sqrt(pos.shape[1] - 1))
    grid = pos[0, 1:].reshape(1, s, s, -1).permute(0, 3, 1, 2)
    return torch.cat([pos[:, :1], bilinear(grid, (gh, gw)).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """nn.LayerNorm(eps=1e-6) (models/vision_transformer.py:299)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * w + b


def released_forward(sd: dict, head: torch.nn.Linear, image: torch.Tensor) -> dict:
    """DPT/ACR.py ``forward_cls`` / ``forward_cam`` on the released ViT-hybrid.

    ``forward_flex`` (models/vision_transformer.py:449-486): the ResNet's features, ``patch_embed.proj`` (1×1 conv),
    flattened, the class token first, + the position embedding resized to h/16 × w/16 (453, 490-504), the blocks
    (Block 230-233: x + attn(norm1 x), x + mlp(norm2 x); Attention 198-214: per head softmax(q kᵀ d^-½), the map
    ``attn`` kept for its gradient, 207-209; Mlp 158-164 with exact GELU). The head reads block 12's output before the
    final norm (the DPT hook ``activations["4"]`` on ``blocks[11]``, DPT/vit.py:431 with hooks [0, 1, 8, 11],
    DPT/DPT.py:60; ACR.py:97-105): logits = cls_head(layer_4[:, 0]). Returns the logits, every block's per-head
    maps (in the graph), the tokens out of block 12 and out of the final norm, and the patch tokens."""
    b, _, h, w = image.shape
    if torch.is_grad_enabled():  # the released parameters require gradients: the maps are in a graph (207-209)
        image = image.detach().requires_grad_()
    feats = resnet_stem_and_stages(sd, image)
    tokens = F.conv2d(feats, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), tokens], 1) + resize_pos_embed(sd["pos_embed"], h // 16, w // 16)
    maps = []
    for i in range(DEPTH):
        p = f"blocks.{i}."
        y = layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        n, c = y.shape[1], y.shape[2]
        qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, n, 3, HEADS, c // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // HEADS) ** -0.5).softmax(-1)
        maps.append(attn)
        y = (attn @ v).transpose(1, 2).reshape(b, n, c) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        x = x + y
        y = layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + (y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"])
    logits = x[:, 0] @ head.weight.T + head.bias
    return dict(logits=logits, maps=maps, block12=x, normed=layer_norm(x, sd["norm.weight"], sd["norm.bias"]),
                patch_tokens=tokens)


# ------------------------------------------------------------------- issue 35 item 2, the ViT-hybrid forward
def test_hybrid_file_loads_strictly_and_the_forward_is_the_released_one(released, tmp_path):
    model, sd, path = released
    with recording_matches() as seen:  # the same file through the loader again: what it matched, by name
        build(path)
    (match,) = seen
    assert match.layout.name == "timm-vit" and match.ok and not match.missing and not match.unexpected
    assert set(match.dropped) == {"head.weight", "head.bias"} and len(match.matched) == len(sd) - 2
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)  # a 4×6 token grid: the 24×24 position embedding resized, non-square
    with torch.no_grad():
        ref = released_forward(sd, model.head, x)
        logits = model(x)
        ours = model.attention.select([10, 11])
    assert (logits - ref["logits"]).abs().max().item() <= TOL
    for a, r in zip(ours, ref["maps"][10:]):  # blocks 10-11 (0-based), per head and their head mean
        assert a.shape == r.shape == (2, HEADS, 25, 25)
        assert (a - r).abs().max().item() <= TOL
        assert (a.mean(1) - r.mean(1)).abs().max().item() <= TOL
    # a file of another variant (one tensor short) is refused with one line naming the tensor
    short = {k: v for k, v in sd.items() if k != "patch_embed.backbone.stages.2.blocks.8.conv3.weight"}
    bad = tmp_path / "short.pth"
    torch.save(short, bad)
    with pytest.raises(UserError, match=r"missing \(patch_embed\.backbone\.stages\.2\.blocks\.8\.conv3\.weight") as e:
        build(bad)
    assert "\n" not in str(e.value)


def test_check_weights_shows_the_released_file_fits_the_paper_backbone(released):
    """``python cli.py check-weights FILE --flow acr_voc --profile paper`` (issue 35 item 2) on the fabricated file."""
    from click.testing import CliRunner

    import cli as command_line
    _, _, path = released
    narrow = [f"model.{k}={v}" for k, v in (("embed_dim", EMBED), ("depth", DEPTH), ("num_heads", HEADS))]
    args = ["check-weights", str(path), "--flow", "acr_voc", "--profile", "paper", "--section", "model"]
    run = CliRunner().invoke(command_line.main, args + [x for s in narrow for x in ("--set", s)])
    assert run.exit_code == 0, run.output
    assert "layout: timm-vit" in run.output and "missing 0, unexpected 0, mis-shaped 0" in run.output
    assert "head.weight" in run.output  # dropped by name


# ------------------------------------------------------------------- issue 40 item 1, weight standardisation
def test_released_weight_standardisation_gives_the_released_tokens(released):
    model, sd, path = released
    w = sd["patch_embed.backbone.stem.conv.weight"]
    assert (standardise_weight(w) - std_weight(w)).abs().max().item() <= 1e-6
    timm_formula = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-8)
    assert (timm_formula - std_weight(w)).abs().max().item() > 1e-3  # the small filters: 1e-5 against std ~1e-4
    assert sum(isinstance(m, ReleasedStdConv2dSame) for m in model.modules()) == 1 + 3 * sum(STAGES) + len(STAGES)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        ref = released_forward(sd, model.head, x)["patch_tokens"]
        ours = model.backbone.patch_embed(x).flatten(1, 2)
        timm_tokens = build(path, stem_std="timm").backbone.patch_embed(x).flatten(1, 2)
    assert (ours - ref).abs().max().item() <= TOL
    assert (timm_tokens - ref).abs().max().item() > 1e-3  # what timm's formula gives instead


# ----------------------------------------------------------------- issue 39 item 8, the head's class token
def test_head_reads_block_12_class_token_before_the_final_norm(released):
    model, sd, _ = released
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        ref = released_forward(sd, model.head, x)
        assert (model.features(x) - ref["block12"]).abs().max().item() <= TOL
        assert (model.class_scores(x) - ref["logits"]).abs().max().item() <= TOL
        model.head_input = "final_norm"  # ours by default: timm's forward_features, after the final LayerNorm
        try:
            after_norm = model(x)
        finally:
            model.head_input = "last_block"
    assert (after_norm - model.head(ref["normed"][:, 0])).abs().max().item() <= TOL
    assert (after_norm - ref["logits"]).abs().max().item() > 1e-2


# ---------------------------------------------------------------- issue 39 item 9, position-embedding resize
def test_position_embedding_is_resized_bilinearly_without_antialias(released):
    _, sd, _ = released
    pos = sd["pos_embed"]
    for grid in [(4, 6), (24, 24), (31, 17)]:
        ref = resize_pos_embed(pos, *grid)
        assert (bilinear_pos_embed(pos, 1, grid) - ref).abs().max().item() <= TOL
        # the released call itself (vision_transformer.py:499) is F.interpolate(mode="bilinear") of the grid
        s = 24
        official = F.interpolate(pos[0, 1:].reshape(1, s, s, -1).permute(0, 3, 1, 2), size=grid, mode="bilinear")
        assert (official.permute(0, 2, 3, 1).reshape(1, -1, EMBED) - ref[:, 1:]).abs().max().item() <= TOL
    from timm.layers import resample_abs_pos_embed  # timm's: bicubic with antialias
    timm_pe = resample_abs_pos_embed(pos, (4, 6), (24, 24), num_prefix_tokens=1)
    assert (timm_pe - resize_pos_embed(pos, 4, 6)).abs().max().item() > 1e-2


# --------------------------------------------------------------------------- issue 39 item 10, the loss
def released_loss(sd: dict, head, images: torch.Tensor, labels: torch.Tensor, alpha: float = 125.0) -> dict:
    """train_acr.py:135-168: img2 = hflip(img) (101, 135); attention of every block, head mean, stacked B×L×N×N
    (ACR.py:107-112); the view's class row and patch block brought back with the released loops over the token
    rows (149-158); both L1 terms F.l1_loss(reduction='mean') (160-161); loss = cls(x) + cls(f(x)) + α·act + α·aff."""
    def forward_cls(x):
        out = released_forward(sd, head, x)
        return out["logits"], torch.stack([m.mean(1) for m in out["maps"]], 1)

    h = images.shape[-2]
    x1, attn1 = forward_cls(images)
    x2, attn2 = forward_cls(images.flip(-1))
    attn1_cls, attn2_cls = attn1[:, :, 0, 1:].unsqueeze(2), attn2[:, :, 0, 1:].unsqueeze(2).clone()
    attn1_aff, attn2_aff = attn1[:, :, 1:, 1:], attn2[:, :, 1:, 1:].clone()
    p = h // 16
    for i in range(p):
        attn2_cls[:, :, :, i * p:i * p + p] = attn2_cls[:, :, :, i * p:i * p + p].flip(3)
    for i in range(p):
        attn2_aff[:, :, i * p:i * p + p, :] = attn2_aff[:, :, i * p:i * p + p, :].flip(2)
    for i in range(p):
        attn2_aff[:, :, :, i * p:i * p + p] = attn2_aff[:, :, :, i * p:i * p + p].flip(3)
    act = (attn1_cls - attn2_cls).abs().mean()
    aff = (attn1_aff - attn2_aff).abs().mean()
    cls = F.multilabel_soft_margin_loss(x1, labels) + F.multilabel_soft_margin_loss(x2, labels)
    return dict(loss=cls + alpha * act + alpha * aff, cls=cls, act=act, aff=aff)


def test_loss_is_the_released_sum_with_alpha_125(released):
    model, sd, _ = released
    paper = get_flow("acr_voc").resolve("paper", []).acr
    g = torch.Generator().manual_seed(6)
    images = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1.0] + [0.0] * 19, [0.0] * 7 + [1.0, 1.0] + [0.0] * 11], dtype=torch.float64)
    with torch.no_grad():
        ref = released_loss(sd, model.head, images, labels)
        ours = ACRLoss(paper, 64)(model, (images, labels, torch.tensor([11, 12])))  # the paper profile's loss step
    for k in ("loss", "cls", "act", "aff"):
        assert abs(ours[k].item() - ref[k].item()) <= TOL, k
    assert ref["act"].item() > 1e-4 and ref["aff"].item() > 1e-5  # both terms are really there
    with torch.no_grad():  # ours by default: ½ the classification terms, L1 summed over each attention row
        default = acr_losses(model, images, labels, View("hflip"), 125.0, 125.0)
    assert abs(default["loss"].item() - ref["loss"].item()) > 1e-2


# ------------------------------------------------------------------ issue 39 items 11 and 12, the seed rules
def getam(grads: list[torch.Tensor], start_layer: int = 10) -> torch.Tensor:
    """DPT/ACR.py:177-213 with func='grad' for image 0: per block grad.clamp(min=0).mean over heads (197-199),
    summed over blocks[start_layer:] (208-209), ReLU of the class row without the class token (213): n."""
    cams = torch.stack([g[0].clamp(min=0).mean(0) for g in grads][start_layer:]).sum(0)
    return torch.relu(cams[0, 1:])


def test_gradient_seeds_and_refinement_are_the_released_rules(released):
    model, sd, _ = released
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    classes = [2, 14]
    ref = released_forward(sd, model.head, x)
    patch_aff = torch.stack([m.mean(1) for m in ref["maps"]], 1)[:, :, 1:, 1:].sum(1).detach()  # infer_cam.py:164-165
    ref_m, ref_refined = [], []
    for c in classes:  # infer_cam.py:171-184: backward of the class score, getam, then A·M
        grads = torch.autograd.grad(ref["logits"][0, c], ref["maps"], retain_graph=True)
        cam = getam(list(grads))
        ref_m.append(cam)
        ref_refined.append(torch.matmul(patch_aff, cam.unsqueeze(1))[0, :, 0])  # M̃_i = Σ_j A_ij M_j
    with torch.enable_grad():
        logits = model(x)
        m = gradient_localization(logits, model.attention.select([10, 11]), classes, 1, "head_mean_relu")
    aff = seed_affinity(model.attention.head_mean(list(range(12))), 1, "a_m")
    refined = affinity_refinement(m.detach(), aff, "a_m")
    assert m.abs().max().item() > 1e-4
    for k in range(len(classes)):
        assert (m[0, k] - ref_m[k]).abs().max().item() <= TOL
        assert (refined[0, k] - ref_refined[k]).abs().max().item() <= TOL
    # the rules the paper profile does not take give other maps: ReLU after the head sum, M·Ā as Eq. 8 is printed
    ours_rule = gradient_localization(model(x), model.attention.select([10, 11]), classes, 1, "relu_head_sum")
    assert (ours_rule / ours_rule.amax(-1, keepdim=True) - m / m.amax(-1, keepdim=True)).abs().max().item() > 1e-3
    printed = affinity_refinement(m.detach(), aff, "m_a")
    assert (printed - refined).abs().max().item() > 1e-3 * refined.abs().max().item()


# ------------------------------------------------------ issues 39 item 9, 40 items 2-4: the released seeds
def released_input(image: np.ndarray, size: int) -> torch.Tensor:
    """myTool.py:1364-1404 (get_data_from_chunk_val): the image (as float, BGR → RGB) resized to size × size
    (1385, cv2.resize INTER_LINEAR: bilinear, half-pixel centres, no antialias), normalised with ImageNet's mean/std
    (1387-1389), made a float32 tensor (1403); infer_cam.py:150 resizes it by the scale 1 (no change)."""
    x = bilinear(torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None], (size, size))
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).float()


def released_seeds(sd: dict, head, x: torch.Tensor, image_size: tuple[int, int], classes: list[int],
                   aff: bool) -> np.ndarray:
    """infer_cam.py:140-215 on the network input ``x`` (1×3×s×s) of an image of ``image_size`` with image-level
    classes (VOC 1-based): scale 1 and its flip (145-152); per present class the score's backward (171-179) and the
    gradient seeds over blocks 10-11 (``--start_layer 10``, train_acr.sh:34; ``--getam_func grad``, :36; getam,
    180); with ``--aff True`` (:37) refined A·M by Σ_l A_l[1:,1:] over all blocks (164-165, 184); the h/16 × w/16
    map upsampled to the image bilinearly with align_corners=True (186-188), flipped back (195-196), the two views
    summed (209), min-max normalised with 1e-6 (210)."""
    H, W = image_size
    size = x.shape[-1]
    total = np.zeros((len(classes), H, W))
    for flip in (True, False):  # hflip in [1, 2]: 1 (odd) is the flipped pass
        out = released_forward(sd, head, x.flip(-1) if flip else x)
        patch_aff = torch.stack([m.mean(1) for m in out["maps"]], 1)[:, :, 1:, 1:].sum(1).detach()
        maps = np.zeros((len(classes), H, W))
        for k, c in enumerate(classes):
            grads = torch.autograd.grad(out["logits"][0, c - 1], out["maps"], retain_graph=True)
            cam = getam(list(grads))
            if aff:
                cam = torch.matmul(patch_aff, cam[None, :, None])
            cam = bilinear(cam.reshape(1, 1, size // 16, size // 16), (H, W), align_corners=True)
            maps[k] = cam[0, 0].detach().numpy()
        total += maps[:, :, ::-1] if flip else maps
    lo, hi = total.min((1, 2), keepdims=True), total.max((1, 2), keepdims=True)
    return (total - lo) / (hi - lo + 1e-6)


def test_seeds_are_the_released_inference(released):
    model, sd, _ = released
    image = np.random.default_rng(8).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    classes = [3, 15]
    paper = get_flow("acr_voc").resolve("paper", [])
    cfg = ACRConfig(**(paper.acr.model_dump() | {"seed_size": 64}))  # the released 384 → 64 to keep it fast
    seen = []

    def cast(_m, args):  # the stage's float32 network input, recorded; the network runs in float64 here
        seen.append(args[0].detach().clone())
        return (args[0].double(),)

    hook = model.backbone.patch_embed.register_forward_pre_hook(cast)
    try:
        grad, grad_aff = image_acr_seeds(model, image, classes, paper.cam.scales, paper.cam.flip, cfg, Runtime())
    finally:
        hook.remove()
    (batch,) = [b for b in seen if b.shape[0] == 2]  # the image and its flip in one batch
    assert torch.equal(batch[1], batch[0].flip(-1))
    # ours normalises, then resizes; the released resizes, then normalises (the same linear map): float32 rounding apart
    assert (batch[:1].double() - released_input(image, 64).double()).abs().max().item() <= 1e-6
    x = batch[:1].double()
    ref_aff = released_seeds(sd, model.head, x, image.shape[:2], classes, aff=True)
    ref_grad = released_seeds(sd, model.head, x, image.shape[:2], classes, aff=False)
    assert grad_aff.shape == ref_aff.shape == (2, 50, 70)
    assert np.abs(grad_aff - ref_aff).max() <= TOL
    assert np.abs(grad - ref_grad).max() <= TOL
    assert ref_aff.min() == 0.0 and ref_aff.max() > 0.99  # min-max: the refined maps span [0, 1]


# -------------------------------------------------------------------- issue 40 item 3, seed normalisation
def test_minmax_normalisation_is_the_released_one():
    g = np.random.default_rng(9)
    maps = g.uniform(0.2, 3.0, (3, 5, 7)).astype(np.float32)  # refined maps are strictly positive
    ref = (maps - maps.min((1, 2), keepdims=True)) / (maps.max((1, 2), keepdims=True) - maps.min((1, 2), keepdims=True) + 1e-6)
    assert np.abs(minmax_normalise_cams(torch.from_numpy(maps)).numpy() - ref).max() <= 1e-6
    max_norm = normalise_cams(torch.from_numpy(maps)).numpy()  # ours elsewhere: x / (max + 1e-5), never 0 here
    assert max_norm.min() > 0.05 and ref.min() == 0.0


# --------------------------------------------------- issue 39 item 13, 40 item 5: optimiser and augmentation
class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.top = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)

    def backbone_parameters(self):
        return list(self.body.parameters())

    def head_parameters(self):
        return list(self.top.parameters())


def test_optimiser_is_what_the_released_run_had():
    """tool/torchutils.py:10-31: PolyOptimizer(SGD) calls ``super().__init__(params, lr, weight_decay)`` (13), so
    ``--wt_dec`` 5e-4 (train_acr.py:57) lands in SGD's third argument, momentum, and weight decay stays 0; the lr
    is lr·(1 − k/max_step)^0.9 (24: its own ``momentum`` default 0.9 is the poly power) with max_step 26,450
    (train_acr.py:109). The reference runs those updates by hand: buf = μ·buf + g (buf = g first), p −= lr_k·buf."""
    tc = get_flow("acr_voc").resolve("paper", []).train_classifier
    toy = _Toy()
    opt = make_optimizer(toy, tc)
    params = [p for g in opt.param_groups for p in g["params"]]
    ref = [p.detach().clone() for p in params]
    bufs = [None] * len(ref)
    g = torch.Generator().manual_seed(10)
    for step in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc) * group["lr_mult"]  # pipeline/training.py's loop
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        lr = 0.05 * (1 - step / 26450) ** 0.9
        for i, gr in enumerate(grads):
            bufs[i] = gr.clone() if bufs[i] is None else 5e-4 * bufs[i] + gr
            ref[i] = ref[i] - lr * bufs[i]
    for p, r in zip(params, ref):
        assert (p.detach() - r).abs().max().item() <= 1e-7
    assert lr_at(26449, tc) == pytest.approx(0.05 * (1 / 26450) ** 0.9)


def test_augmentation_is_the_released_one():
    """myTool.py:1158-1199 (get_data_from_chunk_v2): RandomResizeLong(img, int(384·0.9), int(384/0.875)) = [345, 438]
    by random.randint, both ends included (1177, 995-1008), horizontal flip when U(0, 1) > 0.5 (1174, 1178, 895-899),
    ImageNet normalisation (1179-1181), a random 384 crop (1182); no colour jitter anywhere."""
    tc = get_flow("acr_voc").resolve("paper", []).train_classifier
    assert tuple(tc.resize_long) == (int(384 * 0.9), int(384 / 0.875)) == (345, 438)
    assert (tc.crop_size, tc.hflip, tc.color_jitter, tc.brightness_shift) == (384, True, 0.0, 0.0)
    rng = np.random.default_rng(11)
    img = np.random.default_rng(12).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    longs = {random_resize_long(img, tc.resize_long, rng).shape[1] for _ in range(500)}
    assert min(longs) == 345 and max(longs) == 438 and longs <= set(range(345, 439)) and len(longs) > 80
    out = random_resize_long(img, (40, 40), np.random.default_rng(0))  # 10×20 → 20×40: bilinear without antialias
    ref = bilinear(torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None], (20, 40))[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(np.float64) - ref).max() <= 0.5  # ours rounds to uint8; the released keeps the floats
    halves = np.zeros((10, 20, 3), np.uint8)
    halves[:, 10:] = 255  # dark left, bright right: a flipped crop is bright on its left
    flipped = []
    for _ in range(200):
        x, _ = train_transform(halves, None, tc.crop_size, tc.scale_range, tc.hflip, tc.color_jitter, rng,
                               tc.brightness_shift, tc.resize_long)
        assert x.shape == (3, 384, 384)
        flipped.append(bool(x[:, :, :8].mean() > x[:, :, -8:].mean()))
    assert 0.4 < np.mean(flipped) < 0.6  # p = 0.5


# ------------------------------------------------------------------------------ issue 35 item 4, the table
#: key → (the released value, where the released code sets it); docs/acr.md's table lists the same rows
OFFICIAL = {
    "model.backbone": ("vit_base_r50_s16_384", "train_acr.sh:10 --backbone vitb_hybrid → DPT/ACR.py:155, DPT/vit.py:556"),
    "train_classifier.crop_size": (384, "train_acr.sh:16"),
    "train_classifier.batch_size": (4, "train_acr.sh:14 --batch_size 1 per process × :17 -g 4"),
    "train_classifier.steps": ((10582 // (1 * 4)) * 10, "train_acr.py:109 with train_aug's 10,582 images, train_acr.sh:18"),
    "train_classifier.optimizer": ("sgd", "tool/torchutils.py:10"),
    "train_classifier.lr": (0.05, "train_acr.sh:12"),
    "train_classifier.momentum": (0.0005, "tool/torchutils.py:13 with train_acr.py:57"),
    "train_classifier.weight_decay": (0.0, "tool/torchutils.py:13"),
    "train_classifier.poly_power": (0.9, "tool/torchutils.py:12, 24"),
    "train_classifier.warmup_steps": (0, "tool/torchutils.py:22-29"),
    "train_classifier.head_lr_mult": (1.0, "train_acr.py:119"),
    "train_classifier.resize_long": ([345, 438], "myTool.py:1177, 995-1008"),
    "train_classifier.hflip": (True, "myTool.py:1174, 1178"),
    "train_classifier.color_jitter": (0.0, "myTool.py:1158-1199"),
    "amp": ("off", "train_acr.py:137 autocast(enabled=False)"),
    "acr.transforms": (["hflip"], "train_acr.py:101, 135"),
    "acr.alpha": (125.0, "train_acr.sh:15, train_acr.py:168"),
    "acr.beta": (125.0, "train_acr.sh:15, train_acr.py:168"),
    "acr.cls_loss": ("sum", "train_acr.py:163-167"),
    "acr.consistency_l1": ("mean", "train_acr.py:160-161"),
    "acr.layers": (None, "DPT/ACR.py:107-112"),
    "acr.start_step": (0, "train_acr.py:127-168"),
    "acr.ramp_steps": (0, "train_acr.py:127-168"),
    "acr.head_input": ("last_block", "DPT/vit.py:431, DPT/ACR.py:97-105"),
    "acr.pos_embed": ("bilinear", "models/vision_transformer.py:490-504"),
    "acr.stem_std": ("released", "models/layers/std_conv.py:56-59"),
    "acr.seed_mode": ("grad_aff", "train_acr.sh:36-37"),
    "acr.seed_layers": ([10, 11], "train_acr.sh:34, DPT/ACR.py:208"),
    "acr.seed_aff_layers": (list(range(12)), "infer_cam.py:164-165, DPT/ACR.py:136-141"),
    "acr.seed_gradient": ("head_mean_relu", "DPT/ACR.py:197-199, 209"),
    "acr.seed_refinement": ("a_m", "infer_cam.py:184"),
    "acr.seed_norm": ("minmax", "infer_cam.py:210"),
    "acr.seed_size": (384, "infer_cam.py:82, myTool.py:1385"),
    "acr.seed_align_corners": (True, "infer_cam.py:187"),
    "cam.scales": ([1.0], "infer_cam.py:145"),
    "cam.flip": (True, "infer_cam.py:146"),
    "cam.sweep": ([i / 100 for i in range(100)], "evaluation.py:128-129"),
    "data.score_split": ("train", "train_acr.sh:41 --list voc12/train_id.txt"),
}


def test_paper_profile_takes_every_released_value():
    cfg = get_flow("acr_voc").resolve("paper", [])
    wrong = {k: (config_value(cfg, k), v) for k, (v, _) in OFFICIAL.items() if config_value(cfg, k) != v}
    assert not wrong
    assert cfg.train_classifier.steps == 26450
    # each released choice is read by the stage it changes (so it is part of that stage's cache key)
    from stages.acr_seeds import MAKE_ACR_SEEDS
    from stages.train_acr_classifier import TRAIN_ACR_CLASSIFIER
    train, seeds = set(TRAIN_ACR_CLASSIFIER.reads), set(MAKE_ACR_SEEDS.reads)
    for key in RELEASED:
        assert f"acr.{key}" in (seeds if key.startswith("seed") else train), key
    assert {"acr.head_input", "acr.pos_embed", "acr.stem_std"} <= train  # the network: in the model spec the seeds load


def doc_value(v) -> str:
    """A value as docs/acr.md writes it in the table (YAML-like: true, null, [a, b])."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, list):
        return "[" + ", ".join(doc_value(x) for x in v) + "]"
    return str(v)


def test_docs_table_lists_the_same_values():
    """docs/acr.md "Paper profile and the official code": | item | official (file:line) | `ours` | `key` |."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "acr.md").read_text()
    rows = {key: ours for ours, key in re.findall(r"^\|[^|\n]*\|[^|\n]*\| `([^`]*)` \| `([\w.]+)` \|", text, re.M)}
    for key, (value, where) in OFFICIAL.items():
        assert key in rows, key
        want = "0.00, 0.01, …, 0.99" if key == "cam.sweep" else doc_value(value)
        assert rows[key] == want, (key, rows[key], want)
        for ref in re.findall(r"[\w/.]+\.(?:py|sh):\d+", where):  # every file:line of the test's table is cited
            assert ref in text, (key, ref)


def test_default_and_smoke_do_not_take_the_released_options():
    """The from-scratch profiles keep ours: every RELEASED key at the section's default, the training without the
    released resize, and the seeds at native size."""
    for profile in ("default", "smoke"):
        cfg = get_flow("acr_voc").resolve(profile, [])
        base = ACRConfig()
        for key in set(RELEASED) - {"alpha", "beta"}:
            assert getattr(cfg.acr, key) == getattr(base, key), (profile, key)
        assert cfg.acr.alpha == cfg.acr.beta == 0.02  # their measured from-scratch weights
        assert cfg.train_classifier.resize_long is None and cfg.acr.seed_size is None
        assert cfg.amp == "off"
