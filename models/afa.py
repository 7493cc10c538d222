"""AFA: Learning Affinity from Attention (Ru et al., CVPR 2022) — single-stage WSSS on a Mix Transformer.

One network with three branches on a shared MiT encoder:
- classification: global max pooling of the last stage's features, a 1×1 classifier (its weights give the CAM);
- affinity (AFA module): A = MLP(S + Sᵀ) over the last stage's multi-head attention S, trained with
  pseudo affinity labels from the PAR-refined CAM labels (Eq. 5);
- segmentation: SegFormer's all-MLP decoder, trained on the CAM labels propagated by the random walk
  over A and refined again with PAR, plus the local-consistency regularisation L_reg.

The pure functions below are the paper's equations; ``AFALoss`` in ``stages/train_single_stage.py``
wires them into one training step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.cam_classifier import pool_scores
from models.mix_transformer import MixTransformer
from models.registry import register_model
from models.segmentation import MLPHead
from stages.random_walk import propagate

IGNORE = 255


def affinity_logits(attns: list[torch.Tensor], proj: nn.Conv2d, per_token: bool = False) -> torch.Tensor:
    """AFA module (Sec. 3.2): logits of A = MLP(S + Sᵀ), B×N×N.

    S is the concatenation over the recorded blocks of their multi-head attention (B×(L·heads)×N×N);
    S + Sᵀ makes it symmetric and the MLP (a 1×1 convolution over the L·heads maps) fuses the heads.
    The affinity itself is ``sigmoid`` of the logits. ``per_token`` feeds N·S instead (uniform
    attention → 1), so the MLP's inputs do not shrink as 1/N with the image size.
    """
    s = torch.cat(attns, dim=1)
    if per_token:
        s = s * s.shape[-1]
    return proj(s + s.transpose(-1, -2))[:, 0]


def radius_mask(h: int, w: int, radius: int, device=None) -> torch.Tensor:
    """N×N bool (N = h·w): True for pairs within ``radius`` in both directions (|Δy| ≤ r and |Δx| ≤ r).

    >>> radius_mask(1, 3, 1).int().tolist()
    [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    """
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)


def affinity_targets(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """Pseudo affinity labels (Sec. 3.2) from B×h×w labels at feature resolution: B×N×N int64.

    1 where both pixels carry the same label, 0 where they differ, 255 where either is 255 or the pair
    lies outside the radius.

    >>> affinity_targets(torch.tensor([[[1, 1, 0, 255]]]), radius=2)[0].tolist()
    [[1, 1, 0, 255], [1, 1, 0, 255], [0, 0, 1, 255], [255, 255, 255, 255]]
    """
    b, h, w = labels.shape
    flat = labels.reshape(b, -1)
    out = (flat[:, :, None] == flat[:, None, :]).long()
    bad = (flat == IGNORE)[:, :, None] | (flat == IGNORE)[:, None, :] | ~radius_mask(h, w, radius, labels.device)[None]
    return out.masked_fill(bad, IGNORE)


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


@dataclass
class PresentClasses:
    """The classes of each image of a batch, background first: ``index`` B×K (VOC ids, padded), ``valid`` B×K."""

    index: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> "PresentClasses":
        """From B×20 multi-hot image labels."""
        b = labels.shape[0]
        k = int(labels.sum(1).max()) + 1 if b else 1
        index = torch.zeros(b, k, dtype=torch.long, device=labels.device)
        valid = torch.zeros(b, k, dtype=torch.bool, device=labels.device)
        valid[:, 0] = True
        for i in range(b):
            cls_ids = torch.nonzero(labels[i] > 0)[:, 0] + 1
            index[i, 1:1 + len(cls_ids)] = cls_ids
            valid[i, 1:1 + len(cls_ids)] = True
        return cls(index, valid)

    def gather(self, cams: torch.Tensor) -> torch.Tensor:
        """B×20×h×w class maps → B×(K−1)×h×w maps of the present classes (padding: zeros)."""
        idx = (self.index[:, 1:] - 1).clamp_min(0)
        out = cams.gather(1, idx[:, :, None, None].expand(-1, -1, *cams.shape[-2:]))
        return out * self.valid[:, 1:, None, None]

    def to_labels(self, scores: torch.Tensor) -> torch.Tensor:
        """B×K×H×W scores → B×H×W VOC labels (argmax over the valid entries)."""
        scores = scores.masked_fill(~self.valid[:, :, None, None], float("-inf"))
        return self.index.gather(1, scores.argmax(1).flatten(1)).view(scores.shape[0], *scores.shape[-2:])


def normalise_batch_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AFA's CAM normalisation per map: ReLU, minus its minimum, over its maximum (→ [0, 1])."""
    cams = F.relu(cams)
    cams = cams - cams.flatten(2).amin(-1)[..., None, None]
    return cams / (cams.flatten(2).amax(-1)[..., None, None] + eps)


def background_softmax(cams: torch.Tensor, valid: torch.Tensor, bkg: float) -> torch.Tensor:
    """[bkg, CAM_1..CAM_K] softmax-normalised over each image's valid entries: B×(K+1)×h×w (AFA's scores)."""
    scores = torch.cat([torch.full_like(cams[:, :1], bkg), cams], 1)
    return scores.masked_fill(~valid[:, :, None, None], float("-inf")).softmax(1)


def propagate_scores(scores: torch.Tensor, affinity: torch.Tensor, radius: int, power: float = 2.0,
                     log_t: int = 0) -> torch.Tensor:
    """Random walk of B×K×h×w scores over the affinity B×N×N (N = h·w), pairs beyond ``radius`` cut:
    T = D⁻¹A^α (AFA Sec. 3.3, α = ``power``) by ``stages.random_walk.propagate``."""
    b, k, h, w = scores.shape
    a = affinity * radius_mask(h, w, radius, affinity.device)[None]
    return propagate(scores.flatten(2), a, beta=power, log_t=log_t).view(b, k, h, w)


def label_scores(cams: torch.Tensor, present: PresentClasses, bkg: float, size: tuple[int, int],
                 affinity: torch.Tensor | None = None, radius: int = 8, power: float = 2.0, log_t: int = 0,
                 refine: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """AFA's scores for one background score: B×K×H×W (background first).

    ``cams`` B×(K−1)×h×w are the normalised maps of the present classes. With an ``affinity`` (on the
    grid h×w) the background-softmax scores are propagated by the random walk; ``refine`` (PAR)
    then runs on them. The result is resized to ``size``.
    """
    if affinity is None:
        scores = background_softmax(F.interpolate(cams, size=size, mode="bilinear", align_corners=False), present.valid, bkg)
    else:
        scores = propagate_scores(background_softmax(cams, present.valid, bkg), affinity, radius, power, log_t)
        scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    if refine is not None:
        scores = refine(scores)
    return scores


def reliable_labels(label_high: torch.Tensor, label_low: torch.Tensor) -> torch.Tensor:
    """AFA's reliable labels from the labels at the high and low background scores (β_h, β_l):
    foreground where the high-score label is foreground, background where both are background,
    255 (ignore) where only the low-score label says foreground.

    >>> reliable_labels(torch.tensor([3, 0, 0]), torch.tensor([3, 3, 0])).tolist()
    [3, 255, 0]
    """
    out = label_high.masked_fill(label_high == 0, IGNORE)
    return out.masked_fill((label_high == 0) & (label_low == 0), 0)


@dataclass
class AFAOutputs:
    cls: torch.Tensor  # B×20 image scores
    cam: torch.Tensor  # B×20×h×w raw class maps of the last stage
    seg: torch.Tensor  # B×21×H/4×W/4 segmentation logits
    aff: torch.Tensor  # B×N×N affinity logits (N = h·w)


class AFANet(nn.Module):
    """MiT encoder + classifier (CAM) + AFA module + SegFormer MLP decoder."""

    def __init__(self, encoder: MixTransformer, num_classes: int = 20, pooling: str = "gmp", topk: float = 0.1,
                 decoder_dim: int = 256, attention_per_token: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.attention_per_token = attention_per_token
        self.pooling, self.topk = pooling, topk
        self.classifier = nn.Conv2d(encoder.channels[-1], num_classes, 1, bias=False)
        self.decoder = MLPHead(encoder.channels, num_classes + 1, decoder_dim)
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

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class maps B×20×h×w of the last stage (the CAM)."""
        return self.classifier(self.encoder(x)[-1])

    def affinity(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The learned affinity σ(A) (B×N×N) and its grid (h, w)."""
        feats = self.encoder(x)
        logits = affinity_logits(self.encoder.attention.select(), self.attn_proj, self.attention_per_token)
        return torch.sigmoid(logits), tuple(feats[-1].shape[-2:])

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.classifier.parameters(), *self.decoder.parameters(), *self.attn_proj.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())


@register_model
def afa_mit(backbone: str = "pvt_v2_b1", pretrained: bool = False, weights: str | None = None, output_stride: int = 16,
            embed_dims: list[int] | None = None, depths: list[int] | None = None, num_heads: list[int] | None = None,
            num_classes: int = 20, pooling: str = "gmp", topk: float = 0.1, decoder_dim: int = 256,
            attention_per_token: bool = False) -> AFANet:
    enc = MixTransformer(backbone, pretrained, weights, output_stride, embed_dims, depths, num_heads)
    return AFANet(enc, num_classes, pooling, topk, decoder_dim, attention_per_token)
