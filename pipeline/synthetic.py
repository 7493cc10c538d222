"""Synthetic PASCAL-VOC-format datasets: the embedded default of every flow, in two independent styles.

**Style a** (the default, ``render_sample``). Each image holds 1–3 objects on a cluttered background. Object bodies take their colour from a
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

**Style b** (``render_sample_b``, ``make-synthetic --style b``, ``--set data.synthetic.style=b``): a second,
independently drawn generator to check that defaults chosen on style a transfer. Other classes
(bicycle, bottle, chair, dining table, horse, sheep), other shapes (star, ring, crescent, L, hexagon,
capsule), any hue for the bodies, and the class told by a **texture over the whole body** (checker,
dots, waves, grid, rings, speckle, each at its own scale) and only weakly by the shape (its own with
probability 0.5) — so CAMs may cover bodies rather than parts, and the difficulty moves to the
boundaries; a tiled background with line clutter and distractor patches textured like the classes but
at scales no class uses, 1–4 objects spanning about 15–70% of the image side that may leave the frame,
and a 2-pixel void band.

The result is written in VOC layout (JPEGImages, SegmentationClass palette PNGs, Annotations XML,
ImageSets/Segmentation/{train,train_aug,val}.txt) and is deterministic given its parameters. The training
images also get **sparse annotations** in the field's files (``sparse_annotations``): scribbles in
``voc_scribbles.zip`` (ScribbleSup XML), clicks in ``voc_whats_the_point.json`` and background clicks in
``voc_whats_the_point_bg_from_scribbles.json``, so the sparse flows run on it and read those formats every run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_erosion
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.measure import label as connected_components
from skimage.morphology import disk, skeletonize

from pipeline.errors import UserError
from pipeline.sparse import STANDARD_FILES, Shape, scribble_xml
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
#: style b's own version (style a's cache keys predate the styles and stay as they were)
STYLE_B_VERSION = 2
#: the sparse annotations' version (written beside the images; a change rewrites only them)
SPARSE_VERSION = 2


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


#: style b: VOC classes, their shapes and their textures
B_CLASSES = (2, 5, 9, 11, 13, 17)
B_SHAPES = ("star", "ring", "crescent", "ell", "hexagon", "capsule")
B_TEXTURES = ("checker", "dots", "waves", "grid", "rings", "speckle")


def _shape_mask_b(shape: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a style-b unit shape in rotated, scaled coordinates (x, y ∈ about [-1, 1])."""
    r, th = np.sqrt(x**2 + y**2), np.arctan2(y, x)
    if shape == "star":
        k = int(rng.integers(5, 8))
        return r <= 0.6 + 0.35 * np.cos(k * th) ** 2
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.45)
    if shape == "crescent":
        return (r <= 1.0) & ((x - 0.45) ** 2 + y**2 >= 0.55)
    if shape == "ell":
        return ((np.abs(x + 0.5) <= 0.4) & (np.abs(y) <= 1)) | ((np.abs(y - 0.6) <= 0.4) & (np.abs(x) <= 0.9))
    if shape == "hexagon":
        ax, ay = np.abs(x), np.abs(y)  # a regular hexagon of circumradius 1
        return (ay <= 0.866) & (1.732 * ax + ay <= 1.732)
    if shape == "capsule":
        return (np.abs(y) <= 0.45) & ((np.abs(x) <= 0.55) | ((np.abs(x) - 0.55) ** 2 + y**2 <= 0.45**2))
    raise ValueError(shape)


def _texture_b(kind: str, xx: np.ndarray, yy: np.ndarray, scale: float, ang: float, rng: np.random.Generator) -> np.ndarray:
    """A texture in [-1, 1] over the image grid (H×W)."""
    u = (xx * np.cos(ang) + yy * np.sin(ang)) / scale
    v = (-xx * np.sin(ang) + yy * np.cos(ang)) / scale
    if kind == "checker":
        return np.where((np.floor(u) + np.floor(v)) % 2 == 0, 1.0, -1.0)
    if kind == "dots":
        return np.where((u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 <= 0.09, 1.0, -1.0)
    if kind == "waves":
        return np.sin(2 * np.pi * (u + 0.3 * np.sin(2 * np.pi * v / 3)))
    if kind == "grid":
        return np.where((np.abs(u - np.round(u)) < 0.12) | (np.abs(v - np.round(v)) < 0.12), 1.0, -1.0)
    if kind == "rings":
        return np.sin(2 * np.pi * np.sqrt(u**2 + v**2))
    if kind == "speckle":
        return np.clip(rng.normal(0, 1, xx.shape), -1, 1) * np.sign(np.sin(2 * np.pi * u))
    raise ValueError(kind)


#: style b: each class's texture scale (pixels per period); distractor textures use other scales
B_SCALES = (6.0, 5.0, 7.0, 6.5, 4.0, 5.5)


def _hsv_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    import colorsys
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, np.float32) * 255


