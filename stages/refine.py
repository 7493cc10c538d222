"""Pixel-Adaptive Refinement (PAR) of AFA (Ru et al., CVPR 2022, Sec. 3.4, Eqs. 8–10)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

_UNIT_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The K = 8·len(dilations) offsets d·(dy, dx), in AFA's kernel order."""
    return [(d * dy, d * dx) for d in dilations for dy, dx in _UNIT_OFFSETS]


def _neighbour_views(x: torch.Tensor, dilations: Sequence[int]) -> list[torch.Tensor]:
    """The K views B×C×H×W of x at p + o_k (replicate padding), in ``neighbour_offsets``' order."""
    h, w = x.shape[-2:]
    views = []
    for d in dilations:
        xp = F.pad(x, [d, d, d, d], mode="replicate")
        views += [xp[..., d + d * dy: d + d * dy + h, d + d * dx: d + d * dx + w] for dy, dx in _UNIT_OFFSETS]
    return views


def par_kernel(images: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), w_rgb: float = 0.3,
               w_pos: float = 0.3, w_mix: float = 0.01) -> torch.Tensor:
    """PAR affinity κ(p, k), B×K×H×W (AFA Eqs. 8–9).

    κ(p,k) = softmax_k( mean_c −(|I_c(p+o_k) − I_c(p)| / (σ_c(p)+1e-8) / w_rgb)² )
             + w_mix · softmax_k( −(‖o_k‖ / (σ_pos+1e-8) / w_pos)² ),
    σ_c(p) the unbiased std of I_c over the K neighbours, σ_pos that of the K offset lengths.
    """
    # the K neighbours as views of one replicate-padded copy a dilation (never a B×3×K×H×W tensor: at 640×480 and
    # K = 48 that is 177 MB a temporary); σ_c by the two-pass sum as torch.std; |·|² = (·)², the mean over c a sum / 3
    nb = _neighbour_views(images, dilations)
    mean = sum(nb) / len(nb)
    var = sum((v - mean).square_() for v in nb) / (len(nb) - 1)
    scale = (var.sqrt_().add_(1e-8).square_().mul_(w_rgb * w_rgb * images.shape[1])).reciprocal_()  # B×3×H×W
    a = torch.stack([(v - images).square_().mul_(scale).sum(1) for v in nb], 1).neg_()  # B×K×H×W
    dist = torch.tensor([math.hypot(dy, dx) for dy, dx in neighbour_offsets(dilations)],
                        dtype=images.dtype, device=images.device)
    b = -(dist / (dist.std() + 1e-8) / w_pos) ** 2
    return F.softmax(a, dim=1) + w_mix * F.softmax(b, dim=0).view(1, -1, 1, 1)


def working_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(h', w') of an h×w image resized so that its short side is ``short`` pixels, the aspect kept (rounded).

    >>> working_size(480, 640, 256), working_size(120, 96, 256), working_size(256, 300, 256)
    ((256, 341), (320, 256), (256, 300))
    """
    r = short / min(h, w)
    return max(1, round(h * r)), max(1, round(w * r))


def par(images: torch.Tensor, masks: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 10, w_rgb: float = 0.3, w_pos: float = 0.3, w_mix: float = 0.01,
        size: int | None = None) -> torch.Tensor:
    """Refine ``masks`` (B×C×h×w) with the image-adaptive kernel of ``images`` (B×3×H×W): AFA Eq. 10.

    Masks are resized to H×W (bilinear, align_corners=True), then ``num_iter`` times
    M(p) ← Σ_k κ(p,k)·M(p+o_k) with replicate padding. Returns B×C×H×W.

    With ``size`` PAR runs at a working size instead: the images resized (bilinear) so that their short side is
    ``size`` pixels (``working_size``), the masks refined there and the result resized back to H×W (bilinear), so the
    kernel's reach (the dilations, in pixels) is the same fraction of every image whatever its resolution.

    >>> img = torch.zeros(1, 3, 8, 8); img[..., 4:] = 1
    >>> m = torch.zeros(1, 1, 8, 8); m[..., 0, 5] = 1
    >>> out = par(img, m, dilations=(1, 2), num_iter=5)
    >>> bool(out[..., 4:].sum() > 5 * out[..., :4].sum())  # mass stays on its side of the edge
    True
    """
    images = images.float()
    full = tuple(images.shape[-2:])
    if size is not None and (work := working_size(*full, size)) != full:
        small = F.interpolate(images, size=work, mode="bilinear", align_corners=False)
        out = par(small, masks, dilations, num_iter, w_rgb, w_pos, w_mix)
        return F.interpolate(out, size=full, mode="bilinear", align_corners=False)
    masks = F.interpolate(masks.float(), size=images.shape[-2:], mode="bilinear", align_corners=True)
    kappa = par_kernel(images, dilations, w_rgb, w_pos, w_mix).unsqueeze(1)  # B×1×K×H×W
    h, w = masks.shape[-2:]
    dmax = max(dilations)
    offsets = neighbour_offsets(dilations)
    for _ in range(num_iter):
        mp = F.pad(masks, [dmax] * 4, mode="replicate")
        acc = torch.zeros_like(masks)
        for k, (dy, dx) in enumerate(offsets):
            acc.addcmul_(kappa[:, :, k], mp[..., dmax + dy: dmax + dy + h, dmax + dx: dmax + dx + w])
        masks = acc
    return masks
