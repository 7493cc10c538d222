"""What the reliability checks cost at VOC size: the up-front decode of every image and mask, the data fingerprint
(stat and content), the code digest and a cache hit's output check; prints a table.

    python bench/bench_reliability.py [--images N]

N images of VOC's size (500×375 JPEG, palette masks) are written to a temporary VOC folder; the per-image times
are scaled to VOC 2012's 12,031 (train_aug 10,582 + val 1,449).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOC_IMAGES = 12_031


def make_folder(root: Path, n: int) -> Path:
    from pipeline.voc import save_label_png
    v = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (v / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"2008_{i:06d}" for i in range(n)]
    for i in ids:
        img = (rng.random((375, 500, 3)) * 40 + np.linspace(0, 200, 500)[None, :, None]).astype(np.uint8)
        Image.fromarray(img).save(v / "JPEGImages" / f"{i}.jpg", quality=90)
        m = np.zeros((375, 500), np.uint8)
        m[100:250, 150:350] = 15
        save_label_png(v / "SegmentationClass" / f"{i}.png", m)
    (v / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (v / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[: max(1, n // 7)]) + "\n")
    return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    args = ap.parse_args()
    import workflows
    from pipeline.codeversion import _digest, _parsed, source_digest
    from pipeline.runs import Run, files_fingerprint, outputs_of, validate_data
    from pipeline.stage import Stage
    from pipeline.store import LabelStore
    from pipeline.voc import VOCFolder
    with tempfile.TemporaryDirectory() as tmp:
        v = make_folder(Path(tmp), args.images)
        flow = workflows.get_flow("cam_voc")
        run = Run.create(Path(tmp) / "run", flow.resolve("default", [], str(v)))
        rows = []
        t = time.perf_counter()
        validate_data(run, flow.stages)
        dt = time.perf_counter() - t
        rows.append(("decode + check every image and mask (2 threads)", dt / args.images))
        files = [f for i in run.dataset("train").ids for f in VOCFolder(v).files_of(i)]
        for mode in ("stat", "content"):
            t = time.perf_counter()
            files_fingerprint(files, mode)
            rows.append((f"data fingerprint, {mode}", (time.perf_counter() - t) / args.images))
        import pipeline.store as store_mod
        label = np.zeros((375, 500), np.uint8)
        synced = store_mod.fsync_tree, store_mod.fsync_dir
        for name, fsync in (("without fsync", False), ("fsynced", True)):
            if fsync:
                store_mod.fsync_tree, store_mod.fsync_dir = synced
            else:
                store_mod.fsync_tree = store_mod.fsync_dir = lambda p: None
            store = LabelStore(Path(tmp) / f"s-{fsync}.zarr")
            t = time.perf_counter()
            for i in run.dataset("train").ids:
                store.write(i, label)
            rows.append((f"label store write, {name}", (time.perf_counter() - t) / args.images))
        (Path(tmp) / "run" / "stages" / "x").mkdir(parents=True)
        store.path.rename(Path(tmp) / "run" / "stages" / "x" / "s.zarr")  # the fsynced one
        t = time.perf_counter()
        outputs_of(run, Stage("x", lambda ctx: {}, writes=("s.zarr",)))
        rows.append(("cache hit: verify a store's entries", (time.perf_counter() - t) / args.images))
        _digest.cache_clear(), _parsed.cache_clear()
        t = time.perf_counter()
        for st in flow.stages:
            source_digest(st.fn.__module__)
        code = time.perf_counter() - t
    print(f"{args.images} images of 500×375; per image and scaled to VOC's {VOC_IMAGES:,} images\n")
    print("| check | ms per image | s for VOC |\n|---|---|---|")
    for name, per in rows:
        print(f"| {name} | {per * 1e3:.2f} | {per * VOC_IMAGES:.1f} |")
    print(f"\ncode digest of cam_voc's {len(flow.stages)} stages (parsed once per process): {code:.2f} s")


if __name__ == "__main__":
    main()
