"""Run configuration: pydantic models, profiles (smoke/default/paper) and ``--set KEY=VALUE``.

A config is resolved in three layers: the defaults below, the profile's overrides (``PROFILES``)
and the user's ``--set`` pairs. Every key that ``--show-config`` prints can be set with its dotted
path; unknown keys and ill-typed values are refused with one line naming the key.
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import UserError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(Section):
    train: int = 200
    val: int = 60
    seed: int = 0
    min_size: int = 96
    max_size: int = 144


class DataConfig(Section):
    root: str | None = None  # None: the embedded synthetic dataset
    synthetic: SyntheticConfig = SyntheticConfig()
    train_split: str = "train"  # images the networks train on (paper: train_aug)
    label_split: str = "train"  # images that get seeds and pseudo labels, scored against their masks
    val_split: str = "val"
    score_split: str | None = None  # score seeds/pseudo labels only on this split's images (paper: train)
    max_images: int | None = None  # cap on every split (for quick looks at a large dataset)


class TrainConfig(Section):
    steps: int = 600
    batch_size: int = 8
    crop_size: int = 96
    scale_range: tuple[float, float] = (0.7, 1.3)  # random rescale before the crop
    hflip: bool = True
    color_jitter: float = 0.3  # brightness/contrast/saturation strength; 0 switches it off
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    head_lr_mult: float = 10.0  # heads learn 10x faster, as in the papers
    weight_decay: float = 0.01
    momentum: float = 0.9
    warmup_steps: int = 50
    poly_power: float = 0.9
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 0  # torch threads; 0 = all cores


class ModelConfig(Section):
    """The classifier: a timm ViT (from scratch, ImageNet weights through timm, or a local file) + CAM head."""

    backbone: str = "vit_small_patch16_224"  # any timm ViT name
    pretrained: bool = False  # ImageNet weights through timm (needs the hub)
    weights: str | None = None  # a local .safetensors / .pth file of backbone weights
    patch_size: int | None = 8  # overrides for a from-scratch ViT (None keeps timm's)
    embed_dim: int | None = 128
    depth: int | None = 2
    num_heads: int | None = 4
    pooling: Literal["gap", "gmp", "topk"] = "topk"
    topk: float = 0.1  # fraction of locations averaged by top-k pooling
    # vit_cam: class maps from the patch tokens, pooled (CAM baseline); vit_acr: class-token head,
    # trained with ACR's attention consistency (section ``acr``)
    arch: Literal["vit_cam", "vit_acr"] = "vit_cam"


class ACRConfig(Section):
    """All-pairs consistency regularization (ACR) of the classifier's attention across two views."""

    alpha: float = 1.0  # weight of L_act (class-to-patch attention consistency); 0 switches it off
    beta: float = 1.0  # weight of L_aff (patch-to-patch attention consistency); 0 switches it off
    layers: list[int] | None = None  # blocks whose attention is regularised (None: all; negatives count from the end)
    transforms: list[Literal["resize", "hflip", "vflip", "rot90"]] = ["resize", "hflip", "vflip", "rot90"]
    resize_range: tuple[float, float] = (0.5, 1.5)  # scale of the resized view (rounded to whole patches)
    start_step: int = 0  # classification only before this step (from scratch: let attention become informative first)
    ramp_steps: int = 0  # then α, β ramp up linearly over this many steps


