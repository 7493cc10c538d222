"""MS COCO 2014 for weakly supervised segmentation: the official layout and the VOC-style one of the WSSS repos.

**Official layout** (``COCOFolder``): ``ROOT/train2014/*.jpg``, ``ROOT/val2014/*.jpg`` and
``ROOT/annotations/instances_{train,val}2014.json``. Splits ``train`` and ``val`` are train2014 and val2014; an
image's id is its file name without the extension (``COCO_train2014_000000000009``, as the name lists of AFA's
``datasets/coco/train.txt`` spell them). Classes: 0 background, then the categories of both files, whatever
split annotates them, in ascending category id → contiguous indices 1..80 (``class_index``); 255 ignored.

- image-level labels: the categories of an image's annotations (crowd ones included: the class is there);
  an image without annotations has none, so ``stages.common.labelled_images`` keeps it out of classifier
  training (``COCODataset.unannotated`` counts them);
- masks are built on demand (``instance_mask``), never written: each non-crowd annotation's region — a polygon
  list or an RLE, compressed (``counts`` a string) or not (``counts`` a list), rasterised by pycocotools — takes its
  class index in the file's order (a later annotation covers an earlier one), then every crowd region
  (``iscrowd: 1``) becomes 255;
- the JSON files are read once into a compact index (``CocoIndex``: the images with their size and labels in
  ``meta.json``, each image's annotations one line of ``annotations-<split>.jsonl`` found by its byte offset),
  kept in the cache folder under a digest of the files' path, size and modification time, so a per-image worker
  reads one line, not a 450 MB file. Building it checks the files (``CocoFormatError`` lines name the file and the
  entry: a missing ``images``/``annotations``/``categories`` list, an annotation of an unknown image or category, a
  polygon outside its image, an RLE of another size).

**VOC-style layout** (``COCOMaskFolder``; AFA's README, "COCO dataset", and ``datasets/coco.py`` of
rulixiang/afa: ``JPEGImages/{train,val}/<id>.jpg``, ``SegmentationClass/{train,val}/<id>.png`` with label indices
0..80 and 255): image-level labels from the masks; split lists from ``ImageSets/Segmentation/<split>.txt`` or
``<split>.txt`` in the root (AFA keeps them in its code as ``datasets/coco/{train,val}.txt``), else every image of
``JPEGImages/<split>/``. Class names: the 80 COCO 2014 categories (``COCO_CATEGORIES``).

``pipeline.voc.VOCFolder(root)`` and ``VOCDataset(root, split)`` give these classes for a COCO root
(``pipeline.voc.detect_layout``), so every stage reads COCO through the one per-image interface.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.store import image_id_problem
from pipeline.voc import IGNORE_INDEX, VOCDataset, VOCFolder

#: the 80 categories of COCO 2014 (id, name), ascending id: class index k is the k-th (``class_index``)
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"),
    (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
CLASS_NAMES = ("background", *(name for _, name in COCO_CATEGORIES))
NUM_CLASSES = len(CLASS_NAMES)  # 81
#: split name → image folder of the official layout
SPLIT_DIRS = {"train": "train2014", "val": "val2014"}
#: how far (pixels) a polygon vertex may lie outside its image before the polygon is refused
POLYGON_TOLERANCE = 2.0
INDEX_VERSION = 2  # 2: degenerate polygons dropped


class CocoFormatError(UserError):
    """An instances file that is not COCO's format: one line naming the file, the entry and the fix."""


