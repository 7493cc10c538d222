"""PASCAL VOC 2012 in its own folder layout: classes, palette, splits, images, masks, image labels."""
from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import UserError
from pipeline.store import image_id_problem

#: PIL modes of 8-bit images (what the networks' RGB pipeline reads faithfully)
EIGHT_BIT_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1")

@lru_cache(maxsize=16)
def decoded_rgb(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """The decoded RGB pixels of the image file ``path`` (keyed by its modification time and size, so a replaced
    file is decoded again), kept for the next calls: a per-image stage that labels one image by several routes,
    or scores and refines it, decodes it once. Read-only, as it is shared."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    arr.flags.writeable = False
    return arr


CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_INDEX = 255


def voc_palette() -> np.ndarray:
    """The 256×3 uint8 colour map of the VOC palette PNGs (bit-interleaved label index)."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


PALETTE = voc_palette()


def save_label_png(path: Path, label: np.ndarray) -> None:
    """Write an H×W uint8 label as a palette PNG, as in SegmentationClass."""
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(PALETTE.ravel().tolist())
    im.save(path)


def class_names_of(num_classes: int) -> tuple[str, ...]:
    """The class names of a score over ``num_classes`` classes (how ``inspect`` names per-class rows): VOC's 21,
    COCO 2014's 81 (``pipeline.coco.CLASS_NAMES``), else ``class_<k>``.

    >>> class_names_of(21)[20], class_names_of(81)[80], class_names_of(3)[2]
    ('tvmonitor', 'toothbrush', 'class_2')
    """
    from pipeline.coco import CLASS_NAMES as COCO_NAMES
    for names in (CLASS_NAMES, COCO_NAMES):
        if len(names) == num_classes:
            return names
    return ("background", *(f"class_{k}" for k in range(1, num_classes)))


# ------------------------------------------------------------------------------ who may read a mask (docs/labels.md)


class MaskReadWhileLabelling(RuntimeError):
    """A stage that labels read the mask of an image that it labels or trains on: a defect of the stage (what it may
    read is declared by ``pipeline.stage.Stage.masks``), never the user's input."""


@dataclass(frozen=True)
class MaskPolicy:
    """The masks that the running ``stage`` may not read: those of the images of ``splits`` (the training and label
    splits) but the calibration split's (``pseudo.calibrate``), ``forbidden``. Set by the stage runner
    (``pipeline.stage.masks_as_declared``) and checked by every mask accessor of every dataset reader."""

    stage: str
    forbidden: frozenset[str]
    splits: tuple[str, ...] = ()

    def check(self, image_id: str, accessor: str) -> None:
        if image_id in self.forbidden:
            raise MaskReadWhileLabelling(
                f"stage {self.stage} called {accessor}({image_id!r}): the mask of an image of the labelled splits "
                f"({', '.join(self.splits)}); a stage that labels reads images, tags and networks only (Stage.masks: "
                "'score' for a stage that scores, whose outputs later stages use only from its label_free() part)")


_MASK_POLICY: ContextVar[MaskPolicy | None] = ContextVar("mask_policy", default=None)
_UNGUARDED: ContextVar[bool] = ContextVar("unguarded_read", default=False)
#: the methods of a dataset reader that read or reveal a mask: guarded in ``VOCFolder`` and in every subclass
MASK_ACCESSORS = ("mask", "mask_path", "has_mask", "check_mask")
#: the methods free of the policy: the tags are the weak labels (a mask's class set where no annotation file says
#: otherwise), and the data's fingerprint lists an image's files (their sizes and times) without reading them
UNGUARDED_READERS = ("image_labels", "files_of")


def current_mask_policy() -> MaskPolicy | None:
    """The policy of the stage running in this context (None: outside a stage, or a stage that may read masks)."""
    return _MASK_POLICY.get()


def adopt_mask_policy(policy: MaskPolicy | None) -> None:
    """Make ``policy`` this context's (a worker process or thread that works for the stage that packed it)."""
    _MASK_POLICY.set(policy)


@contextmanager
def masks_under(policy: MaskPolicy | None) -> Iterator[None]:
    """Run the block under ``policy`` (None lifts it); forked workers started inside inherit it."""
    token = _MASK_POLICY.set(policy)
    try:
        yield
    finally:
        _MASK_POLICY.reset(token)


def _mask_guarded(fn: Callable) -> Callable:
    """``fn(self, image_id, ...)`` refusing, under a policy, the images it forbids (``MaskPolicy.check``)."""
    @functools.wraps(fn)
    def accessor(self, image_id, *args, **kwargs):
        policy = _MASK_POLICY.get()
        if policy is not None and not _UNGUARDED.get():
            policy.check(image_id, f"{type(self).__name__}.{fn.__name__}")
        return fn(self, image_id, *args, **kwargs)
    accessor.mask_guarded = True
    return accessor


def _unguarded(fn: Callable) -> Callable:
    """``fn`` free of the policy (``UNGUARDED_READERS``): an image's tags may come from its mask's class set."""
    @functools.wraps(fn)
    def reader(self, *args, **kwargs):
        token = _UNGUARDED.set(True)
        try:
            return fn(self, *args, **kwargs)
        finally:
            _UNGUARDED.reset(token)
    reader.mask_guarded = True
    return reader


def _guard_accessors(cls: type) -> None:
    """Wrap the mask accessors and unguarded readers that ``cls`` itself defines (a new reader cannot escape the
    policy)."""
    for names, wrap in ((MASK_ACCESSORS, _mask_guarded), (UNGUARDED_READERS, _unguarded)):
        for name in names:
            fn = cls.__dict__.get(name)
            if callable(fn) and not getattr(fn, "mask_guarded", False):
                setattr(cls, name, wrap(fn))


#: the layouts ``detect_layout`` tells apart, and the dataset (``data.dataset``) each holds
LAYOUTS = {"voc": "voc", "coco": "coco", "coco_masks": "coco"}


def _is_coco_mask_layout(root: Path) -> bool:
    return any((root / "JPEGImages" / sub).is_dir() for sub in ("train", "val", "train2014", "val2014"))


def detect_layout(root: Path, dataset: str | None = None) -> tuple[str, Path] | None:
    """The layout of the data under ``root`` and its folder, or None: ``coco`` (the official COCO 2014 layout,
    ``root/annotations/instances_*2014.json``), ``coco_masks`` (COCO as the WSSS repos keep it:
    ``root/JPEGImages/{train,val}/``) or ``voc`` (``root``, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012`` with
    ``JPEGImages/``). ``dataset`` (``voc`` | ``coco``) looks for that dataset's layouts only."""
    from pipeline.coco import is_coco_root
    root = Path(root)
    if dataset in (None, "coco"):
        if is_coco_root(root):
            return "coco", root
        if _is_coco_mask_layout(root):
            return "coco_masks", root
    if dataset in (None, "voc"):
        for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (cand / "JPEGImages").is_dir() and not _is_coco_mask_layout(cand):
                return "voc", cand
    return None


def find_voc_root(root: Path, dataset: str | None = None) -> Path:
    """The folder of the dataset under ``root`` (``detect_layout``): the VOC2012 folder (``root`` itself,
    ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``) or a COCO 2014 root; ``dataset`` (``data.dataset``) names the
    dataset to find there, where detection is not wanted."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data root {root} does not exist: give --data-root a VOC2012 folder or a COCO 2014 folder")
    found = detect_layout(root, dataset)
    if found is not None:
        return found[1]
    if dataset == "coco":
        raise UserError(f"{root} holds neither annotations/instances_train2014.json / instances_val2014.json nor "
                        "JPEGImages/train/ (data.dataset=coco): give --data-root a COCO 2014 folder (train2014/, "
                        "val2014/, annotations/), or set data.dataset=voc")
    if dataset == "voc" and detect_layout(root, "coco") is not None:
        raise UserError(f"{root} is a COCO 2014 folder but data.dataset=voc: set data.dataset=coco (or leave it "
                        "unset to detect it), or give --data-root a VOC2012 folder")
    raise UserError(f"{root} holds no JPEGImages/: give --data-root a VOC2012 folder (or one holding VOC2012/ or "
                    "VOCdevkit/VOC2012/), or a COCO 2014 folder (train2014/, val2014/, annotations/instances_*2014.json)")


@dataclass
class VOCFolder:
    """Per-image access to a VOC2012 folder (already resolved, see ``find_voc_root``); cheap to make.

    Masks come from ``SegmentationClassAug`` when it has the image (train_aug), else
    ``SegmentationClass`` (palette PNGs, 255 = void). Image-level labels come from ``Annotations/<id>.xml``,
    else from the mask's classes (``image_labels``). Per-image workers hold one of these: unlike
    ``VOCDataset`` it reads no split list.

    The mask accessors (``MASK_ACCESSORS``: ``mask``, ``mask_path``, ``has_mask``, ``check_mask``) of this class and of
    every subclass obey the running stage's ``MaskPolicy``: a stage that labels gets ``MaskReadWhileLabelling`` for the
    mask of an image of the training or label split (``pipeline.stage.Stage.masks``). ``image_labels`` and ``files_of``
    are free of it (``UNGUARDED_READERS``).

    ``VOCFolder(root)`` of a COCO 2014 root (``detect_layout``) is that layout's reader, ``pipeline.coco.COCOFolder``
    or ``COCOMaskFolder`` (and ``VOCDataset(root, split)`` a ``COCODataset`` or ``COCOMaskDataset``): same methods,
    its own ``class_names``, so a stage reads any dataset through this one interface.
    """

    root: Path
    class_names = CLASS_NAMES  # index order: 0 background, then the dataset's classes

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        _guard_accessors(cls)  # a reader's mask accessors obey the running stage's policy (``MaskPolicy``)

    def __new__(cls, *args, **kwargs):
        if args or "root" in kwargs:  # (not when unpickled: then no arguments)
            root = args[0] if args else kwargs["root"]
            cls = _layout_class(cls, root)
        return super().__new__(cls)

    @property
    def num_classes(self) -> int:
        """Classes of a label index, background included (VOC 21, COCO 81)."""
        return len(self.class_names)

    def list_split(self, split: str) -> tuple[str, list[str]]:
        """(where the split's list is, its image ids as written): ``ImageSets/Segmentation/<split>.txt``."""
        lst = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            raise UserError(f"split list {lst} is missing: add it or choose another split with --set data.<split key>=NAME")
        return str(lst), [ln.split()[0] for ln in lst.read_text().splitlines() if ln.strip()]

    def split_identity(self, split: str) -> tuple[bytes, list[str]]:
        """What identifies a split in the data fingerprint (its list's bytes; b"" when missing) and its ids."""
        p = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        text = p.read_bytes() if p.is_file() else b""
        return text, [ln.split()[0] for ln in text.decode(errors="replace").splitlines() if ln.strip()]

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def files_of(self, image_id: str) -> list[Path]:
        """Every file a stage may read for ``image_id`` (present or not): image, masks, annotation."""
        return [self.image_path(image_id), self.root / "SegmentationClassAug" / f"{image_id}.png",
                self.root / "SegmentationClass" / f"{image_id}.png", self.root / "Annotations" / f"{image_id}.xml"]

    def check_image(self, image_id: str, max_pixels: int) -> tuple[int, int]:
        """Decode the whole image (a truncated file fails here, not in a stage) and return its (height, width);
        ``UserError`` naming the file when it is missing, unreadable, not 8-bit, or over ``max_pixels`` pixels."""
        p = self.image_path(image_id)
        try:
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise UserError(f"image {p} has {w}×{h} = {w * h:,} pixels, over data.max_pixels={max_pixels:,}: "
                                    f"downscale it, or raise the cap with --set data.max_pixels={w * h}")
                if im.mode not in EIGHT_BIT_MODES:
                    raise UserError(f"image {p} is not an 8-bit image (PIL mode {im.mode}): save it as 8-bit RGB")
                im.load()
        except FileNotFoundError:
            raise UserError(f"image {p} is missing: remove {image_id!r} from its split list or add the image") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise UserError(f"image {p} cannot be decoded ({type(e).__name__}: {e}): replace it or remove "
                            f"{image_id!r} from its split list") from None
        return h, w

    def check_mask(self, image_id: str, size: tuple[int, int]) -> bool:
        """Whether ``image_id`` has a mask, after checking it: ``UserError`` naming the file when its size is not
        the image's ``size`` (height, width) or it holds values other than 0–20 and 255."""
        p = self.mask_path(image_id)
        if p is None:
            return False
        m = self.mask(image_id)
        if m.shape != tuple(size):
            raise UserError(f"mask {p} is {m.shape[1]}×{m.shape[0]} but its image is {size[1]}×{size[0]}: "
                            "masks must have their image's size")
        bad = np.setdiff1d(np.unique(m), np.r_[np.arange(self.num_classes), IGNORE_INDEX])
        if bad.size:
            raise UserError(f"mask {p} holds values {bad[:5].tolist()} outside 0–{self.num_classes - 1} and {IGNORE_INDEX}: "
                            "save it with the dataset's label indices (255 = void)")
        return True

    def image(self, image_id: str) -> np.ndarray:
        """H×W×3 uint8 RGB (read-only: the last images decoded in this process are kept, ``decoded_rgb``)."""
        p = self.image_path(image_id)
        try:
            st = p.stat()
            return decoded_rgb(str(p), st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            raise UserError(f"image {p} is missing: remove {image_id!r} from its split list or add the image") from None
        except OSError as e:
            raise UserError(f"image {p} cannot be read ({e}): replace or remove it") from None

    def mask_path(self, image_id: str) -> Path | None:
        for sub in ("SegmentationClassAug", "SegmentationClass"):
            p = self.root / sub / f"{image_id}.png"
            if p.is_file():
                return p
        return None

    def has_mask(self, image_id: str) -> bool:
        return self.mask_path(image_id) is not None

    def mask(self, image_id: str) -> np.ndarray | None:
        """H×W uint8 label indices (palette PNG indices, 255 void), or None without a mask."""
        p = self.mask_path(image_id)
        if p is None:
            return None
        try:
            with Image.open(p) as im:
                if im.mode == "P" or im.mode == "L":
                    return np.asarray(im).astype(np.uint8)
                raise UserError(f"mask {p} is not a palette or grey PNG (mode {im.mode}): save it with label indices")
        except OSError as e:
            raise UserError(f"mask {p} cannot be read ({e}): replace or remove it") from None

    def image_labels(self, image_id: str) -> np.ndarray:
        """Multi-hot vector over the 20 foreground classes (index c-1 for class c): the objects of
        ``Annotations/<id>.xml`` (as IRN/SIPE make their class labels, ``data/make_cls_labels.py`` of SIPE:
        ``load_image_label_list_from_xml``); only an image without an annotation file takes the classes of its
        mask. So the tags, and every label made from them, do not change when masks are removed (CONTRACT.md,
        "Ground truth and datasets")."""
        lab = np.zeros(NUM_CLASSES - 1, np.float32)
        xml = self.root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            m = self.mask(image_id)
            if m is None:
                raise UserError(f"image {image_id!r} has neither a mask nor {xml}: image-level labels are needed")
            cls = np.unique(m)
            cls = cls[(cls > 0) & (cls < NUM_CLASSES)]
            lab[cls - 1] = 1
            return lab
        try:
            tree = ET.parse(xml)
        except ET.ParseError as e:
            raise UserError(f"annotation {xml} is not valid XML ({e})") from None
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name in CLASS_NAMES[1:]:
                lab[CLASS_NAMES.index(name) - 1] = 1
        return lab


_guard_accessors(VOCFolder)


@dataclass
class VOCDataset(VOCFolder):
    """One split of a VOC-layout folder: ``root`` may be any folder ``find_voc_root`` accepts."""

    split: str
    max_images: int | None = None
    _ids: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.root = find_voc_root(self.root)
        lst, ids = self.list_split(self.split)
        for i in ids:
            problem = image_id_problem(i)
            if problem:
                raise UserError(f"{lst}: entry {problem}: rename the image or remove the entry")
        if self.max_images:
            ids = ids[: self.max_images]
        if not ids:
            raise UserError(f"split list {lst} is empty")
        self._ids = ids

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def check_images(self) -> None:
        """Fail with one line naming the first list entry without an image."""
        for i in self._ids:
            if not self.image_path(i).is_file():
                raise UserError(f"{self.split} list entry {i!r} has no image {self.image_path(i)}: remove it from the list or add the image")

    @cached_property
    def label_matrix(self) -> np.ndarray:
        return np.stack([self.image_labels(i) for i in self._ids])


def _layout_class(cls: type, root) -> type:
    """The reader class of ``root``'s layout for ``cls`` (``VOCFolder`` or ``VOCDataset``; a subclass stays itself)."""
    if cls not in (VOCFolder, VOCDataset):
        return cls
    try:
        found = detect_layout(Path(root))
    except OSError:
        found = None
    if found is None or found[0] == "voc":
        return cls
    from pipeline import coco
    return {("coco", VOCFolder): coco.COCOFolder, ("coco", VOCDataset): coco.COCODataset,
            ("coco_masks", VOCFolder): coco.COCOMaskFolder, ("coco_masks", VOCDataset): coco.COCOMaskDataset}[found[0], cls]
