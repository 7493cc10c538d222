"""ACR (Sun et al., "All-pairs Consistency Learning for Weakly Supervised Semantic Segmentation").

A ViT with a class token classifies from the class token; every block exposes its softmax
attention A_l ∈ R^{(n+1)×(n+1)} (head mean, in the graph). Training pairs each batch with a view
f(x) and regularises the attention of the view, brought back with f⁻¹, to match:

- L_act = ‖A[0,1:] − f⁻¹(A′[0,1:])‖₁  (class-to-patch attention consistency)
- L_aff = ‖A[1:,1:] − f⁻¹(A′[1:,1:])‖₁ (patch-to-patch, "all-pairs", consistency)
- L = L_cls(x) + L_cls(f(x)) … (mean of the two) + α·L_act + β·L_aff

Seeds come from gradient class localisation on the class-to-patch attention,
M^c = mean_l ReLU(∂y_c/∂A_l[0,1:]), optionally refined with the learned patch affinity,
M̃^c = M^c · mean_l A_l[1:,1:].
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import AttentionRecorder, TokenGrid, create_vit
from models.cam_classifier import ClassifierConfig
from models.registry import ModelSpec, register_model
from models.token_views import View, invert_class_attention, invert_patch_attention
from pipeline.config import LayerIndex, NonNegInt, NonNegative, ScaleRange, Section, config_section
from pipeline.errors import UserError


@config_section("acr")
class ACRConfig(Section):
    """ACR: all-pairs consistency of the classifier's attention across two views, and its seeds."""

    alpha: NonNegative = 1.0  # weight of L_act (class-to-patch attention consistency); 0 switches it off
    beta: NonNegative = 1.0  # weight of L_aff (patch-to-patch attention consistency); 0 switches it off
    layers: list[LayerIndex] | None = None  # blocks whose attention is regularised (None: all; negatives count from the end)
    transforms: list[Literal["resize", "hflip", "vflip", "rot90"]] = ["resize", "hflip", "vflip", "rot90"]
    resize_range: ScaleRange = (0.5, 1.5)  # scale of the resized view (rounded to whole patches)
    start_step: NonNegInt = 0  # classification only before this step (from scratch: let attention become informative first)
    ramp_steps: NonNegInt = 0  # then α, β ramp up linearly over this many steps
    # seeds (Table 5): cam — the head applied to the patch tokens; grad — gradient class localisation on the
    # class-to-patch attention; grad_aff — grad refined with the patch-to-patch attention
    seed_mode: Literal["cam", "grad", "grad_aff"] = "grad_aff"
    seed_layers: list[LayerIndex] | None = None  # blocks for grad / grad_aff (None: all; Fig. 8's layer range)
    seed_aff_layers: list[LayerIndex] | None = None  # blocks whose patch attention refines grad_aff (None: as ``seed_layers``)


class ACRClassifier(nn.Module):
    """ViT (class token) → linear head; ``class_maps`` applies the head to the patch tokens (CAM mode)."""

    def __init__(self, backbone: nn.Module, num_classes: int = 20) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        self.attention = AttentionRecorder(backbone.blocks)
        self.prefix = backbone.num_prefix_tokens
        self.tokens = TokenGrid(backbone.patch_embed)

    @property
    def num_layers(self) -> int:
        return len(self.backbone.blocks)

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The token grid (h, w) of an input batch."""
        return self.tokens(x)

    @property
    def patch_size(self) -> int:
        return self.tokens.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x)[:, 0])

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def forward_with_attention(self, x: torch.Tensor, layers: list[int] | None = None):
        """Logits B×C and the head-mean attention A_l (B×N×N) of the chosen blocks."""
        logits = self(x)
        return logits, self.attention.head_mean(layers)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The head applied to every patch token: B×C×h×w."""
        tokens = self.backbone.forward_features(x)[:, self.prefix:]
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
def vit_acr_classifier(backbone: dict, img_size: int, num_classes: int = 20) -> ACRClassifier:
    vit = create_vit(img_size=img_size, **backbone)
    if vit.num_prefix_tokens < 1 or getattr(vit, "cls_token", None) is None:
        raise UserError(f"backbone {backbone['name']!r} has no class token: ACR needs one (e.g. vit_small_patch16_224)")
    return ACRClassifier(vit, num_classes)