def instances_path(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{SPLIT_DIRS.get(split, split)}.json"


def is_coco_root(root: Path) -> bool:
    """Whether ``root`` is in the official layout (it holds ``annotations/instances_{train,val}2014.json``)."""
    return any(instances_path(root, s).is_file() for s in SPLIT_DIRS)


def class_index(category_ids) -> dict[int, int]:
    """Category id → contiguous class index 1..K by ascending id (0 is background).

    >>> class_index([90, 1, 13])
    {1: 1, 13: 2, 90: 3}
    """
    return {cid: k + 1 for k, cid in enumerate(sorted(set(category_ids)))}


# ------------------------------------------------------------------------------------------------ rasterising


def region_rle(segmentation, height: int, width: int) -> dict:
    """The compressed RLE of one annotation's region: a list of polygons (merged), an uncompressed RLE (``counts``
    a list of run lengths) or a compressed one (``counts`` a string), as ``pycocotools.mask`` reads them."""
    from pycocotools import mask as mask_utils
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def instance_mask(annotations: list, height: int, width: int) -> np.ndarray:
    """The H×W uint8 class mask of an image's annotations ``[[class, iscrowd, segmentation], ...]``: 0 background;
    non-crowd regions in order (later over earlier) take their class; crowd regions then become 255.

    >>> square = [[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]]
    >>> instance_mask([[2, 0, square]], 5, 5)[:4, :4].tolist()  # corners (1, 1)-(3, 3): pixels 1 and 2 inside
    [[0, 0, 0, 0], [0, 2, 2, 0], [0, 2, 2, 0], [0, 0, 0, 0]]
    """
    from pycocotools import mask as mask_utils
    out = np.zeros((height, width), np.uint8)
    for crowd_pass in (False, True):
        for cls, crowd, seg in annotations:
            if bool(crowd) == crowd_pass and seg:
                region = mask_utils.decode(region_rle(seg, height, width)).astype(bool)
                out[region] = IGNORE_INDEX if crowd_pass else cls
    return out


def area_polygons(polygons: list) -> list:
    """The polygons of 3 or more vertices: one of fewer covers no pixel, and pycocotools would read a 4-number one
    as a box (``frPyObjects``), so such degenerate polygons (a few in real instances files) are dropped; the
    annotation's category still counts among its image's classes.

    >>> area_polygons([[0, 0, 4, 4], [0, 0, 4, 0, 4, 4]])
    [[0, 0, 4, 0, 4, 4]]
    """
    return [p for p in polygons if len(p) >= 6]


def _check_segmentation(seg, height: int, width: int, where: str) -> None:
    """Refuse (``CocoFormatError`` naming ``where``) a region that is not COCO's: polygons are flat lists of
    coordinate pairs inside the image (within ``POLYGON_TOLERANCE``; ``area_polygons`` then drops those of fewer than
    3 vertices), an RLE needs its image's ``size``."""
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) % 2 or not all(isinstance(v, (int, float)) for v in poly):
                raise CocoFormatError(f"{where}: a polygon is a flat list [x1, y1, x2, y2, ...] of vertices, "
                                      "got another value: fix the entry or remove it")
            if not poly:
                continue
            xy = np.asarray(poly, np.float64).reshape(-1, 2)
            t = POLYGON_TOLERANCE
            if (xy[:, 0] < -t).any() or (xy[:, 0] > width + t).any() or (xy[:, 1] < -t).any() or (xy[:, 1] > height + t).any():
                raise CocoFormatError(f"{where}: a polygon reaches ({xy[:, 0].max():g}, {xy[:, 1].max():g}) / "
                                      f"({xy[:, 0].min():g}, {xy[:, 1].min():g}), outside its {width}×{height} image: "
                                      "fix the entry's coordinates or remove it")
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [height, width]:
            raise CocoFormatError(f"{where}: its RLE is of size {seg['size']} but its image is height {height}, width "
                                  f"{width}: fix the entry or remove it")
        if not isinstance(seg["counts"], (list, str)):
            raise CocoFormatError(f"{where}: RLE counts must be a list of run lengths or a compressed string")
    else:
        raise CocoFormatError(f"{where}: segmentation is neither a polygon list nor an RLE (size, counts): "
                              "fix the entry or remove it")


# --------------------------------------------------------------------------------------------------- the index


def _load(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except OSError as e:
        raise CocoFormatError(f"{path} cannot be read ({e.strerror or e}): replace it") from None
    except ValueError as e:
        raise CocoFormatError(f"{path} is not valid JSON ({e}): replace it with the COCO instances file") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path} does not hold a JSON object: a COCO instances file holds images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFormatError(f"{path} has no {key!r} list: a COCO instances file holds images, annotations and "
                                  "categories lists")
    return data


