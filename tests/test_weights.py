"""Weight files in the official layouts load strictly; a wrong file is refused with one line; the hub is never asked
when a file is given (issues 35 and 42).

The files are fabricated: random tensors under the names and shapes the *official* model definitions give them,
enumerated here by reading those definitions (file and line beside each generator), never from our own models.
"""
from __future__ import annotations

import pytest
import torch

from models.backbones import create_feature_backbone, create_vit
from models.mix_transformer import MixTransformer
from models.swtformer import create_swin
from models.weights import hub_weights, load_backbone_weights, match_weights
from pipeline.errors import UserError
from tests.helpers import cli


def _t(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) * 0.05


# ------------------------------------------------------------------------------------- official layouts, fabricated
#: SegFormer's variants (NVlabs/SegFormer mmseg/models/backbones/mix_transformer.py:373-424): dims, depths; all of
#: them heads [1, 2, 5, 8], MLP ratio 4, sr ratios [8, 4, 2, 1]
SEGFORMER = {"mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]), "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
             "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]), "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3])}


def segformer_mit_file(variant: str) -> dict[str, torch.Tensor]:
    """A released ``mit_bX.pth`` as SegFormer's ``MixVisionTransformer`` names it: ``patch_embed{i}`` (7×7 from 3
    channels, then 3×3; proj + LayerNorm, lines 160-175, 213-220), ``block{i}.{j}`` (norm1, attn.q / kv / proj, attn.sr
    + attn.norm when R > 1, norm2, mlp.fc1 / dwconv.dwconv / fc2; lines 20-29, 58-77, 120-134, 358-361), ``norm{i}``
    (lines 230-254), and the ImageNet classifier ``head`` that AFA pops (rulixiang/afa wetr/model_attn_aff.py:25)."""
    dims, depths = SEGFORMER[variant]
    sd, prev = {}, 3
    for i, (c, d, r) in enumerate(zip(dims, depths, [8, 4, 2, 1]), start=1):
        k = 7 if i == 1 else 3
        sd |= {f"patch_embed{i}.proj.weight": _t(c, prev, k, k), f"patch_embed{i}.proj.bias": _t(c),
               f"patch_embed{i}.norm.weight": _t(c), f"patch_embed{i}.norm.bias": _t(c)}
        for j in range(d):
            b = f"block{i}.{j}."
            sd |= {b + "norm1.weight": _t(c), b + "norm1.bias": _t(c), b + "attn.q.weight": _t(c, c), b + "attn.q.bias": _t(c),
                   b + "attn.kv.weight": _t(2 * c, c), b + "attn.kv.bias": _t(2 * c),
                   b + "attn.proj.weight": _t(c, c), b + "attn.proj.bias": _t(c),
                   b + "norm2.weight": _t(c), b + "norm2.bias": _t(c),
                   b + "mlp.fc1.weight": _t(4 * c, c), b + "mlp.fc1.bias": _t(4 * c),
                   b + "mlp.dwconv.dwconv.weight": _t(4 * c, 1, 3, 3), b + "mlp.dwconv.dwconv.bias": _t(4 * c),
                   b + "mlp.fc2.weight": _t(c, 4 * c), b + "mlp.fc2.bias": _t(c)}
            if r > 1:
                sd |= {b + "attn.sr.weight": _t(c, c, r, r), b + "attn.sr.bias": _t(c),
                       b + "attn.norm.weight": _t(c), b + "attn.norm.bias": _t(c)}
        sd |= {f"norm{i}.weight": _t(c), f"norm{i}.bias": _t(c)}
        prev = c
    return sd | {"head.weight": _t(1000, dims[-1]), "head.bias": _t(1000)}


