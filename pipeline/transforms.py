"""Image transforms of the WSSS papers: random rescale, flip, colour jitter, crop with ignore padding."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance

from pipeline.voc import IGNORE_INDEX

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalise(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float tensor with ImageNet mean/std."""
    x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalise(x: torch.Tensor) -> np.ndarray:
    """Inverse of ``normalise``: 3×H×W → H×W×3 uint8."""
    img = x.permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


def random_rescale(image: np.ndarray, mask: np.ndarray | None, scale_range: tuple[float, float],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    s = rng.uniform(*scale_range)
    h, w = image.shape[:2]
    size = (max(1, round(w * s)), max(1, round(h * s)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return image, mask


def random_resize_long(image: np.ndarray, long_range: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The long side resized (bilinear) to an integer drawn uniformly from [a, b], the short side in proportion
    (rounded): ACR's released ``RandomResizeLong`` (OpenNLPLab/ACR_WSSS ``myTool.py:995-1007``). Its ``cv2.resize``
    is bilinear without antialiasing on a float image: here torch's bilinear (align_corners=False, the same sampling),
    rounded back to uint8 (≤ 0.5 grey level from the released float image). PIL's bilinear would antialias.

    >>> random_resize_long(np.zeros((10, 20, 3), np.uint8), (40, 40), np.random.default_rng(0)).shape
    (20, 40, 3)
    """
    target = int(rng.integers(long_range[0], long_range[1] + 1))
    h, w = image.shape[:2]
    size = (int(round(w * target / h)), target) if w < h else (target, int(round(h * target / w)))
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 − s, 1 + s]."""
    im = Image.fromarray(image)
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enh(im).enhance(rng.uniform(1 - strength, 1 + strength))
    return np.asarray(im)


def brightness_shift(image: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """Every pixel plus one value drawn from [−shift, shift] grey levels, clipped to 0–255 (SASFormer's ±10).

    >>> brightness_shift(np.full((1, 2, 3), 250, np.uint8), 10, np.random.default_rng(0)).dtype
    dtype('uint8')
    """
    d = rng.uniform(-shift, shift)
    return np.clip(image.astype(np.float32) + d, 0, 255).round().astype(np.uint8)


def random_crop(image: np.ndarray, mask: np.ndarray | None, size: int, rng: np.random.Generator,
                ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Crop ``size``×``size``; smaller images are padded (image with the mean colour, mask with ignore).

    Also returns the crop's validity map (1 where the crop holds image pixels).
    """
    h, w = image.shape[:2]
    ph, pw = max(size, h), max(size, w)
    canvas = np.empty((ph, pw, 3), np.uint8)
    canvas[:] = (IMAGENET_MEAN * 255).astype(np.uint8)
    oy, ox = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
    canvas[oy:oy + h, ox:ox + w] = image
    valid = np.zeros((ph, pw), np.uint8)
    valid[oy:oy + h, ox:ox + w] = 1
    mcanvas = None
    if mask is not None:
        mcanvas = np.full((ph, pw), ignore_index, np.uint8)
        mcanvas[oy:oy + h, ox:ox + w] = mask
    cy, cx = int(rng.integers(0, ph - size + 1)), int(rng.integers(0, pw - size + 1))
    sl = (slice(cy, cy + size), slice(cx, cx + size))
    return canvas[sl], (mcanvas[sl] if mcanvas is not None else None), valid[sl]


def train_transform(image: np.ndarray, mask: np.ndarray | None, crop_size: int, scale_range: tuple[float, float],
                    hflip: bool, jitter: float, rng: np.random.Generator,
                    brightness: float = 0.0, resize_long: tuple[int, int] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rescale (or ``resize_long``, images only), flip, colour jitter, brightness shift (``brightness`` > 0), crop;
    the image normalised."""
    if resize_long is not None and mask is None:
        image = random_resize_long(image, resize_long, rng)
    else:
        image, mask = random_rescale(image, mask, scale_range, rng)
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
    if jitter > 0:
        image = color_jitter(np.ascontiguousarray(image), jitter, rng)
    if brightness > 0:
        image = brightness_shift(np.ascontiguousarray(image), brightness, rng)
    image, mask, _ = random_crop(np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask), crop_size, rng)
    return normalise(image), (torch.from_numpy(mask.astype(np.int64)) if mask is not None else None)
