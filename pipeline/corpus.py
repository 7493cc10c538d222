"""The stand-in pretraining corpus: procedural single-label classification images of classes the
segmentation data does not have (as ImageNet is other than VOC).

A class is an **outline** (pentagon, arrow, heart, trapezoid, semicircle, chevron, zigzag band,
keyhole: none of the shapes of synthetic styles a or b) **filled with a pattern** (pinwheel sectors,
concentric squares, diagonal hatching, Voronoi cells: none of their textures), so 8 × 4 = 32 classes.
Colours are drawn anew for every image and tell nothing; position, size (object half-size 28–45% of
the side), tilt (±20°) and aspect vary. The object is drawn as a drawing would show it: its pattern in two
tones of one colour, its outline dark. It sits in a scene: one of two backgrounds (smooth gradient with
coarse noise, two-colour tiles), 1–4 lines and 2–5 small plain polygons, so the network has to tell
outline *and* pattern, not a colour. (With patterns in any two colours, any rotation and patterned
distractors, a ResNet-18 stayed near chance on the outline after 150 steps of 64 images.)

Image ``i`` of a split is a pure function of ``(seed, split, i)``: the corpus is never stored, any
image can be drawn again bit for bit, and the number of images is only an index range.

>>> img, k = corpus_image(0, "train", 7, 64)
>>> img.shape, img.dtype, 0 <= k < len(CORPUS_CLASSES)
((64, 64, 3), dtype('uint8'), True)
>>> bool((corpus_image(0, "train", 7, 64)[0] == img).all())
True
"""
from __future__ import annotations

import colorsys

import numpy as np

CORPUS_OUTLINES = ("pentagon", "arrow", "heart", "trapezoid", "semicircle", "chevron", "zigzag", "keyhole")
CORPUS_PATTERNS = ("sectors", "squares", "hatch", "cells")
#: class k is outline k // 4 filled with pattern k % 4
CORPUS_CLASSES = tuple(f"{o}-{p}" for o in CORPUS_OUTLINES for p in CORPUS_PATTERNS)
_SPLITS = {"train": 0, "val": 1}


def outline_mask(outline: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit outline in object coordinates (x, y about [-1, 1], y pointing down)."""
    r, th = np.hypot(x, y), np.arctan2(y, x)
    if outline == "pentagon":  # regular, circumradius 1: r·cos(θ mod 2π/5 − π/5) ≤ cos(π/5)
        return r * np.cos(np.mod(th + np.pi / 2, 2 * np.pi / 5) - np.pi / 5) <= np.cos(np.pi / 5)
    if outline == "arrow":
        return ((np.abs(y) <= 0.28) & (x >= -1) & (x <= 0.15)) | ((x >= 0.15) & (x <= 1) & (np.abs(y) <= 0.85 * (1 - x) / 0.85))
    if outline == "heart":  # (x² + y² − 1)³ − x²y³ ≤ 0, scaled into the unit box
        hx, hy = x * 1.25, -y * 1.25 + 0.15
        return (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0
    if outline == "trapezoid":
        return (np.abs(y) <= 0.7) & (np.abs(x) <= 0.45 + 0.5 * (y + 0.7) / 1.4)
    if outline == "semicircle":
        return (r <= 1) & (y <= 0.25)
    if outline == "chevron":
        return (np.abs(y - 0.9 * np.abs(x) + 0.35) <= 0.32) & (np.abs(x) <= 0.95)
    if outline == "zigzag":
        wave = 0.45 * (2 * np.abs(np.mod(x * 1.5 + 0.25, 1.0) - 0.5) * 2 - 1)  # a triangle wave
        return (np.abs(y - wave) <= 0.25) & (np.abs(x) <= 1)
    if outline == "keyhole":
        return (np.hypot(x, y + 0.35) <= 0.5) | ((y >= -0.1) & (y <= 0.95) & (np.abs(x) <= 0.15 + 0.25 * (y + 0.1)))
    raise ValueError(outline)


def pattern_field(pattern: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A two-tone pattern in {0, 1} over object coordinates (u, v; about one unit per object half-size)."""
    if pattern == "sectors":  # a pinwheel of k sectors
        k = int(rng.integers(3, 6)) * 2
        return (np.floor((np.arctan2(v, u) + np.pi) / (2 * np.pi / k)) % 2).astype(np.float32)
    if pattern == "squares":  # concentric squares
        f = rng.uniform(2.5, 4.0)
        return (np.floor(np.maximum(np.abs(u), np.abs(v)) * f) % 2).astype(np.float32)
    if pattern == "hatch":  # thin diagonal lines
        f = rng.uniform(3.0, 5.0)
        return (np.mod((u + v) * f, 1.0) < 0.3).astype(np.float32)
    if pattern == "cells":  # Voronoi cells, alternately coloured, with dark borders
        pts = rng.uniform(-1.1, 1.1, (10, 2))
        d = np.hypot(u[None] - pts[:, 0, None, None], v[None] - pts[:, 1, None, None])
        two = np.partition(d, 1, axis=0)
        cell = np.argmin(d, axis=0) % 2
        return np.where(two[1] - two[0] < 0.06, 0.5, cell).astype(np.float32)
    raise ValueError(pattern)


def _colour(rng: np.random.Generator, sat: tuple[float, float] = (0.2, 1.0), val: tuple[float, float] = (0.2, 1.0)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)), np.float32) * 255


