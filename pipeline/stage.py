"""A stage declares what it reads and writes; its cache key follows from the declaration.

A ``Stage`` is a function ``fn(ctx) -> metrics`` with

- ``reads``: the config keys it reads (dotted; a section covers all its keys). Its ``ctx.config``
  is a view that refuses any other key, so the declaration cannot fall behind the code;
- ``writes``: the files and stores it leaves in its folder for later stages;
- ``inputs``: the roles it reads from earlier stages (``"model"``, ``"seeds"``, ...), which a flow
  binds to another stage's output with ``wire(role=other.out(NAME))``; ``optional`` roles may stay unbound,
  and ``uses(config)`` names the bound roles that a config makes it read (default: all);
- ``summary``: which of its metrics fill which key of ``inspect``'s summary;
- ``masks``: which masks it may read (``MASK_ACCESS``); by default none of the images it labels or trains on, and
  the runner enforces it (``masks_as_declared``: every dataset reader's mask accessors raise
  ``pipeline.voc.MaskReadWhileLabelling``).

The key of a stage digests its name and version, its code (``pipeline.codeversion.source_digest`` of its
module), the data's identity, the values of the keys it reads and the keys of the stages its inputs come from
(``stage_key``): so it changes when, and only when, something it depends on changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from pipeline.codeversion import source_digest
from pipeline.config import RunConfigBase, parse_config_json

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.runs import Run
    from pipeline.voc import MaskPolicy, VOCDataset

#: what every stage depends on through the data's fingerprint (the dataset's identity)
DATA_KEYS = ("data.root", "data.synthetic")
#: knobs of how a stage runs, not of what it computes: any stage may read them and they stay out of keys
EXECUTION_KEYS = ("device", "devices", "workers")
#: keys added after runs existed, left out of a key at this value, so those runs' stages stay cached (a key
#: ending a dotted path, as ``train.brightness_shift`` ends ``segmentation.train.brightness_shift``)
LATER_KEYS = {"amp": "off", "train.brightness_shift": 0.0, "weights_ignore": [],  # docs/weights.md
              "pseudo.bkg_rule": "otsu_global",  # docs/labels.md: the one-threshold rule of the runs before it
              # AFA's switches toward its released code (models/afa.py), at their from-scratch values
              "afa.attention": "softmax", "afa.label_cams": "train", "afa.label_scales": [1.0, 0.5, 1.5],
              "afa.cam_fusion": "sum", "afa.walk_eps": 1e-5, "afa.seg_loss": "ce", "afa.seg_propagated_from": 0,
              "afa.par_on_box": False, "afa.train_norm": True, "afa.checkpoint": None,
              "afa.crop_pad": "mean", "afa.decoder_init": "torch"}


#: what a stage may read of the masks (``Stage.masks``; docs/labels.md, "The guarantee"):
#: - ``none``: no mask of an image of ``data.train_split`` or ``data.label_split`` but the calibration split's
#:   (``pseudo.calibrate``) — every stage that labels, trains on labels, or trains the networks that label;
#: - ``score``: every mask — a stage that scores; a later stage may use what it computes only from its
#:   ``StageContext.label_free()`` part (``eval_seeds``' threshold);
#: - ``ground_truth``: every mask while its ``labels`` input is unwired (it trains on the ground truth: the supervised
#:   baseline), else ``none``.
MASK_ACCESS = ("none", "score", "ground_truth")


def _is_later_default(path: str, value: Any) -> bool:
    return any((path == k or path.endswith("." + k)) and value == v for k, v in LATER_KEYS.items())


def keyed_value(path: str, value: Any) -> Any:
    """A read config value as it enters a stage key: without the later keys at their old value, at any depth.

    >>> keyed_value("segmentation.train", {"steps": 5, "brightness_shift": 0.0})
    {'steps': 5}
    """
    if isinstance(value, dict):
        return {k: keyed_value(f"{path}.{k}", v) for k, v in value.items() if not _is_later_default(f"{path}.{k}", v)}
    return value


def _covered(path: str, keys: tuple[str, ...]) -> bool:
    """Whether dotted ``path`` is one of ``keys`` or lies inside one of them."""
    return any(path == k or path.startswith(k + ".") for k in keys)


def lookup(config: Mapping, dotted: str) -> Any:
    """The value at a dotted key of a nested dict."""
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


class UndeclaredConfigRead(RuntimeError):
    """A stage read a config key that it does not declare (a defect of the stage, not of the user's input)."""


class ConfigView:
    """A run config as one stage may see it: attribute access like the config itself, limited to ``reads``.

    Reading a key that the stage does not declare raises ``UndeclaredConfigRead`` naming both, so a
    stage's cache key can never miss a key that the stage uses. Picklable (per-image workers get it).
    """

    __slots__ = ("_root", "_path", "_reads", "_stage")

    def __init__(self, root: RunConfigBase, reads: tuple[str, ...], stage: str, path: str = "") -> None:
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_reads", tuple(reads))
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_path", path)

    def _obj(self) -> Any:
        obj: Any = self._root
        for part in self._path.split(".") if self._path else ():
            obj = getattr(obj, part)
        return obj

    def _refuse(self, path: str) -> None:
        raise UndeclaredConfigRead(f"stage {self._stage} reads config key {path!r} but does not declare it in its reads "
                                   f"({', '.join(self._reads)})")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._obj(), name)
        path = f"{self._path}.{name}" if self._path else name
        allowed = self._reads + EXECUTION_KEYS
        if isinstance(value, BaseModel):
            if not (_covered(path, allowed) or any(k.startswith(path + ".") for k in allowed)):
                self._refuse(path)
            return ConfigView(self._root, self._reads, self._stage, path)
        if not _covered(path, allowed):
            self._refuse(path)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a stage's config is read-only")

    def _whole(self) -> BaseModel:
        if not _covered(self._path, self._reads):
            self._refuse(self._path or "<the whole config>")
        return self._obj()

    def model_dump(self, **kwargs) -> dict:
        return self._whole().model_dump(**kwargs)

    def __repr__(self) -> str:
        return f"ConfigView({self._stage}: {self._path or 'config'})"

    def __reduce__(self):
        return _restore_view, (self._root.model_dump_json(), self._reads, self._stage, self._path)


