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


def _tiny_specs():
    from models import ModelSpec
    return {
        "vit_cam_classifier": ModelSpec("vit_cam_classifier", dict(backbone=VIT, img_size=64)),
        "vit_acr_classifier": ModelSpec("vit_acr_classifier", dict(backbone=VIT, img_size=64)),
        "affinity_net": ModelSpec("affinity_net", dict(backbone="resnet18", dims=[8, 8, 16], radius=3)),
        "afa_mit": ModelSpec("afa_mit", dict(backbone="pvt_v2_b0", embed_dims=[8, 16, 16, 24], depths=[1, 1, 1, 1],
                                             num_heads=[1, 1, 2, 2], output_stride=8, decoder_dim=8)),
        "segmentation_net": ModelSpec("segmentation_net", dict(backbone="resnet18")),
        "sasformer": ModelSpec("sasformer", dict(backbone="pvt_v2_b0", embed_dims=[8, 16, 16, 24], depths=[1, 1, 1, 1],
                                                 num_heads=[1, 1, 2, 2], decoder_dim=8)),
        "standin_classifier": ModelSpec("standin_classifier", dict(standin="resnet", img_size=64, num_classes=32)),
        "swtformer": ModelSpec("swtformer", dict(backbone=dict(name="swin_tiny_patch4_window7_224", patch_size=2, embed_dim=8,
                                                               depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4),
                                                 hff_dim=4)),
    }


#: which protocols of models/protocols.py each registered model provides (what the stages that read it call)
PROVIDES = {"vit_cam_classifier": ("Trainable", "ClassMapModel"),
            "vit_acr_classifier": ("Trainable", "ClassMapModel", "AttentionModel"),
            "affinity_net": ("Trainable", "AffinityModel", "SparseAffinityModel"),
            "afa_mit": ("Trainable", "ClassMapModel", "AffinityModel", "Segmenter"),
            "segmentation_net": ("Trainable", "Segmenter"),
            "sasformer": ("Trainable", "Segmenter"),
            "standin_classifier": ("Trainable",),
            "swtformer": ("Trainable", "ClassMapModel")}


def test_every_registered_model_provides_its_protocols():
    import models.protocols as P
    from models import list_models
    specs = _tiny_specs()
    assert set(list_models()) == set(specs) == set(PROVIDES)
    for name, spec in specs.items():
        model = spec.build().eval()
        for proto in PROVIDES[name]:
            assert isinstance(model, getattr(P, proto)), (name, proto)
        x = torch.randn(1, 3, 48, 56)
        with torch.no_grad():
            if "ClassMapModel" in PROVIDES[name]:
                assert model.class_maps(x).shape[:2] == (1, 20) and model.class_scores(x).shape == (1, 20)
            if "AffinityModel" in PROVIDES[name]:
                aff, (h, w) = model.affinity(x)
                assert aff.shape == (1, h * w, h * w)
            if "SparseAffinityModel" in PROVIDES[name]:
                sparse, grid = model.sparse_affinity(x)
                assert grid == (h, w) and len(sparse) == 1 and sparse[0].is_sparse
                torch.testing.assert_close(sparse[0].to_dense(), aff[0])
            if "Segmenter" in PROVIDES[name]:
                assert model(x).shape == (1, 21, 48, 56)
            if "AttentionModel" in PROVIDES[name]:
                h, w = model.grid(x)
                assert model.patch_attention(x).shape == (1, h * w, h * w)


def test_a_model_spec_rebuilds_without_fetching_initial_weights(tmp_path):
    from models import ModelSpec
    spec = ModelSpec("vit_cam_classifier", dict(backbone={**VIT, "pretrained": True, "weights": "/nowhere.pth"}, img_size=64))
    again = ModelSpec.from_json(spec.to_json()).for_inference()
    assert again.kwargs["backbone"]["pretrained"] is False and again.kwargs["backbone"]["weights"] is None
    assert again.build().class_maps(torch.randn(1, 3, 32, 32)).shape == (1, 20, 4, 4)
    with pytest.raises(TypeError, match="pooling_mode"):
        create_model("vit_cam_classifier", backbone=VIT, img_size=64, pooling_mode="gap")