def _two_tone(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours at least 90 apart (RGB distance), so every pattern is visible."""
    while True:
        a, b = _colour(rng), _colour(rng)
        if np.linalg.norm(a - b) >= 90:
            return a, b


def _scene(s: int, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    if rng.random() < 0.5:  # gradient + coarse noise
        c0, c1 = _colour(rng), _colour(rng)
        ang = rng.uniform(0, 2 * np.pi)
        t = ((np.cos(ang) * xx + np.sin(ang) * yy) / s + 1)[..., None] / 2
        img = c0 * (1 - t) + c1 * t
        coarse = rng.normal(0, 20, (s // 12 + 2, s // 12 + 2, 3)).astype(np.float32)
        img += np.kron(coarse, np.ones((12, 12, 1), np.float32))[:s, :s]
    else:  # two-colour tiles
        c0, c1 = _colour(rng, (0, 0.6)), _colour(rng, (0, 0.6))
        tile = rng.uniform(6, 20)
        t = ((np.floor(xx / tile) + np.floor(yy / tile * rng.uniform(0.5, 2))) % 2)[..., None]
        img = c0 * (1 - t) + c1 * t
    for _ in range(int(rng.integers(1, 5))):  # lines
        x0, y0, x1, y1 = rng.uniform(0, s, 4)
        d = np.abs((y1 - y0) * xx - (x1 - x0) * yy + x1 * y0 - y1 * x0) / (np.hypot(x1 - x0, y1 - y0) + 1e-6)
        img[d <= rng.uniform(0.5, 1.8)] = _colour(rng)
    for _ in range(int(rng.integers(2, 6))):  # small plain distractor polygons
        n, rad = int(rng.integers(3, 8)), rng.uniform(0.05, 0.12) * s
        cy, cx, rot = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0, 2 * np.pi)
        win = (slice(max(0, int(cy - rad)), int(cy + rad) + 1), slice(max(0, int(cx - rad)), int(cx + rad) + 1))
        u, v = (xx[win] - cx) / rad, (yy[win] - cy) / rad  # the polygon's bounding box only
        th = np.arctan2(v, u) + rot
        m = np.hypot(u, v) * np.cos(np.mod(th, 2 * np.pi / n) - np.pi / n) <= np.cos(np.pi / n)
        img[win][m] = _colour(rng)
    return img


def corpus_image(seed: int, split: str, index: int, size: int = 96) -> tuple[np.ndarray, int]:
    """Image ``index`` of the corpus split (``size``×``size``×3 uint8) and its class in [0, 32)."""
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    k = int(rng.integers(len(CORPUS_CLASSES)))
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    img = _scene(s, rng, xx, yy)
    half = rng.uniform(0.28, 0.45) * s
    a, b = half * rng.uniform(0.8, 1.2), half * rng.uniform(0.8, 1.2)
    cy, cx, th = rng.uniform(0.3, 0.7) * s, rng.uniform(0.3, 0.7) * s, rng.uniform(-0.35, 0.35)
    x = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
    y = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
    body = outline_mask(CORPUS_OUTLINES[k // len(CORPUS_PATTERNS)], x, y)
    pth = rng.uniform(0, 2 * np.pi)  # the pattern turns on its own, so it is not tied to the outline's axes
    u, v = x * np.cos(pth) - y * np.sin(pth), x * np.sin(pth) + y * np.cos(pth)
    c0 = _colour(rng, (0.3, 1.0), (0.3, 1.0))
    c1 = np.clip(c0 + rng.choice([-1, 1]) * rng.uniform(50, 80), 0, 255)  # the pattern's second tone: the body's, lighter or darker
    p = pattern_field(CORPUS_PATTERNS[k % len(CORPUS_PATTERNS)], u, v, rng)[..., None]
    img[body] = (c0 * (1 - p) + c1 * p)[body]
    edge = body & ~(np.roll(body, 1, 0) & np.roll(body, -1, 0) & np.roll(body, 1, 1) & np.roll(body, -1, 1))
    img[edge] *= 0.35  # a dark outline, as a drawn object has
    img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    return img, k
