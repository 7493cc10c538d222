"""Sparse annotations — scribbles and clicks — in the files the field keeps them in, as H×W labels.

Formats (``read_sparse``):

- **ScribbleSup XML** (scribbles): one ``<id>.xml`` per image, ``<annotation><size><width/><height/></size>``
  then ``<polygon><tag>NAME</tag><point><X>x</X><Y>y</Y></point>…</polygon>``…, NAME one of
  ``SCRIBBLE_TAGS`` (VOC order, short names) — in a folder (``scribble_annotation/pascal_2012/``) or in the
  zip the GatedCRF/TEL/SASFormer code reads (``voc_scribbles.zip``, members ``<id>.xml``);
- **label PNGs** (scribbles): ``pascal_2012_scribble/<id>.png``, the class index per pixel, 255 unlabelled;
- **What's the Point JSON** (clicks): ``{image_id: [{"cls": int, "x": int, "y": int, ...}, ...]}``, ``cls`` the
  VOC index — ``voc_whats_the_point.json`` and the background clicks ``voc_whats_the_point_bg_from_scribbles.json``
  (cls 0); every given file is merged.

Every shape is rasterised by ``rasterise`` (the field's recipe, so labels match other tools pixel for pixel).
A bad file (unknown tag, a point outside the image, a size that is not the image's, unreadable XML/JSON)
raises ``UserError`` naming the file and the fix.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from pipeline.errors import UserError
from pipeline.voc import IGNORE_INDEX, NUM_CLASSES

#: ScribbleSup's tag names, in VOC class order (index = VOC class)
SCRIBBLE_TAGS = ("background", "plane", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
                 "dog", "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor")
#: where the field keeps each kind, relative to the VOC root (first found of each group is read)
STANDARD_FILES = {
    "scribble": ("scribble_annotation/pascal_2012", "voc_scribbles.zip", "pascal_2012_scribble"),
    "point": ("voc_whats_the_point.json", "voc_whats_the_point_bg_from_scribbles.json"),
}
SparseKind = Literal["scribble", "point"]

#: one shape: (VOC class, [(x, y), ...]) — a polyline with one or more points (a click is one point)
Shape = tuple[int, list[tuple[float, float]]]


def rasterise(shapes: list[Shape], height: int, width: int) -> np.ndarray:
    """The field's rasterisation of scribbles and clicks into an H×W uint8 label (255 unlabelled).

    Start from 255; for each shape, in order, ``ImageDraw.line(points, fill=cls, width=3, joint="curve")`` when it
    has more than one point, then ``ellipse((x−1.5, y−1.5, x+1.5, y+1.5), fill=cls)`` at every point (a click is
    that ellipse alone). Later shapes paint over earlier ones.

    >>> rasterise([(15, [(2, 2)])], 5, 6)
    array([[255,  15,  15, 255, 255, 255],
           [ 15,  15,  15,  15, 255, 255],
           [ 15,  15,  15,  15, 255, 255],
           [255,  15,  15, 255, 255, 255],
           [255, 255, 255, 255, 255, 255]], dtype=uint8)
    """
    im = Image.new("L", (width, height), IGNORE_INDEX)
    draw = ImageDraw.Draw(im)
    for cls, points in shapes:
        pts = [(float(x), float(y)) for x, y in points]
        if len(pts) > 1:
            draw.line(pts, fill=int(cls), width=3, joint="curve")
        for x, y in pts:
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=int(cls))
    return np.asarray(im, dtype=np.uint8).copy()


def parse_scribble_xml(text: str | bytes, source: str) -> tuple[tuple[int, int] | None, list[Shape]]:
    """One ScribbleSup XML file → ((height, width) from ``<size>``, or None without one; its polygons as shapes).

    >>> xml = ("<annotation><size><width>8</width><height>6</height></size><polygon><tag>dog</tag>"
    ...        "<point><X>1</X><Y>2</Y></point><point><X>5</X><Y>2</Y></point></polygon></annotation>")
    >>> parse_scribble_xml(xml, "a.xml")
    ((6, 8), [(12, [(1.0, 2.0), (5.0, 2.0)])])
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise UserError(f"scribble file {source} is not valid XML ({e}): replace it with its ScribbleSup original") from None
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w is not None and h is not None:
        try:
            size = (int(float(h)), int(float(w)))
        except ValueError:
            raise UserError(f"scribble file {source}: <size> is not numeric ({w!r}×{h!r}): fix its <width>/<height>") from None
    shapes: list[Shape] = []
    for n, poly in enumerate(root.iter("polygon")):
        tag = (poly.findtext("tag") or "").strip()
        if tag not in SCRIBBLE_TAGS:
            raise UserError(f"scribble file {source}: polygon {n} has unknown tag {tag!r}: use one of {' '.join(SCRIBBLE_TAGS)}")
        try:
            pts = [(float(p.findtext("X")), float(p.findtext("Y"))) for p in poly.iter("point")]
        except (TypeError, ValueError):
            raise UserError(f"scribble file {source}: polygon {n} has a point without numeric <X>/<Y>: fix or remove it") from None
        if pts:
            shapes.append((SCRIBBLE_TAGS.index(tag), pts))
    return size, shapes


