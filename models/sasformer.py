"""SASFormer (Su et al., "Transformers for Sparsely Annotated Semantic Segmentation") on points and scribbles.

SegFormer — the Mix Transformer encoder (timm ``pvt_v2_b*``) and its all-MLP decoder — trained single-stage with
L = L_seg + α·L_aff (Eq. 1): L_seg the partial cross-entropy on the labelled pixels, L_aff the hierarchical
attention affinity loss. Every transformer layer n of encoder block l has an efficient self-attention
A_{l,n} ∈ R^{M_l×M'_l} (Eq. 2: M_l queries on the block's grid, M'_l keys on the grid coarsened by its spatial
reduction ratio), kept in the graph. Per block (``block_attention``, Eq. 3) the layers' attention is averaged;
the prediction P is resized to the key grid (P'_l) and to the query grid (P_l); Y_l = A_l ⊗ P'_l (Eq. 4,
``propagate_predictions``); Y_l and P_l are softmax-normalised over classes (Eq. 5–6, ``class_softmax``), and
L_aff = (1/L) Σ_l ‖Y*_l − P*_l‖₁ (Eq. 7, ``affinity_loss``) over the unlabelled pixels. The gradient reaches the
attention (the loss teaches the encoder's affinity) and the prediction alike: nothing is detached.

Switches (the ``sasformer`` section): ``alpha`` (α; 0 is the SegFormer baseline; None: 1.2 for scribbles and 0.2
for points, the paper's), ``blocks`` (which blocks contribute, Table 3), ``distance`` (Table 4: l1, l2, kl, ce).

As the reference code, P is the softmax of the decoder's logits resized (bilinearly) to each grid, and P*_l is
the softmax of those probabilities (Eq. 6 normalises probabilities again). The reference code sums the blocks'
terms where the paper's Eq. 7 averages them (``block_reduction``: mean by default, sum in ``paper``), takes L_seg on
the labels brought to the decoder's 1/4 grid (``partial_ce_at``) and leaves the crop's padding out of both terms.
docs/sasformer.md holds the paper profile's table against the reference code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator

from models.mix_transformer import MiTName, MixTransformer
from models.registry import ModelSpec, register_model
from models.segmentation import MLPHead, partial_cross_entropy
from models.standins import STANDINS
from pipeline.config import Count, SMOKE_TRAIN, Section, TrainConfig, config_section
from pipeline.transforms import IMAGENET_MEAN, IMAGENET_STD
from pipeline.voc import IGNORE_INDEX

Distance = Literal["l1", "l2", "kl", "ce"]
#: α of Eq. 1 by annotation kind (paper, Sec. 4.2)
PAPER_ALPHA = {"scribble": 1.2, "point": 0.2}
_MIT = STANDINS["mit"].architecture  # the `mit` stand-in's architecture, the default network's


#: the label of the crop's padding in SASFormer's training batches (the reference code's −2,
#: ``lib/datasets/tools/collate.py:147``): neither labelled nor part of L_aff's unlabelled region
CROP_PADDING = -2
#: the reference code's training: ``configs/voc2012/Segformerb4_512_3.json`` (the README's config) and
#: ``scripts/voc2012/segf/train_b4_512_3.sh``; every value with its file and line in docs/sasformer.md
PAPER_TRAIN = {"steps": 80000, "batch_size": 16, "crop_size": 512, "scale_range": [0.5, 2.0], "hflip": True,
               "color_jitter": 0.0, "brightness_shift": 10.0, "optimizer": "sgd",
               # base_lr 0.0005 × nbb_mult 10 reaches every parameter: segmentor/trainer.py:134 sends a parameter to the
               # backbone group only when its name holds "backbone", and SegFormer's are encoder.* / decoder.*
               "lr": 0.005, "head_lr_mult": 1.0, "momentum": 0.9, "weight_decay": 1e-4, "warmup_steps": 0,
               "poly_power": 0.9, "checkpoint_every": 1000, "log_every": 50}


@config_section("sasformer", profiles={
    "smoke": {"weights": None, "embed_dims": [16, 32, 64, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
              "decoder_dim": 32, "train": {**SMOKE_TRAIN}},
    # the reference code (docs/sasformer.md, "Paper profile and the official code"): SegFormer's MiT-B4 from its released
    # ImageNet file (scripts/voc2012/segf/train_b4_512_*.sh:27,46 pass ./pretrained/; docs/weights.md),
    # the last block at stride 16, decoder width 256, L_aff summed over the four blocks, partial CE at 1/4
    "paper": {"backbone": "mit_b4", "pretrained": False, "weights": "pretrained/mit_b4.pth", "embed_dims": None, "depths": None,
              "num_heads": None, "output_stride": 16, "decoder_dim": 256, "block_reduction": "sum",
              "partial_ce_at": "logits", "input_order": "bgr", "augment": "reference",
              # every released config weighs L_aff 1.2 (Segformerb4_512_*.json:141) and its README turns to points by
              # the `annotation` key alone; the paper's Sec. 4.2 takes 0.2 for points (alpha null)
              "alpha": 1.2,
              "train": PAPER_TRAIN},
})
class SASFormerConfig(Section):
    """SASFormer: SegFormer on sparse labels with the hierarchical attention affinity loss (its network and schedule)."""

    backbone: MiTName = "pvt_v2_b1"  # a timm Mix Transformer (pvt_v2_b*; the paper's MiT-B4)
    pretrained: bool = False  # ImageNet weights through timm (needs the hub)
    # a local .safetensors / .pth file of encoder weights, or standin:NAME (models/standins.py); null: from scratch
    weights: str | None = "standin:mit"
    weights_ignore: list[str] = []  # glob patterns of the weights file's tensors to drop (e.g. [head.*]); the rest loads strictly (docs/weights.md)
    embed_dims: list[Count] | None = list(_MIT["embed_dims"])  # architecture overrides (None keeps timm's)
    depths: list[Count] | None = list(_MIT["depths"])
    num_heads: list[Count] | None = list(_MIT["num_heads"])
    output_stride: Literal[8, 16, 32] = 16  # 16: the last block at stride 1 (the reference code); 32: SegFormer's
    decoder_dim: int = Field(128, ge=1)  # the all-MLP decoder's width (MiT-B4's SegFormer: 768)
    alpha: float | None = Field(None, ge=0)  # α of Eq. 1; 0: the SegFormer baseline; None: 1.2 scribbles, 0.2 points
    blocks: list[int] = [1, 2, 3, 4]  # the encoder blocks whose attention enters L_aff (Table 3; 1 is the finest)
    distance: Distance = "l1"  # of Eq. 7 (Table 4)
    # how Eq. 7 joins the blocks' terms: mean (1/L Σ_l, the paper's equation) or sum (Σ_l, the reference code's
    # loss_helper.py:293, so its α = 1.2 weighs L times more)
    block_reduction: Literal["mean", "sum"] = "mean"
    # where L_seg's partial cross-entropy is taken: input (the logits resized bilinearly to the crop) or logits (the
    # labels resized by nearest neighbour to the decoder's 1/4 grid, the reference code's loss_helper.py:386, 397)
    partial_ce_at: Literal["input", "logits"] = "input"
    # the channel order the encoder sees: rgb, or bgr as the reference code (OpenCV's BGR normalised with the RGB
    # mean/std channel by channel: Segformerb4_512_3.json:6, segmentor/trainer.py:206-211)
    input_order: Literal["rgb", "bgr"] = "rgb"
    # the training augmentation: pipeline (the shared train_transform: rescale, flip, brightness, crop padded with the
    # mean colour) or reference (the reference code's: flip, resize with aspect 0.9-1.1 bicubic, crop, pad with 0,
    # integer brightness shift; stages/train_sasformer.py:reference_augment)
    augment: Literal["pipeline", "reference"] = "pipeline"
    # 3000 steps at lr 2e-3 (AdamW), the decoder at the encoder's rate: at 1000 steps (lr 1e-3, decoder ×10) the
    # network stayed below the partial-CE flow's ResNet on style a (val 0.503 against 0.616; README, SASFormer)
    train: TrainConfig = TrainConfig(steps=3000, batch_size=8, crop_size=96, lr=2e-3, head_lr_mult=1.0, warmup_steps=50,
                                     poly_power=1.0)

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: list[int]) -> list[int]:
        if not v or any(b not in (1, 2, 3, 4) for b in v) or len(set(v)) != len(v):
            raise ValueError("must name distinct encoder blocks among 1, 2, 3, 4 (e.g. [1, 2, 3, 4])")
        return v


def resolve_alpha(alpha: float | None, kind: str) -> float:
    """α of Eq. 1: the configured value, or the paper's for the annotation kind.

    >>> resolve_alpha(None, "scribble"), resolve_alpha(None, "point"), resolve_alpha(0.0, "point")
    (1.2, 0.2, 0.0)
    """
    return PAPER_ALPHA[kind] if alpha is None else float(alpha)


# ------------------------------------------------------------------------------------------ equations


def block_attention(layer_maps: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 3: a block's attention A_l = (1/N_l) Σ_n A_{l,n}, each layer's B×heads×M×M' softmax attention averaged
    over its heads, rows renormalised to sum 1 (as the reference code: a no-op unless attention dropout thinned
    them). Returns B×M×M'.

    >>> a = torch.tensor([[[[1., 0.]]]]); b = torch.tensor([[[[0., 1.]]]])
    >>> block_attention([a, b]).tolist()
    [[[0.5, 0.5]]]
    """
    maps = [m.float().mean(1) for m in layer_maps]
    return torch.stack([m / m.sum(-1, keepdim=True) for m in maps]).mean(0)