def build_index(root: Path, out: Path) -> None:
    """Read the instances files of ``root`` (official layout), check them, and write the index to ``out``."""
    root = Path(root)
    files = {s: instances_path(root, s) for s in SPLIT_DIRS if instances_path(root, s).is_file()}
    names: dict[int, str] = {}
    loaded = {}
    for split, path in files.items():
        data = _load(path)
        for k, c in enumerate(data["categories"]):
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
                raise CocoFormatError(f"{path}: categories entry {k} needs an integer id and a name: fix the entry")
            if names.setdefault(c["id"], c["name"]) != c["name"]:
                raise CocoFormatError(f"{path}: category {c['id']} is {c['name']!r} here and {names[c['id']]!r} in the "
                                      "other instances file: give both files the same categories")
        loaded[split] = data
    index_of = class_index(names)
    meta = {"version": INDEX_VERSION, "categories": [[cid, names[cid]] for cid in sorted(names)], "splits": {}}
    seen: dict[str, str] = {}
    out.mkdir(parents=True, exist_ok=True)
    for split, data in loaded.items():
        path = files[split]
        own_categories = {c["id"] for c in data["categories"]}
        images: dict = {}
        for k, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not {"id", "file_name", "height", "width"} <= im.keys():
                raise CocoFormatError(f"{path}: images entry {k} needs id, file_name, height and width: fix the entry")
            stem = Path(str(im["file_name"])).stem
            problem = image_id_problem(stem)
            if problem:
                raise CocoFormatError(f"{path}: image {im['id']} ({im['file_name']}): {problem}: rename the file")
            if stem in seen:
                raise CocoFormatError(f"{path}: image {im['id']} is named {stem!r}, as another image of {seen[stem]}: "
                                      "give every image its own file name")
            seen[stem] = split
            if im["id"] in images:
                raise CocoFormatError(f"{path}: image id {im['id']} is listed twice: give every image its own id")
            images[im["id"]] = (stem, str(im["file_name"]), int(im["height"]), int(im["width"]))
        anns: dict = {i: [] for i in images}
        for k, a in enumerate(data["annotations"]):
            ident = a.get("id", f"#{k}") if isinstance(a, dict) else f"#{k}"
            if not isinstance(a, dict) or a.get("image_id") not in images:
                raise CocoFormatError(f"{path}: annotation {ident} is of image_id {a.get('image_id') if isinstance(a, dict) else None!r}, "
                                      "which is not among the file's images: fix the entry or remove it")
            if a.get("category_id") not in own_categories:
                raise CocoFormatError(f"{path}: annotation {ident} (image {a['image_id']}) has category_id "
                                      f"{a.get('category_id')!r}, which is not among the file's categories: fix the entry or remove it")
            _, _, h, w = images[a["image_id"]]
            seg = a.get("segmentation")
            _check_segmentation(seg, h, w, f"{path}: annotation {ident} (image {a['image_id']})")
            if isinstance(seg, list):
                seg = area_polygons(seg)
            anns[a["image_id"]].append([index_of[a["category_id"]], int(bool(a.get("iscrowd", 0))), seg])
        rows, offsets = [], []
        with open(out / f"annotations-{split}.jsonl", "wb") as f:
            for image_id in sorted(images, key=lambda i: images[i][0]):
                stem, file_name, h, w = images[image_id]
                offsets.append(f.tell())
                f.write(json.dumps(anns[image_id], separators=(",", ":")).encode() + b"\n")
                rows.append([stem, file_name, h, w, image_id, sorted({c for c, _, _ in anns[image_id]})])
        meta["splits"][split] = {"file": str(path), "images": rows, "offsets": offsets}
    (out / "meta.json").write_text(json.dumps(meta, separators=(",", ":")))