def _background_b(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Tiles of two colours with grout, a vignette, line clutter and textured distractor patches."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tile = rng.uniform(10, 30)
    c0, c1 = _hsv_colour(rng, (0.05, 0.5), (0.25, 0.8)), _hsv_colour(rng, (0.05, 0.5), (0.25, 0.8))
    t = ((np.floor(xx / tile) + np.floor(yy / tile)) % 2)[..., None]
    img = c0 * (1 - t) + c1 * t
    grout = ((xx % tile) < 1.5) | ((yy % tile) < 1.5)
    img[grout] *= 0.7
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    img *= (1 - 0.35 * (((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2))[..., None]
    for _ in range(int(rng.integers(3, 9))):  # lines
        x0, y0, x1, y1 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)
        d = np.abs((y1 - y0) * xx - (x1 - x0) * yy + x1 * y0 - y1 * x0) / (np.hypot(x1 - x0, y1 - y0) + 1e-6)
        img[d <= rng.uniform(0.6, 2.0)] = _hsv_colour(rng, (0.0, 1.0), (0.1, 1.0))
    for _ in range(int(rng.integers(1, 4))):  # distractors: other textures at scales no class uses
        a, b = rng.uniform(0.05, 0.15) * min(h, w), rng.uniform(0.05, 0.15) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        m = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        tex = _texture_b(B_TEXTURES[int(rng.integers(len(B_TEXTURES)))], xx, yy, rng.uniform(10, 16), rng.uniform(0, np.pi), rng)
        img[m] = (_hsv_colour(rng, (0.2, 1.0), (0.3, 0.9)) + 45 * tex[..., None])[m]
    return img


def render_sample_b(rng: np.random.Generator, min_size: int, max_size: int, shape_bias: float = 0.4) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One style-b image (H×W×3 uint8), its mask (H×W uint8, 2-pixel void band) and its object classes."""
    h, w = int(rng.integers(min_size, max_size + 1)), int(rng.integers(int(min_size * 0.8), int(max_size * 1.2) + 1))
    img = _background_b(h, w, rng)
    label = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n_obj = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    for _ in range(n_obj):
        k = int(rng.integers(len(B_CLASSES)))
        shape = B_SHAPES[k] if rng.random() < shape_bias else B_SHAPES[int(rng.integers(len(B_SHAPES)))]
        s = min(h, w)
        size = rng.uniform(0.075, 0.35) * s  # half-axis: objects span about 15–70% of the side
        a, b = size * rng.uniform(0.7, 1.3), size * rng.uniform(0.7, 1.3)
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        th = rng.uniform(0, 2 * np.pi)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
        body = _shape_mask_b(shape, u, v, rng)
        if body.sum() < 40:
            continue
        colour = _hsv_colour(rng, (0.3, 1.0), (0.35, 0.95))
        tex = _texture_b(B_TEXTURES[k], xx, yy, B_SCALES[k] * rng.uniform(0.9, 1.1), rng.uniform(0, np.pi), rng)
        shade = 1 - 0.25 * np.clip(u * 0.5 + v * 0.3, -1, 1)  # a soft light from one side
        img[body] = ((colour + 50 * tex[..., None]) * shade[..., None])[body]
        label[body] = B_CLASSES[k]
    edge = np.zeros((h, w), bool)
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:-1, :] |= edge[1:, :].copy()  # 2 pixels wide, across horizontal and vertical boundaries
    edge[:, :-1] |= edge[:, 1:].copy()
    label[edge] = IGNORE_INDEX
    # the image labels name exactly the classes left visible (an object may be hidden by later ones or the band)
    classes = sorted(int(c) for c in np.unique(label) if c not in (0, IGNORE_INDEX))
    if not classes:
        return render_sample_b(rng, min_size, max_size, shape_bias)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return img, label, classes


#: the generators by style
STYLES = {"a": render_sample, "b": render_sample_b}


def _annotation_xml(image_id: str, h: int, w: int, classes: list[int]) -> str:
    objs = "".join(f"<object><name>{CLASS_NAMES[c]}</name><difficult>0</difficult></object>" for c in classes)
    return (f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def _longest_skeleton_path(region: np.ndarray) -> np.ndarray:
    """The (y, x) pixels, in order, of the longest geodesic path along the skeleton of a boolean ``region``
    (8-connected; two Dijkstra passes: the farthest pixel from any, then the farthest from that)."""
    sk = skeletonize(region)
    ys, xs = np.nonzero(sk)
    if len(ys) < 2:
        return np.stack([ys, xs], 1)
    idx = -np.ones(region.shape, np.int64)
    idx[ys, xs] = np.arange(len(ys))
    src, dst, wts = [], [], []
    h, w = region.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = idx[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        b = idx[max(0, dy):max(0, dy) + a.shape[0], max(0, dx):max(0, dx) + a.shape[1]]
        ok = (a >= 0) & (b >= 0)
        src.append(a[ok]), dst.append(b[ok]), wts.append(np.full(ok.sum(), np.hypot(dy, dx)))
    graph = coo_matrix((np.concatenate(wts), (np.concatenate(src), np.concatenate(dst))), shape=(len(ys),) * 2).tocsr()
    d0 = dijkstra(graph, directed=False, indices=0)
    start = int(np.argmax(np.where(np.isfinite(d0), d0, -1)))
    d1, pred = dijkstra(graph, directed=False, indices=start, return_predecessors=True)
    node, path = int(np.argmax(np.where(np.isfinite(d1), d1, -1))), []
    while node >= 0:
        path.append(node)
        node = int(pred[node])
    return np.stack([ys[path], xs[path]], 1)


def _polyline(path: np.ndarray, keep: float, step: int) -> list[tuple[float, float]]:
    """The middle ``keep`` fraction of a pixel path, every ``step``-th pixel (ends kept), as (x, y) points."""
    n = len(path)
    cut = int(n * (1 - keep) / 2)
    part = path[cut:n - cut] if n - 2 * cut >= 2 else path
    picks = sorted(set(range(0, len(part), step)) | {len(part) - 1})
    return [(float(part[i, 1]), float(part[i, 0])) for i in picks]


def sparse_annotations(label: np.ndarray, rng: np.random.Generator) -> tuple[list[Shape], list[Shape], list[Shape]]:
    """Scribbles, object clicks and background clicks for a ground-truth ``label``, as annotators draw them.

    Each object (a connected region of one class, at least 40 pixels) gets a scribble along the middle 80% of
    the longest path on the skeleton of its interior (eroded by a 5×5 square: the 3-pixel line and the dots PIL
    draws at its points stay within 2 pixels of them, so every labelled pixel lies on the object) and
    one click (a second with probability 0.3) at random interior pixels; the background gets a scribble through
    each of its two largest interior regions, and one or two background clicks on those scribbles.
    """
    scribbles: list[Shape] = []
    clicks: list[Shape] = []
    for cls in [c for c in np.unique(label) if 0 < c < IGNORE_INDEX]:
        comps = connected_components(label == cls, connectivity=1)
        for k in range(1, comps.max() + 1):
            inner = binary_erosion(comps == k, np.ones((5, 5), bool))
            if (comps == k).sum() < 40 or not inner.any():
                continue
            path = _longest_skeleton_path(inner)
            if len(path):
                scribbles.append((int(cls), _polyline(path, 0.8, 3)))
            ys, xs = np.nonzero(inner)
            for j in rng.choice(len(ys), size=min(len(ys), 1 + int(rng.random() < 0.3)), replace=False):
                clicks.append((int(cls), [(float(xs[j]), float(ys[j]))]))
    bg = connected_components(binary_erosion(label == 0, disk(3).astype(bool)), connectivity=1)
    sizes = np.bincount(bg.ravel())[1:]
    bg_clicks: list[Shape] = []
    for k in np.argsort(-sizes)[:2] + 1:
        if sizes[k - 1] < 40:
            continue
        path = _longest_skeleton_path(bg == k)
        if len(path) < 2:
            continue
        line = _polyline(path, 0.9, 3)
        scribbles.insert(0, (0, line))
        bg_clicks.append((0, [line[int(rng.integers(len(line)))]]))
    return scribbles, clicks, bg_clicks


def write_sparse(voc_root: Path, ids: list[str], seed: int) -> None:
    """The sparse annotations of ``ids`` (``sparse_annotations`` of their masks, image i's drawn from
    ``default_rng([seed, 7, i])``) into the VOC root's standard files, each written whole and renamed into place."""
    root = Path(voc_root)
    zip_name, (points_name, bg_name) = STANDARD_FILES["scribble"][1], STANDARD_FILES["point"]
    points: dict[str, list] = {}
    bg_points: dict[str, list] = {}
    tmp_zip = root / f".{zip_name}.tmp"
    with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as z:
        for i, image_id in enumerate(ids):
            with Image.open(root / "SegmentationClass" / f"{image_id}.png") as im:
                label = np.asarray(im)
            scribbles, clicks, bg = sparse_annotations(label, np.random.default_rng([seed, 7, i]))
            z.writestr(f"{image_id}.xml", scribble_xml(image_id, *label.shape, scribbles))
            points[image_id] = [{"cls": c, "x": int(p[0][0]), "y": int(p[0][1]), "rank": 1} for c, p in clicks]
            bg_points[image_id] = [{"cls": 0, "x": int(p[0][0]), "y": int(p[0][1]), "rank": 1} for _, p in bg]
    for name, data in ((points_name, points), (bg_name, bg_points)):
        (root / f".{name}.tmp").write_text(json.dumps(data))
    for name in (zip_name, points_name, bg_name):
        os.replace(root / f".{name}.tmp", root / name)


def make_synthetic(out_dir: Path, n_train: int = 200, n_val: int = 60, seed: int = 0,
                   min_size: int = 96, max_size: int = 144, style: str = "a") -> Path:
    """Write the synthetic dataset of ``style`` (``a`` or ``b``, module docstring) in VOC layout under
    ``out_dir`` and return the VOC2012 folder.

    Image ``i`` of a split is rendered from ``default_rng([seed, split, i])``, so the data do not
    depend on the order of generation. The folder is assembled in a temporary sibling and renamed
    into place, so a killed run never leaves a half-written dataset behind.
    """
    out_dir = Path(out_dir)
    root = out_dir / "VOC2012"
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}: choose {', '.join(STYLES)}")
    params = dict(n_train=n_train, n_val=n_val, seed=seed, min_size=min_size, max_size=max_size, version=GENERATOR_VERSION)
    if style != "a":  # style a's marker (and cache key) predate the styles
        params.update(style=style, style_version=STYLE_B_VERSION)
    marker = root / "synthetic.json"
    have = _own_marker(root)
    if have is not None:
        if have == {**params, "sparse": SPARSE_VERSION}:
            return root
        if {k: v for k, v in have.items() if k != "sparse"} == params:  # the images as they are; new sparse files
            train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
            write_sparse(root, train, seed)
            (root / ".synthetic.json.tmp").write_text(json.dumps({**params, "sparse": SPARSE_VERSION}))
            os.replace(root / ".synthetic.json.tmp", marker)
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
            img, label, classes = STYLES[style](rng, min_size, max_size)
            Image.fromarray(img).save(vr / "JPEGImages" / f"{image_id}.jpg", quality=95)
            save_label_png(vr / "SegmentationClass" / f"{image_id}.png", label)
            (vr / "Annotations" / f"{image_id}.xml").write_text(_annotation_xml(image_id, *label.shape, classes))
            ids.append(image_id)
        lists[split] = ids
    lists["train_aug"] = lists["train"]
    for split, ids in lists.items():
        (vr / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    write_sparse(vr, lists["train"], seed)
    (vr / "synthetic.json").write_text(json.dumps({**params, "sparse": SPARSE_VERSION}))
    if root.exists():
        shutil.rmtree(root)
    os.replace(vr, root)
    shutil.rmtree(tmp, ignore_errors=True)
    return root


def _own_marker(root: Path) -> dict | None:
    """The generator's marker in ``root`` (None: no folder yet); ``UserError`` when ``root`` exists without one:
    a folder this generator did not write is never replaced."""
    if not root.exists():
        return None
    try:
        have = json.loads((root / "synthetic.json").read_text())
    except (OSError, ValueError):
        have = None
    if not isinstance(have, dict) or not {"n_train", "n_val", "seed", "version"} <= have.keys():
        raise UserError(f"{root} exists and was not written by make-synthetic (no synthetic.json of its own): "
                        "it is left as it is; give make-synthetic another OUT_DIR")
    return have


def default_cache_dir() -> Path:
    return Path(os.environ.get("WSSS_CACHE", Path.home() / ".cache" / "wsss_pipeline"))


def embedded_dataset(n_train: int, n_val: int, seed: int, min_size: int, max_size: int, style: str = "a",
                     fmt: str = "voc") -> Path:
    """The embedded synthetic dataset for these parameters, generated once and cached: in VOC layout, or with
    ``fmt="coco"`` in the official COCO 2014 layout (``make_synthetic_coco``)."""
    ident = [n_train, n_val, seed, min_size, max_size, GENERATOR_VERSION] + ([style, STYLE_B_VERSION] if style != "a" else [])
    key = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:10]
    if fmt == "coco":
        return make_synthetic_coco(default_cache_dir() / f"synthetic-coco-{key}", n_train, n_val, seed, min_size, max_size, style)
    return make_synthetic(default_cache_dir() / f"synthetic-{key}", n_train, n_val, seed, min_size, max_size, style)


# ------------------------------------------------------------------------------------------- COCO 2014 layout

#: the COCO category of each synthetic class (VOC index → COCO id: the same object kind)
COCO_CATEGORY_OF = {1: 5, 3: 16, 7: 3, 8: 17, 12: 18, 15: 1,  # style a: aeroplane bird car cat dog person
                    2: 2, 5: 44, 9: 62, 11: 67, 13: 19, 17: 20}  # style b: bicycle bottle chair table horse sheep
#: the category that only val2014 annotates (the first object of the first val image): a class the classifier never
#: sees, whose index still comes from the categories list (``pipeline.coco.class_index``); 90 is COCO's last id
VAL_ONLY_CATEGORY = 90  # toothbrush
COCO_SYNTH_VERSION = 2  # 2: the val-only category


def uncompressed_rle(region: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a boolean H×W region: run lengths over the column-major pixels, starting with
    background (as the crowd annotations of the instances files hold them).

    >>> uncompressed_rle(np.array([[0, 1], [0, 1]], bool))
    {'size': [2, 2], 'counts': [2, 2]}
    """
    flat = np.asarray(region, bool).ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.r_[0, change, flat.size]
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(region.shape), "counts": [int(c) for c in counts]}


def region_polygons(region: np.ndarray) -> list[list[float]]:
    """Polygons ([x1, y1, x2, y2, ...] in COCO's pixel-corner coordinates) of a boolean region's outer outlines."""
    from skimage.measure import approximate_polygon, find_contours
    polys = []
    for contour in find_contours(np.pad(region.astype(np.float32), 1), 0.5):
        c = approximate_polygon(contour - 1, tolerance=0.5)  # (row, col) of pixel centres
        if len(c) >= 4:  # closed: first == last
            xy = np.clip(c[:-1, ::-1] + 0.5, 0, [region.shape[1], region.shape[0]])
            polys.append([round(float(v), 2) for v in xy.ravel()])
    return polys


def coco_annotations(label: np.ndarray, crowd: bool) -> list[dict]:
    """The instance annotations of a synthetic label (void filled from its nearest labelled pixel): one per object
    region, a polygon list where the region has no hole, a compressed RLE where it has one; with ``crowd`` the
    largest region becomes a crowd annotation (``iscrowd: 1``, uncompressed RLE)."""
    from pycocotools import mask as mask_utils
    from scipy.ndimage import distance_transform_edt
    void = label == IGNORE_INDEX
    filled = label[tuple(distance_transform_edt(void, return_distances=False, return_indices=True))] if void.any() else label
    anns = []
    for cls in sorted(set(np.unique(filled).tolist()) - {0, IGNORE_INDEX}):
        regions = connected_components(filled == cls)
        for r in range(1, regions.max() + 1):
            region = regions == r
            if region.sum() < 12:
                continue
            from scipy.ndimage import binary_fill_holes
            if binary_fill_holes(region).sum() > region.sum():
                rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
                seg = {"size": list(region.shape), "counts": rle["counts"].decode()}
            else:
                seg = region_polygons(region)
                if not seg:
                    continue
            ys, xs = np.nonzero(region)
            anns.append({"category_id": COCO_CATEGORY_OF[cls], "segmentation": seg, "iscrowd": 0, "area": int(region.sum()),
                         "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1], "_region": region})
    if crowd and anns:
        big = max(anns, key=lambda a: a["area"])
        big.update(iscrowd=1, segmentation=uncompressed_rle(big["_region"]))
    for a in anns:
        del a["_region"]
    return anns


def make_synthetic_coco(out_dir: Path, n_train: int = 200, n_val: int = 60, seed: int = 0,
                        min_size: int = 96, max_size: int = 144, style: str = "a") -> Path:
    """Write the synthetic images of ``style`` in the official COCO 2014 layout under ``out_dir`` (the root, returned):
    ``train2014/COCO_train2014_<id>.jpg``, ``val2014/…``, ``annotations/instances_{train,val}2014.json`` with all 80
    categories (``pipeline.coco.COCO_CATEGORIES``), the objects as polygons (compressed RLE where a region has a
    hole), the largest object of the second image of each split a crowd region (uncompressed RLE), the last
    training image without any annotation (background only), and the first object of the first val image of
    category ``VAL_ONLY_CATEGORY``, annotated nowhere in train. Image ``i`` of a split is the VOC generator's image
    ``i`` (same seed); deterministic; assembled aside and renamed into place (a folder this generator did not
    write is refused, ``UserError``).

    >>> import tempfile, json
    >>> root = make_synthetic_coco(Path(tempfile.mkdtemp()) / "coco", n_train=3, n_val=2, min_size=40, max_size=48)
    >>> train = json.loads((root / "annotations/instances_train2014.json").read_text())
    >>> len(train["categories"]), sorted(p.name for p in (root / "val2014").iterdir())
    (80, ['COCO_val2014_000000500001.jpg', 'COCO_val2014_000000500002.jpg'])
    >>> [a["iscrowd"] for a in train["annotations"] if a["image_id"] == 2][:1], {a["image_id"] for a in train["annotations"]}
    ([1], {1, 2})
    """
    from pipeline.coco import COCO_CATEGORIES, SPLIT_DIRS
    out_dir = Path(out_dir)
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}: choose {', '.join(STYLES)}")
    params = dict(n_train=n_train, n_val=n_val, seed=seed, min_size=min_size, max_size=max_size, version=GENERATOR_VERSION,
                  style=style, format="coco", coco_version=COCO_SYNTH_VERSION)
    if out_dir.exists() and any(out_dir.iterdir()):
        if _own_marker(out_dir) == params:
            return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-coco-", dir=out_dir.parent))
    categories = [{"id": cid, "name": name, "supercategory": "synthetic"} for cid, name in COCO_CATEGORIES]
    ann_id = 1
    for split_no, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        folder = SPLIT_DIRS[split]
        (tmp / folder).mkdir(parents=True)
        images, anns = [], []
        for i in range(n):
            coco_id = split_no * 500000 + i + 1
            file_name = f"COCO_{folder}_{coco_id:012d}.jpg"
            rng = np.random.default_rng([seed, split_no, i])
            img, label, _ = STYLES[style](rng, min_size, max_size)
            unannotated = split == "train" and i == n - 1 and n > 1
            if unannotated:  # the same size, no object
                bg = (_background if style == "a" else _background_b)(*label.shape, rng)
                img = np.clip(bg, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp / folder / file_name, quality=95)
            images.append({"id": coco_id, "file_name": file_name, "height": int(label.shape[0]), "width": int(label.shape[1])})
            for k, a in enumerate([] if unannotated else coco_annotations(label, crowd=i == 1)):
                if split == "val" and i == 0 and k == 0:
                    a["category_id"] = VAL_ONLY_CATEGORY
                anns.append({"id": ann_id, "image_id": coco_id, **a})
                ann_id += 1
        (tmp / "annotations").mkdir(exist_ok=True)
        (tmp / "annotations" / f"instances_{folder}.json").write_text(json.dumps(
            {"info": {"description": "wsss-pipeline synthetic data, COCO 2014 layout"}, "licenses": [],
             "images": images, "annotations": anns, "categories": categories}))
    (tmp / "synthetic.json").write_text(json.dumps(params))
    if out_dir.exists():
        if any(out_dir.iterdir()):
            _own_marker(out_dir)  # refuses a folder this generator did not write
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
