"""ACR (Sun et al., "All-pairs Consistency Learning for Weakly Supervised Semantic Segmentation").

A ViT with a class token classifies from the class token; every block exposes its softmax
attention A_l ∈ R^{(n+1)×(n+1)} (head mean, in the graph). Training pairs each batch with a view
f(x) and regularises the attention of the view, brought back with f⁻¹, to match:

- L_act = ‖A[0,1:] − f⁻¹(A′[0,1:])‖₁  (Eq. 4, class-to-patch attention consistency)
- L_aff = ‖A[1:,1:] − f⁻¹(A′[1:,1:])‖₁ (Eq. 5, patch-to-patch, "all-pairs", consistency)
- L = w·(L_cls(x) + L_cls(f(x))) + α·L_act + β·L_aff (Eq. 6; w = ½ ours, 1 as released)

Seeds come from gradient class localisation on the class-to-patch attention (Eq. 7), ours
M^c = mean_l ReLU(Σ_h ∂y_c/∂A_lh[0,1:]) or as released Σ_l mean_h ReLU(∂y_c/∂A_lh[0,1:]), optionally
refined with the learned patch affinity (Eq. 8): M̃^c = M^c · Ā as printed, or Ā·M^c as released.

The ``paper`` profile is the released code (OpenNLPLab/ACR_WSSS); docs/acr.md lists every choice with its file
and line, and what the paper says where they differ.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import AttentionRecorder, TokenGrid, create_vit
from models.cam_classifier import ClassifierConfig
from models.registry import ModelSpec, register_model
from models.std_conv import use_released_std_conv
from models.token_views import View, invert_class_attention, invert_patch_attention
from pipeline.config import Count, LayerIndex, NonNegInt, NonNegative, ScaleRange, Section, config_section
from pipeline.errors import UserError


#: the released run's choices (OpenNLPLab/ACR_WSSS train_acr.sh, train_acr.py, infer_cam.py, DPT/, models/);
#: docs/acr.md has the table with file:line for each; the flow's paper profile adds the training schedule
RELEASED = {
    "alpha": 125.0, "beta": 125.0, "cls_loss": "sum", "consistency_l1": "mean", "transforms": ["hflip"],
    "head_input": "last_block", "pos_embed": "bilinear", "stem_std": "released",
    "seed_layers": [10, 11], "seed_aff_layers": list(range(12)), "seed_gradient": "head_mean_relu",
    "seed_refinement": "a_m", "seed_norm": "minmax", "seed_size": 384, "seed_align_corners": True,
}


@config_section("acr", profiles={"paper": RELEASED})
class ACRConfig(Section):
    """ACR: all-pairs consistency of the classifier's attention across two views, and its seeds."""

    alpha: NonNegative = 1.0  # weight of L_act (class-to-patch attention consistency); 0 switches it off
    beta: NonNegative = 1.0  # weight of L_aff (patch-to-patch attention consistency); 0 switches it off
    # L_cls(x) and L_cls(f(x)): mean — ½(L_cls(x) + L_cls(f(x))) (ours); sum — L_cls(x) + L_cls(f(x)) (released)
    cls_loss: Literal["mean", "sum"] = "mean"
    # the L1 of L_act / L_aff: row_sum — ‖·‖₁ of each attention row, batch and row mean (ours; the paper's norm);
    # mean — the mean |·| over every element (released F.l1_loss, 1/n of row_sum)
    consistency_l1: Literal["row_sum", "mean"] = "row_sum"
    layers: list[LayerIndex] | None = None  # blocks whose attention is regularised (None: all; negatives count from the end)
    transforms: list[Literal["resize", "hflip", "vflip", "rot90"]] = ["resize", "hflip", "vflip", "rot90"]
    resize_range: ScaleRange = (0.5, 1.5)  # scale of the resized view (rounded to whole patches)
    start_step: NonNegInt = 0  # classification only before this step (from scratch: let attention become informative first)
    ramp_steps: NonNegInt = 0  # then α, β ramp up linearly over this many steps
    # the network (part of the model's spec): the class token that the head reads, after the final LayerNorm
    # (final_norm, timm's forward_features) or the last block's output before it (last_block, released DPT hook)
    head_input: Literal["final_norm", "last_block"] = "final_norm"
    # position-embedding resize to the token grid: bicubic (timm, antialiased) or bilinear (released, no antialias)
    pos_embed: Literal["bicubic", "bilinear"] = "bicubic"
    # weight standardisation of a ViT-hybrid's ResNet stem: timm — (w − mean)/√(var + 1e-8); released —
    # (w − mean)/(std + 1e-5) (models/std_conv.py); no effect on a ViT without one
    stem_std: Literal["timm", "released"] = "timm"
    # seeds (Table 5): cam — the head applied to the patch tokens; grad — gradient class localisation on the
    # class-to-patch attention; grad_aff — grad refined with the patch-to-patch attention
    seed_mode: Literal["cam", "grad", "grad_aff"] = "grad_aff"
    seed_layers: list[LayerIndex] | None = None  # blocks for grad / grad_aff (None: all; Fig. 8's layer range)
    seed_aff_layers: list[LayerIndex] | None = None  # blocks whose patch attention refines grad_aff (None: as ``seed_layers``)
    # Eq. 7: relu_head_sum — mean_l ReLU(Σ_h ∂y/∂A_lh) (ours); head_mean_relu — Σ_l mean_h ReLU(∂y/∂A_lh) (released)
    seed_gradient: Literal["relu_head_sum", "head_mean_relu"] = "relu_head_sum"
    # Eq. 8: m_a — M·Ā with Ā = mean_l A_l[1:,1:] (as printed); a_m — Ā·M with Ā = Σ_l A_l[1:,1:] (released)
    seed_refinement: Literal["m_a", "a_m"] = "m_a"
    # per class over the image: max — x/(max + 1e-5) (ours, as every seed stage); minmax — (x − min)/(max − min + 1e-6)
    seed_norm: Literal["max", "minmax"] = "max"
    seed_size: Count | None = None  # every image resized to this square before cam.scales (released: 384); None: native size
    seed_align_corners: bool = False  # token maps upsampled to the image with align_corners (released: true)