class AffinityConfig(Section):
    """Offline affinity (PSA manner) and the random walk of the seeds (ACR step 3)."""

    source: Literal["network", "attention"] = "network"  # a trained AffinityNet, or the ViT's own patch attention
    backbone: str = "resnet18"  # timm CNN with features_only (paper: ResNet-38 / ResNet-50)
    pretrained: bool = False
    weights: str | None = None
    dims: tuple[int, int, int] = (32, 64, 128)  # embedding channels from the last three feature levels
    radius: int = 5  # pairs within this radius (feature pixels) are trained and propagated over
    label_seeds: Literal["unrefined", "refined"] = "unrefined"  # ACR*: seeds without affinity refinement
    label_band: tuple[float, float] = (0.05, 0.3)  # (low, high) background scores: fg above high, bg below low
    label_refine: list[Literal["par", "crf"]] = ["par"]
    train: TrainConfig = TrainConfig(steps=400, batch_size=8, crop_size=96, lr=2e-3, head_lr_mult=10.0)
    beta: float = 8.0  # random walk: A^β
    log_t: int = 5  # random walk: T^(2^log_t)
    attention_layers: list[int] | None = None  # source=attention: blocks averaged (None: all)


class AFAConfig(Section):
    """AFA single-stage training (Ru et al., CVPR 2022): MiT encoder, CAM, affinity from attention, segmentation."""

    backbone: str = "pvt_v2_b1"  # a timm Mix Transformer (pvt_v2_b*; the paper's MiT-B1)
    pretrained: bool = False  # ImageNet weights through timm (needs the hub)
    weights: str | None = None  # a local .safetensors / .pth file of encoder weights
    embed_dims: list[int] | None = [32, 64, 128, 160]  # from-scratch overrides (None keeps timm's)
    depths: list[int] | None = [1, 1, 2, 2]
    num_heads: list[int] | None = [1, 2, 4, 4]
    output_stride: Literal[8, 16] = 8  # 16: last patch merging at stride 1 (paper); 8: the last two (small images)
    pooling: Literal["gmp", "gap", "topk"] = "gmp"  # of the last stage's features (paper: global max pooling)
    topk: float = 0.1  # fraction of locations averaged by top-k pooling
    decoder_dim: int = 128  # SegFormer MLP decoder width (paper: 256)
    # the AFA module reads N·S instead of the attention S (uniform → 1): from scratch, with S ≈ 1/N, the MLP
    # cannot reach discriminative logits in a short schedule (paper: false, the raw attention)
    attention_per_token: bool = True
    affinity: bool = True  # the AFA module (Table 2): L_aff and propagated labels; off: PAR labels of the CAM
    propagate: bool = True  # make_pseudo_labels propagates the seeds over the learned affinity (needs ``affinity``)
    par: bool = True  # PAR on the training labels (Table 2); its parameters are ``pseudo.par``
    reg: bool = True  # L_reg, local consistency of the segmentation (Table 2)
    bkg_band: tuple[float, float] = (0.05, 0.15)  # (β_l, β_h): background scores of the reliable labels (paper: 0.35, 0.55)
    radius: int = 2  # affinity pairs within this many feature pixels (paper: 8 on a 32×32 grid; here grids are ~12-18)
    power: float = 2.0  # α of T = D⁻¹A^α
    log_t: int = 0  # random walk steps: T^(2^log_t) (reference code: 0)
    par_downscale: int = 2  # PAR on the training labels runs on images downscaled by this factor (as the reference code)
    cls_weight: float = 1.0
    seg_weight: float = 0.1  # λ₁
    aff_weight: float = 0.1  # λ₂
    reg_weight: float = 0.01  # λ₃
    reg_kernel: int = 5  # L_reg window
    reg_sigma_rgb: float = 15.0
    reg_sigma_xy: float = 6.0
    reg_scale: float = 0.5  # L_reg on predictions and images resized by this factor
    cls_warmup_steps: int = 200  # classification only before this step (paper: 2k of 20k)
    aff_warmup_steps: int = 400  # + affinity before this step, then segmentation too (paper: 4k)
    train: TrainConfig = TrainConfig(steps=1000, batch_size=8, crop_size=96, lr=1e-3, head_lr_mult=10.0, warmup_steps=50,
                                     poly_power=1.0)


