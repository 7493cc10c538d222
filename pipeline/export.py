"""A label store as VOC palette PNGs: the layout other trainers read (mmsegmentation, DeepLab).

``export_labels(store, out, list_name)`` writes ``out/<id>.png`` for every complete entry of the store (H×W uint8,
VOC palette, 255 kept as void) and ``out/<list_name>.txt`` with the ids, one a line, and ``out/export.json`` (what
was exported from where). ``out`` must be new, empty, or an earlier export: a folder holding anything else is
refused, so nothing a user made is overwritten.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text, temp_sibling
from pipeline.progress import progress_bar
from pipeline.store import LabelStore
from pipeline.voc import save_label_png

MARKER = "export.json"


def check_export_folder(out: Path) -> None:
    """Refuse (``UserError``) an ``out`` that is a file, or a folder holding files that no export wrote."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: give export a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(f"{out} is not empty and holds no {MARKER}: give export a new or empty folder")


def export_labels(store_path: Path, out: Path, list_name: str, source: dict | None = None) -> int:
    """Write the store's label maps as palette PNGs ``out/<id>.png`` and the list ``out/<list_name>.txt``; returns
    the number of images. Every entry must be an H×W uint8 label map (score maps are refused with one line).

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> s = LabelStore(d / "l.zarr"); s.write("a", np.array([[0, 15], [255, 1]], np.uint8))
    >>> export_labels(d / "l.zarr", d / "png", "train"), sorted(p.name for p in (d / "png").iterdir())
    (1, ['a.png', 'export.json', 'train.txt'])
    """
    check_export_folder(out)
    store = LabelStore(store_path)
    ids = store.complete_ids()
    if not ids:
        raise UserError(f"{store_path} holds no labels yet: run the flow first")
    first = store.read(ids[0])
    if first.ndim != 2 or first.dtype != np.uint8:
        raise UserError(f"{store_path} holds {first.dtype} arrays of shape {first.shape}, not H×W uint8 labels: "
                        "export a stage that stores labels (make_pseudo_labels, sparse_labels, eval_segmentation)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar(f"export {Path(store_path).name}", total=len(ids)) as advance:
        for image_id in ids:
            label = store.read(image_id)
            tmp = temp_sibling(out / f"{image_id}.png").with_suffix(".png")  # PIL writes by the suffix
            save_label_png(tmp, label)
            os.replace(tmp, out / f"{image_id}.png")
            advance()
    atomic_write_text(out / f"{list_name}.txt", "".join(i + "\n" for i in ids))
    atomic_write_text(out / MARKER, json.dumps({"store": str(Path(store_path).resolve()), "images": len(ids),
                                                "list": f"{list_name}.txt", **(source or {})}, indent=1))
    return len(ids)