def jx_vit_hybrid_file() -> dict[str, torch.Tensor]:
    """``jx_vit_base_resnet50_384-9fd3c705.pth`` as ACR's vendored timm names it (OpenNLPLab/ACR_WSSS):
    ``models/vision_transformer_hybrid.py:153-162`` (ResNetV2 layers (3, 4, 9), embed 768, depth 12, heads 12, 384²),
    the ResNetV2 stem conv 7×7 + GroupNorm (``models/resnetv2.py:277-308``, preact=False), non-preact bottlenecks
    conv1/norm1, conv2 (3×3)/norm2, conv3/norm3 and a first-block ``downsample.conv/norm`` (lines 171-228; widths
    256, 512, 1024 with a quarter inside, line 183; no final norm without preact, line 353), ``HybridEmbed.proj``
    1×1 1024 → 768 (``vision_transformer_hybrid.py:99``), ``cls_token`` / ``pos_embed`` 1 + 24² tokens, the blocks
    (``models/vision_transformer.py:167-233``: qkv with bias, proj, fc1 3072, fc2), ``norm`` and ``head`` 1000."""
    sd = {"cls_token": _t(1, 1, 768), "pos_embed": _t(1, 577, 768), "patch_embed.backbone.stem.conv.weight": _t(64, 3, 7, 7),
          "patch_embed.backbone.stem.norm.weight": _t(64), "patch_embed.backbone.stem.norm.bias": _t(64)}
    prev = 64
    for s, (depth, out) in enumerate(zip((3, 4, 9), (256, 512, 1024))):
        mid = out // 4
        for j in range(depth):
            b = f"patch_embed.backbone.stages.{s}.blocks.{j}."
            if j == 0:
                sd |= {b + "downsample.conv.weight": _t(out, prev, 1, 1), b + "downsample.norm.weight": _t(out),
                       b + "downsample.norm.bias": _t(out)}
            sd |= {b + "conv1.weight": _t(mid, prev if j == 0 else out, 1, 1), b + "norm1.weight": _t(mid), b + "norm1.bias": _t(mid),
                   b + "conv2.weight": _t(mid, mid, 3, 3), b + "norm2.weight": _t(mid), b + "norm2.bias": _t(mid),
                   b + "conv3.weight": _t(out, mid, 1, 1), b + "norm3.weight": _t(out), b + "norm3.bias": _t(out)}
        prev = out
    sd |= {"patch_embed.proj.weight": _t(768, 1024, 1, 1), "patch_embed.proj.bias": _t(768)}
    for i in range(12):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": _t(768), b + "norm1.bias": _t(768), b + "attn.qkv.weight": _t(2304, 768),
               b + "attn.qkv.bias": _t(2304), b + "attn.proj.weight": _t(768, 768), b + "attn.proj.bias": _t(768),
               b + "norm2.weight": _t(768), b + "norm2.bias": _t(768), b + "mlp.fc1.weight": _t(3072, 768),
               b + "mlp.fc1.bias": _t(3072), b + "mlp.fc2.weight": _t(768, 3072), b + "mlp.fc2.bias": _t(768)}
    return sd | {"norm.weight": _t(768), "norm.bias": _t(768), "head.weight": _t(1000, 768), "head.bias": _t(1000)}