class CamConfig(Section):
    scales: list[float] = [1.0, 0.5, 1.5]
    flip: bool = True
    # cam: class maps of the patch tokens; grad: ACR's gradient class localisation on the
    # class-to-patch attention; grad_aff: grad refined with the patch-to-patch attention (ACR Table 5)
    mode: Literal["cam", "grad", "grad_aff"] = "cam"
    layers: list[int] | None = None  # blocks for grad / grad_aff (None: all; Fig. 8's layer range)
    aff_layers: list[int] | None = None  # blocks whose patch attention refines grad_aff (None: as ``layers``)
    # background thresholds tried by eval_seeds
    sweep: list[float] = [0.01, 0.02, 0.03, 0.05, 0.075] + [round(0.05 * i, 2) for i in range(2, 20)]


class ParConfig(Section):
    dilations: list[int] = [1, 2, 4, 8, 12, 24]
    num_iter: int = 10
    w_rgb: float = 0.3
    w_pos: float = 0.3
    w_mix: float = 0.01


class CrfConfig(Section):
    n_iter: int = 10
    pos_xy_std: float = 3
    pos_w: float = 3
    bi_xy_std: float = 80
    bi_rgb_std: float = 13
    bi_w: float = 10


class PseudoConfig(Section):
    bkg_threshold: float = 0.01  # background score appended to the max-normalised CAMs (peaked under top-k pooling)
    ignore_band: tuple[float, float] | None = None  # (low, high): pixels whose top score lies between get 255
    refine: list[Literal["par", "crf"]] = ["par"]
    par: ParConfig = ParConfig(num_iter=20)
    crf: CrfConfig = CrfConfig()
    workers: int = 2  # processes for per-image refinement


class SegmentationConfig(Section):
    backbone: str = "resnet18"  # timm model with features_only
    pretrained: bool = False
    weights: str | None = None
    head: Literal["aspp", "mlp"] = "aspp"
    output_stride: int = 8
    train: TrainConfig = TrainConfig(steps=1200, batch_size=8, crop_size=96, lr=2e-3, head_lr_mult=1.0)
    eval_scales: list[float] = [1.0, 0.75, 1.25]
    eval_flip: bool = True
    eval_crf: bool = False
    eval_split: str = "val"


