"""Stage ``sparse_labels``: the points or scribbles of ``data.train_split`` rasterised into a label store.

The annotations come from ``data.sparse.paths`` or, without them, from the field's standard files in the VOC
root (or a folder above it, up to ``data.root``): ``pipeline/sparse.py``. Each stored label is the image's size,
0 background, 1–20 classes, 255 unlabelled — the labels the sparse flows train on (a segmentation network trained
on this store with 255 ignored is the partial cross-entropy baseline). Images of the split without an annotation
are skipped and counted (``unannotated``), never trained as "all unlabelled"; a split without any is refused.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from pipeline.errors import UserError
from pipeline.sparse import SparseLabels, read_sparse, sparse_sources
from pipeline.stage import Stage
from pipeline.store import LabelStore
from pipeline.voc import VOCFolder
from stages.common import fill_store, image_pool

SPARSE_LABELS = "sparse_labels.zarr"


@lru_cache(maxsize=2)
def _read(paths: tuple[str, ...], kind: str, stamp: tuple) -> SparseLabels:
    return read_sparse(list(paths), kind)


def cached_sparse(paths: list[Path], kind: str) -> SparseLabels:
    """``read_sparse``, once per process while the files stay unchanged (per-image workers call it per image)."""
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in map(Path, paths))
    return _read(tuple(map(str, paths)), kind, stamp)


@dataclass
class RasteriseWorker:
    paths: list[Path]
    kind: str
    root: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        with Image.open(VOCFolder(self.root).image_path(image_id)) as im:
            w, h = im.size
        LabelStore(self.out).write(image_id, cached_sparse(self.paths, self.kind).label(image_id, h, w))


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.train_split)
    paths = sparse_sources(cfg.data.sparse.paths, cfg.data.sparse.kind, cfg.data.root, ds.root)
    sparse = cached_sparse(paths, cfg.data.sparse.kind)
    ids = [i for i in ds.ids if i in sparse]
    if not ids:
        raise UserError(f"none of the {len(ds)} images of {cfg.data.train_split} has a {cfg.data.sparse.kind} annotation in "
                        f"{', '.join(map(str, paths))}: check the files' image ids or data.sparse.kind")
    missing = len(ds) - len(ids)
    if missing:
        print(f"sparse_labels: {missing} of {len(ds)} images of {cfg.data.train_split} have no {cfg.data.sparse.kind} "
              "annotation and are left out", file=sys.stderr)
    sources = [str(p) for p in paths]
    fill_store(ctx, SPARSE_LABELS, {"kind": "labels", "sparse": cfg.data.sparse.kind, "sources": sources}, ids,
               lambda out: RasteriseWorker(paths, cfg.data.sparse.kind, ds.root, out), image_pool(ctx))
    return {"kind": cfg.data.sparse.kind, "annotated": len(ids), "unannotated": missing, "sources": sources}


SPARSE_LABELS_STAGE = Stage("sparse_labels", run, reads=("data.sparse", "data.root", "data.train_split", "data.max_images"),
                            writes=(SPARSE_LABELS,), description="points or scribbles of the training images, rasterised")
