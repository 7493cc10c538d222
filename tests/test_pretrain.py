"""Pretrained stand-ins: the procedural corpus, the ``pretrain`` flow, the shipped weights and how the
default profiles load them."""
import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.backbones import STANDIN_DIR, load_local_weights
from models.standins import STANDINS, standin_backbone
from pipeline.corpus import CORPUS_CLASSES, corpus_image, outline_mask
from pipeline.errors import UserError
from tests.helpers import cli, cli_env, inspect_json
from workflows import get_flow


def test_corpus_images_are_a_function_of_seed_split_and_index():
    a, ka = corpus_image(3, "train", 11, 64)
    b, kb = corpus_image(3, "train", 11, 64)
    assert (a == b).all() and ka == kb
    assert not (corpus_image(3, "train", 12, 64)[0] == a).all()
    assert not (corpus_image(3, "val", 11, 64)[0] == a).all()
    assert not (corpus_image(4, "train", 11, 64)[0] == a).all()


def test_corpus_draws_every_class_about_equally():
    ks = np.array([corpus_image(0, "train", i, 32)[1] for i in range(1600)])
    counts = np.bincount(ks, minlength=len(CORPUS_CLASSES))
    assert len(CORPUS_CLASSES) == 32 and counts.min() >= 25 and counts.max() <= 85


def test_regular_pentagon_outline_by_hand():
    """Circumradius 1, a vertex at the top (y points down): along +x the boundary is at cos36°/cos18° = 0.851."""
    x = np.array([0.0, 0.0, 0.84, 0.86, 0.0])
    y = np.array([0.0, -0.99, 0.0, 0.0, 0.82])  # bottom: the inradius cos 36° = 0.809 (an edge's midpoint)
    assert outline_mask("pentagon", x, y).tolist() == [True, True, True, False, False]


SHIPPED = sorted(p.stem for p in STANDIN_DIR.glob("*.safetensors"))


def test_every_standin_a_default_profile_names_is_shipped():
    from workflows import FLOWS
    named = set()
    for flow in FLOWS.values():
        cfg = flow.resolve("default").model_dump(mode="json")
        named |= {v["weights"].split(":", 1)[1] for v in cfg.values()
                  if isinstance(v, dict) and str(v.get("weights") or "").startswith("standin:")}
    assert named and named <= set(SHIPPED) <= set(STANDINS)


def test_afa_starts_from_the_mit_standin_on_request():
    from models.afa import afa_spec
    cfg = get_flow("afa_voc").resolve("default", ["afa.weights=standin:mit"])
    enc = afa_spec(cfg.afa).build()
    shipped = load_file(str(STANDIN_DIR / "mit.safetensors"))
    k = "patch_embed.proj.weight"
    assert torch.equal(enc.encoder.net.state_dict()[k], shipped[k].float())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_standin_matches_its_provenance(name):
    """Each stand-in ships under 5 MB with its provenance, whose SHA-256 is the file's."""
    f = STANDIN_DIR / f"{name}.safetensors"
    prov = json.loads(f.with_suffix(".json").read_text())
    assert f.stat().st_size <= 5 * 2**20
    assert hashlib.sha256(f.read_bytes()).hexdigest() == prov["sha256"]
    assert prov["standin"] == name and prov["architecture"] == STANDINS[name].config()
    assert prov["command"].startswith("python cli.py run-flow pretrain")
    assert {"seed", "classes", "train_images"} <= set(prov["corpus"]) and 0 <= prov["val_accuracy"] <= 1
    # every tensor of the backbone as its users build it, nothing else
    assert set(load_file(str(f))) == set(standin_backbone(name, 96).state_dict())


def _first_weight(model, prefix=""):
    return next(v for k, v in model.state_dict().items() if k.startswith(prefix) and v.ndim == 4)


def _build(section):
    from models.acr import acr_classifier_spec
    from models.afa import afa_spec
    from models.affinity_net import affinity_spec
    from models.cam_classifier import cam_classifier_spec
    from models.sasformer import sasformer_spec
    from models.segmentation import segmentation_spec
    return {"cam": lambda c: cam_classifier_spec(c.model, 96), "acr": lambda c: acr_classifier_spec(c.model, 96),
            "affinity": lambda c: affinity_spec(c.affinity), "afa": lambda c: afa_spec(c.afa),
            "segmentation": lambda c: segmentation_spec(c.segmentation), "sasformer": lambda c: sasformer_spec(c.sasformer)}[section]


@pytest.mark.parametrize("flow,network,key,standin", [
    ("cam_voc", "cam", "model", "vit_hybrid"), ("acr_voc", "acr", "model", "vit_hybrid"), ("acr_voc", "affinity", "affinity", "resnet"),
    ("supervised_voc", "segmentation", "segmentation", "resnet"), ("sasformer_voc", "sasformer", "sasformer", "mit"),
])
def test_default_profiles_start_from_the_standins_and_set_returns_to_scratch(flow, network, key, standin):
    spec, make = get_flow(flow), _build(network)
    default = make(spec.resolve("default")).build()
    shipped = {v.shape: v for v in load_file(str(STANDIN_DIR / f"{standin}.safetensors")).values() if v.ndim == 4}
    w = _first_weight(default)
    assert torch.equal(w, shipped[w.shape].float())
    scratch = make(spec.resolve("default", [f"{key}.weights=null"])).build()
    assert not torch.equal(_first_weight(scratch), w)
    assert getattr(spec.resolve("smoke"), key).weights is None  # smoke stays small and from scratch


def test_a_standin_that_does_not_fit_names_the_architecture_it_was_made_for():
    from models.backbones import create_vit
    hybrid = standin_backbone("vit_hybrid", 96)
    shallow = create_vit("vit_tiny_r_s16_p8_224", 96, patch_size=2, embed_dim=128, depth=2, num_heads=4)
    load_local_weights(hybrid, "standin:vit_hybrid")
    with pytest.raises(UserError, match=r"pretrained as .*'depth': 4.*null to train from scratch"):
        load_local_weights(shallow, "standin:vit_hybrid")
    with pytest.raises(UserError, match="stand-in weights 'standin:nope' not found.*run-flow pretrain"):
        load_local_weights(hybrid, "standin:nope")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return cli_env(tmp_path_factory.mktemp("cache"))


def test_pretrain_smoke_is_deterministic_resumable_and_keyed_without_data(tmp_path, env):
    """Two runs give the same bytes (the shipped files are reproducible), a rerun is cached, val accuracy and
    provenance are written, and the data root does not enter the keys (no dataset is read)."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for r in runs:
        p = cli("run-flow", "pretrain", "--profile", "smoke", "--run-dir", r, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
    for name in STANDINS:
        a, b = (r / "stages" / f"pretrain_{name}" / "backbone.safetensors" for r in runs)
        assert a.read_bytes() == b.read_bytes()
        prov = json.loads(a.with_suffix(".json").read_text())
        assert prov["command"] == f"python cli.py run-flow pretrain --profile smoke --run-dir {runs[0]}"
        assert prov["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
        assert all(v.dtype == torch.float16 for v in load_file(str(a)).values() if v.is_floating_point())
    info = inspect_json(runs[0], env)
    assert [s["name"] for s in info["stages"]] == [f"pretrain_{n}" for n in STANDINS]
    assert all(0 <= s["metrics"]["val_accuracy"] <= 1 for s in info["stages"])
    p = cli("run-flow", "pretrain", "--profile", "smoke", "--run-dir", runs[0], "--data-root", tmp_path / "nowhere", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert {s["status"] for s in inspect_json(runs[0], env)["stages"]} == {"cached"}
