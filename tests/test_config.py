import pytest
import yaml

from pipeline.config import parse_set, run_config_type
from pipeline.errors import UserError
from workflows import FLOWS, get_flow


def resolve(flow, profile="default", sets=()):
    return get_flow(flow).resolve(profile, list(sets))


def test_profiles_and_sets_apply_in_order():
    cfg = resolve("cam_voc", "smoke", ["train_classifier.steps=7", "pseudo.refine=[crf]", "data.root=null"])
    assert cfg.train_classifier.steps == 7
    assert cfg.pseudo.refine == ["crf"]
    assert cfg.data.synthetic.train == 48  # from the smoke profile
    assert cfg.profile == "smoke"


def test_paper_profile_carries_paper_hyperparameters():
    cfg = resolve("cam_voc", "paper")
    assert cfg.data.train_split == "train_aug"
    assert cfg.pseudo.bkg_threshold == 0.45
    assert cfg.segmentation.backbone == "resnet101.tv_in1k" and cfg.segmentation.eval_crf  # torchvision's ImageNet file
    # a method section's own profile overrides (registered beside its model) apply too
    assert cfg.model.backbone == "vit_base_patch16_384" and cfg.train_classifier.steps == 20000


def test_unknown_key_names_the_key():
    with pytest.raises(UserError, match=r"'train_classifier.stepz' \(the closest valid key is 'train_classifier.steps'\)"):
        resolve("cam_voc", "smoke", ["train_classifier.stepz=3"])


@pytest.mark.parametrize("pair, says", [
    # the whole path, not its first part; no key is close, so the keys where the path left the config
    ("no.such.key=1", r"unknown config key 'no.such.key' \(the config has acr, afa, "),
    ("pseudo.nope.deeper=2", r"unknown config key 'pseudo.nope.deeper' "),
    ("pseudo.bkg_threshhold=0.3", r"'pseudo.bkg_threshhold' \(the closest valid key is 'pseudo.bkg_threshold'\)"),
])
def test_unknown_key_names_its_whole_path_and_the_closest_valid_key(pair, says):
    with pytest.raises(UserError, match=says):
        resolve("cam_voc", "smoke", [pair])


def test_ill_typed_value_names_the_key():
    with pytest.raises(UserError, match="'train_classifier.steps'"):
        resolve("cam_voc", "smoke", ["train_classifier.steps=many"])
    with pytest.raises(UserError, match="pseudo.refine"):
        resolve("cam_voc", "smoke", ["pseudo.refine=[blur]"])


@pytest.mark.parametrize("flow,key,value,says", [
    ("swtformer_voc", "swtformer.backbone", "resnet18", "'resnet18' is a timm resnet model, this key takes a swin_transformer one"),
    ("cam_voc", "model.backbone", "resnet18", "timm resnet model, this key takes a vision_transformer or vision_transformer_hybrid one"),
    ("acr_voc", "model.backbone", "pvt_v2_b1", "timm pvt_v2 model"),
    ("sasformer_voc", "sasformer.backbone", "swin_tiny_patch4_window7_224", "takes a pvt_v2 or mix_transformer one: use e.g. mit_b1"),
    ("afa_voc", "afa.backbone", "vit_small_patch16_224", "takes a pvt_v2 or mix_transformer one"),
    ("supervised_voc", "segmentation.backbone", "resnet1", "no timm model is called 'resnet1': use e.g. resnet18"),
    ("acr_voc", "affinity.backbone", "resnt50", "no timm model is called 'resnt50'"),
])
def test_a_backbone_of_the_wrong_family_stops_when_the_config_is_read(flow, key, value, says):
    """Before any stage (the config is read first), not when the network is first built after earlier stages."""
    with pytest.raises(UserError, match=rf"config key '{key}': .*{says}"):
        resolve(flow, "smoke", [f"{key}={value}"])
    assert resolve(flow, "smoke", [f"{key}=" + {"swtformer": "swin_base_patch4_window7_224", "model": "vit_tiny_r_s16_p8_224",
                                                "sasformer": "pvt_v2_b0", "afa": "pvt_v2_b0", "segmentation": "resnet50",
                                                "affinity": "resnet50.a1_in1k"}[key.split(".")[0]]])


