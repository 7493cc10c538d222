"""Weight-standardised convolution as ACR's released code computes it (the ViT-hybrid's ResNet-50 stem).

Weight standardisation (Qiao et al. 2019) replaces each output filter W_o of a convolution by

    Ŵ_o = (W_o − mean(W_o)) / (std(W_o) + ε),   std the biased standard deviation over (in, kh, kw), ε = 1e-5

in ACR's vendored timm (OpenNLPLab/ACR_WSSS ``models/layers/std_conv.py:56-59``, ``StdConv2dSame.get_weight``
with the default ``eps=1e-5`` that ``models/vision_transformer_hybrid.py:116-128`` leaves in place). timm ≥ 0.5
computes Ŵ_o = (W_o − mean) / √(var + 1e-8) instead (``F.batch_norm`` on the weight, ``eps=1e-8``): on the released
ViT-hybrid weights the tokens differ by ~8e-3. ``ReleasedStdConv2dSame`` is the released formula with timm's
TF-style dynamic "same" padding; ``use_released_std_conv`` swaps it into a built timm backbone in place of every
``StdConv2d`` / ``StdConv2dSame``, keeping each module's weight (the same Parameter) and so its state-dict keys.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import StdConv2d, StdConv2dSame, pad_same

#: ε of the released weight standardisation (ACR_WSSS ``models/layers/std_conv.py:48``)
RELEASED_STD_EPS = 1e-5


def standardise_weight(weight: torch.Tensor, eps: float = RELEASED_STD_EPS) -> torch.Tensor:
    """Ŵ_o = (W_o − mean(W_o)) / (std(W_o) + ε) per output filter (biased std over in×kh×kw).

    >>> w = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1).expand(2, 1, 1, 2).clone()  # constant filters: std 0
    >>> standardise_weight(w).abs().max().item()
    0.0
    >>> standardise_weight(torch.tensor([[[[0.0, 2.0]]]])).flatten().tolist()  # mean 1, std 1
    [-0.9999899864196777, 0.9999899864196777]
    """
    std, mean = torch.std_mean(weight, dim=list(range(1, weight.ndim)), keepdim=True, unbiased=False)
    return (weight - mean) / (std + eps)


class ReleasedStdConv2dSame(nn.Conv2d):
    """Conv2d on ``standardise_weight(W)``, with TF "same" padding computed per input when ``same_pad``."""

    def __init__(self, *args, same_pad: bool = False, eps: float = RELEASED_STD_EPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.same_pad = same_pad
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, standardise_weight(self.weight, self.eps), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    @classmethod
    def like(cls, conv: nn.Conv2d, eps: float = RELEASED_STD_EPS) -> "ReleasedStdConv2dSame":
        """The released formula on ``conv``'s own weight (the same Parameter object), geometry and padding."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  same_pad=bool(getattr(conv, "same_pad", False)), eps=eps, device="meta")
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new


def use_released_std_conv(module: nn.Module, eps: float = RELEASED_STD_EPS) -> int:
    """Replace every timm ``StdConv2d`` / ``StdConv2dSame`` inside ``module`` by ``ReleasedStdConv2dSame``; the count.

    State-dict keys and tensors are unchanged (each new conv holds the old one's Parameters).
    """
    targets = [(name, m) for name, m in module.named_modules() if isinstance(m, (StdConv2d, StdConv2dSame))]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, ReleasedStdConv2dSame.like(conv, eps))
    return len(targets)
