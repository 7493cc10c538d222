import pytest
import yaml

from pipeline.config import RunConfig, parse_set, resolve_config
from pipeline.errors import UserError


def test_profiles_and_sets_apply_in_order():
    cfg = resolve_config("cam_voc", "smoke", ["train_classifier.steps=7", "pseudo.refine=[crf]", "data.root=null"])
    assert cfg.train_classifier.steps == 7
    assert cfg.pseudo.refine == ["crf"]
    assert cfg.data.synthetic.train == 48  # from the smoke profile
    assert cfg.profile == "smoke"


def test_paper_profile_carries_paper_hyperparameters():
    cfg = resolve_config("cam_voc", "paper")
    assert cfg.data.train_split == "train_aug"
    assert cfg.pseudo.bkg_threshold == 0.45
    assert cfg.segmentation.backbone == "resnet101" and cfg.segmentation.eval_crf


def test_unknown_key_names_the_key():
    with pytest.raises(UserError, match="'train_classifier.stepz'"):
        resolve_config("cam_voc", "smoke", ["train_classifier.stepz=3"])


def test_ill_typed_value_names_the_key():
    with pytest.raises(UserError, match="'train_classifier.steps'"):
        resolve_config("cam_voc", "smoke", ["train_classifier.steps=many"])
    with pytest.raises(UserError, match="pseudo.refine"):
        resolve_config("cam_voc", "smoke", ["pseudo.refine=[blur]"])


def test_not_key_value():
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_set(["steps"])


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v


def test_every_printed_key_can_be_set():
    cfg = resolve_config("cam_voc", "default")
    printed = yaml.safe_load(cfg.to_yaml())
    sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in _leaves(printed) if k not in ("flow", "profile")]
    again = resolve_config("cam_voc", "default", sets)
    assert again == cfg
    assert RunConfig.model_validate(printed) == cfg


def test_acr_table4_settings_and_profiles():
    from workflows.registry import get_flow
    spec = get_flow("acr_voc")

    def acr(profile, sets=()):
        return resolve_config("acr_voc", profile, list(sets), spec.defaults, None, spec.profile_defaults)

    base = acr("default", ["acr.alpha=0", "acr.beta=0"])
    assert (base.acr.alpha, base.acr.beta) == (0, 0)
    assert acr("default", ["acr.beta=0"]).acr.alpha > 0
    cfg = acr("paper")
    assert cfg.model.arch == "vit_acr" and cfg.model.backbone == "vit_base_r50_s16_384" and cfg.cam.mode == "grad_aff"
    assert cfg.train_classifier.crop_size == 384 and cfg.model.pretrained
    assert acr("default").model.depth == 4 and resolve_config("cam_voc", "default").model.depth == 2
    with pytest.raises(UserError, match="cam.mode"):
        acr("smoke", ["cam.mode=gradcam"])


def test_afa_profiles_and_table2_switches():
    from workflows.registry import get_flow
    spec = get_flow("afa_voc")

    def afa(profile, sets=()):
        return resolve_config("afa_voc", profile, list(sets), spec.defaults, None, spec.profile_defaults)

    paper = afa("paper")
    a = paper.afa
    assert (a.backbone, a.pretrained, a.output_stride, a.attention_per_token) == ("pvt_v2_b1", True, 16, False)
    assert tuple(a.bkg_band) == (0.35, 0.55) and (a.seg_weight, a.aff_weight, a.reg_weight) == (0.1, 0.1, 0.01)
    assert (a.cls_warmup_steps, a.aff_warmup_steps, a.train.steps, a.train.crop_size) == (2000, 4000, 20000, 512)
    assert (a.radius, a.power) == (8, 2.0) and paper.pseudo.bkg_threshold == 0.45 and paper.segmentation.eval_crf
    off = afa("default", ["afa.affinity=false", "afa.par=false", "afa.reg=false"]).afa
    assert not (off.affinity or off.par or off.reg)
    smoke = afa("smoke").afa
    assert smoke.cls_warmup_steps < smoke.aff_warmup_steps < smoke.train.steps
    default = afa("default")
    assert (tuple(default.afa.bkg_band), default.afa.train.steps) == ((0.02, 0.15), 1500)
    # the multistage flow shares afa_voc's single-stage settings in every profile (its first stages are
    # cached across the two flows); only its separate segmentation network differs
    ms = get_flow("afa_voc_multistage")
    multistage = {p: resolve_config("afa_voc_multistage", p, [], ms.defaults, None, ms.profile_defaults)
                  for p in ("smoke", "default", "paper")}
    for profile, mine in multistage.items():
        theirs = afa(profile)
        assert mine.afa == theirs.afa and mine.pseudo == theirs.pseudo and mine.cam == theirs.cam
    assert multistage["default"].segmentation.train.steps == 600