def acr_classifier_spec(m: ClassifierConfig, img_size: int) -> ModelSpec:
    """ACR's class-token classifier on the ViT of a ``model`` section, built for crops of ``img_size``."""
    return ModelSpec("vit_acr_classifier", dict(backbone=m.vit(), img_size=img_size, num_classes=20))


def class_attention_consistency(a: torch.Tensor, a_view_inv: torch.Tensor) -> torch.Tensor:
    """L_act for one block: ‖A[0,1:] − f⁻¹(A′[0,1:])‖₁, the L1 norm of the difference row, batch mean.

    ``a`` and ``a_view_inv`` are B×n class-to-patch rows (each sums to at most 1, so L_act ≤ 2).
    """
    return (a - a_view_inv).abs().sum(-1).mean()


def patch_attention_consistency(a: torch.Tensor, a_view_inv: torch.Tensor) -> torch.Tensor:
    """L_aff for one block: ‖A[1:,1:] − f⁻¹(A′[1:,1:])‖₁ per row (each row is a patch's attention), row and batch mean."""
    return (a - a_view_inv).abs().sum(-1).mean()


def acr_losses(model, images: torch.Tensor, labels: torch.Tensor, view: View, alpha: float, beta: float,
               layers: list[int] | None = None) -> dict:
    """L = ½(L_cls(x) + L_cls(f(x))) + α·L_act + β·L_aff over the chosen blocks (means over blocks).

    ``model.forward_with_attention(x, layers)`` gives logits and head-mean attention B×(1+n)×(1+n)
    with one class token first; ``model.grid(x)`` the token grid.
    """
    logits, att = model.forward_with_attention(images, layers)
    v_images = view.apply(images)
    v_logits, v_att = model.forward_with_attention(v_images, layers)
    l_cls = 0.5 * (F.multilabel_soft_margin_loss(logits, labels) + F.multilabel_soft_margin_loss(v_logits, labels))
    out = {"cls": l_cls}
    grid, v_grid = model.grid(images), model.grid(v_images)
    p = getattr(model, "prefix", 1)
    l_act = l_aff = torch.zeros((), device=images.device)
    if alpha > 0:
        l_act = sum(class_attention_consistency(a[:, 0, p:], invert_class_attention(view, va[:, 0, p:], grid, v_grid))
                    for a, va in zip(att, v_att)) / len(att)
    if beta > 0:
        l_aff = sum(patch_attention_consistency(a[:, p:, p:], invert_patch_attention(view, va[:, p:, p:], grid, v_grid))
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


def gradient_localization(logits: torch.Tensor, maps: list[torch.Tensor], classes: list[int], prefix: int = 1) -> torch.Tensor:
    """M^c = mean_l ReLU(∂y_c/∂A_l[0,1:]) for each class c: B×K×n.

    ``maps`` are the per-head attention tensors B×heads×N×N of the chosen blocks, in the graph
    of ``logits``; the gradient with respect to the head-mean map is the head sum of the
    per-head gradients (the constant factor goes in the normalisation).
    """
    out = []
    for c in classes:
        grads = torch.autograd.grad(logits[:, c].sum(), maps, retain_graph=True)
        out.append(torch.stack([F.relu(g.sum(1)[:, 0, prefix:]) for g in grads]).mean(0))
    return torch.stack(out, 1)


def affinity_refinement(m: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """M̃^c = M^c · Ā with Ā = mean_l A_l[1:,1:] (B×n×n): B×K×n, i.e. M̃_j = Σ_i M_i Ā_ij."""
    return m @ affinity


def acr_seed_maps(model: ACRClassifier, x: torch.Tensor, classes: list[int], layers: list[int] | None,
                  aff_layers: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient localisation maps and their affinity refinement, each B×K×h×w, for 0-based ``classes``."""
    with torch.enable_grad():
        logits = model(x)
        m = gradient_localization(logits, model.attention.select(layers), classes, model.prefix)
    p = model.prefix
    aff_maps = model.attention.head_mean(aff_layers if aff_layers is not None else layers)
    aff = torch.stack([a.detach()[:, p:, p:] for a in aff_maps]).mean(0)
    h, w = model.grid(x)
    m = m.detach()
    return m.reshape(*m.shape[:2], h, w), affinity_refinement(m, aff).reshape(*m.shape[:2], h, w)


def view_seed(batch_seeds: torch.Tensor) -> np.random.Generator:
    """The view's random generator from the batch's first sample seed (the same step → the same view)."""
    return np.random.default_rng(int(batch_seeds[0]))
