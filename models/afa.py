"""AFA: Learning Affinity from Attention (Ru et al., CVPR 2022) — single-stage WSSS on a Mix Transformer.

One network with three branches on a shared MiT encoder:
- classification: global max pooling of the last stage's features, a 1×1 classifier (its weights give the CAM);
- affinity (AFA module): A = MLP(S + Sᵀ) over the last stage's multi-head attention S, trained with
  pseudo affinity labels from the PAR-refined CAM labels (Eq. 5);
- segmentation: SegFormer's all-MLP decoder, trained on the CAM labels propagated by the random walk
  over A and refined again with PAR, plus the local-consistency regularisation L_reg.

The pure functions below are the paper's equations; ``AFALoss`` in ``stages/train_single_stage.py``
wires them into one training step, and ``stages/afa_labels.py`` holds AFA's label rules (scores at a
background score, propagated over the learned affinity). Where the released code (rulixiang/afa) differs from
the paper, a named ``afa`` key selects it (the ``paper`` profile takes every one: docs/afa.md, "Paper profile and
the official code"): the raw-logit attention, the multi-scale label CAMs and their fusion (``multiscale_cams_and_affinity``),
the balanced L_seg (``balanced_seg_loss``), the released trained network's key mapping (``released_state_dict``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from models.cam_classifier import multiscale_cams, normalise_cams, pool_scores
from models.mix_transformer import MiTName, MixTransformer
from models.weights_mit import segformer_mit_name
from models.pairs import pair_labels, radius_mask
from models.registry import ModelSpec, register_model
from models.segmentation import MLPHead

from pipeline.config import BkgBand, Count, NonNegInt, NonNegative, Positive, Scales, SMOKE_TRAIN, Section, TrainConfig, config_section
from pipeline.errors import UserError
from pipeline.voc import IGNORE_INDEX


@config_section("afa", profiles={
    "smoke": {"embed_dims": [16, 32, 64, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "decoder_dim": 32,
              "cls_warmup_steps": 20, "aff_warmup_steps": 40, "train": {**SMOKE_TRAIN, "steps": 80}},
})
class AFAConfig(Section):
    """AFA single-stage training (Ru et al., CVPR 2022): MiT encoder, CAM, affinity from attention, segmentation."""

    backbone: MiTName = "pvt_v2_b1"  # a Mix Transformer: SegFormer's mit_b* (paper: mit_b1) or timm's pvt_v2_b*
    pretrained: bool = False  # ImageNet weights through timm (needs the hub)
    # a local .safetensors / .pth file of encoder weights, or standin:NAME (models/standins.py); null: from scratch.
    # From scratch by default: from the `mit` stand-in the seeds fell from 0.348 to 0.145 on style a (README, AFA)
    weights: str | None = None
    weights_ignore: list[str] = []  # glob patterns of the weights file's tensors to drop (e.g. [head.*]); the rest loads strictly (docs/weights.md)
    embed_dims: list[Count] | None = [32, 64, 128, 160]  # from-scratch overrides (None keeps timm's)
    depths: list[Count] | None = [1, 1, 2, 2]
    num_heads: list[Count] | None = [1, 2, 4, 4]
    output_stride: Literal[8, 16] = 8  # 16: last patch merging at stride 1 (paper); 8: the last two (small images)
    pooling: Literal["gmp", "gap", "topk"] = "gmp"  # of the last stage's features (paper: global max pooling)
    topk: Annotated[float, Field(gt=0, le=1)] = 0.1  # fraction of locations averaged by top-k pooling
    decoder_dim: Count = 128  # SegFormer MLP decoder width (paper: 256)
    # the AFA module reads N·S instead of the attention S (uniform → 1): from scratch, with S ≈ 1/N, the MLP
    # cannot reach discriminative logits in a short schedule (paper: false, the raw attention)
    attention_per_token: bool = True
    # what the AFA module reads from the last stage's blocks: their softmax attention (softmax), or their raw q·kᵀ
    # before the scaling and the softmax (logits: the released code, wetr/mix_transformer.py:107,123; docs/afa.md)
    attention: Literal["softmax", "logits"] = "softmax"
    affinity: bool = True  # the AFA module (Table 2): L_aff and propagated labels; off: PAR labels of the CAM
    propagate: bool = True  # make_pseudo_labels propagates the seeds over the learned affinity (needs ``affinity``)
    par: bool = True  # PAR on the training labels (Table 2); its parameters are ``pseudo.par``
    reg: bool = True  # L_reg, local consistency of the segmentation (Table 2)
    bkg_band: BkgBand = (0.05, 0.15)  # (β_l, β_h): background scores of the reliable labels (paper: 0.35, 0.55)
    radius: Count = 2  # affinity pairs within this many feature pixels (paper: 8 on a 32×32 grid; here grids are ~12-18)
    beta: Positive = 2.0  # the random walk's power: T = D⁻¹A^β (the paper's α)
    log_t: NonNegInt = 0  # random walk steps: T^(2^log_t) (reference code: 0)
    par_downscale: Count = 2  # PAR on the training labels runs on images downscaled by this factor (as the reference code)
    # the CAMs of the training labels: the training forward's own (train), or a separate multi-scale + flip CAM without
    # gradient at label_scales whose affinity is the largest scale's (multiscale: the released code, camutils.py:115-147)
    label_cams: Literal["train", "multiscale"] = "train"
    label_scales: Scales = [1.0, 0.5, 1.5]  # of label_cams=multiscale (released: cam.scales, voc_attn_reg.yaml:35)
    # how multi-scale CAMs are fused (the seeds; multiscale training labels): sum: ReLU maps (and their flips) summed,
    # each map over its maximum (models.cam_classifier); released: per scale max(map, flipped map), ReLU, sum,
    # (x − min)/(max + 1e-5) (camutils.py:85-113)
    cam_fusion: Literal["sum", "released"] = "sum"
    walk_eps: Positive = 1e-5  # the random walk's T = A^β / (column sums + walk_eps) (released: 0.1, camutils.py:301)
    # L_seg: one cross-entropy over the labelled pixels (ce), or ½·CE over background + ½·CE over foreground pixels
    # (balanced: the released get_seg_loss, dist_train_voc.py:143-151)
    seg_loss: Literal["ce", "balanced"] = "ce"
    # L_seg learns the PAR labels of the CAM before this step and the propagated labels from it (released: 6001, the
    # propagated labels after n_iter 6000, dist_train_voc.py:339); 0: always the propagated labels
    seg_propagated_from: NonNegInt = 0
    # PAR of the propagated training labels on the image's box within the crop, downscaled by 2, instead of on the
    # whole crop (released: refine_cams_with_cls_label, camutils.py:200-223)
    par_on_box: bool = False
    train_norm: bool = True  # false: the encoder's norm layers are not trained (released: lr 0, dist_train_voc.py:256)
    crop_pad: Literal["mean", "black"] = "mean"  # what fills a training crop beyond the image (released: black, datasets/voc.py:112)
    # the decoder's fusion conv starts as torch's default (torch) or as mmcv's ConvModule initialises it (mmcv: He normal,
    # fan_out, the released SegFormerHead's linear_fuse, wetr/segformer_head.py:49-54)
    decoder_init: Literal["torch", "mmcv"] = "torch"
    # a trained AFA network of the released code (its wetr_iter_*.pth, a WeTr state dict): train_single_stage stores it
    # (keys mapped, loaded strictly) instead of training, and the flow labels with it; null: train
    checkpoint: str | None = None
    cls_weight: NonNegative = 1.0
    seg_weight: NonNegative = 0.1  # λ₁
    aff_weight: NonNegative = 0.1  # λ₂
    reg_weight: NonNegative = 0.01  # λ₃
    reg_kernel: Count = 5  # L_reg window
    reg_sigma_rgb: Positive = 15.0
    reg_sigma_xy: Positive = 6.0
    reg_scale: Positive = 0.5  # L_reg on predictions and images resized by this factor
    cls_warmup_steps: NonNegInt = 200  # classification only before this step (released: 2001 of 20k, L_cls alone while n_iter <= 2000)
    aff_warmup_steps: NonNegInt = 400  # + affinity before this step, then segmentation too (released: 2001, both at once)
    train: TrainConfig = TrainConfig(steps=1000, batch_size=8, crop_size=96, lr=1e-3, head_lr_mult=10.0, warmup_steps=50,
                                     poly_power=1.0)


def affinity_logits(attns: list[torch.Tensor], proj: nn.Conv2d, per_token: bool = False) -> torch.Tensor:
    """AFA module (Sec. 3.2): logits of A = MLP(S + Sᵀ), B×N×N.

    S is the concatenation over the recorded blocks of their multi-head attention (B×(L·heads)×N×N);
    S + Sᵀ makes it symmetric and the MLP (a 1×1 convolution over the L·heads maps) fuses the heads.
    The affinity itself is ``sigmoid`` of the logits. ``per_token`` feeds N·S instead (uniform
    attention → 1), so the MLP's inputs do not shrink as 1/N with the image size. S may be the softmax maps
    or the raw q·kᵀ logits (``AttentionRecorder(kind="logits")``, the released code's input).
    """
    s = torch.cat(attns, dim=1)
    if per_token:
        s = s * s.shape[-1]
    return proj(s + s.transpose(-1, -2))[:, 0]


def affinity_targets(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """Pseudo affinity labels (Sec. 3.2) from B×h×w labels at feature resolution: B×N×N int64.

    ``models.pairs.pair_labels`` of every pair (1 same label, 0 different, 255 if either is 255), and
    255 where the pair lies outside the radius (AFA's square neighbourhood).

    >>> affinity_targets(torch.tensor([[[1, 1, 0, 255]]]), radius=2)[0].tolist()
    [[1, 1, 0, 255], [1, 1, 0, 255], [0, 0, 1, 255], [255, 255, 255, 255]]
    """
    b, h, w = labels.shape
    flat = labels.reshape(b, -1)
    out = pair_labels(flat[:, :, None], flat[:, None, :])
    return out.masked_fill(~radius_mask(h, w, radius, "chebyshev", labels.device)[None], IGNORE_INDEX)


def affinity_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_aff of AFA Eq. 5: ½·(1/N⁺)Σ_{R⁺}(1 − σ(A_ij)) + ½·(1/N⁻)Σ_{R⁻} σ(A_ij).

    The ½ weights and the +1 in both counts are those of the reference code (the paper's Eq. 5 has
    unit weights; the factor is absorbed by λ₂).

    >>> affinity_loss(torch.zeros(1, 2, 2), torch.tensor([[[1, 0], [255, 1]]]))  # ½·(½+½)/3 + ½·½/2
    tensor(0.2917)
    """
    a = torch.sigmoid(logits)
    pos, neg = (targets == 1).float(), (targets == 0).float()
    return 0.5 * (pos * (1 - a)).sum() / (pos.sum() + 1) + 0.5 * (neg * a).sum() / (neg.sum() + 1)


def local_consistency_loss(images: torch.Tensor, probs: torch.Tensor, valid: torch.Tensor | None = None,
                           kernel_size: int = 5, sigma_rgb: float = 15.0, sigma_xy: float = 6.0) -> torch.Tensor:
    """L_reg: local consistency of the segmentation (a gated-CRF / energy loss over k×k windows).

    L = 1/|Ω| Σ_{i∈Ω} Σ_{j∈W(i), j≠i} K_ij·(1 − p_iᵀp_j),
    K_ij = exp(−‖x_i − x_j‖²/2σ_xy² − ‖I_i − I_j‖²/2σ_rgb²), ``images`` B×3×H×W in 0..255,
    ``probs`` B×C×H×W softmax, ``valid`` B×H×W (pixels of the image, not padding); j outside the image is skipped.

    >>> img = torch.zeros(1, 3, 4, 4)
    >>> p = torch.full((1, 2, 4, 4), 0.5)  # 1 − pᵀp = ½; with σ_xy → ∞, K = 1: 84 in-image neighbour pairs / 16 pixels
    >>> float(local_consistency_loss(img, p, kernel_size=3, sigma_xy=1e6))
    2.625
    """
    b, c, h, w = probs.shape
    k, r = kernel_size, kernel_size // 2
    if valid is None:
        valid = torch.ones(b, h, w, dtype=probs.dtype, device=probs.device)
    valid = valid.to(probs.dtype)
    unfold = lambda x: F.unfold(x, k, padding=r).view(b, x.shape[1], k * k, h, w)  # noqa: E731
    nb_p, nb_i, nb_v = unfold(probs), unfold(images), unfold(valid[:, None])[:, 0]
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    pos = ((dy**2 + dx**2).flatten().to(probs) / (2 * sigma_xy**2)).view(1, -1, 1, 1)
    col = ((nb_i - images[:, :, None]) ** 2).sum(1) / (2 * sigma_rgb**2)
    kern = torch.exp(-pos - col) * nb_v * valid[:, None]
    kern[:, k * k // 2] = 0  # not the pixel itself
    agree = (nb_p * probs[:, :, None]).sum(1)
    return (kern * (1 - agree)).sum() / valid.sum().clamp_min(1)


def balanced_seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_seg of AFA's released code: ½·CE over the background pixels + ½·CE over the foreground pixels, each
    a mean over its own pixels, 255 ignored (rulixiang/afa ``scripts/dist_train_voc.py:143-151``).

    The paper's L_seg is one cross-entropy over all labelled pixels (``afa.seg_loss=ce``). A side without
    pixels adds 0 (the released ``F.cross_entropy`` would return NaN there and end the run).

    >>> lg = torch.zeros(1, 2, 1, 3); lg[0, 1, 0, 2] = 2.0
    >>> round(float(balanced_seg_loss(lg, torch.tensor([[[0, 0, 1]]]))), 4)  # ½·ln 2 + ½·ln(1 + e⁻²)
    0.41
    """
    def side(lab: torch.Tensor) -> torch.Tensor:
        n = (lab != IGNORE_INDEX).sum()
        return F.cross_entropy(logits, lab, ignore_index=IGNORE_INDEX, reduction="sum") / n.clamp_min(1)
    return 0.5 * (side(labels.masked_fill(labels != 0, IGNORE_INDEX)) + side(labels.masked_fill(labels == 0, IGNORE_INDEX)))


def minmax_normalise(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each map of B×C×H×W to (x − min)/(max(x − min) + eps), as AFA's released multi-scale CAM (``camutils.py:111-112``)."""
    cams = cams - cams.flatten(2).amin(-1)[..., None, None]
    return cams / (cams.flatten(2).amax(-1)[..., None, None] + eps)


def multiscale_cams_and_affinity(forward, images: torch.Tensor, scales: list[float], flip: bool = True,
                                 fusion: str = "released"):
    """Multi-scale CAMs of a batch and the affinity of its largest scale (AFA's training labels, ``afa.label_cams``).

    For each scale s the batch is resized to (int(s·H), int(s·W)) (bilinear; s = 1: the images themselves) and, with
    ``flip``, goes through ``forward`` with its mirror (→ B'×C×h×w maps, B'×N×N affinity, grid); the maps are resized
    to H×W and the mirror's flipped back.
    ``fusion="released"`` (``multi_scale_cam_with_aff_mat``, rulixiang/afa ``utils/camutils.py:115-147``):
    M_s = ReLU(max(map, mirrored map)), then ``minmax_normalise``(Σ_s M_s).
    ``fusion="sum"``: M_s = ReLU(map) + ReLU(mirrored map), Σ_s M_s over its maximum (the project's seed rule).
    Returns the B×C×H×W maps and (the largest scale's affinity of the unflipped images, its grid).
    """
    b, (h, w) = images.shape[0], images.shape[-2:]
    total, kept = 0, None
    for s in scales:
        x = images if s == 1 else F.interpolate(images, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
        maps, aff, grid = forward(torch.cat([x, x.flip(-1)]) if flip else x)
        maps = F.interpolate(maps.float(), size=(h, w), mode="bilinear", align_corners=False)
        if fusion == "released":
            total = total + F.relu(torch.maximum(maps[:b], maps[b:].flip(-1)) if flip else maps)
        else:
            maps = F.relu(maps)
            total = total + (maps[:b] + maps[b:].flip(-1) if flip else maps)
        if s == max(scales):
            kept = (aff[:b].float(), grid)
    if fusion == "released":
        return minmax_normalise(total), kept
    return total / (total.flatten(2).amax(-1)[..., None, None] + 1e-5), kept


@dataclass
class AFAOutputs:
    cls: torch.Tensor  # B×20 image scores
    cam: torch.Tensor  # B×20×h×w raw class maps of the last stage
    seg: torch.Tensor  # B×21×H/4×W/4 segmentation logits
    aff: torch.Tensor  # B×N×N affinity logits (N = h·w)


class AFANet(nn.Module):
    """MiT encoder + classifier (CAM) + AFA module + SegFormer MLP decoder (rulixiang/afa ``wetr/model_attn_aff.py``)."""

    def __init__(self, encoder: MixTransformer, num_classes: int = 20, pooling: str = "gmp", topk: float = 0.1,
                 decoder_dim: int = 256, attention_per_token: bool = False, cam_fusion: str = "sum",
                 train_norm: bool = True, decoder_init: str = "torch") -> None:
        super().__init__()
        self.encoder = encoder
        self.attention_per_token = attention_per_token
        self.cam_fusion, self.train_norm = cam_fusion, train_norm
        self.pooling, self.topk = pooling, topk
        self.classifier = nn.Conv2d(encoder.channels[-1], num_classes, 1, bias=False)
        self.decoder = MLPHead(encoder.channels, num_classes + 1, decoder_dim)
        if decoder_init == "mmcv":  # ConvModule's kaiming_init (mode fan_out, relu, normal); its BatchNorm 1 and 0 as torch's
            nn.init.kaiming_normal_(self.decoder.fuse[0].weight, mode="fan_out", nonlinearity="relu")
        self.attn_proj = nn.Conv2d(encoder.attention_maps, 1, 1, bias=True)
        nn.init.kaiming_normal_(self.attn_proj.weight, a=5 ** 0.5, mode="fan_out")  # as the reference code

    def forward_train(self, x: torch.Tensor) -> AFAOutputs:
        feats = self.encoder(x)
        # pooled features, then the classifier (the reference code's order; for GMP not the same as pooling the CAM)
        cls = self.classifier(pool_scores(feats[-1], self.pooling, self.topk)[..., None, None]).flatten(1)
        cam = self.classifier(feats[-1])
        aff = affinity_logits(self.encoder.attention.select(), self.attn_proj, self.attention_per_token)
        return AFAOutputs(cls, cam, self.decoder(feats), aff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits at the input's size (inference)."""
        seg = self.decoder(self.encoder(x))
        return F.interpolate(seg, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """B×20 image scores: the last stage's features pooled, then the classifier (``forward_train``'s ``cls``)."""
        feats = self.encoder(x)
        return self.classifier(pool_scores(feats[-1], self.pooling, self.topk)[..., None, None]).flatten(1)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class maps B×20×h×w of the last stage (the CAM)."""
        return self.classifier(self.encoder(x)[-1])

    def maps_and_affinity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The CAM (B×20×h×w), the affinity σ(A) (B×N×N) and its grid of one forward (the released ``cam_only``
        forward). In training the decoder runs too, its output unused, as in the released code
        (``model_attn_aff.py:70``): its BatchNorm statistics follow these forwards as well."""
        feats = self.encoder(x)
        if self.training:
            self.decoder(feats)
        logits = affinity_logits(self.encoder.attention.select(), self.attn_proj, self.attention_per_token)
        return self.classifier(feats[-1]), torch.sigmoid(logits), tuple(feats[-1].shape[-2:])

    def affinity(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The learned affinity σ(A) (B×N×N) and its grid (h, w)."""
        feats = self.encoder(x)
        logits = affinity_logits(self.encoder.attention.select(), self.attn_proj, self.attention_per_token)
        return torch.sigmoid(logits), tuple(feats[-1].shape[-2:])

    @torch.no_grad()
    def seed_cams(self, images: torch.Tensor, scales: list[float], flip: bool) -> torch.Tensor:
        """Normalised multi-scale CAMs B×20×H×W of a batch (``make_seeds``) by ``cam_fusion``: the project's rule
        (``models.cam_classifier.multiscale_cams`` over each map's maximum) or the released one
        (``multiscale_cams_and_affinity``, the ``multi_scale_cam`` of ``camutils.py:85-113``)."""
        if self.cam_fusion == "released":
            return multiscale_cams_and_affinity(self.maps_and_affinity, images, scales, flip, "released")[0]
        return torch.stack([normalise_cams(c) for c in multiscale_cams(self, images, scales, flip)])

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.classifier.parameters(), *self.decoder.parameters(), *self.attn_proj.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters; without its norm layers' when ``train_norm`` is false (the released code puts them
        in a group of lr 0, ``dist_train_voc.py:254-257``, its rule ``"norm" in name`` — every LayerNorm of the MiT)."""
        if self.train_norm:
            return list(self.encoder.parameters())
        norms = {id(p) for m in self.encoder.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        return [p for p in self.encoder.parameters() if id(p) not in norms]


def afa_spec(a: AFAConfig, num_classes: int = 20) -> ModelSpec:
    """The network of an ``afa`` section, for ``num_classes`` foreground classes (VOC 20, COCO 80)."""
    return ModelSpec("afa_mit", dict(backbone=a.backbone, pretrained=a.pretrained, weights=a.weights, weights_ignore=list(a.weights_ignore),
                                     output_stride=a.output_stride, embed_dims=a.embed_dims, depths=a.depths,
                                     num_heads=a.num_heads, num_classes=num_classes, pooling=a.pooling, topk=a.topk,
                                     decoder_dim=a.decoder_dim, attention_per_token=a.attention_per_token,
                                     attention=a.attention, cam_fusion=a.cam_fusion, train_norm=a.train_norm,
                                     decoder_init=a.decoder_init))


@register_model
def afa_mit(backbone: str = "pvt_v2_b1", pretrained: bool = False, weights: str | None = None,
            weights_ignore: list[str] | None = None, output_stride: int = 16,
            embed_dims: list[int] | None = None, depths: list[int] | None = None, num_heads: list[int] | None = None,
            num_classes: int = 20, pooling: str = "gmp", topk: float = 0.1, decoder_dim: int = 256,
            attention_per_token: bool = False, attention: str = "softmax", cam_fusion: str = "sum",
            train_norm: bool = True, decoder_init: str = "torch") -> AFANet:
    enc = MixTransformer(backbone, pretrained, weights, output_stride, embed_dims, depths, num_heads, attention=attention,
                         weights_ignore=weights_ignore or ())
    return AFANet(enc, num_classes, pooling, topk, decoder_dim, attention_per_token, cam_fusion, train_norm, decoder_init)


def segformer_encoder_state(state: dict[str, torch.Tensor], encoder: MixTransformer) -> dict[str, torch.Tensor]:
    """SegFormer's MiT keys (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ``norm1.weight``, ...) → the
    names of ``encoder.net`` (timm's ``pvt_v2``), by the backbone's converter (``models.weights_mit``)."""
    return {segformer_mit_name(k): v for k, v in state.items()}


def released_state_dict(state: dict[str, torch.Tensor], model: AFANet, backbone: str,
                        source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A trained network of AFA's released code (``WeTr`` of ``wetr/model_attn_aff.py``, saved by
    ``dist_train_voc.py:421`` from DistributedDataParallel: keys ``module.encoder.*``, ``module.decoder.*``,
    ``module.attn_proj.*``, ``module.classifier.weight``) → this ``AFANet``'s state dict, every tensor mapped.

    - ``encoder.<SegFormer MiT key>`` → the MiT's own name (the backbone's converter of SegFormer's layout);
    - ``decoder.linear_c{i}.proj`` (Linear C_i→D) → ``decoder.embed.{i−1}`` (1×1 conv);
      ``decoder.linear_fuse.conv.weight`` (D×4D, inputs ordered c4, c3, c2, c1, ``segformer_head.py:76``) →
      ``decoder.fuse.0.weight`` with the inputs reordered c1..c4; ``decoder.linear_fuse.bn.*`` → ``decoder.fuse.1.*``;
      ``decoder.linear_pred`` → ``decoder.classify``;
    - ``classifier.weight``, ``attn_proj.*`` unchanged.
    Refuses (UserError, one line naming ``source``, the first tensors and the backbone) any missing, unexpected or
    mis-shaped tensor.
    """
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    out.update({f"encoder.net.{k}": v for k, v in segformer_encoder_state(enc, model.encoder).items()})
    levels = len(model.encoder.channels)
    for i in range(levels):
        for part in ("weight", "bias"):
            key = f"decoder.linear_c{i + 1}.proj.{part}"
            if key in sd:
                v = sd[key]
                out[f"decoder.embed.{i}.{part}"] = v[..., None, None] if part == "weight" else v
    fuse = sd.get("decoder.linear_fuse.conv.weight")
    if fuse is not None and fuse.shape[1] % levels == 0:
        blocks = fuse.split(fuse.shape[1] // levels, dim=1)  # c4, c3, c2, c1
        out["decoder.fuse.0.weight"] = torch.cat(blocks[::-1], 1)
    for k, v in sd.items():
        if k.startswith("decoder.linear_fuse.bn."):
            out["decoder.fuse.1." + k[len("decoder.linear_fuse.bn."):]] = v
        elif k.startswith("decoder.linear_pred."):
            out["decoder.classify." + k[len("decoder.linear_pred."):]] = v
        elif k in ("classifier.weight", "attn_proj.weight", "attn_proj.bias"):
            out[k] = v
    used = {k for k in sd if k.startswith(("encoder.", "decoder.linear_c", "decoder.linear_fuse.", "decoder.linear_pred.",
                                           "classifier.", "attn_proj."))}
    missing = sorted(set(own) - set(out))
    unexpected = sorted(set(sd) - used) + sorted(set(out) - set(own))
    shapes = [f"{k} {tuple(out[k].shape)} (expected {tuple(own[k].shape)})" for k in sorted(set(own) & set(out))
              if out[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        first = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "") \
            + (f" mis-shaped {shapes[:2]}" if shapes else "")
        raise UserError(f"{source} is not a released AFA network for this backbone ({backbone}): {first.strip()} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} mis-shaped); "
                        "set afa.backbone to the checkpoint's MiT (mit_b1 for the released VOC model)")
    return {k: out[k].to(own[k].dtype) for k in own}