def grid_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """P on a grid: the B×C×H×W logits resized bilinearly to ``size`` = (h, w), softmax over classes, as
    B×(h·w)×C (row-major tokens, the order of the encoder's sequences)."""
    x = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False).softmax(1)
    return x.flatten(2).transpose(1, 2)


def propagate_predictions(attention: torch.Tensor, key_probs: torch.Tensor) -> torch.Tensor:
    """Eq. 4: Y_l = A_l ⊗ P'_l, every query's prediction as the attention-weighted mean of the keys' predictions:
    B×M×M' · B×M'×C → B×M×C.

    >>> propagate_predictions(torch.tensor([[[0.25, 0.75]]]), torch.tensor([[[1., 0.], [0., 1.]]])).tolist()
    [[[0.25, 0.75]]]
    """
    return torch.bmm(attention, key_probs)


def class_softmax(x: torch.Tensor) -> torch.Tensor:
    """Eq. 5–6: Y*_l = softmax(Y_l), P*_l = softmax(P_l), over the classes (the last axis)."""
    return x.softmax(-1)


def affinity_distance(y: torch.Tensor, p: torch.Tensor, distance: Distance = "l1") -> torch.Tensor:
    """The per-position distance of Eq. 7 between Y*_l and P*_l (…×C → …), Table 4's choices:
    ``l1`` Σ_c |Y*−P*| (the paper's), ``l2`` Σ_c (Y*−P*)², ``kl`` KL(P*‖Y*) = Σ_c P* log(P*/Y*),
    ``ce`` −Σ_c P* log Y* (the reference code's commented KL variant takes P* as the target, so do these).

    >>> y, p = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    >>> [round(affinity_distance(y, p, d).item(), 4) for d in ("l1", "l2", "kl", "ce")]
    [1.0, 0.5, 0.6931, 0.6931]
    """
    if distance == "l1":
        return (y - p).abs().sum(-1)
    if distance == "l2":
        return (y - p).pow(2).sum(-1)
    log_y = y.clamp_min(1e-12).log()
    if distance == "ce":
        return -(p * log_y).sum(-1)
    return (p * (p.clamp_min(1e-12).log() - log_y)).sum(-1)


