"""Run configuration: pydantic sections, a registry of method sections, profiles and ``--set KEY=VALUE``.

The shared sections (``data``, ``cam``, ``pseudo``, ``segmentation``) are declared here. A method
declares its own section beside its model and registers it, with its profile overrides::

    @config_section("acr", profiles={"paper": {"alpha": 1.0}})
    class ACRConfig(Section):
        alpha: float = 1.0

so a new method adds its section without editing this file. ``run_config_type()`` assembles the
whole ``RunConfig`` model from the registered sections (the methods' modules must be imported first:
``workflows`` imports every flow, and each flow its stages and models).

A config is resolved in layers: the defaults, the flow's own defaults, the profile's overrides of
every section, the flow's overrides for that profile, then the user's ``--set`` pairs. Every key
that ``--show-config`` prints can be set with its dotted path; unknown keys and ill-typed values are
refused with one line naming the key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from pipeline.errors import UserError

PROFILE_NAMES = ("smoke", "default", "paper")


def _device_name(name: str) -> str:
    from pipeline.runtime import DEVICE_PATTERN
    if not DEVICE_PATTERN.match(name):
        raise ValueError("use auto, cpu, cuda or cuda:N")
    return name


def _timm_model(families: tuple[str, ...], example: str, name: str) -> str:
    import timm  # here, not above: reading a config imports neither torch nor timm until a backbone is checked
    if not timm.is_model(name):
        raise ValueError(f"no timm model is called {name!r}: use e.g. {example}")
    family = timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    if families and family not in families:
        raise ValueError(f"{name!r} is a timm {family} model, this key takes a {' or '.join(families)} one: use e.g. {example}")
    return name


def timm_model(*families: str, example: str) -> Any:
    """The type of a backbone key: a timm model name (tags allowed) of one of ``families`` (the timm modules that
    define them: ``swin_transformer``, ``pvt_v2``, ...; none: any timm model). Checked when the config is read, so
    a wrong backbone stops ``run-flow`` before any stage with one line naming the key, the family and an example.

    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(timm_model("swin_transformer", example="swin_tiny_patch4_window7_224")).validate_python("resnet18")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for function-after[...]
      Value error, 'resnet18' is a timm resnet model, this key takes a swin_transformer one: use e.g. swin_tiny_patch4_window7_224 ...
    """
    return Annotated[str, AfterValidator(partial(_timm_model, families, example))]


#: the type of a config key naming a CNN feature backbone (segmentation.backbone, affinity.backbone)
FeatureBackboneName = timm_model(example="resnet18")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The ranges of the knobs: every number a config holds has one (tests/test_config.py walks every section).
#: a count of things that must exist: steps, images, sizes, iterations, channels
Count = Annotated[int, Field(ge=1)]
#: a count that may be zero (warm-up steps, extra workers, a step to start from)
NonNegInt = Annotated[int, Field(ge=0)]
#: a seed of a random generator
Seed = Annotated[int, Field(ge=0)]
#: a strictly positive real (a learning rate, a scale, a standard deviation, a temperature)
Positive = Annotated[float, Field(gt=0)]
#: a weight or a strength that 0 switches off
NonNegative = Annotated[float, Field(ge=0)]
#: a fraction or a probability in [0, 1]
Fraction = Annotated[float, Field(ge=0, le=1)]
#: a transformer block's index, negatives counting from the end (checked against the depth when the model is built)
LayerIndex = Annotated[int, Field(ge=-64, le=63)]
#: image scales of multi-scale inference: at least one, each positive
Scales = Annotated[list[Positive], Field(min_length=1)]


def _ordered_range(band: tuple[float, float]) -> tuple[float, float]:
    low, high = band
    if not 0 < low <= high:
        raise ValueError(f"must be (low, high) with 0 < low <= high, got {list(band)}")
    return band


#: a (low, high) range of positive factors, as a random rescale's
ScaleRange = Annotated[tuple[float, float], AfterValidator(_ordered_range)]


def _ordered_band(band: tuple[float, float]) -> tuple[float, float]:
    low, high = band
    if not 0 <= low <= high:
        raise ValueError(f"must be (low, high) with 0 <= low <= high, got {list(band)}")
    return band


#: Two background scores (low, high) that split labels into reliable and ignored pixels
#: (``stages.labels.reliable_labels``): foreground where a class beats ``high``, background where
#: nothing beats ``low``, 255 between. The one name of this idea in every section: ``bkg_band``.
BkgBand = Annotated[tuple[float, float], AfterValidator(_ordered_band)]


class SyntheticConfig(Section):
    style: Literal["a", "b"] = "a"  # the generator (pipeline/synthetic.py): b is held out to check that defaults transfer
    train: Count = 200
    val: Count = 60
    seed: Seed = 0
    min_size: Annotated[int, Field(ge=32)] = 96
    max_size: Annotated[int, Field(ge=32)] = 144


class SparseConfig(Section):
    """Points or scribbles (``pipeline/sparse.py``) for the flows that learn from them."""

    kind: Literal["scribble", "point"] = "scribble"
    # files or folders (ScribbleSup XML folder/zip, label-PNG folder; What's the Point JSONs); empty: the standard
    # names in the VOC root (the synthetic data writes its own there)
    paths: list[str] = []


class DataConfig(Section):
    root: str | None = None  # None: the embedded synthetic dataset
    # the dataset under root: voc (PASCAL VOC 2012) | coco (MS COCO 2014: official layout or JPEGImages/{train,val});
    # null: detected from what root holds (pipeline.voc.detect_layout). Without root: the embedded synthetic data
    # in that dataset's layout (null: VOC)
    dataset: Literal["voc", "coco"] | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    train_split: str = "train"  # images the networks train on (paper: train_aug)
    label_split: str = "train"  # images that get seeds and pseudo labels, scored against their masks
    val_split: str = "val"
    score_split: str | None = None  # score seeds/pseudo labels only on this split's images (paper: train)
    max_images: Count | None = None  # cap on every split (for quick looks at a large dataset)
    sparse: SparseConfig = SparseConfig()
    # pixels above which an image is refused before any stage (8000² would need ~100 GiB through CAM and PAR)
    max_pixels: Count = 4096 * 4096
    # what the stage keys know of each split image, mask and annotation: size and modification time (stat), or a
    # digest of the bytes (content: reads every file at each run, and recomputes the stages once when switched)
    fingerprint: Literal["stat", "content"] = "stat"


class TrainConfig(Section):
    steps: Count = 600
    batch_size: Count = 8
    crop_size: Annotated[int, Field(ge=16)] = 96
    scale_range: ScaleRange = (0.7, 1.3)  # random rescale before the crop
    # instead of scale_range: the long side resized to a whole number of pixels drawn uniformly from [a, b]
    # (ACR's released training: [345, 438] = [0.9, 1/0.875] × the 384 crop); null: scale_range
    resize_long: tuple[Count, Count] | None = None
    hflip: bool = True
    color_jitter: Fraction = 0.3  # brightness/contrast/saturation strength; 0 switches it off
    brightness_shift: float = Field(0.0, ge=0, le=255)  # add one value in [−s, s] grey levels to every pixel (SASFormer: 10)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Positive = 1e-3
    head_lr_mult: Positive = 10.0  # heads learn 10x faster, as in the papers
    weight_decay: NonNegative = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    warmup_steps: NonNegInt = 50
    poly_power: NonNegative = 0.9
    checkpoint_every: Count = 100
    log_every: Count = 10
    threads: NonNegInt = 0  # torch threads; 0 = all cores


class CamConfig(Section):
    """Inference of localisation maps (every seed stage) and the threshold sweep that scores them."""

    scales: Scales = [1.0, 0.5, 1.5]
    flip: bool = True
    # background thresholds tried by eval_seeds
    sweep: Annotated[list[Fraction], Field(min_length=1)] = [0.01, 0.02, 0.03, 0.05, 0.075] + [round(0.05 * i, 2) for i in range(2, 20)]
    # when the best of the sweep lies at its edge, go on past it by halving (stages/eval_seeds.py, widen_sweep)
    sweep_widen: bool = True


class ParConfig(Section):
    dilations: Annotated[list[Count], Field(min_length=1)] = [1, 2, 4, 8, 12, 24]
    num_iter: NonNegInt = 10
    w_rgb: Positive = 0.3
    w_pos: Positive = 0.3
    w_mix: NonNegative = 0.01
    # the pseudo labels' PAR runs at the working size whose short side is this many pixels (stages.refine.par), so
    # its reach is the same share of every image at any resolution; 256 is what AFA's PAR sees (512 crops at
    # down_scale 2); null: at the image's own resolution. AFA's in-training PAR uses afa.par_downscale instead
    size: Count | None = None


class CrfConfig(Section):
    n_iter: NonNegInt = 10
    pos_xy_std: Positive = 3
    pos_w: NonNegative = 3
    bi_xy_std: Positive = 80
    bi_rgb_std: Positive = 13
    bi_w: NonNegative = 10


class CalibrateConfig(Section):
    """A split whose masks may choose the labelling's thresholds and route (docs/labels.md): its images are left out
    of every seed / pseudo-label score, and inspect, compare and run.json say the run was calibrated."""

    split: str  # a split list of ImageSets/Segmentation whose images have masks (e.g. 50 images of train)


class PseudoConfig(Section):
    # background score appended to the max-normalised maps: a number, or auto — the threshold that the stage
    # scoring the maps chose by a rule that reads no mask (Otsu's threshold of the top scores, stages/eval_seeds.py);
    # with pseudo.calibrate: the best of cam.sweep on the calibration split's masks
    bkg_threshold: Fraction | Literal["auto"] = "auto"
    # the label-free rule of auto (docs/labels.md): otsu_image — each image's own Otsu threshold of its top scores
    # (stages.eval_seeds.image_otsu_threshold); otsu_global — one Otsu threshold of every labelled image's top scores
    bkg_rule: Literal["otsu_image", "otsu_global"] = "otsu_global"
    bkg_band: BkgBand | None = None  # (low, high): reliable labels, 255 where only the low score says foreground
    refine: list[Literal["par", "crf"]] = ["par"]
    # with pseudo.calibrate only: label by the route (refined or not; the random walk's maps or the seeds before it)
    # that scores best on the calibration masks, the method's on a tie; without calibration the method's route
    guard: bool = True
    calibrate: CalibrateConfig | None = None  # null: no mask is read while labelling (CONTRACT.md)
    par: ParConfig = ParConfig(num_iter=20, size=256)
    crf: CrfConfig = CrfConfig()


class WorkersConfig(Section):
    """Where per-image stages run (seeds, random walk, pseudo labels, evaluation): ``pipeline/parallel.py``."""

    executor: Literal["local", "dask"] = "local"  # local: a process pool here; dask: a dask.distributed cluster
    address: str | None = None  # the dask scheduler (tcp://host:8786); null: a local cluster of `processes` workers
    processes: int = Field(2, ge=1)  # local pool size (and the local dask cluster's workers) for CPU-bound images
    gpu_batch: int = Field(8, ge=1)  # images of one size per forward pass of a network's inference on a GPU
    loader_workers: int = Field(0, ge=0)  # processes that decode and augment every training stage's batches


class SegmentationConfig(Section):
    backbone: FeatureBackboneName = "resnet18"  # timm model with features_only
    channels: list[Count] | None = [32, 64, 128, 192]  # a timm ResNet's stage widths (None: the model's own)
    pretrained: bool = False  # ImageNet weights through timm (needs the hub)
    # a local .safetensors / .pth file, or standin:NAME (models/standins.py); null trains from scratch
    weights: str | None = "standin:resnet"
    weights_ignore: list[str] = []  # glob patterns of the weights file's tensors to drop (e.g. [head.*]); the rest loads strictly (docs/weights.md)
    head: Literal["aspp", "mlp"] = "aspp"
    output_stride: Literal[8, 16, 32] = 8
    train: TrainConfig = TrainConfig(steps=1200, batch_size=8, crop_size=96, lr=2e-3, head_lr_mult=1.0)
    eval_scales: Scales = [1.0, 0.75, 1.25]
    eval_flip: bool = True
    eval_crf: bool = False
    eval_split: str = "val"


class RunConfigBase(Section):
    """The keys of every run; ``run_config_type()`` adds every section."""

    flow: str = "cam_voc"
    profile: Literal["smoke", "default", "paper"] = "default"
    seed: Seed = 0
    # the scale knobs (pipeline/runtime.py): where networks run, in which precision, in how many processes
    device: Annotated[str, AfterValidator(_device_name)] = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["off", "bf16", "fp16"] = "off"  # mixed precision of every network's training and inference
    devices: int = Field(1, ge=1)  # processes per training stage: DistributedDataParallel when > 1

    def section(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SectionSpec:
    name: str
    type: type[Section]
    default: Section
    profiles: dict[str, dict] = field(default_factory=dict)  # per profile, overrides of this section


_SECTIONS: dict[str, SectionSpec] = {}


def register_section(name: str, type_: type[Section], default: Section | None = None,
                     profiles: dict[str, dict] | None = None) -> None:
    """Add section ``name`` (its type, its default value, its per-profile overrides) to every run's config."""
    bad = set(profiles or {}) - set(PROFILE_NAMES)
    if bad:
        raise ValueError(f"section {name!r}: unknown profiles {sorted(bad)}")
    spec = SectionSpec(name, type_, default if default is not None else type_(), dict(profiles or {}))
    old = _SECTIONS.get(name)
    if old is not None and ((old.type.__qualname__, old.default.model_dump(), old.profiles)
                            != (type_.__qualname__, spec.default.model_dump(), spec.profiles)):
        raise ValueError(f"config section {name!r} is registered twice, differently ({old.type.__qualname__}, {type_.__qualname__})")
    _SECTIONS[name] = spec
    if "run_config_type" in globals():  # the shared sections register before it is defined
        run_config_type.cache_clear()
        _parsed.cache_clear()


