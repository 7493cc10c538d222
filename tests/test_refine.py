"""PAR against a transcription of the AFA reference code (conv-kernel neighbours) and a brute-force loop."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.refine import par


class ReferencePAR(torch.nn.Module):
    """The PAR module of the AFA repository (rulixiang/afa, model/PAR.py), transcribed."""

    def __init__(self, dilations, num_iter):
        super().__init__()
        self.dilations, self.num_iter = dilations, num_iter
        weight = torch.zeros(8, 1, 3, 3)
        for i, (y, x) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
            weight[i, 0, y, x] = 1
        self.kernel = weight
        self.pos = self.get_pos()
        self.dim, self.w1, self.w2 = 2, 0.3, 0.01

    def get_dilated_neighbors(self, x):
        b, c, h, w = x.shape
        x_aff = []
        for d in self.dilations:
            _x_pad = F.pad(x, [d] * 4, mode="replicate")
            _x_pad = _x_pad.reshape(b * c, -1, _x_pad.shape[-2], _x_pad.shape[-1])
            _x = F.conv2d(_x_pad, self.kernel.to(x.dtype), dilation=d).view(b, c, -1, h, w)
            x_aff.append(_x)
        return torch.cat(x_aff, dim=2)

    def get_pos(self):
        pos_xy = []
        ker = torch.ones(1, 1, 8, 1, 1)
        for i in (0, 2, 5, 7):
            ker[0, 0, i, 0, 0] = np.sqrt(2)
        for d in self.dilations:
            pos_xy.append(ker * d)
        return torch.cat(pos_xy, dim=2)

    def forward(self, imgs, masks):
        masks = F.interpolate(masks, size=imgs.size()[-2:], mode="bilinear", align_corners=True)
        b, c, h, w = imgs.shape
        _imgs = self.get_dilated_neighbors(imgs)
        _pos = self.pos.to(_imgs.device, _imgs.dtype)
        _imgs_rep = imgs.unsqueeze(self.dim).repeat(1, 1, _imgs.shape[self.dim], 1, 1)
        _pos_rep = _pos.repeat(b, 1, 1, h, w)
        _imgs_abs = torch.abs(_imgs - _imgs_rep)
        _imgs_std = torch.std(_imgs, dim=self.dim, keepdim=True)
        _pos_std = torch.std(_pos_rep, dim=self.dim, keepdim=True)
        aff = -(_imgs_abs / (_imgs_std + 1e-8) / self.w1) ** 2
        aff = aff.mean(dim=1, keepdim=True)
        pos_aff = -(_pos_rep / (_pos_std + 1e-8) / self.w1) ** 2
        aff = F.softmax(aff, dim=2) + self.w2 * F.softmax(pos_aff, dim=2)
        for _ in range(self.num_iter):
            _masks = self.get_dilated_neighbors(masks)
            masks = (_masks * aff).sum(2)
        return masks


@pytest.mark.parametrize("seed", [0, 1])
def test_par_matches_afa_reference(seed):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(2, 3, 37, 45, generator=g) * 255
    masks = torch.rand(2, 4, 10, 12, generator=g)
    dil = (1, 2, 4, 8, 12, 24)
    ref = ReferencePAR(dil, 10)(imgs.double(), masks.double())
    out = par(imgs, masks, dil, 10)
    assert out.shape == (2, 4, 37, 45)
    assert torch.allclose(out.double(), ref, atol=1e-5, rtol=0)


def test_par_brute_force_one_iteration():
    """Every term of the contract's formula, computed pixel by pixel."""
    rng = np.random.default_rng(0)
    H, W, dil = 6, 7, (1, 2)
    img = rng.random((3, H, W))
    m = rng.random((2, H, W))
    offs = [(d * dy, d * dx) for d in dil for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    K = len(offs)
    dist = np.array([math.hypot(*o) for o in offs])
    b = -(dist / (dist.std(ddof=1) + 1e-8) / 0.3) ** 2
    sb = np.exp(b) / np.exp(b).sum()

    def at(a, y, x):
        return a[:, min(max(y, 0), H - 1), min(max(x, 0), W - 1)]

    out = np.zeros_like(m)
    for y in range(H):
        for x in range(W):
            nb = np.stack([at(img, y + dy, x + dx) for dy, dx in offs], 1)  # 3×K
            sd = nb.std(1, ddof=1, keepdims=True)
            a = (-(np.abs(nb - img[:, y, x, None]) / (sd + 1e-8) / 0.3) ** 2).mean(0)
            kappa = np.exp(a - a.max()) / np.exp(a - a.max()).sum() + 0.01 * sb
            out[:, y, x] = sum(kappa[k] * at(m, y + dy, x + dx) for k, (dy, dx) in enumerate(offs))
    got = par(torch.tensor(img)[None].float(), torch.tensor(m)[None].float(), dil, num_iter=1)[0].numpy()
    assert K == 16
    np.testing.assert_allclose(got, out, atol=1e-5)


def test_par_respects_edges():
    img = torch.zeros(1, 3, 16, 16)
    img[..., 8:] = 200.0
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:12, 9:11] = 1.0
    out = par(img, m, (1, 2, 4), 10)[0, 0]
    assert out[:, 8:].sum() > 10 * out[:, :8].sum()


def test_par_at_a_working_size_is_resize_refine_resize_back():
    """``size``: the image's short side brought to ``size`` pixels (aspect kept), PAR there, the result back to H×W;
    at its own short side it is plain PAR, bit for bit."""
    g = torch.Generator().manual_seed(3)
    imgs, masks = torch.rand(1, 3, 30, 45, generator=g) * 255, torch.rand(1, 4, 8, 12, generator=g)
    small = F.interpolate(imgs, size=(20, 30), mode="bilinear", align_corners=False)  # short side 30 -> 20, 45 -> 30
    expected = F.interpolate(ReferencePAR((1, 2, 4), 5)(small.double(), masks.double()), size=(30, 45),
                             mode="bilinear", align_corners=False)
    got = par(imgs, masks, (1, 2, 4), 5, size=20)
    assert got.shape == (1, 4, 30, 45)
    assert torch.allclose(got.double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(par(imgs, masks, (1, 2, 4), 5, size=30), par(imgs, masks, (1, 2, 4), 5))


def test_par_at_a_working_size_reaches_the_same_share_of_the_image_at_any_resolution():
    """A block of score in a flat image of 24 and of 72 px: at the working size its mass spreads over the same share
    of the side (the spread's std over n); at the image's own size the larger image's share is about a third."""
    def share(n, size):
        m = torch.zeros(1, 1, n, n)
        m[..., n // 2 - n // 12: n // 2 + n // 12, n // 2 - n // 12: n // 2 + n // 12] = 1.0
        out = par(torch.full((1, 3, n, n), 100.0), m, (1, 2, 4), 10, size=size)[0, 0]
        p, x = out.sum(0) / out.sum(), torch.arange(n, dtype=torch.float32)
        return float(((p * (x - (p * x).sum()) ** 2).sum()).sqrt() / n)
    assert share(24, 48) == pytest.approx(share(72, 48), rel=0.05)
    assert share(72, None) < 0.6 * share(24, None)
