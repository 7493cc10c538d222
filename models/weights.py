"""A backbone's initial weights: a local file loaded strictly, or timm's hub, by one rule.

**The rule** (``hub_weights``, checked for a whole flow by ``check_initial_weights`` before any stage): a section's
``weights`` (a local file, or ``standin:NAME``) wins over its ``pretrained``: with a file given, timm's hub is never
asked. ``pretrained: true`` without a file asks timm's hub for the backbone's default tag; a backbone without hub
weights (SegFormer's ``mit_b*``) is refused before any stage, and a hub that cannot be reached ends in one line
saying to pass a local file (``<section>.weights=FILE``), never in a ``LocalEntryNotFoundError`` traceback.

**Strict loading** (``load_backbone_weights``): the file's *layout* is detected from its keys (``detect_layout``:
SegFormer's ``mit_b*.pth``, Microsoft's Swin files, torchvision's ResNets, timm's own names), a converter of that
layout (``models/weights_*.py``, one family a file) maps every key to the timm backbone's names, and the file must
then hold every backbone tensor, nothing else, every shape equal. Otherwise one line names the file, the layout,
the first missing / unexpected / mis-shaped tensors and the backbone expected (``WeightsMatch.refusal``). What a
converter drops it drops by name (an ImageNet classifier the official code pops, buffers the backbone recomputes),
and ``check-weights`` shows it; anything else a user wants dropped goes in the section's ``weights_ignore`` (glob
patterns on the file's names or the backbone's, e.g. ``[head.*]``). A stand-in (``standin:NAME``) must fit exactly,
with no conversion: it was made for one architecture, which its sidecar names.
"""
from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pipeline.checkpoint import load_model_weights, read_meta
from pipeline.errors import UserError

#: where the pretrained stand-ins live (``weights: standin:NAME``; ``models/standins.py`` makes them)
STANDIN_DIR = Path(__file__).parent / "pretrained"
STANDIN_PREFIX = "standin:"
#: where a user is told to look for the file each method takes
DOCS = "docs/weights.md"


def weights_file(ref: str | Path) -> Path:
    """A ``weights`` value → its file: ``standin:NAME`` is ``models/pretrained/NAME.safetensors``, anything else a path.

    >>> weights_file("standin:vit").relative_to(STANDIN_DIR).as_posix(), weights_file("w/enc.pth").as_posix()
    ('vit.safetensors', 'w/enc.pth')
    """
    s = str(ref)
    return STANDIN_DIR / f"{s[len(STANDIN_PREFIX):]}.safetensors" if s.startswith(STANDIN_PREFIX) else Path(s)


# ---------------------------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Conversion:
    """A file's tensors under the backbone's names; what the layout drops (file name → why) and did (notes)."""

    tensors: dict[str, torch.Tensor]
    source: dict[str, str]  # backbone name → the file's name it came from
    dropped: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """A published key layout of one backbone family and its converter to timm's names.

    ``detect(file_keys)`` says whether a file is in this layout; ``convert(file_tensors, backbone_state)`` maps
    every key (the backbone's state dict gives the shapes a converter may need).
    """

    name: str
    family: str  # mit | vit | swin | resnet | * (any backbone: timm's own names)
    origin: str  # who publishes files in it
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[dict[str, torch.Tensor], Mapping[str, torch.Tensor]], Conversion]


def identity(tensors: dict[str, torch.Tensor], _backbone: Mapping[str, torch.Tensor]) -> Conversion:
    """The file already uses the backbone's names."""
    return Conversion(dict(tensors), {k: k for k in tensors})


def convert_by_name(tensors: Mapping[str, torch.Tensor], rename: Callable[[str], str],
                    drop: Callable[[str], str | None]) -> Conversion:
    """Every tensor of a file under ``rename(key)``, but those ``drop(key)`` gives a reason for (recorded as dropped).

    >>> c = convert_by_name({"a": torch.zeros(1), "fc": torch.zeros(1)}, str.upper, lambda k: "head" if k == "fc" else None)
    >>> sorted(c.tensors), c.source, c.dropped
    (['A'], {'A': 'a'}, {'fc': 'head'})
    """
    out, source, dropped = {}, {}, {}
    for k, v in tensors.items():
        if (reason := drop(k)) is not None:
            dropped[k] = reason
        else:
            name = rename(k)
            out[name], source[name] = v, k
    return Conversion(out, source, dropped)