@dataclass
class _Entry:
    source: str  # the file (or zip member) it came from, for error lines
    size: tuple[int, int] | None = None  # (H, W) the file declares
    shapes: list[Shape] = field(default_factory=list)
    png: Path | None = None  # a label PNG, read as it is


@dataclass
class SparseLabels:
    """Sparse labels by image id, read from the files of one kind (``read_sparse``)."""

    kind: str
    entries: dict[str, _Entry]
    sources: list[str]

    def ids(self) -> list[str]:
        """The annotated image ids (sorted)."""
        return sorted(self.entries)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.entries

    def shapes(self, image_id: str) -> list[Shape]:
        """The scribbles / clicks of an image as (class, points) shapes (empty for a label PNG)."""
        return list(self.entries[image_id].shapes)

    def label(self, image_id: str, height: int, width: int) -> np.ndarray:
        """The H×W uint8 label of an image of that size (0 background, 1..20 classes, 255 unlabelled).

        Refuses, naming the file: an image it has no annotation for, a declared size that is not the image's, a
        point outside the image, a class outside 0..20.
        """
        e = self.entries.get(image_id)
        if e is None:
            raise UserError(f"image {image_id!r} has no {self.kind} annotation in {', '.join(self.sources)}: "
                            "annotate it or leave it out of the split")
        if e.png is not None:
            try:
                with Image.open(e.png) as im:
                    if im.mode not in ("P", "L"):
                        raise UserError(f"scribble label {e.png} is not a palette or grey PNG (mode {im.mode}): save class indices")
                    lab = np.asarray(im).astype(np.uint8)
            except OSError as err:
                raise UserError(f"scribble label {e.png} cannot be read ({err}): replace it") from None
            if lab.shape != (height, width):
                raise UserError(f"scribble label {e.png} is {lab.shape[1]}×{lab.shape[0]} but image {image_id} is "
                                f"{width}×{height}: use the label made for this image")
            bad = np.setdiff1d(np.unique(lab), [*range(NUM_CLASSES), IGNORE_INDEX])
            if bad.size:
                raise UserError(f"scribble label {e.png} holds value {int(bad[0])}: use 0..20 and 255 (unlabelled)")
            return lab
        if e.size is not None and e.size != (height, width):
            raise UserError(f"{e.source} declares {e.size[1]}×{e.size[0]} but image {image_id} is {width}×{height}: "
                            "use the annotation made for this image")
        for cls, pts in e.shapes:
            if not 0 <= cls < NUM_CLASSES:
                raise UserError(f"{e.source}: class {cls} of image {image_id} is not a VOC index: use 0..20")
            for x, y in pts:
                if not (0 <= x < width and 0 <= y < height):
                    raise UserError(f"{e.source}: point ({x:g}, {y:g}) of image {image_id} lies outside its "
                                    f"{width}×{height} pixels: fix or remove the point")
        return rasterise(e.shapes, height, width)


def _add(entries: dict[str, _Entry], image_id: str, entry: _Entry) -> None:
    entries.setdefault(image_id, entry)  # the first file that annotates an image wins


def _read_points(path: Path, entries: dict[str, _Entry]) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"point file {path} is not readable JSON ({e}): replace it with its What's the Point original") from None
    if not isinstance(data, dict):
        raise UserError(f"point file {path} is not an object {{image_id: [clicks]}}: use What's the Point's layout")
    for image_id, clicks in data.items():
        shapes: list[Shape] = []
        for c in clicks if isinstance(clicks, list) else [None]:
            try:
                shapes.append((int(c["cls"]), [(float(c["x"]), float(c["y"]))]))
            except (TypeError, KeyError, ValueError):
                raise UserError(f"point file {path}: image {image_id!r} has a click {c!r} without numeric cls, x, y: "
                                "fix or remove it") from None
        e = entries.setdefault(str(image_id), _Entry(str(path)))
        if e.png is not None or e.size is not None:
            continue
        e.shapes.extend(shapes)
        if str(path) not in e.source.split(" + "):
            e.source = f"{e.source} + {path}"