def _restore_view(config_json: str, reads: tuple[str, ...], stage: str, path: str) -> ConfigView:
    return ConfigView(parse_config_json(config_json), reads, stage, path)


@dataclass(frozen=True)
class Output:
    """A file or store that ``stage`` writes in its folder."""

    stage: "Stage"
    name: str


@dataclass(frozen=True)
class Stage:
    """One stage kind: its function and what it reads, writes and takes from earlier stages (module docstring)."""

    name: str
    fn: Callable[["StageContext"], dict]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # roles the flow must bind
    optional: tuple[str, ...] = ()  # roles the flow may bind
    summary: Mapping[str, str] = field(default_factory=dict)  # inspect's summary key -> this stage's metric
    # the bound roles it reads under a config (its JSON dump; declared reads only); None: all of them
    uses: Callable[[Mapping], tuple[str, ...]] | None = None
    description: str = ""
    version: int = 1
    bound: tuple[tuple[str, Output], ...] = ()
    reads_data: bool = True  # False: it never opens the dataset, whose identity then stays out of its key
    masks: str = "none"  # which masks it may read: MASK_ACCESS (not part of its key: it changes no output)

    def __post_init__(self) -> None:
        if self.masks not in MASK_ACCESS:
            raise ValueError(f"stage {self.name}: masks={self.masks!r} is not one of {MASK_ACCESS}")

    def reads_masks(self) -> bool:
        """Whether this stage, as wired, may read every mask (``MASK_ACCESS``); False: not those of the images it
        labels or trains on."""
        return self.masks == "score" or (self.masks == "ground_truth" and "labels" not in self.sources)

    def out(self, name: str) -> Output:
        """This stage's output ``name`` (declared in ``writes``), for binding to a later stage's input."""
        if name not in self.writes:
            raise ValueError(f"stage {self.name} does not write {name!r} (it writes {', '.join(self.writes) or 'nothing'})")
        return Output(self, name)

    def wire(self, **bindings: Output) -> "Stage":
        """This stage with its input roles bound to earlier stages' outputs."""
        unknown = set(bindings) - set(self.inputs) - set(self.optional)
        if unknown:
            raise ValueError(f"stage {self.name} has no input {sorted(unknown)} (inputs: {self.inputs + self.optional})")
        bound = dict(self.bound)
        bound.update(bindings)
        return dataclasses.replace(self, bound=tuple(sorted(bound.items())))

    def named(self, name: str, summary: Mapping[str, str] | None = None) -> "Stage":
        """The same stage under another name (a flow that keeps both of two routes), optionally filling other
        summary keys (``{}``: none)."""
        return dataclasses.replace(self, name=name, summary=self.summary if summary is None else dict(summary))

    @property
    def sources(self) -> dict[str, Output]:
        return dict(self.bound)

    def used_sources(self, config: Mapping) -> dict[str, Output]:
        """The bound inputs this stage reads under ``config`` (its JSON dump)."""
        if self.uses is None:
            return dict(self.bound)
        roles = set(self.uses(config))
        return {r: o for r, o in self.bound if r in roles}

    def check_wired(self) -> None:
        missing = set(self.inputs) - set(self.sources)
        if missing:
            raise ValueError(f"stage {self.name}: inputs {sorted(missing)} are not wired")

    def upstream(self, config: Mapping | None = None) -> list["Stage"]:
        """Every stage this one depends on, directly or not (each once); under ``config``, through the inputs it uses."""
        seen: dict[str, Stage] = {}
        for o in (self.sources if config is None else self.used_sources(config)).values():
            for s in [*o.stage.upstream(config), o.stage]:
                seen.setdefault(s.name, s)
        return list(seen.values())