#: timm's own names (timm hub files, this project's stand-ins and trained backbones): the fallback of every family
TIMM_LAYOUT = Layout("timm", "*", "timm's own names (timm's hub files, stand-ins, backbones saved here)",
                     lambda _keys: True, identity)
LAYOUTS: list[Layout] = []


def register_layout(layout: Layout) -> Layout:
    """Add ``layout`` to those ``detect_layout`` tries (in registration order, before timm's own names)."""
    if any(other.name == layout.name for other in LAYOUTS):
        raise ValueError(f"layout {layout.name!r} is registered twice")
    LAYOUTS.append(layout)
    return layout


def backbone_family(model: nn.Module) -> str:
    """The family of a timm backbone (which official layouts it can take): mit, vit, swin, resnet, or * (other)."""
    from timm.models.pvt_v2 import PyramidVisionTransformerV2
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer
    for cls, family in ((PyramidVisionTransformerV2, "mit"), (VisionTransformer, "vit"), (SwinTransformer, "swin")):
        if isinstance(model, cls):
            return family
    keys = model.state_dict().keys()
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:  # a timm ResNet, whole or features_only
        return "resnet"
    return "*"


def detect_layout(tensors: Mapping[str, torch.Tensor], family: str) -> Layout:
    """The first registered layout of ``family`` that recognises the file's keys, else timm's own names."""
    for layout in LAYOUTS:
        if layout.family in (family, "*") and layout.detect(tensors):
            return layout
    return TIMM_LAYOUT


# --------------------------------------------------------------------------------------------------------- matching
def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _first(names: Iterable[str], n: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f", … ({len(names)} in all)" if len(names) > n else "")


@dataclass
class WeightsMatch:
    """What a weights file gives a backbone: per tensor, matched / missing / unexpected / mis-shaped."""

    file: Path
    backbone: str  # the backbone expected, e.g. "mit_b1 (timm PyramidVisionTransformerV2, 82 tensors)"
    layout: Layout
    matched: list[str]  # backbone names filled from the file
    missing: list[str]  # backbone names the file lacks
    unexpected: list[str]  # the file's names with no backbone tensor
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (backbone name, file shape, backbone shape)
    ignored: list[str]  # the file's names dropped by weights_ignore
    dropped: dict[str, str]  # the file's names the layout drops → why
    notes: tuple[str, ...]
    tensors: dict[str, torch.Tensor]  # what load_state_dict receives
    source: dict[str, str]  # backbone name → file name

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)

    def refusal(self) -> str:
        """The one line of a file that does not fit: the file, the layout, the first tensors, the backbone, the fix."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({_first(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({_first(self.unexpected)})")
        if self.misshaped:
            k, f, b = self.misshaped[0]
            more = f", … ({len(self.misshaped)} in all)" if len(self.misshaped) > 1 else ""
            parts.append(f"{len(self.misshaped)} mis-shaped ({self.source.get(k, k)} is {f} in the file, "
                         f"{k} is {b} in the backbone{more})")
        return (f"weights file {self.file} does not fit the backbone {self.backbone} (read as layout "
                f"{self.layout.name!r}): {'; '.join(parts)}: pass the file made for this backbone ({DOCS}), or name "
                "tensors to drop in the section's weights_ignore (`python cli.py check-weights FILE --flow NAME` "
                "shows what loads where)")

    def report(self) -> list[str]:
        """Lines for ``check-weights``: the layout, the counts, the first names of each kind, what was dropped."""
        lines = [f"  layout: {self.layout.name} ({self.layout.origin})",
                 f"  matched {len(self.matched)} / {len(self.matched) + len(self.missing) + len(self.misshaped)} backbone "
                 f"tensors; missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
                 f"mis-shaped {len(self.misshaped)}, ignored {len(self.ignored)}, dropped {len(self.dropped)}"]
        renamed, kinds = [], set()
        for k in self.matched:  # one renaming per kind of name (patch_embed#, block#, norm#, ...)
            src = self.source.get(k, k)
            kind = re.sub(r"\d+", "#", src.split(".")[0])
            if src != k and kind not in kinds and len(renamed) < 4:
                kinds.add(kind)
                renamed.append((src, k))
        if renamed:
            lines.append("  e.g. " + "; ".join(f"{a} → {b}" for a, b in renamed))
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected), ("ignored", self.ignored)):
            if names:
                lines.append(f"  {label}: {_first(names, 5)}")
        for k, f, b in self.misshaped[:5]:
            lines.append(f"  mis-shaped: {self.source.get(k, k)} {f} in the file → {k} {b} in the backbone")
        reasons: dict[str, list[str]] = {}
        for name, why in self.dropped.items():
            reasons.setdefault(why, []).append(name)
        for why, names in reasons.items():
            lines.append(f"  dropped ({why}): {_first(names, 4)}")
        lines += [f"  note: {n}" for n in self.notes]
        return lines


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def match_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], file: Path, ignore: Iterable[str] = (),
                  name: str = "", layout: Layout | None = None) -> WeightsMatch:
    """Compare a file's ``tensors`` with ``model``'s state dict after the file's layout's conversion.

    ``ignore``: glob patterns (``fnmatch``, case-sensitive) on the file's names or the converted ones; those
    tensors are left out (listed as ignored). ``layout`` overrides the detection.
    """
    own = model.state_dict()
    family = backbone_family(model)
    layout = layout or detect_layout(tensors, family)
    conv = layout.convert(dict(tensors), own)
    patterns = tuple(ignore)
    ignored = sorted(conv.source[k] for k in conv.tensors if _matches(k, patterns) or _matches(conv.source[k], patterns))
    kept = {k: v for k, v in conv.tensors.items() if not (_matches(k, patterns) or _matches(conv.source[k], patterns))}
    matched = [k for k in own if k in kept and _shape(kept[k]) == _shape(own[k])]
    misshaped = [(k, _shape(kept[k]), _shape(own[k])) for k in own if k in kept and _shape(kept[k]) != _shape(own[k])]
    missing = [k for k in own if k not in kept]
    unexpected = [conv.source[k] for k in kept if k not in own]
    label = f"{name + ' ' if name else ''}(timm {type(model).__name__}, {len(own)} tensors)"
    return WeightsMatch(Path(file), label, layout, matched, missing, unexpected, misshaped, ignored, conv.dropped,
                        conv.notes, kept, conv.source)


# ---------------------------------------------------------------------------------------------------------- loading
def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (safetensors, or torch read with ``weights_only``), one line if unreadable."""
    try:
        sd = load_model_weights(path)
    except Exception as e:  # a pickle with objects, a truncated download, not a weights file at all
        raise UserError(f"weights file {path} could not be read as tensors ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}): pass a .pth / .safetensors state dict") from None
    if not isinstance(sd, Mapping):
        raise UserError(f"weights file {path} holds a {type(sd).__name__}, not a state dict: pass a .pth / .safetensors state dict")
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