def config_section(name: str, profiles: dict[str, dict] | None = None):
    """Class decorator: register a ``Section`` subclass as the run config's section ``name``."""

    def deco(cls: type[Section]) -> type[Section]:
        register_section(name, cls, None, profiles)
        return cls

    return deco


#: the shared sections and their per-profile overrides
register_section("data", DataConfig, profiles={
    "smoke": {"synthetic": {"train": 48, "val": 16, "min_size": 80, "max_size": 112}},
    "paper": {"train_split": "train_aug", "label_split": "train_aug", "score_split": "train"},
})
register_section("cam", CamConfig, profiles={"smoke": {"scales": [1.0], "flip": True},
                                             "paper": {"scales": [1.0, 0.5, 1.5, 2.0], "flip": True}})
register_section("pseudo", PseudoConfig, profiles={
    "smoke": {"par": {"num_iter": 10}, "crf": {"n_iter": 5}},
    # the papers label by their method's route whatever it scores
    "paper": {"bkg_threshold": 0.45, "refine": ["par", "crf"], "guard": False, "par": {"num_iter": 10, "size": None}},
})
register_section("workers", WorkersConfig, profiles={"paper": {"processes": 8, "loader_workers": 8}})
#: the profiles' overrides of the base keys (the sections declare their own). None today: the `paper` profiles run in
#: float32 as the official code does (IRN, ACR ``train_acr.py:137``, AFA, SIPE); a method whose released code trains in
#: mixed precision says so in its flow (sasformer_voc: fp16); ``--set amp=bf16`` trades exactness for speed on a GPU
BASE_PROFILES: dict[str, dict] = {}
#: the smoke profile's schedule of every training stage: a few steps, frequent checkpoints
SMOKE_TRAIN = {"steps": 60, "batch_size": 8, "crop_size": 80, "warmup_steps": 5, "checkpoint_every": 20, "log_every": 5}
register_section("segmentation", SegmentationConfig, profiles={
    "smoke": {"weights": None, "train": {**SMOKE_TRAIN, "lr": 2e-3}, "eval_scales": [1.0], "eval_flip": False},
    # DeepLab-v2 ResNet-101 as in the papers' second stage, from torchvision's ImageNet weights (timm's tag tv_in1k is
    # torchvision's resnet101-63fe2227.pth; timm's own default, a1h_in1k, is timm's training: another initialisation)
    "paper": {"backbone": "resnet101.tv_in1k", "channels": None, "pretrained": True, "weights": None, "head": "aspp", "output_stride": 8,
              "train": {"steps": 20000, "batch_size": 10, "crop_size": 321, "scale_range": [0.5, 1.5], "optimizer": "sgd",
                        "lr": 2.5e-4, "head_lr_mult": 10.0, "weight_decay": 5e-4, "warmup_steps": 0,
                        "checkpoint_every": 1000, "log_every": 50, "color_jitter": 0.0},
              "eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5], "eval_flip": True, "eval_crf": True},
})


def sections() -> dict[str, SectionSpec]:
    return dict(_SECTIONS)


def section_modules() -> tuple[str, ...]:
    """The modules that register the config sections: what a fresh process (a DDP rank, a Dask worker) imports
    before it can read a run config."""
    return tuple(sorted({s.type.__module__ for s in _SECTIONS.values()}))


@lru_cache(maxsize=1)
def run_config_type() -> type[RunConfigBase]:
    """The ``RunConfig`` model: the base keys plus every registered section, in registration order."""
    fields = {name: (s.type, s.default) for name, s in _SECTIONS.items()}
    return create_model("RunConfig", __base__=RunConfigBase, __module__=__name__, **fields)


def validate_config(data: dict) -> RunConfigBase:
    try:
        return run_config_type().model_validate(data)
    except ValidationError as err:
        raise UserError(_format_validation(err)) from None


@lru_cache(maxsize=8)
def _parsed(data_json: str) -> RunConfigBase:
    import json
    return run_config_type().model_validate(json.loads(data_json))


def parse_config_json(data_json: str) -> RunConfigBase:
    """A config from its JSON dump, parsed once per process (per-image workers receive it this way)."""
    return _parsed(data_json)


# ------------------------------------------------------------------------------------ resolution


def deep_update(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def profile_overrides(profile: str) -> dict:
    """Every section's overrides for ``profile``, as one nested dict."""
    return {**BASE_PROFILES.get(profile, {}),
            **{name: s.profiles[profile] for name, s in _SECTIONS.items() if profile in s.profiles}}


def _format_validation(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown config key {key!r}: see `run-flow NAME --show-config` for the keys"
    msg = e["msg"].removeprefix("Value error, ")
    return f"config key {key!r}: {msg} (got {e.get('input')!r})"


def parse_set(pairs: list[str] | tuple[str, ...]) -> dict:
    """``["a.b=1", "c=[x, y]"]`` → nested dict; values are read as YAML scalars/lists."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set {pair!r} is not KEY=VALUE: write e.g. --set train_classifier.steps=100")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key!r} conflicts with another --set of {p!r}")
        node[parts[-1]] = value
    return out


def _key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key path of a config model, sections and leaves: ``["data", "data.root", ...]``."""
    out = []
    for k, field_ in model.model_fields.items():
        out.append(prefix + k)
        ann = field_.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _key_paths(ann, prefix + k + ".")
    return out


def _leaf_paths(value: Any, prefix: str) -> list[str]:
    """The dotted paths an override ``value`` set under ``prefix``: ``{"such": {"key": 1}}`` under ``no`` → ``["no.such.key"]``."""
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in _leaf_paths(v, f"{prefix}.{k}")]
    return [prefix]


def _check_keys(overrides: dict, model: type[BaseModel], prefix: str = "", root: type[BaseModel] | None = None) -> None:
    """``UserError`` naming the whole unknown key path an override gives (``no.such.key``, not ``no``) and the
    closest valid key path (difflib's ratio over every dotted path of the config), or, when none is close, the
    valid keys where the path left the config."""
    import difflib
    root = root or model
    for k, v in overrides.items():
        field_ = model.model_fields.get(k)
        if field_ is None:
            path = _leaf_paths(v, prefix + k)[0]
            close = difflib.get_close_matches(path, _key_paths(root), n=1, cutoff=0.6)
            if close:
                hint = f"the closest valid key is {close[0]!r}"
            else:
                here = sorted(model.model_fields)
                hint = (f"{prefix[:-1] or 'the config'} has {', '.join(here[:12])}" + (", ..." if len(here) > 12 else ""))
            raise UserError(f"unknown config key {path!r} ({hint}): see `run-flow NAME --show-config` for every key")
        ann = field_.annotation
        if isinstance(v, dict) and isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_keys(v, ann, prefix + k + ".", root)


def load_config_file(path: str) -> dict:
    """A config file as ``--show-config`` prints it (any subset of its keys), as a nested dict; ``UserError``
    naming the file when it is missing, not YAML, not a mapping, or holds a key the config does not have."""
    from pathlib import Path
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise UserError(f"--config {p}: cannot be read ({e.strerror or e}): give a YAML file as --show-config prints") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {p} is not valid YAML ({type(e).__name__}): give a file as --show-config prints") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {p} does not hold a mapping of config keys: give a file as --show-config prints")
    try:
        _check_keys(data, run_config_type())
    except UserError as e:
        raise UserError(f"--config {p}: {e}") from None
    return data


def resolve_config(flow: str, profile: str = "default", sets: list[str] | tuple[str, ...] = (),
                   flow_defaults: dict | None = None, data_root: str | None = None,
                   flow_profile_defaults: dict | None = None, file: dict | None = None) -> RunConfigBase:
    """Defaults ← flow's own defaults ← profile ← flow's defaults for that profile ← a config ``file``'s keys
    (``load_config_file``; its ``flow`` and ``profile`` must agree) ← ``data_root`` ← ``--set`` pairs, validated."""
    if profile not in PROFILE_NAMES:
        raise UserError(f"unknown profile {profile!r}: choose smoke, default or paper")
    file = dict(file or {})
    for key, want in (("flow", flow), ("profile", profile)):
        if file.get(key, want) != want:
            raise UserError(f"the config file is for {key} {file[key]!r}, not {want!r}: run that {key} or edit the file")
    config_type = run_config_type()
    overrides = parse_set(sets)
    _check_keys(overrides, config_type)
    merged = config_type().model_dump(mode="json")
    merged = deep_update(merged, flow_defaults or {})
    merged = deep_update(merged, profile_overrides(profile))
    merged = deep_update(merged, (flow_profile_defaults or {}).get(profile, {}))
    merged = deep_update(merged, file)
    merged = deep_update(merged, {"flow": flow, "profile": profile})
    if data_root is not None:
        merged["data"]["root"] = str(data_root)
    return validate_config(deep_update(merged, overrides))