class RunConfig(Section):
    """The whole configuration of a run (``--show-config`` prints it)."""

    flow: str = "cam_voc"
    profile: Literal["smoke", "default", "paper"] = "default"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train_classifier: TrainConfig = TrainConfig(steps=1000, lr=5e-4)
    acr: ACRConfig = ACRConfig()
    cam: CamConfig = CamConfig()
    affinity: AffinityConfig = AffinityConfig()
    afa: AFAConfig = AFAConfig()
    pseudo: PseudoConfig = PseudoConfig()
    segmentation: SegmentationConfig = SegmentationConfig()

    def section(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj

    def digest(self, *sections: str) -> str:
        payload = {s: self.section(s) for s in sections} if sections else self.model_dump(mode="json")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


#: Per-profile overrides, as nested dicts over the defaults.
PROFILES: dict[str, dict] = {
    # whole flow in at most 90 s on 2 CPU cores
    "smoke": {
        "data": {"synthetic": {"train": 48, "val": 16, "min_size": 80, "max_size": 112}},
        "model": {"embed_dim": 64, "depth": 2, "num_heads": 2},
        "train_classifier": {"steps": 60, "batch_size": 8, "crop_size": 80, "lr": 2e-3, "warmup_steps": 5, "checkpoint_every": 20, "log_every": 5},
        "cam": {"scales": [1.0], "flip": True},
        "affinity": {"train": {"steps": 40, "batch_size": 8, "crop_size": 80, "warmup_steps": 5, "checkpoint_every": 20, "log_every": 5}},
        "afa": {"embed_dims": [16, 32, 64, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "decoder_dim": 32,
                "cls_warmup_steps": 20, "aff_warmup_steps": 40,
                "train": {"steps": 80, "batch_size": 8, "crop_size": 80, "warmup_steps": 5, "checkpoint_every": 20, "log_every": 5}},
        "pseudo": {"par": {"num_iter": 10}, "crf": {"n_iter": 5}},
        "segmentation": {"train": {"steps": 60, "batch_size": 8, "crop_size": 80, "lr": 2e-3, "warmup_steps": 5, "checkpoint_every": 20, "log_every": 5},
                         "eval_scales": [1.0], "eval_flip": False},
    },
    # meaningful numbers on the synthetic data in at most 15 min on 2 CPU cores
    "default": {},
    # the papers' PASCAL VOC hyper-parameters, on a GPU
    "paper": {
        "data": {"train_split": "train_aug", "label_split": "train_aug", "score_split": "train"},
        "model": {"backbone": "vit_base_patch16_384", "pretrained": True, "patch_size": None,
                  "embed_dim": None, "depth": None, "num_heads": None, "pooling": "gap"},
        "train_classifier": {"steps": 20000, "batch_size": 4, "crop_size": 384, "scale_range": [0.5, 2.0], "lr": 6e-5,
                             "weight_decay": 0.01, "warmup_steps": 1500, "checkpoint_every": 1000, "log_every": 50},
        "cam": {"scales": [1.0, 0.5, 1.5, 2.0], "flip": True},
        "pseudo": {"bkg_threshold": 0.45, "refine": ["par", "crf"], "par": {"num_iter": 10}, "workers": 8},
        "segmentation": {"backbone": "resnet101", "pretrained": True, "head": "aspp", "output_stride": 8,
                         "train": {"steps": 20000, "batch_size": 10, "crop_size": 321, "scale_range": [0.5, 1.5], "optimizer": "sgd",
                                   "lr": 2.5e-4, "head_lr_mult": 10.0, "weight_decay": 5e-4, "warmup_steps": 0,
                                   "checkpoint_every": 1000, "log_every": 50, "color_jitter": 0.0},
                         "eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5], "eval_flip": True, "eval_crf": True},
    },
}


def deep_update(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_validation(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown config key {key!r}: see `run-flow NAME --show-config` for the keys"
    return f"config key {key!r}: {e['msg']} (got {e.get('input')!r})"


def parse_set(pairs: list[str] | tuple[str, ...]) -> dict:
    """``["a.b=1", "c=[x, y]"]`` → nested dict; values are read as YAML scalars/lists."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set {pair!r} is not KEY=VALUE: write e.g. --set train_classifier.steps=100")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key!r} conflicts with another --set of {p!r}")
        node[parts[-1]] = value
    return out


def _check_keys(overrides: dict, model: type[BaseModel], prefix: str = "") -> None:
    for k, v in overrides.items():
        field = model.model_fields.get(k)
        if field is None:
            raise UserError(f"unknown config key {prefix + k!r}: see `run-flow NAME --show-config` for the keys")
        ann = field.annotation
        if isinstance(v, dict) and isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_keys(v, ann, prefix + k + ".")


def resolve_config(flow: str, profile: str = "default", sets: list[str] | tuple[str, ...] = (),
                   flow_defaults: dict | None = None, data_root: str | None = None,
                   flow_profile_defaults: dict | None = None) -> RunConfig:
    """Defaults ← flow's own defaults ← profile ← flow's defaults for that profile ← ``--set`` pairs, validated."""
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}: choose smoke, default or paper")
    overrides = parse_set(sets)
    _check_keys(overrides, RunConfig)
    base = RunConfig().model_dump(mode="json")
    merged = deep_update(base, flow_defaults or {})
    merged = deep_update(merged, PROFILES[profile])
    merged = deep_update(merged, (flow_profile_defaults or {}).get(profile, {}))
    merged = deep_update(merged, {"flow": flow, "profile": profile})
    if data_root is not None:
        merged["data"]["root"] = str(data_root)
    merged = deep_update(merged, overrides)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as err:
        raise UserError(_format_validation(err)) from None