def stage_key(stage: Stage, config: Mapping, data_id: str | None) -> str:
    """The cache key of ``stage`` under a config (its JSON dump) and the data's fingerprint.

    A stage that does not read the data (``reads_data=False``) keys on neither ``data_id`` nor the data keys.
    """
    payload = {"stage": stage.name, "version": stage.version, "code": source_digest(stage.fn.__module__), "data": data_id if stage.reads_data else None,
               "dataset": {k: lookup(config, k) for k in DATA_KEYS} if stage.reads_data else {},
               "config": {k: keyed_value(k, lookup(config, k)) for k in stage.reads if not _is_later_default(k, lookup(config, k))},
               "inputs": {role: [o.stage.name, o.name, stage_key(o.stage, config, data_id)]
                          for role, o in stage.used_sources(config).items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def labelling_policy(run: "Run", stage: str) -> "MaskPolicy":
    """The masks a labelling stage of ``run`` may not read: those of the images of ``data.train_split`` and
    ``data.label_split`` (whole splits, not capped by ``data.max_images``), less the calibration split's."""
    from pipeline.voc import MaskPolicy, VOCFolder
    d = run.config.data
    splits = tuple(sorted({d.train_split, d.label_split}))
    folder = VOCFolder(run.voc_root)
    forbidden = {i for split in splits for i in folder.split_identity(split)[1]}
    cal = run.config.pseudo.calibrate
    if cal is not None:
        forbidden -= set(folder.split_identity(cal.split)[1])
    return MaskPolicy(stage, frozenset(forbidden), splits)


def masks_as_declared(run: "Run", stage: Stage):
    """The context in which the runner calls ``stage.fn``: under ``labelling_policy`` unless the stage, as wired, may
    read masks (``Stage.reads_masks``) or opens no data (``reads_data=False``)."""
    from pipeline.voc import masks_under
    free = stage.reads_masks() or not stage.reads_data
    return masks_under(None if free else labelling_policy(run, stage.name))


@dataclass
class StageContext:
    """What a stage function gets: its run, its key, its config view, its folder, its inputs and outputs."""

    run: "Run"
    stage: Stage
    key: str

    @property
    def config(self) -> ConfigView:
        return ConfigView(self.run.config, self.stage.reads, self.stage.name)

    @property
    def dir(self) -> Path:
        return self.run.stage_dir(self.stage.name)

    def label_free(self):
        """A block of a scoring stage (``masks="score"``) whose result a later stage uses: run under the labelling
        policy (``labelling_policy``), so it reads no mask of a labelled image but the calibration split's."""
        from pipeline.voc import masks_under
        return masks_under(labelling_policy(self.run, self.stage.name))

    def scoring(self):
        """A block of a labelling stage that reads masks to report a metric only (nothing it computes reaches an
        output): lifts the policy for the block."""
        from pipeline.voc import masks_under
        return masks_under(None)

    def has_input(self, role: str) -> bool:
        return role in self.stage.sources

    def input(self, role: str) -> Path:
        """The path of the output bound to ``role``."""
        o = self.stage.sources.get(role)
        if o is None:
            raise KeyError(f"stage {self.stage.name} has no input {role!r} wired")
        return self.run.stage_dir(o.stage.name) / o.name

    def input_stage(self, role: str) -> str:
        return self.stage.sources[role].stage.name

    def output(self, name: str) -> Path:
        if name not in self.stage.writes:
            raise KeyError(f"stage {self.stage.name} writes {name!r} without declaring it")
        return self.dir / name

    def dataset(self, split: str) -> "VOCDataset":
        """A split of the run's data, capped by ``data.max_images`` (which the stage must declare)."""
        from pipeline.voc import VOCDataset
        if not self.stage.reads_data:
            raise RuntimeError(f"stage {self.stage.name} is declared reads_data=False but opens split {split!r}")
        return VOCDataset(self.run.voc_root, split, self.config.data.max_images)
