"""ACR: f⁻¹ on token grids, the consistency losses, gradient localisation and its affinity refinement."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import create_model
from models.acr import acr_losses, acr_seed_maps, affinity_refinement, gradient_localization
from models.token_views import View, invert_class_attention, invert_patch_attention, sample_view


def exchange(n):
    return torch.eye(n).flip(1)


def commutation(h, w):
    """K with K·vec(X) = vec(Xᵀ) for an h×w X flattened row-major."""
    k = torch.zeros(h * w, h * w)
    for i in range(h):
        for j in range(w):
            k[j * h + i, i * w + j] = 1
    return k


def permutation_matrix(view, h, w):
    """P with (view tokens) = P · (original tokens), from Kronecker products (independent of token_source)."""
    if view.kind == "hflip":
        return torch.kron(torch.eye(h), exchange(w))
    if view.kind == "vflip":
        return torch.kron(exchange(h), torch.eye(w))
    p, hh, ww = torch.eye(h * w), h, w
    for _ in range(view.k):  # one counter-clockwise quarter turn: transpose, then flip the rows
        p = torch.kron(exchange(ww), torch.eye(hh)) @ commutation(hh, ww) @ p
        hh, ww = ww, hh
    return p


VIEWS = [View("hflip"), View("vflip"), View("rot90", 1), View("rot90", 2), View("rot90", 3)]


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: f"{v.kind}{v.k}")
@pytest.mark.parametrize("grid", [(3, 5), (4, 4)])
def test_inverse_matches_the_kronecker_permutation(view, grid):
    h, w = grid
    p = permutation_matrix(view, h, w)
    # the permutation really is the view: tokens of an image grid, transformed
    tokens = torch.arange(h * w, dtype=torch.float64)
    assert torch.equal(view.apply(tokens.view(1, 1, h, w)).flatten(), p.double() @ tokens)
    vgrid = (w, h) if view.kind == "rot90" and view.k % 2 else (h, w)
    a_view = torch.rand(2, h * w, h * w, dtype=torch.float64)
    row_view = torch.rand(2, h * w, dtype=torch.float64)
    pd = p.double()
    expected = pd.T @ a_view @ pd  # A = Pᵀ A′ P
    assert torch.equal(invert_patch_attention(view, a_view, grid, vgrid), expected)
    assert torch.equal(invert_class_attention(view, row_view, grid, vgrid), row_view @ pd)


def test_resize_inverse_resizes_maps_back():
    v = View("resize", size=(8, 8))
    row = torch.ones(1, 16)  # a constant 4×4 map stays constant at 2×2
    assert torch.allclose(invert_class_attention(v, row, (2, 2), (4, 4)), torch.ones(1, 4))
    a = torch.rand(1, 16, 16)
    out = invert_patch_attention(v, a, (2, 2), (4, 4))
    assert out.shape == (1, 4, 4)
    # resizing a map that is constant in the key axis gives that constant for every key
    rows = torch.arange(16.0).view(1, 16, 1).expand(1, 16, 16)
    back = invert_patch_attention(v, rows, (2, 2), (4, 4))
    assert torch.allclose(back[0, :, 0], back[0, :, 3])


class PatchMeanAttention(nn.Module):
    """Attention equivariant by construction: tokens are patch means (flip/rotation invariant within a
    patch), no position embedding, A = softmax(QKᵀ) over [class token, patches]."""

    def __init__(self, patch=4, dim=6, pos=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.patch = patch
        self.embed = nn.Parameter(torch.randn(3, dim, generator=g))
        self.cls = nn.Parameter(torch.randn(1, 1, dim, generator=g))
        self.pos = nn.Parameter(torch.randn(1, 64, dim, generator=g)) if pos else None
        self.head = nn.Linear(dim, 3)
        self.prefix = 1

    def grid(self, x):
        return x.shape[-2] // self.patch, x.shape[-1] // self.patch

    def forward_with_attention(self, x, layers=None):
        t = F.avg_pool2d(x, self.patch).flatten(2).transpose(1, 2) @ self.embed
        if self.pos is not None:
            t = t + self.pos[:, :t.shape[1]]
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        a = torch.softmax(t @ t.transpose(1, 2), -1)
        out = a @ t
        return self.head(out[:, 0]), [a, a.sqrt()]  # two "blocks"


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: f"{v.kind}{v.k}")
def test_losses_vanish_for_an_equivariant_model(view):
    x = torch.rand(2, 3, 16, 16)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    out = acr_losses(PatchMeanAttention(), x, labels, view, alpha=1.0, beta=1.0)
    assert out["act"].item() < 1e-6 and out["aff"].item() < 1e-6
    assert out["cls"].item() > 0
    # a position embedding breaks the equivariance: the same losses are then clearly positive
    out = acr_losses(PatchMeanAttention(pos=True), x, labels, view, alpha=1.0, beta=1.0)
    assert out["act"].item() > 1e-3 and out["aff"].item() > 1e-3


def test_loss_weights_and_switches():
    x, labels = torch.rand(2, 3, 16, 16), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    m = PatchMeanAttention(pos=True)
    full = acr_losses(m, x, labels, View("hflip"), alpha=2.0, beta=3.0)
    assert torch.isclose(full["loss"], full["cls"] + 2 * full["act"] + 3 * full["aff"])
    off = acr_losses(m, x, labels, View("hflip"), alpha=0.0, beta=0.0)
    assert torch.isclose(off["loss"], off["cls"])


def test_gradient_localization_by_hand():
    # y_c = Σ_j A[0, 1+j] · W[c, j] (+ a term through the patch rows, which has no class-row gradient)
    w = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]])
    a1 = torch.rand(1, 2, 4, 4, requires_grad=True)  # B×heads×N×N
    a2 = torch.rand(1, 2, 4, 4, requires_grad=True)
    logits = (a1[:, :, 0, 1:].mean(1) @ w.T) + 2 * (a2[:, :, 0, 1:].mean(1) @ w.T) + a1[:, :, 1:, 1:].sum()
    m = gradient_localization(logits, [a1, a2], classes=[0, 1])
    # per head: ∂y/∂A_h = W/heads (layer 1), 2W/heads (layer 2); head sum → W, 2W; ReLU; mean over layers
    expected = (F.relu(w) + F.relu(2 * w)) / 2
    assert torch.allclose(m[0], expected)


def test_affinity_refinement_by_hand():
    m = torch.tensor([[[1.0, 0.0, 0.0]]])
    aff = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert affinity_refinement(m, aff).tolist() == [[[0.5, 0.5, 0.0]]]


def test_seed_maps_of_a_vit():
    torch.manual_seed(0)
    model = create_model("vit_acr_classifier", backbone=dict(name="vit_small_patch16_224", patch_size=8, embed_dim=32,
                                                             depth=3, num_heads=2), img_size=32).eval()
    x = torch.rand(2, 3, 40, 28)
    grad, grad_aff = acr_seed_maps(model, x, [0, 4], layers=[-2, -1], aff_layers=None)
    assert grad.shape == grad_aff.shape == (2, 2, 5, 4)
    assert (grad >= 0).all()
    # grad_aff = grad (as rows) × the mean patch attention of the same blocks
    model(x)
    a = torch.stack([m[:, 1:, 1:] for m in model.attention.head_mean([1, 2])]).mean(0)
    assert torch.allclose(grad_aff.flatten(2), grad.flatten(2) @ a, atol=1e-6)


HYBRID = dict(name="vit_tiny_r_s16_p8_224", patch_size=2, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("size", [(96, 96), (130, 123), (74, 49), (70, 90)])
def test_token_grid_of_a_hybrid_vit_at_odd_sizes(size):
    """The paper's ViT-hybrid: the CNN stem's 'same' padding rounds up, so the grid is not timm's floor."""
    model = create_model("vit_acr_classifier", backbone=HYBRID, img_size=96).eval()
    x = torch.rand(1, 3, *size)
    h, w = model.grid(x)
    assert h * w == model.backbone.forward_features(x).shape[1] - model.prefix
    assert (h, w) == tuple(-(-s // 8) for s in size) and model.patch_size == 8
    grad, grad_aff = acr_seed_maps(model, x, [2], layers=None, aff_layers=None)
    assert grad.shape == grad_aff.shape == (1, 1, h, w)


def test_cam_classifier_on_a_hybrid_vit():
    """The CAM baseline's patch-token maps use the same measured grid (a hybrid's patch is not its stride)."""
    model = create_model("vit_cam_classifier", backbone=HYBRID, img_size=96).eval()
    assert model.class_maps(torch.rand(1, 3, 130, 123)).shape == (1, 20, 17, 16)
    assert model.patch_size == 8


def test_sampled_views_keep_whole_patches():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = sample_view(rng, ["resize", "hflip", "vflip", "rot90"], (0.5, 1.5), 96, 16)
        assert v.kind in ("resize", "hflip", "vflip", "rot90")
        if v.kind == "resize":
            assert v.size[0] % 16 == 0 and 48 <= v.size[0] <= 144
        if v.kind == "rot90":
            assert v.k in (1, 2, 3)