def _files_stamp(root: Path) -> tuple:
    stamp = []
    for s in SPLIT_DIRS:
        p = instances_path(root, s)
        try:
            st = p.stat()
            stamp.append((str(p), st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            stamp.append((str(p), None, None))
    return tuple(stamp)


class CocoIndex:
    """The index of an official-layout root (module docstring): per split its images' (id, file, height, width,
    COCO id, class indices) and the byte offset of each image's annotations line."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self.categories = [tuple(c) for c in meta["categories"]]
        self.split_files = {s: Path(v["file"]) for s, v in meta["splits"].items()}
        self.splits = {s: [r[0] for r in v["images"]] for s, v in meta["splits"].items()}
        self.rows = {r[0]: (s, *r[1:], off) for s, v in meta["splits"].items()
                     for r, off in zip(v["images"], v["offsets"])}

    def row(self, image_id: str) -> tuple:
        """(split, file name, height, width, COCO id, class indices, offset) of ``image_id``."""
        try:
            return self.rows[image_id]
        except KeyError:
            raise UserError(f"image {image_id!r} is in no instances file of {self.folder}: use the ids of "
                            "train2014/val2014 (file names without .jpg)") from None

    def annotations(self, image_id: str) -> list:
        split, *_, offset = self.row(image_id)
        with open(self.folder / f"annotations-{split}.jsonl", "rb") as f:
            f.seek(offset)
            return json.loads(f.readline())


@lru_cache(maxsize=4)
def _open_index(root: str, stamp: tuple) -> CocoIndex:
    from pipeline.synthetic import default_cache_dir
    digest = hashlib.sha256(json.dumps([INDEX_VERSION, root, stamp]).encode()).hexdigest()[:16]
    folder = default_cache_dir() / "coco-index" / digest
    if not (folder / "meta.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=folder.parent))
        try:
            build_index(Path(root), tmp)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process built it meanwhile
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return CocoIndex(folder)


def coco_index(root: Path) -> CocoIndex:
    """The index of ``root``'s instances files, built on first use (then kept per process and in the cache)."""
    root = Path(root)
    return _open_index(str(root.resolve()), _files_stamp(root))


# ------------------------------------------------------------------------------------------------ the folders


@dataclass
class COCOFolder(VOCFolder):
    """Per-image access to a COCO 2014 root in the official layout (module docstring)."""

    @property
    def index(self) -> CocoIndex:
        return coco_index(self.root)

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        return ("background", *(name for _, name in self.index.categories))

    def list_split(self, split: str) -> tuple[str, list[str]]:
        if split not in self.index.splits:
            raise UserError(f"COCO root {self.root} has no split {split!r} (no {instances_path(self.root, split)}): "
                            f"its splits are {', '.join(self.index.splits)}; choose one with --set data.<split key>=NAME")
        return str(self.index.split_files[split]), self.index.splits[split]

    def split_identity(self, split: str) -> tuple[bytes, list[str]]:
        p = instances_path(self.root, split)
        if not p.is_file():
            return b"", []
        st = p.stat()
        return f"{p}:{st.st_size}:{st.st_mtime_ns}".encode(), self.index.splits.get(split, [])

    def image_path(self, image_id: str) -> Path:
        split, file_name, *_ = self.index.row(image_id)
        return self.root / SPLIT_DIRS.get(split, split) / file_name

    def files_of(self, image_id: str) -> list[Path]:
        return [self.image_path(image_id)]

    def check_image(self, image_id: str, max_pixels: int) -> tuple[int, int]:
        split, file_name, h, w, coco_id, *_ = self.index.row(image_id)
        p = self.image_path(image_id)
        if not p.is_file():
            raise UserError(f"image {p} is missing: {self.index.split_files[split]} lists it (image id {coco_id}): "
                            "add the image or remove its entry")
        size = super().check_image(image_id, max_pixels)
        if size != (h, w):
            raise UserError(f"image {p} is {size[1]}×{size[0]} but {self.index.split_files[split]} gives it "
                            f"width {w}, height {h} (image id {coco_id}): fix the entry or replace the image")
        return size

    def check_mask(self, image_id: str, size: tuple[int, int]) -> bool:
        return True  # built from annotations checked with the index

    def mask_path(self, image_id: str) -> Path | None:
        return self.index.split_files[self.index.row(image_id)[0]]

    def has_mask(self, image_id: str) -> bool:
        return image_id in self.index.rows

    def mask(self, image_id: str) -> np.ndarray:
        _, _, h, w, *_ = self.index.row(image_id)
        return instance_mask(self.index.annotations(image_id), h, w)

    def image_labels(self, image_id: str) -> np.ndarray:
        lab = np.zeros(self.num_classes - 1, np.float32)
        classes = self.index.row(image_id)[5]
        lab[np.asarray(classes, int) - 1] = 1
        return lab


@dataclass
class COCODataset(COCOFolder, VOCDataset):
    """One split (``train`` or ``val``) of an official-layout root."""

    @property
    def unannotated(self) -> int:
        """How many of the split's images have no annotation (no image-level label: not trained on)."""
        return int((self.label_matrix.sum(1) == 0).sum())

    @cached_property
    def label_matrix(self) -> np.ndarray:
        out = np.zeros((len(self), self.num_classes - 1), np.float32)
        for r, i in enumerate(self.ids):
            out[r, np.asarray(self.index.row(i)[5], int) - 1] = 1
        return out


#: image folders of the VOC-style layout, per split (AFA's names first, then the official ones)
MASK_LAYOUT_DIRS = {"train": ("train", "train2014"), "val": ("val", "val2014")}


@dataclass
class COCOMaskFolder(VOCFolder):
    """Per-image access to COCO in the VOC-style layout of the WSSS repos (module docstring)."""

    class_names = CLASS_NAMES

    def _find(self, kind: str, image_id: str, ext: str) -> Path | None:
        subs = [s for group in MASK_LAYOUT_DIRS.values() for s in group]
        if "val" in image_id:  # COCO_val2014_…: look in val first
            subs = subs[2:] + subs[:2]
        for sub in subs:
            p = self.root / kind / sub / f"{image_id}{ext}"
            if p.is_file():
                return p
        return None

    def image_path(self, image_id: str) -> Path:
        return self._find("JPEGImages", image_id, ".jpg") or self.root / "JPEGImages" / "train" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        return self._find("SegmentationClass", image_id, ".png")

    def files_of(self, image_id: str) -> list[Path]:
        return [self.image_path(image_id), self.mask_path(image_id) or self.root / "SegmentationClass" / "train" / f"{image_id}.png"]

    def _split_list(self, split: str) -> Path | None:
        for p in (self.root / "ImageSets" / "Segmentation" / f"{split}.txt", self.root / f"{split}.txt"):
            if p.is_file():
                return p
        return None

    def list_split(self, split: str) -> tuple[str, list[str]]:
        lst = self._split_list(split)
        if lst is not None:
            return str(lst), [ln.split()[0] for ln in lst.read_text().splitlines() if ln.strip()]
        for sub in MASK_LAYOUT_DIRS.get(split, (split,)):
            d = self.root / "JPEGImages" / sub
            if d.is_dir():
                return str(d), sorted(p.stem for p in d.glob("*.jpg"))
        raise UserError(f"COCO root {self.root} has neither a name list {split}.txt (in the root or "
                        f"ImageSets/Segmentation/) nor JPEGImages/{split}/: add one or choose another split")

    def split_identity(self, split: str) -> tuple[bytes, list[str]]:
        try:
            where, ids = self.list_split(split)
        except UserError:
            return b"", []
        return (Path(where).read_bytes() if Path(where).is_file() else "\n".join(ids).encode()), ids

    def image_labels(self, image_id: str) -> np.ndarray:
        m = self.mask(image_id)
        if m is None:
            raise UserError(f"image {image_id!r} has no mask in SegmentationClass/train or /val: image-level labels "
                            "of this layout come from its masks")
        lab = np.zeros(self.num_classes - 1, np.float32)
        cls = np.unique(m)
        cls = cls[(cls > 0) & (cls < self.num_classes)]
        lab[cls - 1] = 1
        return lab


@dataclass
class COCOMaskDataset(COCOMaskFolder, VOCDataset):
    """One split of a VOC-style COCO root."""