def block_affinity_loss(attention: torch.Tensor, logits: torch.Tensor, query_size: tuple[int, int],
                        key_size: tuple[int, int], unlabelled: torch.Tensor, distance: Distance = "l1") -> torch.Tensor:
    """One block's term of Eq. 7: mean over the block's unlabelled query positions of the distance between
    Y*_l = softmax(A_l ⊗ P'_l) (Eq. 4–5) and P*_l = softmax(P_l) (Eq. 6).

    ``attention`` B×M×M' (Eq. 3), ``logits`` B×C×H×W, ``unlabelled`` B×H_img×W_img bool (resized to the query grid
    by nearest neighbour). A batch without an unlabelled position gives 0 (the graph kept).
    """
    m, m_ = query_size[0] * query_size[1], key_size[0] * key_size[1]
    if attention.shape[-2:] != (m, m_):
        raise ValueError(f"attention {tuple(attention.shape[-2:])} does not match grids {query_size} → {key_size}")
    keys = grid_probabilities(logits, key_size)
    y = class_softmax(propagate_predictions(attention, keys))
    p = class_softmax(keys if tuple(key_size) == tuple(query_size) else grid_probabilities(logits, query_size))
    region = F.interpolate(unlabelled[:, None].float(), size=query_size, mode="nearest").flatten(1)
    return (affinity_distance(y, p, distance) * region).sum() / region.sum().clamp(min=1)


