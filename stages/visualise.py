"""What ``cli.py show`` draws from a run folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.plots import draw_grid, overlay
from pipeline.store import LabelStore
from stages.eval_segmentation import PREDICTIONS
from stages.labels import threshold_labels
from stages.make_pseudo_labels import PSEUDO_LABELS
from stages.make_seeds import SEEDS
from stages.sparse_labels import SPARSE_LABELS


def _seed_label(store: LabelStore, image_id: str, threshold: float) -> np.ndarray:
    return threshold_labels(store.read(image_id).astype(np.float32), store.read_attrs(image_id)["classes"], np.array([threshold]))[0]


def draw_run(run, stage: str, out: Path, num: int) -> None:
    """Grid of overlays for the images of ``stage``; a training stage copies its curves PNG."""
    if stage.startswith("train_"):
        src = run.stage_dir(stage) / "curves.png"
        if not src.is_file():
            raise UserError(f"{stage} has no curves yet ({src}): run the flow first")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, out)
        return
    cfg = run.config
    preds = run.stage_dir(stage) / PREDICTIONS
    if (preds / "zarr.json").is_file():  # an evaluation stage: its predictions on val
        split, columns = cfg.segmentation.eval_split, [("prediction", preds)]
    else:
        seeds = run.stage_dir("make_seeds") / SEEDS
        pseudo = run.stage_dir("make_pseudo_labels") / PSEUDO_LABELS
        sparse = run.stage_dir("sparse_labels") / SPARSE_LABELS
        first = ("sparse label", sparse) if (sparse / "zarr.json").is_file() else ("seed", seeds)  # points/scribbles
        split, columns = cfg.data.label_split, [first, ("pseudo label", pseudo)]
    columns = [(t, LabelStore(p)) for t, p in columns if (p / "zarr.json").is_file()]
    if not columns:
        raise UserError(f"stage {stage} has stored nothing yet in {run.dir}: run the flow first")
    # seeds are drawn at the threshold the pseudo labels used (or the one eval_seeds chose)
    pseudo_rec = (run.read_record("make_pseudo_labels") or {}).get("metrics", {})
    threshold = pseudo_rec.get("threshold", (run.read_record("eval_seeds") or {}).get("metrics", {}).get("threshold", 0.5))
    ds = run.dataset(split)
    ids = [i for i in ds.ids if i in columns[0][1]][:num]
    rows, drawn = [], set()
    for i in ids:
        img, gt = ds.image(i), ds.mask(i)
        cols = [("image", img), ("ground truth", overlay(img, gt))]
        labels = [gt] if gt is not None else []
        for title, st in columns:
            if i in st:
                lab = _seed_label(st, i, threshold) if title == "seed" else st.read(i)
                cols.append((title, overlay(img, lab)))
                labels.append(lab)
        drawn.update(int(c) for lab in labels for c in np.unique(lab) if c != 0)
        rows.append((i, cols))
    if not rows:
        raise UserError(f"stage {stage} has no stored images to draw")
    draw_grid(rows, out, classes=sorted(drawn))
