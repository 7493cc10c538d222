"""Spatial views of a batch and f⁻¹ on token grids (ACR: attention of a view back in the original token order).

A view is ``f(x)`` for one spatial transform f: horizontal or vertical flip, rotation by k·90°, or a
resize. On a patch-aligned image a flip or rotation permutes the h×w token grid: with row-major
flattening, a horizontal flip is P = I_h ⊗ J_w, a vertical flip J_h ⊗ I_w (J the exchange matrix)
and a rotation a flip composed with the commutation matrix K_{h,w} (the transpose of the grid).
So the view's token k is original token ``src[k]`` and f⁻¹ of an attention matrix is
A = P A′ Pᵀ, i.e. re-indexing both axes by the inverse permutation. A resize changes the grid
itself; f⁻¹ then resizes the attention maps back (bilinear), on both axes for patch-to-patch.

>>> v = View("hflip")
>>> token_source(v, 2, 3).tolist()
[2, 1, 0, 5, 4, 3]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("identity", "hflip", "vflip", "rot90", "resize")


@dataclass(frozen=True)
class View:
    kind: str
    k: int = 1  # rot90: quarter turns (counter-clockwise, as torch.rot90)
    size: tuple[int, int] | None = None  # resize: the view's image size

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) for images (or any tensor whose last two dims are H, W)."""
        if self.kind == "hflip":
            return x.flip(-1)
        if self.kind == "vflip":
            return x.flip(-2)
        if self.kind == "rot90":
            return torch.rot90(x, self.k, dims=(-2, -1))
        if self.kind == "resize":
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


def sample_view(rng: np.random.Generator, kinds: list[str], resize_range: tuple[float, float], size: int, patch: int) -> View:
    """One random view of a square ``size`` crop; resized views keep whole patches."""
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "rot90":
        return View("rot90", k=int(rng.integers(1, 4)))
    if kind == "resize":
        s = rng.uniform(*resize_range)
        side = max(patch, int(round(size * s / patch)) * patch)
        return View("resize", size=(side, side))
    return View(kind)


def token_source(view: View, h: int, w: int) -> torch.Tensor:
    """For a permuting view of an h×w token grid: the original index of each view token (row-major)."""
    if view.kind not in ("identity", "hflip", "vflip", "rot90"):
        raise ValueError(f"view {view.kind} does not permute tokens")
    return view.apply(torch.arange(h * w).view(1, 1, h, w)).flatten()


def invert_class_attention(view: View, a: torch.Tensor, grid: tuple[int, int], view_grid: tuple[int, int]) -> torch.Tensor:
    """f⁻¹ of class-to-patch attention rows ``a`` (B×n′) of the view → B×n in the original token order."""
    if view.kind == "resize":
        b = a.shape[0]
        return F.interpolate(a.reshape(b, 1, *view_grid), size=grid, mode="bilinear", align_corners=False).reshape(b, -1)
    inv = torch.argsort(token_source(view, *grid)).to(a.device)
    return a[:, inv]


def invert_patch_attention(view: View, a: torch.Tensor, grid: tuple[int, int], view_grid: tuple[int, int]) -> torch.Tensor:
    """f⁻¹ of patch-to-patch attention ``a`` (B×n′×n′) of the view → B×n×n (P A′ Pᵀ, or resized on both axes)."""
    if view.kind == "resize":
        b, n1 = a.shape[0], grid[0] * grid[1]
        keys = F.interpolate(a.reshape(b * a.shape[1], 1, *view_grid), size=grid, mode="bilinear", align_corners=False)
        keys = keys.reshape(b, a.shape[1], n1).transpose(1, 2)  # B×n×n′ (rows: original keys)
        both = F.interpolate(keys.reshape(b * n1, 1, *view_grid), size=grid, mode="bilinear", align_corners=False)
        return both.reshape(b, n1, n1).transpose(1, 2)
    inv = torch.argsort(token_source(view, *grid)).to(a.device)
    return a[:, inv][:, :, inv]