#: set by ``recording_matches``: the matches are collected there instead of loaded or refused (check-weights)
_RECORDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("weights_recording", default=None)


@contextlib.contextmanager
def recording_matches() -> Iterator[list[WeightsMatch]]:
    """Within the block, ``load_backbone_weights`` records each match here and neither loads nor refuses."""
    token = _RECORDING.set([])
    try:
        yield _RECORDING.get()
    finally:
        _RECORDING.reset(token)


def load_backbone_weights(model: nn.Module, ref: str | Path, ignore: Iterable[str] = (), name: str = "") -> WeightsMatch:
    """Load a weights file (or stand-in) into ``model`` strictly; one line naming what does not fit otherwise."""
    p = weights_file(ref)
    standin = str(ref).startswith(STANDIN_PREFIX)
    if not p.is_file():
        if standin:
            raise UserError(f"stand-in weights {ref!r} not found ({p}): regenerate them with `python cli.py run-flow pretrain` "
                            "(README, Pretrained stand-ins) or set this weights key to null to train from scratch")
        raise UserError(f"weights file {p} does not exist: fix the section's weights path ({DOCS}), or set it to null "
                        "to train from scratch")
    tensors = read_weight_file(p)
    if standin:  # made here for one architecture: exactly its tensors, no conversion, no ignore list
        match = match_weights(model, tensors, p, (), name, TIMM_LAYOUT)
        if not match.ok and _RECORDING.get() is None:
            bad = [*match.missing, *match.unexpected, *(k for k, _, _ in match.misshaped)]
            made = read_meta(p).get("architecture", "?")
            raise UserError(f"stand-in weights {ref!r} do not fit this backbone (e.g. {bad[0]}): they were pretrained as {made}; "
                            "set the backbone to that, or this weights key to null to train from scratch")
    else:
        match = match_weights(model, tensors, p, ignore, name)
    recording = _RECORDING.get()
    if recording is not None:
        recording.append(match)
        return match
    if not match.ok:
        raise UserError(match.refusal())
    model.load_state_dict(match.tensors, strict=True)
    return match


