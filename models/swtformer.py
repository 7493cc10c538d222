"""SWTformer (Ahmadi and Kasaei, "Leveraging Swin Transformer for Local-to-Global Weakly Supervised Semantic
Segmentation") — CAM seeds from a Swin Transformer (V1), refined by hierarchical feature fusion and
background-aware prototypes (V2).

- **V1**: the last Swin stage's tokens T_out → F_out = Conv1×1(T_out) (C maps, no bias); class scores are the
  global average of F_out (Eq. 2, multi-label soft-margin loss; ``swtformer.pooling``); the CAM is C_out = Norm(ReLU(F_out)) (Eq. 1),
  ``Norm`` dividing each map by its maximum.
- **V2** adds, after SIPE (Chen et al., CVPR 2022, whose public code is the reference for the two borrowed
  modules):
  - ``HierarchicalFeatureFusion``: the four stages' features fused into F_hie (Fig. 3);
  - the background map M_B = 1 − max_c M_c (Eq. 3) before the C foreground CAMs;
  - structure-aware seed locating with the token affinity S = |cos(T_out, T_out)| (Eq. 4 as printed; SIPE's
    ReLU(cos) is ``swtformer.affinity=relu``): each token takes the class whose map overlaps its affinity row best
    (IoU-style, background's overlap weighted by ``bkg_weight``), kept where the image labels allow
    (``locate_seeds``); at inference the ``swtformer_seeds`` section chooses per-view or SIPE's flip-fused
    locating, on T_out or on F_hie (``SWTformer.seed_maps``);
  - background-aware prototypes: per image and class the mean of F_hie over that class's seeds, and
    R-CAM = ReLU(cos(F_hie, prototype)) (``class_prototypes``, ``reactivate``);
  - L_GSC (Eq. 5) and L_CCL (Eq. 6); L = L_CLS + L_GSC + L_CCL (Eq. 7), each term switchable (Table 3).
  V2's seeds are the R-CAM; V1's the CAM.

The token grid: Swin's stride is ``patch_size`` × 8. The paper runs patch 4 (1/32) on 224 crops of ~500-pixel
images (a 7×7 training grid, ~16×16 at inference); the images here are 96–144 pixels, so the ``default`` profile
uses patch 2 (1/16: 6×6 training grid, 6–9 cells at inference), see README "SWTformer". Equations → functions
and the readings chosen: docs/swtformer.md.
"""
from __future__ import annotations

from typing import Annotated, Literal

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from models.backbones import load_local_weights
from models.weights import hub_weights
from models.cam_classifier import pool_scores
from models.registry import ModelSpec, register_model

from pipeline.config import Count, NonNegInt, NonNegative, Section, config_section, timm_model
from pipeline.errors import UserError

#: Eq. 4's sign rule for the cosine between tokens (``structure_affinity``)
AffinityRule = Literal["abs", "relu"]


