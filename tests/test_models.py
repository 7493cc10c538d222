import pytest
import torch
from safetensors.torch import save_file

from models import create_model
from models.backbones import create_vit
from models.cam_classifier import multiscale_cams, pool_scores
from pipeline.errors import UserError

VIT = dict(name="vit_small_patch16_224", patch_size=8, embed_dim=32, depth=2, num_heads=2)


def test_local_weights_safetensors_and_pth(tmp_path):
    torch.manual_seed(0)
    src = create_vit(img_size=64, **VIT)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, str(tmp_path / "vit.safetensors"))
    torch.save({"model": sd}, tmp_path / "vit.pth")
    for f in ("vit.safetensors", "vit.pth"):
        torch.manual_seed(1)
        dst = create_vit(img_size=64, weights=str(tmp_path / f), **VIT)
        for k, v in dst.state_dict().items():
            assert torch.equal(v, sd[k]), (f, k)


def test_missing_or_foreign_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        create_vit(img_size=64, weights=str(tmp_path / "none.safetensors"), **VIT)
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="does not fit"):
        create_vit(img_size=64, weights=str(tmp_path / "other.safetensors"), **VIT)


def test_classifier_attention_is_captured_in_graph_and_sizes_are_free():
    m = create_model("vit_cam_classifier", backbone=VIT, img_size=64)
    x = torch.randn(2, 3, 61, 83)  # not multiples of the patch: padded
    logits = m(x)
    assert logits.shape == (2, 20)
    n = 1 + 8 * 11
    att = m.attention.head_mean()
    assert len(att) == 2 and att[0].shape == (2, n, n)
    assert att[0].requires_grad
    assert torch.allclose(att[0].sum(-1), torch.ones(2, n), atol=1e-5)
    cams = multiscale_cams(m.eval(), x[0], [1.0, 0.5], flip=True)
    assert cams.shape == (20, 61, 83) and (cams >= 0).all()


def test_pooling():
    cams = torch.arange(10.0).view(1, 1, 2, 5)
    assert pool_scores(cams, "gap").item() == 4.5
    assert pool_scores(cams, "gmp").item() == 9
    assert pool_scores(cams, "topk", 0.2).item() == 8.5


@pytest.mark.parametrize("head", ["aspp", "mlp"])
def test_segmentation_net_full_resolution(head):
    m = create_model("segmentation_net", backbone="resnet18", head=head)
    assert m(torch.randn(1, 3, 57, 70)).shape == (1, 21, 57, 70)