@pytest.mark.parametrize("key", ["pseudo.bkg_band", "affinity.bkg_band", "afa.bkg_band"])
def test_every_background_band_is_one_rule(key):
    """One name and one check for the (low, high) background scores, in every section."""
    assert resolve("acr_voc", "smoke", [f"{key}=[0.1, 0.4]"]).section(key) in ((0.1, 0.4), [0.1, 0.4])
    with pytest.raises(UserError, match=rf"'{key}'.*low <= high"):
        resolve("acr_voc", "smoke", [f"{key}=[0.4, 0.1]"])


def test_not_key_value():
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_set(["steps"])


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_every_printed_key_can_be_set(flow):
    cfg = resolve(flow, "default")
    printed = yaml.safe_load(cfg.to_yaml())
    sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in _leaves(printed) if k not in ("flow", "profile")]
    again = resolve(flow, "default", sets)
    assert again == cfg
    assert run_config_type().model_validate(printed) == cfg


def test_acr_table4_settings_and_profiles():
    def acr(profile, sets=()):
        return resolve("acr_voc", profile, sets)

    base = acr("default", ["acr.alpha=0", "acr.beta=0"])
    assert (base.acr.alpha, base.acr.beta) == (0, 0)
    assert acr("default", ["acr.beta=0"]).acr.alpha > 0
    cfg = acr("paper")
    assert cfg.model.backbone == "vit_base_r50_s16_384" and cfg.acr.seed_mode == "grad_aff"
    assert cfg.train_classifier.crop_size == 384 and cfg.model.pretrained
    # both classifiers start from the ViT-hybrid stand-in (the paper's family); smoke stays a small plain ViT from scratch
    assert acr("default").model.weights == resolve("cam_voc", "default").model.weights == "standin:vit_hybrid"
    assert acr("smoke").model.weights is None and acr("smoke").model.backbone == "vit_small_patch16_224"
    with pytest.raises(UserError, match="acr.seed_mode"):
        acr("smoke", ["acr.seed_mode=gradcam"])


def test_afa_profiles_and_table2_switches():
    def afa(profile, sets=()):
        return resolve("afa_voc", profile, sets)

    paper = afa("paper")
    a = paper.afa
    # the released code's values (every one: tests/test_afa_official.py, docs/afa.md)
    assert (a.backbone, a.output_stride, a.attention_per_token, a.attention) == ("mit_b1", 16, False, "logits")
    assert tuple(a.bkg_band) == (0.35, 0.55) and (a.seg_weight, a.aff_weight, a.reg) == (0.1, 0.1, False)
    assert (a.cls_warmup_steps, a.aff_warmup_steps, a.train.steps, a.train.crop_size) == (2001, 2001, 20000, 512)
    assert (a.radius, a.beta) == (8, 2.0) and paper.pseudo.bkg_threshold == 0.45 and paper.segmentation.eval_crf
    off = afa("default", ["afa.affinity=false", "afa.par=false", "afa.reg=false"]).afa
    assert not (off.affinity or off.par or off.reg)
    smoke = afa("smoke").afa
    assert smoke.cls_warmup_steps < smoke.aff_warmup_steps < smoke.train.steps
    default = afa("default")
    assert (tuple(default.afa.bkg_band), default.afa.train.steps) == ((0.02, 0.15), 1500)
    # the multistage flow shares afa_voc's single-stage settings in every profile (its first stages are
    # cached across the two flows); only its separate segmentation network differs
    multistage = {p: resolve("afa_voc_multistage", p) for p in ("smoke", "default", "paper")}
    for profile, mine in multistage.items():
        theirs = afa(profile)
        assert mine.afa == theirs.afa and mine.pseudo == theirs.pseudo and mine.cam == theirs.cam
    assert multistage["default"].segmentation.train.steps == 600


def test_a_run_folder_from_before_the_workers_section_still_opens(tmp_path):
    """``pseudo.workers`` became ``workers.processes``: an older run folder opens (inspect, resume) with it moved."""
    import yaml

    from pipeline.runs import Run
    from workflows import get_flow
    cfg = get_flow("cam_voc").resolve("smoke").model_dump(mode="json")
    cfg["pseudo"]["workers"] = 3
    del cfg["workers"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert Run.open(tmp_path).config.workers.processes == 3
