"""Each paper backbone is the official network: every hyperparameter against a table written from the official code
(file and line beside each), and MiT's forward against an independent forward written here from SegFormer's
equations, on fabricated official-layout weights (max abs error ≤ 1e-5).

Tables are checked on the meta device (shapes and modules, no memory); only the forward test computes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import create_feature_backbone, create_vit
from models.mix_transformer import MixTransformer
from models.swtformer import create_swin
from tests.test_weights import SEGFORMER, _in_memory, mit_b1_file, ms_swin_tiny_file  # noqa: F401 (a fixture)

# --------------------------------------------------------------------------------------------------------- MiT
#: NVlabs/SegFormer mmseg/models/backbones/mix_transformer.py: mit_b1 lines 383-388, mit_b4 lines 410-415
#: (rulixiang/afa wetr/mix_transformer.py:402-407 and su-hui-zz/SASFormer lib/models/nets/mix_transformer.py:436-441
#: are the same); first embedding 7×7 stride 4 padding 3 (lines 213-214, 173-174), the merges 3×3 stride 2
#: (215-220), patch-embed LayerNorm default ε 1e-5 (175), block/stage LayerNorm ε 1e-6 (norm_layer, 125, 132,
#: 230), attention's key norm default ε 1e-5 (77), Mix-FFN hidden = 4·C with a 3×3 depthwise conv (133, 358-361),
#: GELU (123), stochastic depth linspace(0, 0.1, Σ depths) per block (223), AFA's strides [4, 2, 2, 1]
#: (rulixiang/afa configs/voc_attn_reg.yaml:3).
MIT_TABLE = {
    "mit_b1": dict(embed_dims=[64, 128, 320, 512], depths=[2, 2, 2, 2]),
    "mit_b4": dict(embed_dims=[64, 128, 320, 512], depths=[3, 8, 27, 3]),
}
MIT_SHARED = dict(num_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], sr_ratios=[8, 4, 2, 1], drop_path_rate=0.1,
                  block_eps=1e-6, embed_eps=1e-5, key_norm_eps=1e-5)


@pytest.mark.parametrize("variant", list(MIT_TABLE))
def test_mit_hyperparameters_are_segformers(variant):
    with torch.device("meta"):
        enc = MixTransformer(variant, output_stride=16)
    want = {**MIT_TABLE[variant], **MIT_SHARED}
    net = enc.net
    pe = net.patch_embed
    assert (pe.proj.kernel_size, pe.proj.stride, pe.proj.padding, pe.proj.in_channels) == ((7, 7), (4, 4), (3, 3), 3)
    assert pe.norm.eps == want["embed_eps"]
    depths = [len(s.blocks) for s in net.stages]
    assert depths == want["depths"] and enc.channels == want["embed_dims"]
    rates = torch.linspace(0, want["drop_path_rate"], sum(depths)).tolist()
    strides = []
    for i, stage in enumerate(net.stages):
        c = want["embed_dims"][i]
        if i > 0:
            d = stage.downsample.proj
            assert (d.kernel_size, d.padding, d.in_channels, d.out_channels) == ((3, 3), (1, 1), want["embed_dims"][i - 1], c)
            assert stage.downsample.norm.eps == want["embed_eps"]
            strides.append(d.stride[0])
        assert stage.norm.eps == want["block_eps"]
        for j, blk in enumerate(stage.blocks):
            a = blk.attn
            assert a.num_heads == want["num_heads"][i] and a.q.bias is not None and a.kv.bias is not None
            assert a.kv.out_features == 2 * c and a.scale == (c // a.num_heads) ** -0.5
            r = want["sr_ratios"][i]
            if r > 1:
                assert (a.sr.kernel_size, a.sr.stride) == ((r, r), (r, r)) and a.norm.eps == want["key_norm_eps"]
            else:
                assert a.sr is None
            assert blk.norm1.eps == blk.norm2.eps == want["block_eps"]
            m = blk.mlp
            assert m.fc1.out_features == want["mlp_ratios"][i] * c and m.dwconv.groups == m.fc1.out_features
            assert (m.dwconv.kernel_size, m.dwconv.padding) == ((3, 3), (1, 1)) and isinstance(m.relu, nn.Identity)
            assert isinstance(m.act, nn.GELU) and m.act.approximate == "none"
            rate = rates[sum(depths[:i]) + j]  # the first block's is 0: timm leaves an Identity there
            assert (blk.drop_path1.drop_prob == pytest.approx(rate)) if rate else isinstance(blk.drop_path1, nn.Identity)
    assert [4, *strides] == [4, 2, 2, 1]  # AFA's stride [4, 2, 2, 1] at output_stride=16


def _layer_norm(x, sd, p, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def reference_mit(sd: dict, x: torch.Tensor, variant: str, strides=(4, 2, 2, 2)) -> list[torch.Tensor]:
    """SegFormer's MixVisionTransformer.forward_features (mix_transformer.py:313-349) written out from its equations
    on the official names: OverlapPatchEmbed (194-200), Block (153-157), Attention (96-117), Mlp + DWConv (48-55,
    363-369)."""
    dims, depths = SEGFORMER[variant]
    heads, srs = (1, 2, 5, 8), (8, 4, 2, 1)
    outs = []
    for i in range(1, 5):
        k = 7 if i == 1 else 3
        x = F.conv2d(x, sd[f"patch_embed{i}.proj.weight"], sd[f"patch_embed{i}.proj.bias"], stride=strides[i - 1], padding=k // 2)
        B, C, H, W = x.shape
        t = _layer_norm(x.flatten(2).transpose(1, 2), sd, f"patch_embed{i}.norm", 1e-5)
        h, r = heads[i - 1], srs[i - 1]
        for j in range(depths[i - 1]):
            b = f"block{i}.{j}."
            y = _layer_norm(t, sd, b + "norm1", 1e-6)
            q = F.linear(y, sd[b + "attn.q.weight"], sd[b + "attn.q.bias"]).reshape(B, -1, h, C // h).transpose(1, 2)
            src = y
            if r > 1:
                src = F.conv2d(y.transpose(1, 2).reshape(B, C, H, W), sd[b + "attn.sr.weight"], sd[b + "attn.sr.bias"], stride=r)
                src = _layer_norm(src.flatten(2).transpose(1, 2), sd, b + "attn.norm", 1e-5)
            kv = F.linear(src, sd[b + "attn.kv.weight"], sd[b + "attn.kv.bias"]).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
            attn = (q @ kv[0].transpose(-2, -1) * (C // h) ** -0.5).softmax(-1)
            o = (attn @ kv[1]).transpose(1, 2).reshape(B, -1, C)
            t = t + F.linear(o, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
            y = F.linear(_layer_norm(t, sd, b + "norm2", 1e-6), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])
            y = F.conv2d(y.transpose(1, 2).reshape(B, -1, H, W), sd[b + "mlp.dwconv.dwconv.weight"],
                         sd[b + "mlp.dwconv.dwconv.bias"], padding=1, groups=y.shape[-1])
            y = F.gelu(y.flatten(2).transpose(1, 2))
            t = t + F.linear(y, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        t = _layer_norm(t, sd, f"norm{i}", 1e-6)
        x = t.reshape(B, H, W, C).permute(0, 3, 1, 2)
        outs.append(x)
    return outs


@pytest.mark.parametrize("output_stride,strides", [(32, (4, 2, 2, 2)), (16, (4, 2, 2, 1))])
def test_mit_b1_forward_equals_segformers_equations_on_a_released_layout_file(mit_b1_file, output_stride, strides):
    path, sd = mit_b1_file
    enc = MixTransformer("mit_b1", weights=str(path), output_stride=output_stride).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours, ref = enc(x), reference_mit(sd, x, "mit_b1", strides)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------ ACR's ViT-hybrid
#: OpenNLPLab/ACR_WSSS: DPT/vit.py:556 create_model("vit_base_resnet50_384"); models/vision_transformer_hybrid.py:
#: 153-162 (ResNetV2 (3, 4, 9), embed 768, depth 12, heads 12), 116-132 (preact=False, stem 'same', StdConv2dSame),
#: 111 (patch 1 on the stem's features); models/resnetv2.py:315 (widths 256, 512, 1024 for three stages), 183
#: (bottleneck ¼), 292 (stem 7×7 stride 2, 64), 279 / layers/norm_act.py:71 (GroupNorm 32 groups, ε 1e-5);
#: models/vision_transformer.py:270-271 (img 384 via the cfg, mlp_ratio 4, qkv_bias True), 299 (LayerNorm ε 1e-6),
#: DPT/vit.py:533 (patch_size 16 on the image).
VIT_HYBRID = dict(embed_dim=768, depth=12, num_heads=12, mlp_hidden=3072, ln_eps=1e-6, tokens=1 + 24 * 24,
                  stages=[3, 4, 9], widths=[256, 512, 1024], stem=(64, 7, 2), gn_groups=32, gn_eps=1e-5, stride=16)


def test_acr_vit_hybrid_hyperparameters():
    with torch.device("meta"):
        vit = create_vit("vit_base_r50_s16_384", img_size=384)
    t = VIT_HYBRID
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (t["embed_dim"], t["depth"], t["num_heads"])
    assert vit.pos_embed.shape == (1, t["tokens"], t["embed_dim"]) and vit.num_prefix_tokens == 1 and vit.cls_token is not None
    for blk in vit.blocks:
        assert blk.mlp.fc1.out_features == t["mlp_hidden"] and blk.attn.qkv.bias is not None
        assert blk.norm1.eps == blk.norm2.eps == t["ln_eps"]
    assert vit.norm.eps == t["ln_eps"]
    cnn = vit.patch_embed.backbone
    assert (cnn.stem.conv.out_channels, cnn.stem.conv.kernel_size[0], cnn.stem.conv.stride[0]) == t["stem"]
    assert [len(s.blocks) for s in cnn.stages] == t["stages"]
    assert [s.blocks[-1].conv3.out_channels for s in cnn.stages] == t["widths"]
    assert all(s.blocks[0].conv1.out_channels * 4 == w for s, w in zip(cnn.stages, t["widths"]))
    norms = [m for m in cnn.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all((n.num_groups, n.eps) == (t["gn_groups"], t["gn_eps"]) for n in norms)
    assert vit.patch_embed.proj.kernel_size == (1, 1) and vit.patch_embed.proj.in_channels == t["widths"][-1]


# ------------------------------------------------------------------------------------------------- SWTformer's Swin-T
#: Swin-T as Microsoft defines it (microsoft/Swin-Transformer configs/swin/swin_tiny_patch4_window7_224.yaml; the
#: same arguments in timm's swin_tiny_patch4_window7_224 and ACR's vendored models/swin_transformer.py): patch 4,
#: embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7, MLP ratio 4, qkv bias; SWTformer's code is not released
#: (RozhanAhmadi/SWTformer holds a README only), its paper names Swin-T.
SWIN_T = dict(patch=4, embed_dim=96, depths=[2, 2, 6, 2], heads=[3, 6, 12, 24], window=7, mlp_ratio=4)


def test_swtformer_swin_t_hyperparameters():
    with torch.device("meta"):
        swin = create_swin("swin_tiny_patch4_window7_224")
    t = SWIN_T
    assert swin.patch_embed.proj.kernel_size == (t["patch"], t["patch"]) and swin.embed_dim == t["embed_dim"]
    assert [len(layer.blocks) for layer in swin.layers] == t["depths"]
    for i, layer in enumerate(swin.layers):
        c = t["embed_dim"] * 2 ** i
        for j, blk in enumerate(layer.blocks):
            assert blk.attn.num_heads == t["heads"][i] and blk.window_size == (t["window"], t["window"])
            assert blk.mlp.fc1.out_features == t["mlp_ratio"] * c and blk.attn.qkv.bias is not None
            assert blk.attn.relative_position_bias_table.shape == ((2 * t["window"] - 1) ** 2, t["heads"][i])


# ------------------------------------------------------------------------------------------------ APro's ResNet-101
#: APro's mmdet ResNet-101 (CircleRadon/APro configs/apro_box2mask/box2mask_r101_lsj_8x2_50e_voc.py:7-16: depth 101,
#: style pytorch, torchvision's resnet101-b641f3a9.pth); mmdet/models/backbones/resnet.py:361 arch_settings (101:
#: Bottleneck, (3, 4, 23, 3)), 154-156 (pytorch style: the stride on the 3×3 conv); torchvision's resnet101 alike.
RESNET101 = dict(blocks=[3, 4, 23, 3], widths=[256, 512, 1024, 2048], stem=(64, 7, 2), bn_eps=1e-5)


def test_apro_resnet101_hyperparameters():
    with torch.device("meta"):
        net = create_feature_backbone("resnet101", 8)
    t = RESNET101
    assert (net.conv1.out_channels, net.conv1.kernel_size[0], net.conv1.stride[0]) == t["stem"]
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    assert [len(layer) for layer in layers] == t["blocks"]
    assert [layer[-1].conv3.out_channels for layer in layers] == t["widths"]
    assert net.layer2[0].conv1.stride == (1, 1) and net.layer2[0].conv2.stride == (2, 2)  # pytorch style
    assert all(m.eps == t["bn_eps"] for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    # output stride 8 (DeepLab's): the last two stages dilate instead of striding
    assert net.layer3[0].conv2.stride == (1, 1) and net.layer3[1].conv2.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)


def _ms_relative_position_index(ws: int) -> torch.Tensor:
    """Microsoft's WindowAttention index (swin_transformer.py, WindowAttention.__init__; ACR's vendored copy lines
    144-158): pairwise coordinate differences shifted to ≥ 0, row-major over a (2·ws − 1)² table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def _windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    B, H, W, C = x.shape
    return x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)


