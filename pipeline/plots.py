"""Plots: training curves and image | ground truth | seed | pseudo label | prediction grids."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.voc import IGNORE_INDEX, PALETTE  # noqa: E402


def plot_curves(log_path: Path, out: Path, title: str = "") -> None:
    """Every logged loss (and the learning rate) against the step, from a training log.jsonl."""
    rows = [json.loads(ln) for ln in Path(log_path).read_text().splitlines() if ln.strip()] if Path(log_path).is_file() else []
    if not rows:
        return
    keys = [k for k in rows[-1] if k not in ("step", "lr", "seconds")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    for k in keys:
        axes[0].plot(steps, [r.get(k, np.nan) for r in rows], label=k)
    axes[0].set_xlabel("step"); axes[0].set_title(f"{title} losses"); axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r["lr"] for r in rows]); axes[1].set_xlabel("step"); axes[1].set_title("learning rate")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def overlay(image: np.ndarray, label: np.ndarray | None, alpha: float = 0.6) -> np.ndarray:
    """Blend a label (VOC palette; 255 drawn white) over an H×W×3 image."""
    if label is None:
        return np.full_like(image, 255)
    col = PALETTE[label].astype(np.float32)
    col[label == IGNORE_INDEX] = 255
    blend = np.where((label > 0)[..., None], (1 - alpha) * image + alpha * col, image.astype(np.float32))
    return blend.clip(0, 255).astype(np.uint8)


def draw_grid(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], out: Path) -> None:
    """``rows`` = [(image_id, [(column title, H×W×3 uint8), ...]), ...] → one PNG."""
    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.4 * ncol, 2.4 * len(rows)), squeeze=False)
    for r, (image_id, cols) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(cols):
                title, img = cols[c]
                ax.imshow(img)
                ax.set_title(title if r == 0 else "", fontsize=9)
        axes[r][0].text(-2, 0, image_id, fontsize=7, ha="right", va="top", rotation=90)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