@config_section("swtformer", profiles={
    "smoke": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "hff_dim": 16},
    # Swin-T (ImageNet weights through timm), patch 4, window 7; SIPE's side widths
    "paper": {"pretrained": True, "weights": None, "patch_size": None, "embed_dim": None, "depths": None, "num_heads": None,
              "window_size": None, "hff_dim": 128, "pooling": "gap", "affinity": "abs"},
})
class SWTformerConfig(Section):
    """SWTformer: a Swin Transformer CAM classifier (V1) with hierarchical feature fusion and prototypes (V2)."""

    version: Literal[1, 2] = 2  # 1: Swin patch-token CAM; 2: + HFF, background map, seed locating, prototypes, L_GSC, L_CCL
    backbone: timm_model("swin_transformer", example="swin_tiny_patch4_window7_224") = "swin_tiny_patch4_window7_224"  # a timm Swin Transformer (the paper's Swin-T)
    pretrained: bool = False  # ImageNet weights through timm (needs the hub)
    # a local .safetensors / .pth file of backbone weights; null: from scratch (the `swin` stand-in did not learn
    # its corpus in 1000 steps, so it is not shipped: README, Pretrained stand-ins)
    weights: str | None = None
    weights_ignore: list[str] = []  # glob patterns of the weights file's tensors to drop (e.g. [head.*]); the rest loads strictly (docs/weights.md)
    patch_size: Count | None = 2  # overrides of timm's Swin (None keeps timm's): the stride is patch_size × 8
    embed_dim: Count | None = 32
    depths: list[Count] | None = [1, 1, 2, 1]
    num_heads: list[Count] | None = [1, 2, 4, 8]
    window_size: Count | None = 6
    hff_dim: Count = 64  # channels of each stage's side projection in the HFF (F_hie has 4×)
    hff_detach: bool = True  # the HFF reads the stages without gradient into the backbone (SIPE's side branches)
    bkg_weight: NonNegative = 0.5  # weight of the background's overlap when locating seeds (SIPE: 0.5)
    # Eq. 4's token affinity: abs = |cos| (the paper as printed), relu = ReLU(cos) (SIPE's get_seed); docs/swtformer.md
    affinity: AffinityRule = "abs"
    # class scores from F_out (Eq. 2: gap). From scratch, GAP left the classifier at the class priors in every run
    # and max pooling (AFA's) let V2 leave them soonest (README, SWTformer)
    pooling: Literal["gap", "gmp", "topk"] = "gmp"
    topk: Annotated[float, Field(gt=0, le=1)] = 0.1  # fraction of locations averaged by top-k pooling
    gsc: bool = True  # L_GSC (Eq. 5; Table 3), V2 only
    ccl: bool = True  # L_CCL (Eq. 6; Table 3), V2 only
    # L_GSC and L_CCL join at this step (paper: 0, from ImageNet weights). From scratch the CAM is noise at first,
    # and pulling it towards its own R-CAM kept the classifier at the class priors (README, SWTformer)
    start_step: NonNegInt = 0

    def swin(self) -> dict:
        """The ``create_swin`` arguments of this Swin."""
        return dict(name=self.backbone, pretrained=self.pretrained, weights=self.weights, weights_ignore=list(self.weights_ignore), patch_size=self.patch_size,
                    embed_dim=self.embed_dim, depths=self.depths, num_heads=self.num_heads, window_size=self.window_size)


@config_section("swtformer_seeds", profiles={
    # the paper is silent on inference: SIPE's make_cam.py / CAM.forward, with Eq. 4's T_out (docs/swtformer.md)
    "paper": {"views": "flip_fused", "features": "t_out", "absent": "compete", "scores": "difference"},
})
class SWTformerSeedsConfig(Section):
    """How V2 locates its seeds when ``make_seeds`` labels an image (training always locates per view on T_out)."""

    # per_view: each scale and flip located on its own; flip_fused: the image and its flip summed first (F_out, the
    # affinity's features, F_hie; SIPE resnet50_SIPE.py:140-141), one R-CAM per scale
    views: Literal["per_view", "flip_fused"] = "per_view"
    # whose affinity (Eq. 4's rule) locates the seeds: t_out (Eq. 4) or hierarchical, F_hie (SIPE resnet50_SIPE.py:149)
    features: Literal["t_out", "hierarchical"] = "t_out"
    # masked: absent classes zeroed before locating (training's rule); compete: they take part and their seeds are
    # dropped after (SIPE's inference, resnet50_SIPE.py:51)
    absent: Literal["masked", "compete"] = "masked"
    # the stored scores (background_aware_scores): ratio R_k/(R_k+R_B) (measured here; ties where R_B = 0) or
    # difference ½+(R_k−R_B)/2 (threshold ½ = SIPE's argmax over background and classes, eval_cam.py:20)
    scores: Literal["ratio", "difference"] = "ratio"