def ms_swin_tiny_file() -> dict:
    """Microsoft's ``swin_tiny_patch4_window7_224.pth``: ``{"model": state_dict}`` of Swin-T (embed 96, depths
    2-2-6-2, heads 3-6-12-24, window 7, 224²), the layout of microsoft/Swin-Transformer ``models/swin_transformer.py``
    (the same in ACR's vendored timm ``models/swin_transformer.py:120-505``): ``patch_embed.proj`` 4×4 + norm, per
    block norm1, ``attn.relative_position_bias_table`` (13², heads), the buffer ``attn.relative_position_index``
    (49, 49), qkv, proj, norm2, fc1 / fc2; the buffer ``attn_mask`` (windows, 49, 49) in the shifted (odd) blocks of
    stages larger than a window; ``layers.{i}.downsample`` (norm 4C, reduction 4C → 2C) at the END of stages 0-2;
    ``norm`` and ``head`` 1000."""
    sd = {"patch_embed.proj.weight": _t(96, 3, 4, 4), "patch_embed.proj.bias": _t(96),
          "patch_embed.norm.weight": _t(96), "patch_embed.norm.bias": _t(96)}
    for i, (d, h, res) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24), (56, 28, 14, 7))):
        c = 96 * 2 ** i
        for j in range(d):
            b = f"layers.{i}.blocks.{j}."
            sd |= {b + "norm1.weight": _t(c), b + "norm1.bias": _t(c), b + "attn.relative_position_bias_table": _t(169, h),
                   b + "attn.relative_position_index": torch.randint(0, 169, (49, 49)),
                   b + "attn.qkv.weight": _t(3 * c, c), b + "attn.qkv.bias": _t(3 * c),
                   b + "attn.proj.weight": _t(c, c), b + "attn.proj.bias": _t(c), b + "norm2.weight": _t(c), b + "norm2.bias": _t(c),
                   b + "mlp.fc1.weight": _t(4 * c, c), b + "mlp.fc1.bias": _t(4 * c), b + "mlp.fc2.weight": _t(c, 4 * c),
                   b + "mlp.fc2.bias": _t(c)}
            if j % 2 == 1 and res > 7:
                sd[b + "attn_mask"] = torch.zeros((res // 7) ** 2, 49, 49)
        if i < 3:
            sd |= {f"layers.{i}.downsample.reduction.weight": _t(2 * c, 4 * c),
                   f"layers.{i}.downsample.norm.weight": _t(4 * c), f"layers.{i}.downsample.norm.bias": _t(4 * c)}
    return {"model": sd | {"norm.weight": _t(768), "norm.bias": _t(768), "head.weight": _t(1000, 768), "head.bias": _t(1000)}}


def torchvision_resnet_file(blocks=(3, 4, 23, 3), counters: bool = False) -> dict[str, torch.Tensor]:
    """torchvision's ``resnet101-*.pth`` (torchvision/models/resnet.py ``resnet101``: Bottleneck ×(3, 4, 23, 3), the
    same names as mmdet's ResNet in APro's repository, ``mmdet/models/backbones/resnet.py``): conv1 7×7, bn1, layer
    l.j conv1/bn1, conv2 3×3/bn2, conv3/bn3 (×4 expansion), ``downsample.0/1`` in each first block, fc 1000. Files
    before torchvision 0.4.1 hold no ``num_batches_tracked`` (``counters=False``)."""
    def bn(p: str, c: int) -> dict:
        out = {p + "weight": _t(c), p + "bias": _t(c), p + "running_mean": _t(c), p + "running_var": _t(c).abs() + 1}
        return out | ({p + "num_batches_tracked": torch.tensor(5)} if counters else {})
    sd = {"conv1.weight": _t(64, 3, 7, 7)} | bn("bn1.", 64)
    prev = 64
    for layer, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for j in range(n):
            b = f"layer{layer}.{j}."
            sd |= {b + "conv1.weight": _t(planes, prev, 1, 1)} | bn(b + "bn1.", planes)
            sd |= {b + "conv2.weight": _t(planes, planes, 3, 3)} | bn(b + "bn2.", planes)
            sd |= {b + "conv3.weight": _t(4 * planes, planes, 1, 1)} | bn(b + "bn3.", 4 * planes)
            if j == 0:
                sd |= {b + "downsample.0.weight": _t(4 * planes, prev, 1, 1)} | bn(b + "downsample.1.", 4 * planes)
            prev = 4 * planes
    return sd | {"fc.weight": _t(1000, 2048), "fc.bias": _t(1000)}


def _save(tmp_path, name: str, sd: dict):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def _assert_loaded(model: torch.nn.Module, match, file_sd: dict) -> None:
    """Zero missing / unexpected / mis-shaped, and every backbone tensor equal to its file tensor."""
    assert match.ok and not match.missing and not match.unexpected and not match.misshaped, match.refusal()
    own = model.state_dict()
    for k, src in match.source.items():
        if src in file_sd:
            assert torch.equal(own[k], file_sd[src].to(own[k].dtype)), k


# --------------------------------------------------------------------------------------------------- strict loading
# Large backbones (MiT-B4, the ViT-hybrid, ResNet-101) are checked on the meta device: shapes only, no memory, no
# writing hundreds of MB; the file is handed to the loader in memory (``read_weight_file`` patched). MiT-B1 and
# Swin-T go through a real file and a real load, tensor values compared.
def _in_memory(monkeypatch, sd: dict) -> None:
    import models.weights as w
    monkeypatch.setattr(w, "read_weight_file", lambda _path: {k: v for k, v in sd.items() if torch.is_tensor(v)})


@pytest.fixture(scope="module")
def mit_b1_file(tmp_path_factory):
    torch.manual_seed(0)
    sd = segformer_mit_file("mit_b1")
    return _save(tmp_path_factory.mktemp("mit"), "mit_b1.pth", sd), sd


def test_segformer_mit_b1_file_loads_into_mit_b1_strictly(mit_b1_file):
    path, sd = mit_b1_file
    enc = MixTransformer("mit_b1", weights=str(path))  # loads, or raises
    match = match_weights(enc.net, sd, path)
    assert match.layout.name == "segformer-mit" and set(match.dropped) == {"head.weight", "head.bias"}
    assert len(match.matched) == len(enc.net.state_dict()) == len(sd) - 2
    _assert_loaded(enc.net, match, sd)


def test_segformer_mit_b4_file_fits_mit_b4_and_wrong_variants_are_refused(tmp_path, monkeypatch, mit_b1_file):
    with torch.device("meta"):
        sd4 = segformer_mit_file("mit_b4")
        enc4 = MixTransformer("mit_b4")
        enc1 = MixTransformer("mit_b1")
    path4 = tmp_path / "mit_b4.pth"
    path4.touch()  # the loader reads it from memory (``_in_memory``)
    match = match_weights(enc4.net, sd4, path4)
    assert match.ok and len(match.matched) == len(enc4.net.state_dict()) == len(sd4) - 2, match.refusal()
    _in_memory(monkeypatch, sd4)
    with pytest.raises(UserError) as e:  # B4 holds 3/8/27/3 blocks: B1 has 2/2/2/2
        load_backbone_weights(enc1.net, path4, (), "mit_b1")
    msg = str(e.value)
    assert "\n" not in msg and str(path4) in msg and "mit_b1" in msg and "unexpected (block1.2." in msg
    _in_memory(monkeypatch, mit_b1_file[1])
    with pytest.raises(UserError, match=r"missing \(stages\.0\.blocks\.2\."):
        load_backbone_weights(enc4.net, path4, (), "mit_b4")


def test_shape_mismatch_is_caught_and_named(mit_b1_file):
    """Issue 42, case 2: SegFormer's MiT-B1 (MLP ratio 4) into timm's pvt_v2_b1 (ratio 8, 8, 4, 4): one line."""
    path, _ = mit_b1_file
    with pytest.raises(UserError) as e:
        MixTransformer("pvt_v2_b1", weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and "mis-shaped" in msg and str(path) in msg
    assert "block1.0.mlp.fc1.weight is (256, 64) in the file, stages.0.blocks.0.mlp.fc1.weight is (512, 64)" in msg


def test_vit_hybrid_jx_file_fits_acrs_backbone(tmp_path, monkeypatch):
    with torch.device("meta"):
        sd = jx_vit_hybrid_file()
        path = tmp_path / "jx_vit_base_resnet50_384-9fd3c705.pth"
        path.touch()
        _in_memory(monkeypatch, sd)
        vit = create_vit("vit_base_r50_s16_384", img_size=384, weights=str(path))  # through the loader: fits or raises
    match = match_weights(vit, sd, path)
    assert match.layout.name == "timm-vit" and set(match.dropped) == {"head.weight", "head.bias"}
    assert match.ok and len(match.matched) == len(vit.state_dict()) == len(sd) - 2, match.refusal()


def test_microsoft_swin_tiny_file_loads_into_swin_t(tmp_path):
    torch.manual_seed(2)
    wrapped = ms_swin_tiny_file()
    path = _save(tmp_path, "swin_tiny_patch4_window7_224.pth", wrapped)
    swin = create_swin("swin_tiny_patch4_window7_224", weights=str(path))
    sd = wrapped["model"]
    match = match_weights(swin, sd, path)
    assert match.layout.name == "microsoft-swin"
    buffers = {k for k in sd if k.endswith(("relative_position_index", "attn_mask"))}
    assert set(match.dropped) == {"head.weight", "head.bias"} | buffers and len(buffers) == 12 + 5
    assert match.source["layers.1.downsample.reduction.weight"] == "layers.0.downsample.reduction.weight"
    _assert_loaded(swin, match, sd)


@pytest.mark.parametrize("counters", [False, True])
def test_torchvision_resnet101_file_fits_the_feature_backbone(tmp_path, monkeypatch, counters):
    with torch.device("meta"):
        sd = torchvision_resnet_file(counters=counters)
        net = create_feature_backbone("resnet101", 8)
        r50 = create_feature_backbone("resnet50", 8)
    path = tmp_path / "resnet101-b641f3a9.pth"
    path.touch()
    match = match_weights(net, sd, path)
    assert match.layout.name == "torchvision-resnet" and set(match.dropped) == {"fc.weight", "fc.bias"}
    assert match.ok and len(match.matched) == len(net.state_dict()), match.refusal()
    assert bool(match.notes) is not counters  # counters filled only when the file lacks them
    _in_memory(monkeypatch, sd)
    with pytest.raises(UserError, match="does not fit the backbone resnet50"):  # 23 blocks in layer3: not a ResNet-50
        load_backbone_weights(r50, path, (), "resnet50")


def test_a_real_torchvision_layout_file_loads_values(tmp_path):
    """A small bottleneck ResNet (ResNet-26 blocks) through a real file: every value lands where it belongs."""
    torch.manual_seed(3)
    sd = torchvision_resnet_file(blocks=(2, 2, 2, 2))
    path = _save(tmp_path, "resnet26.pth", sd)
    net = create_feature_backbone("resnet26", 8, weights=str(path))
    _assert_loaded(net, match_weights(net, sd, path), sd)


def test_deeplab_caffe_resnet_is_refused_by_name(tmp_path):
    path = _save(tmp_path, "deeplab.pth", {"Scale.conv1.weight": _t(64, 3, 7, 7), "conv1.weight": _t(64, 3, 7, 7)})
    with pytest.raises(UserError, match="caffe-converted DeepLab-v2"):
        create_feature_backbone("resnet18", 8, weights=str(path))


def test_weights_ignore_drops_what_it_names_and_nothing_else(tmp_path):
    net = create_feature_backbone("resnet18", 8)
    sd = {k: v.clone() for k, v in net.state_dict().items()} | {"decoder.conv.weight": _t(3, 3)}
    path = tmp_path / "with_decoder.safetensors"
    from safetensors.torch import save_file
    save_file(sd, str(path))
    with pytest.raises(UserError, match=r"1 unexpected \(decoder\.conv\.weight\)"):
        create_feature_backbone("resnet18", 8, weights=str(path))
    loaded = create_feature_backbone("resnet18", 8, weights=str(path), weights_ignore=["decoder.*"])
    assert torch.equal(loaded.state_dict()["conv1.weight"], sd["conv1.weight"])
    with pytest.raises(UserError, match="missing"):  # a pattern that drops a backbone tensor leaves it missing
        create_feature_backbone("resnet18", 8, weights=str(path), weights_ignore=["decoder.*", "conv1.*"])


# ----------------------------------------------------------------------------------------- pretrained and weights
def test_a_local_file_wins_and_the_hub_is_never_asked(tmp_path, monkeypatch):
    """Issue 42, case 1: with ``pretrained`` on and a file given, timm's hub loader is not called."""
    import timm.models._builder as builder

    def no_hub(*_a, **_k):
        raise AssertionError("the hub was asked")
    monkeypatch.setattr(builder, "load_pretrained", no_hub)
    src = create_feature_backbone("resnet18", 8)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    net = create_feature_backbone("resnet18", 8, pretrained=True, weights=str(path))
    assert torch.equal(net.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"])


def test_no_hub_access_is_one_line_naming_the_fix(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError
    import timm.models._builder as builder

    def offline(*_a, **_k):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic has been disabled.")
    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(UserError) as e:
        create_feature_backbone("resnet18", 8, pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and "no hub access" in msg and "weights=FILE" in msg and "LocalEntryNotFoundError" in msg
    with pytest.raises(UserError, match="mit_b1 has no ImageNet weights on timm's hub"):
        MixTransformer("mit_b1", pretrained=True)
    with hub_weights("mit_b1", True, "file.pth") as hub:  # a file given: not even the tag is looked up
        assert hub is False


def test_a_standin_still_fits_exactly_and_names_its_architecture():
    from models.standins import standin_backbone
    load_backbone_weights(standin_backbone("mit", 96), "standin:mit")
    with pytest.raises(UserError, match="pretrained as"):
        load_backbone_weights(MixTransformer("pvt_v2_b1").net, "standin:mit")


def test_run_flow_refuses_a_missing_weights_file_before_any_stage(tmp_path):
    run_dir = tmp_path / "run"
    p = cli("run-flow", "afa_voc", "--profile", "smoke", "--run-dir", run_dir, "--set", f"afa.weights={tmp_path / 'no.pth'}")
    assert p.returncode != 0 and not run_dir.exists()
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "afa.weights" in lines[0] and "does not exist" in lines[0], p.stderr


def test_pretrained_without_hub_weights_is_refused_before_any_stage():
    from models.weights import backbone_sections, check_initial_weights
    from workflows import get_flow
    spec = get_flow("afa_voc")
    cfg = spec.resolve("smoke", ["afa.pretrained=true", "afa.weights=null", "afa.backbone=mit_b1", "afa.embed_dims=null",
                                 "afa.depths=null", "afa.num_heads=null"])
    sections = backbone_sections(cfg, [r for st in spec.stages for r in st.reads])
    assert "afa" in sections
    with pytest.raises(UserError, match=r"afa\.pretrained: mit_b1 has no ImageNet weights.*afa\.weights=FILE"):
        check_initial_weights(sections)


def test_check_weights_prints_what_loads_where(mit_b1_file, tmp_path):
    from click.testing import CliRunner
    import cli as command_line
    path, sd = mit_b1_file
    run = CliRunner().invoke(command_line.main, ["check-weights", str(path), "--flow", "afa_voc", "--profile", "paper"])
    assert run.exit_code == 0, run.output
    assert "layout: segformer-mit" in run.output and "missing 0, unexpected 0, mis-shaped 0" in run.output
    assert "patch_embed1.proj.weight → patch_embed.proj.weight" in run.output and "head.weight" in run.output
    wrong = _save(tmp_path, "cut.pth", {k: v for k, v in sd.items() if not k.startswith("block4.1.")})
    run = CliRunner().invoke(command_line.main, ["check-weights", str(wrong), "--flow", "afa_voc", "--profile", "paper"])
    assert run.exit_code == 1 and "does NOT fit" in run.output and "missing: stages.3.blocks.1." in run.output


def test_weights_ignore_is_a_key_of_every_backbone_section_and_reaches_the_loader(tmp_path):
    from safetensors.torch import save_file
    from models.segmentation import segmentation_spec
    from workflows import get_flow
    for flow, section in (("afa_voc", "afa"), ("sasformer_voc", "sasformer"), ("cam_voc", "model"),
                          ("swtformer_voc", "swtformer"), ("acr_voc", "affinity"), ("apro_voc", "segmentation")):
        assert getattr(get_flow(flow).resolve("smoke"), section).weights_ignore == []
    net = create_feature_backbone("resnet18", 8, channels=[8, 16, 24, 32])
    path = tmp_path / "seg.safetensors"
    save_file({k: v.clone() for k, v in net.state_dict().items()} | {"decoder.w": _t(2)}, str(path))
    sets = ["segmentation.backbone=resnet18", "segmentation.channels=[8,16,24,32]", f"segmentation.weights={path}"]
    cfg = get_flow("apro_voc").resolve("smoke", sets)
    with pytest.raises(UserError, match=r"unexpected \(decoder\.w\)"):
        segmentation_spec(cfg.segmentation).build()
    cfg = get_flow("apro_voc").resolve("smoke", [*sets, 'segmentation.weights_ignore=["decoder.*"]'])
    built = segmentation_spec(cfg.segmentation).build()
    assert torch.equal(built.backbone.state_dict()["conv1.weight"], net.state_dict()["conv1.weight"])