# ------------------------------------------------------------------------------------------------ pretrained or file
def hub_tag(name: str) -> str | None:
    """The timm tag ``pretrained: true`` fetches for ``name`` (e.g. ``resnet101.a1h_in1k``), None without hub weights."""
    import timm
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown name has no hub weights
        return None
    if cfg is None or not cfg.has_weights:
        return None
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def hub_weights(name: str, pretrained: bool, weights: str | Path | None) -> Iterator[bool]:
    """Whether timm builds ``name`` with its hub weights: only with ``pretrained`` and no local ``weights`` (a file
    wins and the hub is never asked). A hub failure inside the block ends in one line (no hub access: pass a file).

    >>> with hub_weights("resnet18", True, "w.pth") as hub:
    ...     hub
    False
    """
    hub = bool(pretrained) and not weights
    if hub and hub_tag(name) is None:
        raise UserError(f"pretrained: {name} has no ImageNet weights on timm's hub: download the file its method loads "
                        f"and pass it as <section>.weights=FILE ({DOCS})")
    try:
        yield hub
    except OSError as e:  # huggingface_hub's LocalEntryNotFoundError / OfflineModeIsEnabled / HTTP errors, urllib's
        if not hub:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"pretrained: timm could not fetch {hub_tag(name)} ({type(e).__name__}: {first[:120]}): there is "
                        f"no hub access here; pass a local file via <section>.weights=FILE ({DOCS})") from None


def backbone_sections(config: Any, reads: Iterable[str]) -> dict[str, Any]:
    """The sections of ``config`` holding a backbone (``backbone``, ``pretrained``, ``weights``) whose weights one of
    the dotted ``reads`` covers (a flow's stages' declared reads)."""
    out = {}
    for read in reads:
        top = read.split(".")[0]
        sec = getattr(config, top, None)
        if sec is None or not all(hasattr(sec, k) for k in ("backbone", "pretrained", "weights")):
            continue
        if read in (top, f"{top}.weights"):
            out[top] = sec
    return out


def check_initial_weights(sections: Mapping[str, Any]) -> None:
    """Before any stage: each backbone section's weights file exists; ``pretrained`` without one names hub weights
    that exist (and are cached when the hub is offline); a section whose trained network comes from its ``checkpoint``
    needs neither. One line naming ``<section>.weights`` otherwise."""
    for name, sec in sections.items():
        if getattr(sec, "checkpoint", None):  # the whole trained network comes from its file (afa.checkpoint)
            continue
        if sec.weights:
            p = weights_file(sec.weights)
            if not p.is_file():
                if str(sec.weights).startswith(STANDIN_PREFIX):
                    raise UserError(f"{name}.weights: stand-in {sec.weights!r} not found ({p}): regenerate them with "
                                    "`python cli.py run-flow pretrain`, or set it to null to train from scratch")
                raise UserError(f"{name}.weights: {p} does not exist: pass the file as {name}.weights=FILE ({DOCS}), "
                                "or null to train from scratch")
        elif sec.pretrained:
            tag = hub_tag(sec.backbone)
            if tag is None:
                raise UserError(f"{name}.pretrained: {sec.backbone} has no ImageNet weights on timm's hub: download the "
                                f"file its method loads and pass it as {name}.weights=FILE ({DOCS})")
            if _hub_offline() and not _hub_cached(tag):
                raise UserError(f"{name}.pretrained: {tag} is not in the local hub cache and HF_HUB_OFFLINE is set (no hub "
                                f"access): pass a local file via {name}.weights=FILE ({DOCS})")


def _hub_cached(tag: str) -> bool:
    """Whether timm's weights ``tag`` are in the local Hugging Face cache."""
    import timm
    try:
        from huggingface_hub import try_to_load_from_cache
        cfg = timm.models.get_pretrained_cfg(tag)
        repo = cfg.hf_hub_id
        return bool(repo) and any(isinstance(try_to_load_from_cache(repo, f), str)
                                  for f in ("model.safetensors", "pytorch_model.bin", cfg.hf_hub_filename or "model.safetensors"))
    except Exception:  # noqa: BLE001 - an unreadable cache is no cache
        return False