def affinity_loss(attentions: list[torch.Tensor], logits: torch.Tensor, query_sizes: list[tuple[int, int]],
                  key_sizes: list[tuple[int, int]], unlabelled: torch.Tensor, distance: Distance = "l1",
                  reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Eq. 7: L_aff = (1/L) Σ_l ‖Y*_l − P*_l‖ over the L given blocks (``block_affinity_loss`` each);
    ``reduction="sum"``: Σ_l ‖Y*_l − P*_l‖, as the reference code (``lib/loss/loss_helper.py:293``)."""
    terms = [block_affinity_loss(a, logits, q, k, unlabelled, distance) for a, q, k in zip(attentions, query_sizes, key_sizes)]
    return torch.stack(terms).sum() if reduction == "sum" else torch.stack(terms).mean()


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B×H×W integer labels resized to ``size`` by nearest neighbour (PyTorch's rule: source index ⌊i·H/h⌋), the
    reference code's ``FSCELoss._scale_target`` (``lib/loss/loss_helper.py:392``) that brings the labels to the
    logits' 1/4 grid.

    >>> labels_at(torch.tensor([[[1, 2, 3, 4]]]), (1, 2)).tolist()
    [[[1, 3]]]
    """
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def sasformer_loss(partial_ce: torch.Tensor, l_aff: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 1: L = L_seg + α·L_aff.

    >>> round(sasformer_loss(torch.tensor(1.0), torch.tensor(0.5), 1.2).item(), 4)
    1.6
    """
    return partial_ce + alpha * l_aff


# ------------------------------------------------------------------------------------------- network


def bgr_input(x: torch.Tensor) -> torch.Tensor:
    """Our B×3×H×W input, RGB normalised with ImageNet's RGB mean/std, as the reference code feeds its encoder:
    the image in BGR order, channel c normalised with the RGB statistics' c-th entry, (BGR_c/255 − mean_c)/std_c.

    >>> from pipeline.transforms import normalise
    >>> px = np.array([[[200, 100, 10]]], np.uint8)  # one RGB pixel
    >>> want = (np.array([10, 100, 200]) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    >>> bool(np.allclose(bgr_input(normalise(px)[None]).flatten().numpy(), want, atol=1e-6))
    True
    """
    mean = torch.as_tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x * std + mean).flip(1) - mean) / std


@dataclass
class SASFormerOutputs:
    seg: torch.Tensor  # B×C×H/4×W/4 segmentation logits (the decoder's)
    attention: list[torch.Tensor]  # per encoder block, A_l (Eq. 3) B×M_l×M'_l, in the graph
    query_sizes: list[tuple[int, int]]  # per block, its grid (h_l, w_l)
    key_sizes: list[tuple[int, int]]  # per block, its keys' grid (⌊h_l/R_l⌋, ⌊w_l/R_l⌋)


class SASFormerNet(nn.Module):
    """SegFormer: a Mix Transformer recording every block's attention, and the all-MLP decoder."""

    def __init__(self, encoder: MixTransformer, num_classes: int = 21, decoder_dim: int = 256,
                 input_order: Literal["rgb", "bgr"] = "rgb") -> None:
        super().__init__()
        self.input_order = input_order
        if len(encoder.stage_attention) != len(encoder.channels):
            raise ValueError("SASFormer needs the encoder to record every block's attention (MixTransformer(record_all=True))")
        self.encoder = encoder
        self.decoder = MLPHead(encoder.channels, num_classes, decoder_dim)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input in the channel order the encoder was configured for (``input_order``)."""
        return bgr_input(x) if self.input_order == "bgr" else x

    def forward_train(self, x: torch.Tensor) -> SASFormerOutputs:
        feats = self.encoder(self.encoder_input(x))
        seg = self.decoder(feats)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        keys = [(h // r, w // r) for (h, w), r in zip(sizes, self.encoder.reduction)]
        attention = [block_attention(rec.select()) for rec in self.encoder.stage_attention]
        return SASFormerOutputs(seg, attention, sizes, keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits at the input's size (inference)."""
        return F.interpolate(self.decoder(self.encoder(self.encoder_input(x))), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())


@register_model
def sasformer(backbone: str = "pvt_v2_b1", pretrained: bool = False, weights: str | None = None,
              weights_ignore: list[str] | None = None, output_stride: int = 16,
              embed_dims: list[int] | None = None, depths: list[int] | None = None, num_heads: list[int] | None = None,
              num_classes: int = 21, decoder_dim: int = 256, input_order: str = "rgb") -> SASFormerNet:
    enc = MixTransformer(backbone, pretrained, weights, output_stride, embed_dims, depths, num_heads, record_all=True,
                         weights_ignore=weights_ignore or ())
    return SASFormerNet(enc, num_classes, decoder_dim, input_order)


def sasformer_spec(s: SASFormerConfig, num_classes: int = 21) -> ModelSpec:
    """The network of a ``sasformer`` section (``num_classes`` classes, background included)."""
    return ModelSpec("sasformer", dict(backbone=s.backbone, pretrained=s.pretrained, weights=s.weights, weights_ignore=list(s.weights_ignore),
                                       output_stride=s.output_stride, embed_dims=s.embed_dims, depths=s.depths,
                                       num_heads=s.num_heads, num_classes=num_classes, decoder_dim=s.decoder_dim,
                                       input_order=s.input_order))


@dataclass
class SASFormerLoss:
    """One SASFormer training step (Eq. 1): partial cross-entropy on the labelled pixels (at the crop's size, or with
    ``partial_ce_at="logits"`` on the labels resized to the decoder's grid), plus α·L_aff over the ``blocks``
    (1-based) on the unlabelled pixels (255); the crop's padding (``CROP_PADDING``) is in neither, as in the
    reference code (``segmentor/trainer.py:244``). With α = 0 the attention is not read: the SegFormer baseline."""

    alpha: float
    blocks: tuple[int, ...] = (1, 2, 3, 4)
    distance: Distance = "l1"
    block_reduction: Literal["mean", "sum"] = "mean"
    partial_ce_at: Literal["input", "logits"] = "input"

    def __call__(self, model: torch.nn.Module, batch, step: int = 0) -> dict:
        images, labels = batch
        out = model.forward_train(images)
        unlabelled = labels.eq(IGNORE_INDEX)
        labelled = labels.masked_fill(labels < 0, IGNORE_INDEX)  # the padding is ignored by L_seg too
        if self.partial_ce_at == "logits":
            partial = partial_cross_entropy(out.seg, labels_at(labelled, tuple(out.seg.shape[-2:])))
        else:
            logits = F.interpolate(out.seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
            partial = partial_cross_entropy(logits, labelled)
        if self.alpha == 0:
            return {"loss": partial, "partial_ce": partial.detach(), "affinity": partial.detach() * 0}
        idx = [b - 1 for b in self.blocks]
        l_aff = affinity_loss([out.attention[i] for i in idx], out.seg, [out.query_sizes[i] for i in idx],
                              [out.key_sizes[i] for i in idx], unlabelled, self.distance, self.block_reduction)
        return {"loss": sasformer_loss(partial, l_aff, self.alpha), "partial_ce": partial.detach(), "affinity": l_aff.detach()}
