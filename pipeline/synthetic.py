"""A synthetic PASCAL-VOC-format dataset: the embedded default of every flow.

Each image holds 1–3 objects on a cluttered background. Object bodies take their colour from a
pool *shared by all classes* and carry a random stripe texture; their shape depends on the class
only weakly (the class's own shape with probability ``shape_bias``, any other shape otherwise).
What tells a class reliably is a **small discriminative part**: a spot of a class-specific colour
inside the body that fades smoothly into the body's shared colour (weight exp(−(d/1.6r)²) at
distance d from the spot's centre, r its radius). The part has no edge of its own, so colour-
and position-driven refinement can carry a part-sized seed across the body and stop at the
object's outline, which is sharp. A classifier therefore fires on the part, so raw CAM seeds are partial, and
refinement that follows colour and position (PAR, CRF, random walk) has to spread them over the
body. Background clutter uses the body colours too, so refinement can also leak. Objects may
occlude each other; ground-truth masks carry a void (255) band along object boundaries, as VOC's do.

The result is written in VOC layout (JPEGImages, SegmentationClass palette PNGs, Annotations XML,
ImageSets/Segmentation/{train,train_aug,val}.txt) and is deterministic given its parameters.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.voc import CLASS_NAMES, IGNORE_INDEX, save_label_png

#: VOC class indices used by the synthetic data, with their shape and part colour.
SYNTH_CLASSES = (1, 3, 7, 8, 12, 15)
SHAPES = ("ellipse", "rectangle", "diamond", "triangle", "cross", "blob")
PART_COLOURS = np.array(
    [[250, 40, 40], [40, 220, 60], [60, 80, 250], [250, 220, 30], [230, 40, 230], [30, 220, 230]], np.float32
)
BODY_COLOURS = np.array(
    [[150, 110, 80], [110, 130, 150], [170, 160, 130], [120, 150, 100], [160, 120, 140]], np.float32
)
GENERATOR_VERSION = 3


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a unit shape in rotated, scaled coordinates (x, y ∈ about [-1, 1])."""
    if shape == "ellipse":
        return x**2 + y**2 <= 1
    if shape == "rectangle":
        return (np.abs(x) <= 0.9) & (np.abs(y) <= 0.9)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.1
    if shape == "triangle":
        return (y <= 0.8) & (y >= 1.8 * np.abs(x) - 1.0)
    if shape == "cross":
        return ((np.abs(x) <= 1) & (np.abs(y) <= 0.38)) | ((np.abs(x) <= 0.38) & (np.abs(y) <= 1))
    if shape == "blob":
        k, phase = int(rng.integers(3, 6)), rng.uniform(0, 2 * np.pi)
        r = np.sqrt(x**2 + y**2)
        th = np.arctan2(y, x)
        return r <= 0.85 + 0.2 * np.sin(k * th + phase)
    raise ValueError(shape)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    t = (np.cos(rng.uniform(0, np.pi)) * xx / w + np.sin(rng.uniform(0, np.pi)) * yy / h)[..., None]
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c0 * (1 - t) + c1 * t
    # low-frequency noise: upsampled coarse random field
    coarse = rng.normal(0, 18, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    noise = np.asarray(Image.fromarray(coarse[..., 0]).resize((w, h), Image.BILINEAR))
    img += np.stack([noise, np.asarray(Image.fromarray(coarse[..., 1]).resize((w, h), Image.BILINEAR)),
                     np.asarray(Image.fromarray(coarse[..., 2]).resize((w, h), Image.BILINEAR))], -1)
    # clutter: distractor shapes in body colours (background class)
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(0.03, 0.1) * min(h, w), rng.uniform(0.03, 0.1) * min(h, w)
        m = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1 if rng.random() < 0.5 else (
            (np.abs(xx - cx) <= a) & (np.abs(yy - cy) <= b))
        img[m] = BODY_COLOURS[rng.integers(len(BODY_COLOURS))] + rng.normal(0, 10, 3)
    return img


def render_sample(rng: np.random.Generator, min_size: int, max_size: int, shape_bias: float = 0.6) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One image (H×W×3 uint8), its mask (H×W uint8, 255 void band) and its object classes."""
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    img = _background(h, w, rng)
    label = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n_obj = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    classes = []
    for _ in range(n_obj):
        k = int(rng.integers(len(SYNTH_CLASSES)))
        cls = SYNTH_CLASSES[k]
        shape = SHAPES[k] if rng.random() < shape_bias else SHAPES[int(rng.integers(len(SHAPES)))]
        s = min(h, w)
        a, b = rng.uniform(0.16, 0.32) * s, rng.uniform(0.16, 0.32) * s
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        th = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
        body = _shape_mask(shape, u, v, rng)
        if body.sum() < 30:
            continue
        colour = BODY_COLOURS[rng.integers(len(BODY_COLOURS))] + rng.normal(0, 8, 3)
        freq, ang = rng.uniform(0.15, 0.4), rng.uniform(0, np.pi)
        stripes = 14 * np.sin(freq * (xx * np.cos(ang) + yy * np.sin(ang)))[..., None]
        tex = colour + stripes + rng.normal(0, 6, (h, w, 3))
        img[body] = tex[body]
        # discriminative part: a spot of the class colour fading into the body colour
        pr = max(2.5, 0.22 * min(a, b))
        py, px = np.nonzero(body)
        j = int(rng.integers(len(py)))
        oy, ox = cy + 0.45 * (py[j] - cy), cx + 0.45 * (px[j] - cx)
        wt = np.exp(-((xx - ox) ** 2 + (yy - oy) ** 2) / (1.6 * pr) ** 2)[..., None]
        img[body] = ((1 - wt) * img + wt * PART_COLOURS[k])[body]
        label[body] = cls
        classes.append(cls)
    if not classes:  # always at least one object
        return render_sample(rng, min_size, max_size, shape_bias)
    # void band along object boundaries, like VOC's
    edge = np.zeros((h, w), bool)
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    label[edge] = IGNORE_INDEX
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img, label, sorted(set(classes))


def _annotation_xml(image_id: str, h: int, w: int, classes: list[int]) -> str:
    objs = "".join(f"<object><name>{CLASS_NAMES[c]}</name><difficult>0</difficult></object>" for c in classes)
    return (f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def make_synthetic(out_dir: Path, n_train: int = 200, n_val: int = 60, seed: int = 0,
                   min_size: int = 96, max_size: int = 144) -> Path:
    """Write the synthetic dataset in VOC layout under ``out_dir`` and return the VOC2012 folder.

    Image ``i`` of a split is rendered from ``default_rng([seed, split, i])``, so the data do not
    depend on the order of generation. The folder is assembled in a temporary sibling and renamed
    into place, so a killed run never leaves a half-written dataset behind.
    """
    out_dir = Path(out_dir)
    root = out_dir / "VOC2012"
    params = dict(n_train=n_train, n_val=n_val, seed=seed, min_size=min_size, max_size=max_size, version=GENERATOR_VERSION)
    marker = root / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=out_dir))
    vr = tmp / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (vr / sub).mkdir(parents=True)
    lists = {}
    for split_no, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        ids = []
        for i in range(n):
            image_id = f"synth_{split}_{i:05d}"
            rng = np.random.default_rng([seed, split_no, i])
            img, label, classes = render_sample(rng, min_size, max_size)
            Image.fromarray(img).save(vr / "JPEGImages" / f"{image_id}.jpg", quality=95)
            save_label_png(vr / "SegmentationClass" / f"{image_id}.png", label)
            (vr / "Annotations" / f"{image_id}.xml").write_text(_annotation_xml(image_id, *label.shape, classes))
            ids.append(image_id)
        lists[split] = ids
    lists["train_aug"] = lists["train"]
    for split, ids in lists.items():
        (vr / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (vr / "synthetic.json").write_text(json.dumps(params))
    if root.exists():
        shutil.rmtree(root)
    os.replace(vr, root)
    shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_cache_dir() -> Path:
    return Path(os.environ.get("WSSS_CACHE", Path.home() / ".cache" / "wsss_pipeline"))


def embedded_dataset(n_train: int, n_val: int, seed: int, min_size: int, max_size: int) -> Path:
    """The embedded synthetic dataset for these parameters, generated once and cached."""
    key = hashlib.sha1(json.dumps([n_train, n_val, seed, min_size, max_size, GENERATOR_VERSION]).encode()).hexdigest()[:10]
    return make_synthetic(default_cache_dir() / f"synthetic-{key}", n_train, n_val, seed, min_size, max_size)
