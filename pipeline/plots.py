"""Plots: training curves and image | ground truth | seed | pseudo label | prediction grids."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.voc import CLASS_NAMES, IGNORE_INDEX, PALETTE, class_names_of  # noqa: E402


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


def draw_grid(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], out: Path, classes: list[int] | None = None) -> None:
    """``rows`` = [(image_id, [(column title, H×W×3 uint8), ...]), ...] → one PNG (its folder made when missing), with
    a legend of the VOC ``classes`` drawn (their palette colours; 255 drawn white)."""
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
    if classes:
        from matplotlib.patches import Patch
        handles = [Patch(color=PALETTE[c] / 255 if c != IGNORE_INDEX else (1, 1, 1), label=class_names_of(81 if c >= len(CLASS_NAMES) else 21)[c] if c != IGNORE_INDEX else "void / ignored")
                   for c in classes]
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.04 * (1 + (len(handles) - 1) // 6), 1, 1))
    else:
        fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def plot_comparison(comparison: dict, out: Path) -> None:
    """Grouped bar charts of ``pipeline.compare.compare_runs``: the summary mIoUs (one group per metric, one bar per
    run) and the per-class IoU of the compared stage (one group per class present in any run)."""
    runs = comparison["runs"]
    labels = [Path(r["run_dir"]).name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [r["run_dir"] for r in runs]
    metrics = [k for k in ("seed_miou", "pseudo_miou", "seg_miou", "cls_map") if any(r["summary"][k] is not None for r in runs)]
    classes = [c for c in runs[0]["per_class"] if any(r["per_class"][c] is not None for r in runs)] if runs else []
    panels = [("summary", metrics, [[r["summary"][k] for k in metrics] for r in runs])]
    if classes:
        panels.append((f"per-class IoU: {comparison['stage']}", classes, [[r["per_class"][c] for c in classes] for r in runs]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.55 * max(len(p[1]) for p in panels) * max(1, len(runs))), 3.6 * len(panels)),
                             squeeze=False)
    width = 0.8 / max(1, len(runs))
    for ax, (title, groups, values) in zip(axes[:, 0], panels):
        x = np.arange(len(groups))
        for i, (label, vals) in enumerate(zip(labels, values)):
            ax.bar(x + (i - (len(runs) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, rotation=30 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