def create_swin(name: str, pretrained: bool = False, weights: str | None = None, patch_size: int | None = None,
                embed_dim: int | None = None, depths: list[int] | None = None, num_heads: list[int] | None = None,
                window_size: int | None = None, weights_ignore: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """A timm Swin Transformer without its classifier, for any input size whose sides are multiples of its stride.

    Initial weights: ``weights`` (a local file, strictly, Microsoft's layout converted; it wins over ``pretrained``),
    else timm's hub when ``pretrained`` (``models.weights.hub_weights``)."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(
        patch_size=patch_size, embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size).items()
        if v is not None}
    try:
        with hub_weights(name, pretrained, weights) as hub:  # a local file wins: no hub access then
            model = timm.create_model(name, pretrained=hub, num_classes=0, strict_img_size=False, **kwargs)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"Swin backbone {name!r} could not be created ({str(e).splitlines()[0]}): use a timm swin_* name") from None
    if not hasattr(model, "layers") or not hasattr(model, "patch_embed"):
        raise UserError(f"backbone {name!r} is not a Swin Transformer: set swtformer.backbone to e.g. swin_tiny_patch4_window7_224")
    if weights:
        load_local_weights(model, weights, weights_ignore, name)
    return model


class HierarchicalFeatureFusion(nn.Module):
    """HFF (Fig. 3): the four Swin stages' features → F_hie at stage 3's resolution, in two concatenation steps.

    The wiring chosen here (the figure's, with SIPE's normalised side projections):

    - sides: s_i = P_i / ‖P_i‖ with P_i = Conv1×1(stage_i) (``dim`` channels each; L2 norm over channels);
    - step 1: F_12 = [Down₁(s_1) ; s_2] at stage 2's resolution, F_34 = [s_3 ; Up(s_4)] at stage 3's;
    - step 2: F_hie = [Down₂(F_12) ; F_34] at stage 3's resolution, 4·``dim`` channels,

    where Down is a 3×3 convolution of stride 2 (padding 1) and Up bilinear interpolation.
    """

    def __init__(self, channels: list[int], dim: int = 64) -> None:
        super().__init__()
        self.sides = nn.ModuleList(nn.Conv2d(c, dim, 1, bias=False) for c in channels)
        self.down1 = nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(2 * dim, 2 * dim, 3, stride=2, padding=1)
        self.out_channels = 4 * dim

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        s1, s2, s3, s4 = (F.normalize(side(f), dim=1, eps=1e-5) for side, f in zip(self.sides, feats))
        f12 = torch.cat([_resize(self.down1(s1), s2.shape[-2:]), s2], 1)
        f34 = torch.cat([s3, F.interpolate(s4, size=s3.shape[-2:], mode="bilinear", align_corners=False)], 1)
        return torch.cat([_resize(self.down2(f12), s3.shape[-2:]), f34], 1)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """``x`` at ``size`` (a strided convolution of an odd side gives one more row than the next stage has)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def max_normalise(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Norm of Eq. 1: each map (B×K×h×w) divided by its spatial maximum."""
    return maps / (maps.flatten(2).amax(-1)[..., None, None] + eps)


def class_activation_maps(f_out: torch.Tensor) -> torch.Tensor:
    """Eq. 1: C_out = Norm(ReLU(F_out)), B×C×h×w in [0, 1]."""
    return max_normalise(F.relu(f_out))


def with_background(cams: torch.Tensor) -> torch.Tensor:
    """Eq. 3: [M_B ; M] with M_B = 1 − max_c M_c, B×(C+1)×h×w (background first).

    >>> with_background(torch.tensor([[[[0.2]], [[0.7]]]])).flatten().tolist()
    [0.30000001192092896, 0.20000000298023224, 0.699999988079071]
    """
    return torch.cat([1 - cams.amax(1, keepdim=True), cams], 1)


def structure_affinity(tokens: torch.Tensor, rule: str = "abs") -> torch.Tensor:
    """Eq. 4: S_ij = |cos(t_i, t_j)| between every two tokens of a B×D×h×w map: B×N×N (N = h·w).

    ``rule="relu"`` gives SIPE's ReLU(cos) (resnet50_SIPE.py:38-40). The cosine is SIPE's: each token divided by
    (‖t‖ + 1e-5). The two differ only where tokens point apart (cos < 0): |cos| counts them as alike, ReLU as
    unrelated (on SIPE's post-ReLU ResNet features cos ≥ 0 and the two agree).

    >>> t = torch.tensor([[[[1.0, -1.0, 1.0]], [[0.0, 0.0, 1.0]]]])  # tokens (1, 0), (-1, 0), (1, 1)
    >>> [[round(v, 4) for v in structure_affinity(t, rule)[0, 1].tolist()] for rule in ("abs", "relu")]
    [[1.0, 1.0, 0.7071], [0.0, 1.0, 0.0]]
    """
    t = tokens.flatten(2)
    t = t / (t.norm(dim=1, keepdim=True) + 1e-5)
    cos = t.transpose(1, 2) @ t
    return cos.abs() if rule == "abs" else F.relu(cos)


def fuse_flipped(maps: torch.Tensor) -> torch.Tensor:
    """SIPE's flip fusion (resnet50_SIPE.py:140-141): a 2B×…×w batch of B views and their mirror images → B×…×w,
    each view's map plus its mirror's map flipped back.

    >>> fuse_flipped(torch.tensor([[[1.0, 2.0]], [[10.0, 20.0]]])).tolist()
    [[[21.0, 12.0]]]
    """
    n = maps.shape[0] // 2
    return maps[:n] + maps[n:].flip(-1)


def seed_overlap(cams: torch.Tensor, affinity: torch.Tensor, bkg_weight: float = 0.5) -> torch.Tensor:
    """SIPE's IoU-style overlap of each token's affinity row with each map: B×K×N.

    For token i and map c (``cams`` B×K×h×w, background first): overlap_ic = Σ_j S_ij M_c(j) /
    (Σ_j S_ij + Σ_j M_c(j) − Σ_j S_ij M_c(j)), the background's (c = 0) multiplied by ``bkg_weight``.
    """
    m = cams.flatten(2)  # B×K×N
    inter = m @ affinity.transpose(1, 2)  # [b, c, i] = Σ_j S_ij M_c(j)
    union = affinity.sum(-1)[:, None, :] + m.sum(-1, keepdim=True) - inter
    overlap = inter / union.clamp_min(1e-5)
    return torch.cat([overlap[:, :1] * bkg_weight, overlap[:, 1:]], 1)


def locate_seeds(cams: torch.Tensor, affinity: torch.Tensor, valid: torch.Tensor, bkg_weight: float = 0.5) -> torch.Tensor:
    """Structure-aware seed locating (SIPE's module with Eq. 4's affinity): one-hot seeds B×(C+1)×h×w.

    Each token's seed is the map it overlaps best (``seed_overlap``; ``cams`` background first, absent classes
    already zero), kept where ``valid`` (B×(C+1), 1 for the background and the image's classes).
    """
    b, k, h, w = cams.shape
    seeds = F.one_hot(seed_overlap(cams, affinity, bkg_weight).argmax(1), k).transpose(1, 2).to(cams.dtype)
    return seeds.reshape(b, k, h, w) * valid[..., None, None].to(cams.dtype)


def class_prototypes(seeds: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Background-aware prototypes: per image and map, the mean of ``features`` (B×D×h×w) over its seeds
    (B×K×h'×w', resized to the features by nearest neighbour): B×K×D, zero where a map has no seed."""
    s = F.interpolate(seeds, size=features.shape[-2:], mode="nearest").flatten(2)  # B×K×N
    total = s @ features.flatten(2).transpose(1, 2)  # B×K×D
    return total / s.sum(-1, keepdim=True).clamp_min(1)


def reactivate(prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """R-CAM = ReLU(cos(F_hie, prototype_k)) for each prototype: B×K×h×w."""
    p = F.normalize(prototypes, dim=-1, eps=1e-5)
    f = F.normalize(features, dim=1, eps=1e-5)
    return F.relu(torch.einsum("bkd,bdhw->bkhw", p, f))


def background_aware_scores(rcams: torch.Tensor, rule: str = "ratio", eps: float = 1e-5) -> torch.Tensor:
    """V2's seed scores from the R-CAMs [R_B ; R_1..R_K] (K+1 maps, each max-normalised to [0, 1]), K×h×w:

    - ``difference``: s_k = ½ + (R_k − R_B) / 2. s_k is strictly increasing in R_k at every pixel, so
      argmax_k s_k = argmax_k R_k, and max_k s_k > ½ exactly where max_k R_k > R_B: threshold ½ (ties to the
      background, ``stages.labels.threshold_labels``) is SIPE's argmax over the C+1 R-CAMs (eval_cam.py:20).
    - ``ratio``: s_k = R_k / (R_k + R_B) (the default's measured rule): also > ½ exactly where R_k > R_B, but where
      R_B = 0 every class with R_k > 0 scores 1 (and, stored in float16, wherever R_B ≪ R_k), so the class order
      is lost there and the tie goes to the first class instead of the larger R_k.

    ``eval_seeds``' sweep then chooses the threshold like every seed's.

    >>> r = torch.tensor([[[0.0]], [[0.5]], [[0.25]]])  # R_B = 0
    >>> background_aware_scores(r, "difference").flatten().tolist(), background_aware_scores(r).flatten().tolist()
    ([0.75, 0.625], [1.0, 1.0])
    >>> [round(v, 4) for v in background_aware_scores(torch.tensor([[[0.2]], [[0.6]], [[0.1]]])).flatten().tolist()]
    [0.75, 0.3333]
    """
    if rule == "difference":
        return 0.5 + (rcams[1:] - rcams[:1]) / 2
    return rcams[1:] / (rcams[1:] + rcams[:1]).clamp_min(eps)


def gsc_loss(cams: torch.Tensor, rcams: torch.Tensor) -> torch.Tensor:
    """Eq. 5: L_GSC = ‖CAM − R-CAM‖₁ / (C+1), the R-CAM max-normalised first (SIPE), averaged over the pixels and the batch."""
    return (cams - max_normalise(rcams)).abs().mean()


def ccl_loss(cams: torch.Tensor, rcams: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 6 as printed: L_CCL = mean over the maps k of ``valid`` of ½[(⅔·c_k)² + (1 − c_k)²], with
    c_k = cos(CAM_k, R-CAM_k) the cosine between the two maps flattened over the pixels (B×K×h×w each), averaged
    over the background and the image's classes (an absent class has no R-CAM to compare). No reference code
    exists (SWTformer's repository holds none; SIPE has no such term).

    As printed the term is smallest at c = 9/13 (not 1): it pulls each CAM towards its R-CAM's direction
    without asking them to coincide.

    Example, by hand: map 0: CAM (1, 0), R-CAM (1, 1): c = 1/√2, ½[(⅔/√2)² + (1 − 1/√2)²] = ½[0.22222 + 0.08579]
    = 0.15401; map 1: (0, 1) and (0, 2): c = 1, ½[(⅔)² + 0] = 0.22222; map 2 absent. L = (0.15401 + 0.22222) / 2
    = 0.18811.

    >>> cams = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]])
    >>> rcams = torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]], [[0.0, 0.0]]]])
    >>> round(ccl_loss(cams, rcams, torch.tensor([[1.0, 1.0, 0.0]])).item(), 5)
    0.18811
    """
    cos = F.cosine_similarity(cams.flatten(2), rcams.flatten(2), dim=-1, eps=1e-5)  # B×K
    per_map = 0.5 * ((2 / 3 * cos) ** 2 + (1 - cos) ** 2)
    v = valid.to(per_map.dtype)
    return (per_map * v).sum() / v.sum().clamp_min(1)


def valid_maps(labels: torch.Tensor) -> torch.Tensor:
    """B×C multi-hot image labels → B×(C+1) with the background (always present) first."""
    return torch.cat([torch.ones_like(labels[:, :1]), labels], 1)


class SWTformer(nn.Module):
    """A Swin Transformer → F_out = Conv1×1(T_out) (V1); V2 adds the HFF and the prototype re-activation."""

    def __init__(self, backbone: nn.Module, num_classes: int = 20, version: int = 2, hff_dim: int = 64,
                 hff_detach: bool = True, bkg_weight: float = 0.5, pooling: str = "gap", topk: float = 0.1,
                 affinity: str = "abs") -> None:
        super().__init__()
        self.backbone = backbone
        self.version, self.hff_detach, self.bkg_weight, self.affinity = version, hff_detach, bkg_weight, affinity
        self.pooling, self.topk = pooling, topk
        channels = [info["num_chs"] for info in backbone.feature_info]
        self.classifier = nn.Conv2d(channels[-1], num_classes, 1, bias=False)
        self.hff = HierarchicalFeatureFusion(channels, hff_dim) if version == 2 else None
        patch = backbone.patch_embed.patch_size
        self.stride = patch[0] * 2 ** (len(backbone.layers) - 1)

    def _padded_size(self, x: torch.Tensor) -> tuple[int, int]:
        """(H, W) of ``x`` rounded up to multiples of the stride: the size the network sees."""
        h, w = x.shape[-2:]
        return h + -h % self.stride, w + -w % self.stride

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded (bottom, right, zeros: the mean colour after normalisation) to multiples of the stride."""
        (h, w), (ph, pw) = x.shape[-2:], self._padded_size(x)
        return F.pad(x, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else x

    def _cells(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """The cells of a grid map that cover the (unpadded) image."""
        r = self._padded_size(x)[1] // maps.shape[-1]  # pixels per cell of this map (of the padded input)
        return maps[..., :-(-x.shape[-2] // r), :-(-x.shape[-1] // r)]

    def stages(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The four stages' outputs (B×C_i×h_i×w_i) and T_out, the last stage after the final norm (B×D×h×w)."""
        t = self.backbone.patch_embed(self._padded(x))
        feats = []
        for layer in self.backbone.layers:
            t = layer(t)
            feats.append(t.permute(0, 3, 1, 2))
        return feats, self.backbone.norm(t).permute(0, 3, 1, 2)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """F_out = Conv1×1(T_out) on the cells covering the image: B×C×h×w."""
        return self._cells(x, self.classifier(self.stages(x)[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 2's class scores: F_out pooled (the paper: global average pooling)."""
        return pool_scores(self.class_maps(x), self.pooling, self.topk)

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def outputs(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass with the image labels (B×C multi-hot): scores; for V2 also the CAMs with the background
        (B×(C+1)×h×w at F_hie's resolution, absent classes zeroed), the seeds and the R-CAMs (same shape)."""
        feats, t_out = self.stages(x)
        f_out = self.classifier(t_out)
        out = {"scores": pool_scores(self._cells(x, f_out), self.pooling, self.topk), "f_out": f_out}
        if self.hff is None:
            return out
        hie = self.hff([f.detach() for f in feats] if self.hff_detach else feats)
        cams, seeds, rcams = self.reactivated(f_out, t_out, hie, labels)
        out.update(cams=F.interpolate(cams, size=hie.shape[-2:], mode="bilinear", align_corners=False), seeds=seeds, rcams=rcams)
        return out

    def reactivated(self, f_out: torch.Tensor, t_out: torch.Tensor, hie: torch.Tensor, labels: torch.Tensor,
                    features: str = "t_out", absent: str = "masked") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """V2's background-aware re-activation: (CAMs with the background first, one-hot seeds, R-CAMs).

        The CAMs [M_B ; Norm(ReLU(F_out))] (Eqs. 1, 3; the background from every class) locate the seeds with the
        affinity (Eq. 4, ``self.affinity``) of ``features``: ``t_out`` at T_out's grid, or ``hierarchical``, F_hie's,
        the CAMs resized to it first (bilinear, corners aligned: SIPE resnet50_SIPE.py:147). ``absent``: ``masked``
        zeroes the classes outside the image label before locating (training, SIPE resnet50_SIPE.py:96),
        ``compete`` lets them take tokens whose seeds are then dropped (SIPE's inference, :147-149). The prototypes
        (seed means of F_hie) re-activate F_hie: R-CAM = ReLU(cos(F_hie, prototype)). Nothing flows back into the
        seeds (they are located from detached maps).
        """
        valid = valid_maps(labels)
        cams = with_background(class_activation_maps(f_out))
        if absent == "masked":
            cams = cams * valid[..., None, None]
        located, tokens = cams.detach(), t_out.detach()
        if features == "hierarchical":
            located = F.interpolate(located, size=hie.shape[-2:], mode="bilinear", align_corners=True)
            tokens = hie.detach()
        seeds = locate_seeds(located, structure_affinity(tokens, self.affinity), valid, self.bkg_weight)
        return cams, seeds, reactivate(class_prototypes(seeds, hie), hie)

    def seed_maps(self, x: torch.Tensor, labels: torch.Tensor, views: str = "per_view", features: str = "t_out",
                  absent: str = "masked") -> tuple[torch.Tensor, torch.Tensor]:
        """The CAM (ReLU(F_out), B×C×H×W) and, for V2, the R-CAM with its background map first (B×(C+1)×H×W), at
        the input's size (V1: the CAM twice). ``features`` and ``absent``: ``reactivated``.

        ``views="per_view"``: each image of ``x`` on its own. ``"flip_fused"``: SIPE's inference (resnet50_SIPE.py
        CAM.forward, :121-154): each image and its mirror image go through the network together, F_out, T_out and
        F_hie of the mirror are flipped back and added to the image's (``fuse_flipped``) before the seeds are
        located; the maps are the image's (the input is padded before it is mirrored, so the two grids coincide).
        """
        if views == "flip_fused":
            xp = self._padded(x)
            feats, t_out = self.stages(torch.cat([xp, xp.flip(-1)]))
            f_out = fuse_flipped(self.classifier(t_out))
            if self.hff is None:
                cam = self._to_input(x, F.relu(f_out))
                return cam, cam
            hie, t_out = fuse_flipped(self.hff(feats)), fuse_flipped(t_out)
        else:
            feats, t_out = self.stages(x)
            f_out = self.classifier(t_out)
            if self.hff is None:
                cam = self._to_input(x, F.relu(f_out))
                return cam, cam
            hie = self.hff(feats)
        _, _, rcams = self.reactivated(f_out, t_out, hie, labels, features, absent)
        return self._to_input(x, F.relu(f_out)), self._to_input(x, rcams)

    def _to_input(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Grid maps of the padded input, upsampled to it and cropped to the input."""
        return F.interpolate(maps, size=self._padded_size(x), mode="bilinear", align_corners=False)[..., :x.shape[-2], :x.shape[-1]]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters()) + (list(self.hff.parameters()) if self.hff is not None else [])

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


@register_model
def swtformer(backbone: dict, num_classes: int = 20, version: int = 2, hff_dim: int = 64, hff_detach: bool = True,
              bkg_weight: float = 0.5, pooling: str = "gap", topk: float = 0.1, affinity: str = "abs") -> SWTformer:
    return SWTformer(create_swin(**backbone), num_classes, version, hff_dim, hff_detach, bkg_weight, pooling, topk, affinity)


def swtformer_spec(c: SWTformerConfig, num_classes: int = 20) -> ModelSpec:
    """The SWTformer network of a ``swtformer`` section (``num_classes`` foreground classes: VOC 20, COCO 80)."""
    return ModelSpec("swtformer", dict(backbone=c.swin(), num_classes=num_classes, version=c.version, hff_dim=c.hff_dim,
                                       hff_detach=c.hff_detach, bkg_weight=c.bkg_weight, pooling=c.pooling, topk=c.topk,
                                       affinity=c.affinity))


def swtformer_losses(model: SWTformer, images: torch.Tensor, labels: torch.Tensor, gsc: bool = True,
                     ccl: bool = True) -> dict:
    """Eq. 7: L = L_CLS + L_GSC + L_CCL (V1, or both terms off: L_CLS, Eq. 2's multi-label soft-margin loss)."""
    out = model.outputs(images, labels)
    l_cls = F.multilabel_soft_margin_loss(out["scores"], labels)
    zero = torch.zeros((), device=images.device)
    l_gsc = gsc_loss(out["cams"], out["rcams"]) if gsc and "rcams" in out else zero
    l_ccl = ccl_loss(out["cams"], out["rcams"], valid_maps(labels)) if ccl and "rcams" in out else zero
    return {"loss": l_cls + l_gsc + l_ccl, "cls": l_cls, "gsc": l_gsc, "ccl": l_ccl}
