"""timm backbones: a ViT whose blocks expose their attention (softmax maps or raw logits), and feature pyramids."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn

from pipeline.checkpoint import load_model_weights, load_weights
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


#: where the pretrained stand-ins live (``weights: standin:NAME``; ``models/standins.py`` makes them)
STANDIN_DIR = Path(__file__).parent / "pretrained"
STANDIN_PREFIX = "standin:"


def weights_file(ref: str | Path) -> Path:
    """A ``weights`` value → its file: ``standin:NAME`` is ``models/pretrained/NAME.safetensors``, anything else a path.

    >>> weights_file("standin:vit").relative_to(STANDIN_DIR).as_posix(), weights_file("w/enc.pth").as_posix()
    ('vit.safetensors', 'w/enc.pth')
    """
    s = str(ref)
    return STANDIN_DIR / f"{s[len(STANDIN_PREFIX):]}.safetensors" if s.startswith(STANDIN_PREFIX) else Path(s)


def load_local_weights(model: nn.Module, path: str | Path, filter_fn=None) -> None:
    """Load backbone weights from a local file (safetensors or torch, never unpickled objects).

    A pretrained stand-in (``standin:NAME``) must fit exactly (every tensor, every shape): it was made for
    one architecture, which its sidecar names. A user's file may leave out a few tensors (a head, a norm).
    """
    p = weights_file(path)
    standin = str(path).startswith(STANDIN_PREFIX)
    if not p.is_file():
        if standin:
            raise UserError(f"stand-in weights {path!r} not found ({p}): regenerate them with `python cli.py run-flow pretrain` "
                            "(README, Pretrained stand-ins) or set this weights key to null to train from scratch")
        raise UserError(f"weights file {p} does not exist: fix model weights path")
    sd = load_model_weights(p)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    own = model.state_dict()
    if standin:
        bad = sorted(set(own) ^ set(sd)) + [k for k in own if k in sd and own[k].shape != sd[k].shape]
        if bad:
            made = load_weights(p)[1].get("architecture", "?")  # the sidecar's provenance
            raise UserError(f"stand-in weights {path!r} do not fit this backbone (e.g. {bad[0]}): they were pretrained as {made}; "
                            "set the backbone to that, or this weights key to null to train from scratch")
        model.load_state_dict(sd)
        return
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if len(missing) > len(own) // 2:
        raise UserError(f"weights file {p} does not fit the backbone ({len(missing)} tensors missing): check the backbone name")


def create_vit(name: str, img_size: int, pretrained: bool = False, weights: str | None = None,
               patch_size: int | None = None, embed_dim: int | None = None, depth: int | None = None,
               num_heads: int | None = None) -> nn.Module:
    """A timm ViT without its classifier, accepting any input size (dynamic size and padding)."""
    kwargs = {k: v for k, v in dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads).items() if v is not None}
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=img_size,
                                  dynamic_img_size=True, dynamic_img_pad=True, **kwargs)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"backbone {name!r} could not be created ({str(e).splitlines()[0]})") from None
    if weights:
        from timm.models.vision_transformer import checkpoint_filter_fn
        load_local_weights(model, weights, checkpoint_filter_fn)
    return model


def create_feature_backbone(name: str, output_stride: int = 8, pretrained: bool = False, weights: str | None = None,
                            channels: list[int] | None = None) -> nn.Module:
    """A timm CNN returning its feature pyramid (``features_only``) at the given output stride.

    ``channels`` sets a timm ResNet's stage widths (None keeps the model's own).
    """
    extra = {} if channels is None else {"channels": tuple(channels)}
    try:
        model = timm.create_model(name, pretrained=pretrained, features_only=True, output_stride=output_stride, **extra)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"feature backbone {name!r} could not be created ({str(e).splitlines()[0]})") from None
    if weights:
        load_local_weights(model, weights)
    return model