def _ms_attn_mask(H: int, W: int, ws: int, shift: int) -> torch.Tensor:
    """Microsoft's SwinTransformerBlock mask: regions of the shifted image labelled by slices, −100 across regions."""
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    mw = _windows(img, ws).squeeze(-1)
    m = mw[:, None, :] - mw[:, :, None]
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def reference_ms_swin(sd: dict, x: torch.Tensor, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), ws: int = 7) -> torch.Tensor:
    """Microsoft's SwinTransformer.forward_features on its own names, written from its equations: PatchEmbed (conv
    4×4 stride 4, LayerNorm), blocks x + W-MSA(LN(x)) with the cyclic shift of ⌊ws/2⌋ in odd blocks, relative
    position bias and mask, x + MLP(LN(x)); PatchMerging [x₀₀, x₁₀, x₀₁, x₁₁] → LN → linear at the end of
    stages 0-2; the final LayerNorm (ε 1e-5 everywhere: nn.LayerNorm)."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4)
    B, C, H, W = x.shape
    x = _layer_norm(x.flatten(2).transpose(1, 2), sd, "patch_embed.norm", 1e-5)
    for i, (depth, h) in enumerate(zip(depths, heads)):
        w = min(ws, H, W)
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            shift = w // 2 if j % 2 == 1 and min(H, W) > ws else 0
            y = _layer_norm(x, sd, b + "norm1", 1e-5).view(B, H, W, C)
            if shift:
                y = torch.roll(y, (-shift, -shift), (1, 2))
            win = _windows(y, w)
            n = w * w
            qkv = F.linear(win, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(-1, n, 3, h, C // h).permute(2, 0, 3, 1, 4)
            attn = (qkv[0] * (C // h) ** -0.5) @ qkv[1].transpose(-2, -1)
            bias = sd[b + "attn.relative_position_bias_table"][_ms_relative_position_index(w).flatten()].view(n, n, h)
            attn = attn + bias.permute(2, 0, 1)[None]
            if shift:
                mask = _ms_attn_mask(H, W, w, shift)
                attn = (attn.view(B, mask.shape[0], h, n, n) + mask[None, :, None]).view(-1, h, n, n)
            o = (attn.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(-1, n, C)
            o = F.linear(o, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
            o = o.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
            if shift:
                o = torch.roll(o, (shift, shift), (1, 2))
            x = x + o.reshape(B, H * W, C)
            y = F.gelu(F.linear(_layer_norm(x, sd, b + "norm2", 1e-5), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
            x = x + F.linear(y, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        if i < len(depths) - 1:
            g = x.view(B, H, W, C)
            g = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1).view(B, -1, 4 * C)
            p = f"layers.{i}.downsample."
            x = F.linear(_layer_norm(g, sd, p + "norm", 1e-5), sd[p + "reduction.weight"])
            H, W, C = H // 2, W // 2, 2 * C
    return _layer_norm(x, sd, "norm", 1e-5).view(B, H, W, C)


def test_swin_t_forward_equals_microsofts_equations_on_a_released_layout_file(tmp_path, monkeypatch):
    torch.manual_seed(4)
    wrapped = ms_swin_tiny_file()
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    path.touch()  # read from memory (``_in_memory``): the loader's conversion and checks run, no 110 MB written
    _in_memory(monkeypatch, wrapped["model"])
    swin = create_swin("swin_tiny_patch4_window7_224", weights=str(path)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours, ref = swin.forward_features(x), reference_ms_swin(wrapped["model"], x)
    assert ours.shape == ref.shape == (1, 7, 7, 768)
    assert (ours - ref).abs().max().item() <= 1e-5


def reference_torchvision_resnet(sd: dict, x: torch.Tensor, blocks, output_stride: int = 8) -> list[torch.Tensor]:
    """torchvision's ResNet (torchvision/models/resnet.py: conv1 7×7/2 + bn + relu, maxpool 3×3/2, Bottleneck
    1×1 → 3×3 (stride, dilation) → 1×1 ×4 with BatchNorm (eval, ε 1e-5) and ReLU, downsample 1×1 + bn;
    ``replace_stride_with_dilation``: a dilated stage's first block keeps the previous dilation), written out on
    its names; returns the stem's activation and the four stages (timm's features_only levels)."""
    def bn(t, p):
        return F.batch_norm(t, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"], False, 0.0, 1e-5)
    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1."))
    feats = [x]
    x = F.max_pool2d(x, 3, 2, 1)
    stride_so_far, dilation = 4, 1
    for layer, n in enumerate(blocks, start=1):
        stride = 1 if layer == 1 else 2
        previous = dilation
        if stride_so_far >= output_stride and stride > 1:
            dilation, stride = dilation * stride, 1
        stride_so_far *= stride
        for j in range(n):
            b = f"layer{layer}.{j}."
            d = previous if j == 0 else dilation
            s = stride if j == 0 else 1
            y = F.relu(bn(F.conv2d(x, sd[b + "conv1.weight"]), b + "bn1."))
            y = F.relu(bn(F.conv2d(y, sd[b + "conv2.weight"], stride=s, padding=d, dilation=d), b + "bn2."))
            y = bn(F.conv2d(y, sd[b + "conv3.weight"]), b + "bn3.")
            short = bn(F.conv2d(x, sd[b + "downsample.0.weight"], stride=s), b + "downsample.1.") if j == 0 else x
            x = F.relu(y + short)
        feats.append(x)
    return feats


def test_resnet_features_equal_torchvisions_equations_on_a_released_layout_file(tmp_path, monkeypatch):
    """The bottleneck ResNet at output stride 8 (the paper segmentation networks' DeepLab setting), on a fabricated
    torchvision-layout file (ResNet-26's blocks, 2-2-2-2: ResNet-101's 3-4-23-3 differ only in repetitions)."""
    from tests.test_weights import torchvision_resnet_file
    torch.manual_seed(5)
    sd = torchvision_resnet_file(blocks=(2, 2, 2, 2))
    path = tmp_path / "resnet26.pth"
    path.touch()
    _in_memory(monkeypatch, sd)
    net = create_feature_backbone("resnet26", 8, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ours, ref = net(x), reference_torchvision_resnet(sd, x, (2, 2, 2, 2))
    assert [f.shape[-1] for f in ours] == [40, 20, 10, 10, 10]
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5
