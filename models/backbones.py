"""timm backbones: a ViT whose blocks expose their attention (softmax maps or raw logits), and feature pyramids."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn

from models.weights import STANDIN_DIR, STANDIN_PREFIX, hub_weights, load_backbone_weights, weights_file  # noqa: F401 (re-exported)
from pipeline.errors import UserError


class AttentionRecorder:
    """Keeps each block's attention (B×heads×N×M, in the graph) from the last forward.

    ``kind="softmax"`` (every method's maps): the attention probabilities softmax(q·kᵀ·scale). It switches timm's
    fused attention off and hooks the ``attn_drop`` module that the explicit attention passes through right after
    its softmax.
    ``kind="logits"``: the raw q·kᵀ before the scaling and the softmax, what AFA's released MiT hands its AFA module
    (rulixiang/afa ``wetr/mix_transformer.py:107``, ``attn_ = q @ k.transpose(-2, -1)``, returned as ``attn_copy``
    at line 123). It hooks the block's ``q`` and ``kv`` projections (the layout of timm's ``pvt_v2`` and of
    SegFormer's MiT: ``kv``'s first half is k) and forms q·kᵀ per head from their outputs, so
    softmax(scale · logits) equals the ``softmax`` maps.
    """

    def __init__(self, blocks: nn.ModuleList, kind: str = "softmax") -> None:
        if kind not in ("softmax", "logits"):
            raise ValueError(f"attention kind {kind!r}: use softmax or logits")
        self.kind = kind
        self.maps: list[torch.Tensor | None] = [None] * len(blocks)
        self._queries: list[torch.Tensor | None] = [None] * len(blocks)
        for i, blk in enumerate(blocks):
            if kind == "softmax":
                blk.attn.fused_attn = False
                blk.attn.attn_drop.register_forward_hook(self._hook(i))
            else:
                blk.attn.q.register_forward_hook(self._query_hook(i))
                blk.attn.kv.register_forward_hook(self._logit_hook(i, blk.attn.num_heads))

    def _hook(self, i: int):
        def hook(_module, _inp, out):
            self.maps[i] = out
        return hook

    def _query_hook(self, i: int):
        def hook(_module, _inp, out):
            self._queries[i] = out
        return hook

    def _logit_hook(self, i: int, heads: int):
        def hook(_module, _inp, out):
            q, self._queries[i] = self._queries[i], None
            b, n, c = q.shape
            q = q.reshape(b, n, heads, c // heads).transpose(1, 2)  # B×heads×N×d
            k = out[..., :c].reshape(b, out.shape[1], heads, c // heads).transpose(1, 2)  # B×heads×M×d
            self.maps[i] = q @ k.transpose(-2, -1)
        return hook

    def select(self, layers: list[int] | None = None) -> list[torch.Tensor]:
        """Per-head attention B×heads×N×N of the chosen layers (all by default; negatives count from the end)."""
        idx = range(len(self.maps)) if layers is None else layers
        return [self.maps[i] for i in idx]

    def head_mean(self, layers: list[int] | None = None) -> list[torch.Tensor]:
        """Head-averaged attention A_l ∈ B×N×N for the chosen layers (all by default)."""
        return [m.mean(1) for m in self.select(layers)]


class TokenGrid:
    """Input size → the token grid (h, w) that a timm ViT's patch embedding actually produced.

    Recorded by a forward hook on the patch embedding (and measured on a blank image the first time
    a size is asked for before any forward). timm's ``dynamic_feat_size`` floors a hybrid's CNN-stem
    stride while the stem's "same" padding rounds up (130 px → 17 rows at stride 8, not 16), and a
    hybrid's ``patch_size`` is the patch on the stem's features, not the stride on the image.

    >>> vit = create_vit("vit_small_patch16_224", img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=1)
    >>> TokenGrid(vit.patch_embed)(torch.zeros(1, 3, 40, 28)), TokenGrid(vit.patch_embed).stride
    ((5, 4), 8)
    """

    def __init__(self, patch_embed: nn.Module) -> None:
        self.patch_embed = patch_embed
        self.sizes: dict[tuple[int, int], tuple[int, int]] = {}
        patch_embed.register_forward_hook(self._record)

    def _record(self, _module, inp, out) -> None:
        if out.ndim == 4:  # NHWC tokens (dynamic image size)
            self.sizes[tuple(inp[0].shape[-2:])] = (out.shape[1], out.shape[2])

    def __call__(self, x: torch.Tensor) -> tuple[int, int]:
        size = tuple(x.shape[-2:])
        if size not in self.sizes:
            p = next(self.patch_embed.parameters())  # the probe where the embedding is (x may be a CPU probe)
            with torch.no_grad():
                self.patch_embed(torch.zeros(1, x.shape[1], *size, device=p.device, dtype=p.dtype))
        return self.sizes[size]

    @property
    def stride(self) -> int:
        """Image pixels per token along a side (patch size × the stem's stride for a hybrid)."""
        s = 384
        return s // self(torch.zeros(1, 3, s, s))[0]


def load_local_weights(model: nn.Module, path: str | Path, ignore: tuple[str, ...] | list[str] = (), name: str = "") -> None:
    """Load a local weights file (or ``standin:NAME``) into ``model`` strictly (``models/weights.py``): the file's
    layout converted, every tensor present, none left over, every shape equal, or one line naming the first that
    do not fit; ``ignore`` holds glob patterns of tensors to drop from the file (a section's ``weights_ignore``)."""
    load_backbone_weights(model, path, ignore, name)


def create_vit(name: str, img_size: int, pretrained: bool = False, weights: str | None = None,
               patch_size: int | None = None, embed_dim: int | None = None, depth: int | None = None,
               num_heads: int | None = None, weights_ignore: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """A timm ViT without its classifier, accepting any input size (dynamic size and padding).

    Its initial weights: ``weights`` (a local file, strictly; it wins over ``pretrained``), else timm's hub when
    ``pretrained`` (``models.weights.hub_weights``)."""
    kwargs = {k: v for k, v in dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads).items() if v is not None}
    try:
        with hub_weights(name, pretrained, weights) as hub:
            model = timm.create_model(name, pretrained=hub, num_classes=0, img_size=img_size,
                                      dynamic_img_size=True, dynamic_img_pad=True, **kwargs)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"backbone {name!r} could not be created ({str(e).splitlines()[0]})") from None
    if weights:
        load_backbone_weights(model, weights, weights_ignore, name)
    return model


def create_feature_backbone(name: str, output_stride: int = 8, pretrained: bool = False, weights: str | None = None,
                            channels: list[int] | None = None, weights_ignore: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """A timm CNN returning its feature pyramid (``features_only``) at the given output stride.

    ``channels`` sets a timm ResNet's stage widths (None keeps the model's own). Initial weights as ``create_vit``.
    """
    extra = {} if channels is None else {"channels": tuple(channels)}
    try:
        with hub_weights(name, pretrained, weights) as hub:
            model = timm.create_model(name, pretrained=hub, features_only=True, output_stride=output_stride, **extra)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"feature backbone {name!r} could not be created ({str(e).splitlines()[0]})") from None
    if weights:
        load_backbone_weights(model, weights, weights_ignore, name)
    return model