def _read_scribbles(path: Path, entries: dict[str, _Entry]) -> None:
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as z:
                for member in sorted(z.namelist()):
                    if member.endswith(".xml") and not member.startswith("__MACOSX"):
                        size, shapes = parse_scribble_xml(z.read(member), f"{path}:{member}")
                        _add(entries, Path(member).stem, _Entry(f"{path}:{member}", size, shapes))
        except zipfile.BadZipFile as e:
            raise UserError(f"scribble archive {path} is not a zip file ({e}): replace it") from None
        return
    if path.is_dir():
        files = sorted(path.glob("*.xml")) or sorted(path.glob("*.png"))
        for f in files:
            if f.suffix == ".xml":
                size, shapes = parse_scribble_xml(f.read_bytes(), str(f))
                _add(entries, f.stem, _Entry(str(f), size, shapes))
            else:
                _add(entries, f.stem, _Entry(str(f), png=f))
        return
    if path.suffix == ".xml":
        size, shapes = parse_scribble_xml(path.read_bytes(), str(path))
        _add(entries, path.stem, _Entry(str(path), size, shapes))
        return
    raise UserError(f"scribble source {path} is neither a folder of XML/PNG files, a .zip nor an .xml: "
                    "give data.sparse.paths ScribbleSup files")


def read_sparse(paths: list[str | Path], kind: str) -> SparseLabels:
    """The sparse labels of ``kind`` (``scribble`` or ``point``) in ``paths`` (files or folders, module docstring).

    Scribbles: XML folders, XML zips and label-PNG folders; the first path that annotates an image wins.
    Points: JSON files, every click of every file merged (the object clicks and the background clicks).
    """
    if kind not in STANDARD_FILES:
        raise UserError(f"data.sparse.kind={kind!r}: choose scribble or point")
    if not paths:
        raise UserError(f"no {kind} annotation files given: set data.sparse.paths or put "
                        f"{' / '.join(STANDARD_FILES[kind])} in the VOC root")
    entries: dict[str, _Entry] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"sparse annotation path {p} does not exist: fix data.sparse.paths")
        if kind == "point":
            if p.is_dir() or p.suffix != ".json":
                raise UserError(f"point source {p} is not a .json file: give data.sparse.paths What's the Point JSON files")
            _read_points(p, entries)
        else:
            _read_scribbles(p, entries)
    return SparseLabels(kind, entries, [str(p) for p in paths])


def standard_paths(roots: list[Path], kind: str) -> list[Path]:
    """The standard annotation files of ``kind`` found in ``roots`` (the VOC root, then the data root).

    Scribbles: the first of ``scribble_annotation/pascal_2012/``, ``voc_scribbles.zip``, ``pascal_2012_scribble/``
    found; points: both JSON files where present.
    """
    found: list[Path] = []
    for name in STANDARD_FILES[kind]:
        for r in roots:
            if (Path(r) / name).exists():
                found.append(Path(r) / name)
                break
    return found[:1] if kind == "scribble" else found


def sparse_sources(paths: list[str], kind: str, data_root: str | None, voc_root: Path) -> list[Path]:
    """The annotation files of ``kind`` a run reads: ``paths`` (``data.sparse.paths``), else the standard names
    (``standard_paths``) in the VOC root or a folder above it up to ``data_root``."""
    if paths:
        return [Path(p).expanduser().resolve() for p in paths]
    roots = [Path(voc_root)]
    if data_root is not None:
        top = Path(data_root).resolve()
        roots += [p for p in Path(voc_root).parents if p == top or top in p.parents]
    found = standard_paths(roots, kind)
    if not found:
        raise UserError(f"no {kind} annotations in {voc_root}: put the field's files there "
                        f"({', '.join(STANDARD_FILES[kind])}) or give --set data.sparse.paths=[FILE, ...]")
    return found


def scribble_xml(image_id: str, height: int, width: int, shapes: list[Shape]) -> str:
    """A ScribbleSup XML file of ``shapes`` (``parse_scribble_xml`` reads it back).

    >>> parse_scribble_xml(scribble_xml("x", 6, 8, [(12, [(1, 2), (5, 2)])]), "x.xml")
    ((6, 8), [(12, [(1.0, 2.0), (5.0, 2.0)])])
    """
    polys = "".join(
        f"<polygon><tag>{SCRIBBLE_TAGS[c]}</tag>" + "".join(f"<point><X>{x:g}</X><Y>{y:g}</Y></point>" for x, y in pts) + "</polygon>"
        for c, pts in shapes)
    return (f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width><height>{height}</height></size>"
            f"{polys}</annotation>")