def bilinear_pos_embed(pos_embed: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """The position embedding 1×(prefix + s²)×D resized to a token grid h×w: 1×(prefix + h·w)×D.

    The prefix tokens' embeddings are kept; the s×s grid is resized bilinearly (align_corners=False, no
    antialias), as the released ``_resize_pos_embed`` (ACR_WSSS ``models/vision_transformer.py:490-505``);
    timm resizes bicubically with antialias. At the grid it was trained for, both return it unchanged.

    >>> pe = torch.arange(5.0).view(1, 5, 1)  # a class token (0) and a 2×2 grid [[1, 2], [3, 4]]
    >>> bilinear_pos_embed(pe, 1, (1, 2)).flatten().tolist()
    [0.0, 2.0, 3.0]
    """
    tok, g = pos_embed[:, :prefix], pos_embed[:, prefix:]
    s = math.isqrt(g.shape[1])
    g = g.reshape(1, s, s, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([tok, g.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], 1)


class ACRClassifier(nn.Module):
    """ViT (class token) → linear head; ``class_maps`` applies the head to the patch tokens (CAM mode).

    ``head_input``: the tokens the head reads, after the final LayerNorm (``final_norm``) or the last block's output
    (``last_block``, the released DPT hook on block 12, ACR_WSSS ``DPT/vit.py:431`` read at ``DPT/ACR.py:97-105``).
    ``pos_embed``: timm's bicubic resize of the position embedding or ``bilinear_pos_embed`` (released).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 20, head_input: str = "final_norm",
                 pos_embed: str = "bicubic") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        self.attention = AttentionRecorder(backbone.blocks)
        self.prefix = backbone.num_prefix_tokens
        self.tokens = TokenGrid(backbone.patch_embed)
        self.head_input, self.pos_embed = head_input, pos_embed
        if pos_embed == "bilinear" and (getattr(backbone, "no_embed_class", False) or self.prefix != 1):
            raise UserError("acr.pos_embed=bilinear needs a ViT whose position embedding covers one class token "
                            "(e.g. vit_base_r50_s16_384): set acr.pos_embed=bicubic for this backbone")

    @property
    def num_layers(self) -> int:
        return len(self.backbone.blocks)

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The token grid (h, w) of an input batch."""
        return self.tokens(x)

    @property
    def patch_size(self) -> int:
        return self.tokens.stride

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens B×(1+n)×D as the head reads them (timm's ``forward_features`` for bicubic + final_norm)."""
        vit = self.backbone
        t = vit.patch_embed(x)  # B×h×w×D (dynamic image size)
        if self.pos_embed == "bicubic":
            t = vit._pos_embed(t)
        else:
            pos = bilinear_pos_embed(vit.pos_embed, self.prefix, tuple(t.shape[1:3]))
            t = vit.pos_drop(torch.cat([vit.cls_token.expand(t.shape[0], -1, -1), t.flatten(1, 2)], 1) + pos)
        t = vit.blocks(vit.norm_pre(vit.patch_drop(t)))
        return vit.norm(t) if self.head_input == "final_norm" else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[:, 0])

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def forward_with_attention(self, x: torch.Tensor, layers: list[int] | None = None):
        """Logits B×C and the head-mean attention A_l (B×N×N) of the chosen blocks."""
        logits = self(x)
        return logits, self.attention.head_mean(layers)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The head applied to every patch token: B×C×h×w."""
        tokens = self.features(x)[:, self.prefix:]
        h, w = self.grid(x)
        return (tokens @ self.head.weight.T + self.head.bias).transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def patch_attention(self, x: torch.Tensor, layers: list[int] | None = None) -> torch.Tensor:
        """The patch-to-patch attention mean_l A_l[1:,1:] of the chosen blocks for a batch: B×n×n."""
        self(x)
        p = self.prefix
        return torch.stack([m[:, p:, p:] for m in self.attention.head_mean(layers)]).mean(0)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


@register_model
def vit_acr_classifier(backbone: dict, img_size: int, num_classes: int = 20, head_input: str = "final_norm",
                       pos_embed: str = "bicubic", stem_std: str = "timm") -> ACRClassifier:
    vit = create_vit(img_size=img_size, **backbone)
    if vit.num_prefix_tokens < 1 or getattr(vit, "cls_token", None) is None:
        raise UserError(f"backbone {backbone['name']!r} has no class token: ACR needs one (e.g. vit_small_patch16_224)")
    if stem_std == "released":
        use_released_std_conv(vit.patch_embed)  # after loading: the same Parameters, the released formula
    return ACRClassifier(vit, num_classes, head_input, pos_embed)


def acr_classifier_spec(m: ClassifierConfig, img_size: int, acr: ACRConfig | None = None, num_classes: int = 20) -> ModelSpec:
    """ACR's class-token classifier on the ViT of a ``model`` section, built for crops of ``img_size``
    (with ``acr``'s network choices: ``head_input``, ``pos_embed``, ``stem_std``)."""
    a = acr or ACRConfig()
    return ModelSpec("vit_acr_classifier", dict(backbone=m.vit(), img_size=img_size, num_classes=num_classes,
                                                head_input=a.head_input, pos_embed=a.pos_embed, stem_std=a.stem_std))


def class_attention_consistency(a: torch.Tensor, a_view_inv: torch.Tensor, l1: str = "row_sum") -> torch.Tensor:
    """L_act for one block (Eq. 4): ‖A[0,1:] − f⁻¹(A′[0,1:])‖₁.

    ``a`` and ``a_view_inv`` are B×n class-to-patch rows (each sums to at most 1). ``l1="row_sum"``: the L1 norm of
    the difference row, batch mean (≤ 2); ``"mean"``: the mean |·| over the B×n elements (released
    ``F.l1_loss(..., reduction='mean')``, ACR_WSSS ``train_acr.py:160``), 1/n of the former.
    """
    d = (a - a_view_inv).abs()
    return d.sum(-1).mean() if l1 == "row_sum" else d.mean()


def patch_attention_consistency(a: torch.Tensor, a_view_inv: torch.Tensor, l1: str = "row_sum") -> torch.Tensor:
    """L_aff for one block (Eq. 5): ‖A[1:,1:] − f⁻¹(A′[1:,1:])‖₁ per row (each row is a patch's attention), row and
    batch mean (``l1="row_sum"``), or the mean |·| over the B×n×n elements (``"mean"``, ``train_acr.py:161``)."""
    d = (a - a_view_inv).abs()
    return d.sum(-1).mean() if l1 == "row_sum" else d.mean()


def acr_losses(model, images: torch.Tensor, labels: torch.Tensor, view: View, alpha: float, beta: float,
               layers: list[int] | None = None, cls_loss: str = "mean", l1: str = "row_sum") -> dict:
    """Eq. 6: L = w·(L_cls(x) + L_cls(f(x))) + α·L_act + β·L_aff over the chosen blocks (means over blocks).

    w = ½ (``cls_loss="mean"``) or 1 (``"sum"``, released ``train_acr.py:163-168``: with α = β = 125 and ``l1="mean"``
    it is cls₁ + cls₂ + 125·(L_act + L_aff), the mean over blocks and elements of the stacked B×L×… attention).
    ``model.forward_with_attention(x, layers)`` gives logits and head-mean attention B×(1+n)×(1+n)
    with one class token first; ``model.grid(x)`` the token grid.
    """
    logits, att = model.forward_with_attention(images, layers)
    v_images = view.apply(images)
    v_logits, v_att = model.forward_with_attention(v_images, layers)
    l_cls = F.multilabel_soft_margin_loss(logits, labels) + F.multilabel_soft_margin_loss(v_logits, labels)
    l_cls = 0.5 * l_cls if cls_loss == "mean" else l_cls
    out = {"cls": l_cls}
    grid, v_grid = model.grid(images), model.grid(v_images)
    p = getattr(model, "prefix", 1)
    l_act = l_aff = torch.zeros((), device=images.device)
    if alpha > 0:
        l_act = sum(class_attention_consistency(a[:, 0, p:], invert_class_attention(view, va[:, 0, p:], grid, v_grid), l1)
                    for a, va in zip(att, v_att)) / len(att)
    if beta > 0:
        l_aff = sum(patch_attention_consistency(a[:, p:, p:], invert_patch_attention(view, va[:, p:, p:], grid, v_grid), l1)
                    for a, va in zip(att, v_att)) / len(att)
    out.update(act=l_act, aff=l_aff)
    out["loss"] = l_cls + alpha * l_act + beta * l_aff
    return out


def consistency_weight(step: int, start: int, ramp: int) -> float:
    """Schedule of α and β: 0 before ``start``, then a linear ramp to 1 over ``ramp`` steps.

    A pretrained ViT (the paper) starts with informative attention and needs none (start = ramp = 0);
    from scratch, consistency from step 0 is met first by uniform attention and classification
    never recovers, so the from-scratch profiles let the classifier learn before the terms switch on.

    >>> [consistency_weight(s, 2, 4) for s in (0, 2, 4, 6, 9)]
    [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    if step < start:
        return 0.0
    return 1.0 if ramp <= 0 else min(1.0, (step - start) / ramp)


def gradient_localization(logits: torch.Tensor, maps: list[torch.Tensor], classes: list[int], prefix: int = 1,
                          rule: str = "relu_head_sum") -> torch.Tensor:
    """Eq. 7, gradient class localisation on the class-to-patch attention, for each class c: B×K×n.

    ``maps`` are the per-head attention tensors B×heads×N×N of the chosen blocks, in the graph of ``logits``.
    ``rule="relu_head_sum"`` (ours): M^c = mean_l ReLU(Σ_h ∂y_c/∂A_lh[0,1:]), the gradient with respect to the
    head-mean map up to a constant factor (it goes in the normalisation). ``"head_mean_relu"`` (released ``getam``
    with ``func='grad'``, ACR_WSSS ``DPT/ACR.py:177-213``): M^c = Σ_l mean_h ReLU(∂y_c/∂A_lh[0,1:]).
    """
    out = []
    for c in classes:
        grads = torch.autograd.grad(logits[:, c].sum(), maps, retain_graph=True)
        if rule == "relu_head_sum":
            out.append(torch.stack([F.relu(g.sum(1)[:, 0, prefix:]) for g in grads]).mean(0))
        else:
            out.append(torch.stack([g[:, :, 0, prefix:].clamp(min=0).mean(1) for g in grads]).sum(0))
    return torch.stack(out, 1)


def affinity_refinement(m: torch.Tensor, affinity: torch.Tensor, side: str = "m_a") -> torch.Tensor:
    """Eq. 8 on B×K×n maps and a B×n×n patch affinity Ā: B×K×n.

    ``side="m_a"`` (as printed): M̃ = M·Ā, M̃_j = Σ_i M_i Ā_ij; ``"a_m"`` (released ``infer_cam.py:184``,
    ``torch.matmul(patch_aff, cam.unsqueeze(2))``): M̃ = Ā·M, M̃_i = Σ_j Ā_ij M_j.

    >>> aff = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    >>> affinity_refinement(torch.tensor([[[1.0, 2.0]]]), aff).tolist(), affinity_refinement(torch.tensor([[[1.0, 2.0]]]), aff, "a_m").tolist()
    ([[[0.0, 1.0]]], [[[2.0, 0.0]]])
    """
    return m @ affinity if side == "m_a" else m @ affinity.transpose(1, 2)


def seed_affinity(maps: list[torch.Tensor], prefix: int, side: str = "m_a") -> torch.Tensor:
    """Ā of Eq. 8 from head-mean maps B×N×N: mean_l A_l[1:,1:] (``m_a``, ours) or Σ_l A_l[1:,1:] (``a_m``, the
    released ``torch.sum(attn[:,:,1:,1:], dim=1)`` over every block, ``infer_cam.py:164-165``)."""
    aff = torch.stack([a.detach()[:, prefix:, prefix:] for a in maps])
    return aff.mean(0) if side == "m_a" else aff.sum(0)


def acr_seed_maps(model: ACRClassifier, x: torch.Tensor, classes: list[int], layers: list[int] | None,
                  aff_layers: list[int] | None, gradient: str = "relu_head_sum",
                  refinement: str = "m_a") -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient localisation maps (Eq. 7) and their affinity refinement (Eq. 8), each B×K×h×w, for 0-based
    ``classes``; ``gradient`` and ``refinement`` as ``gradient_localization`` and ``affinity_refinement``."""
    with torch.enable_grad():
        logits = model(x)
        m = gradient_localization(logits, model.attention.select(layers), classes, model.prefix, gradient)
    aff = seed_affinity(model.attention.head_mean(aff_layers if aff_layers is not None else layers), model.prefix,
                        refinement)
    h, w = model.grid(x)
    m = m.detach()
    return m.reshape(*m.shape[:2], h, w), affinity_refinement(m, aff, refinement).reshape(*m.shape[:2], h, w)


def view_seed(batch_seeds: torch.Tensor) -> np.random.Generator:
    """The view's random generator from the batch's first sample seed (the same step → the same view)."""
    return np.random.default_rng(int(batch_seeds[0]))
