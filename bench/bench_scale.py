"""Throughput of the scale knobs on this machine; prints two tables.

    python bench/bench_scale.py OUT [--images 100] [--size 320 480] [--steps 40] [--skip images|training]

1. Per-image stages, images/s: the smoke ``cam_voc`` flow's per-image stages (seeds, threshold sweep, pseudo
   labels, their scoring, segmentation predictions) redone over ``--images`` training images of about VOC's size
   (``--size``; and 30 val images) with a local
   pool and with a local Dask cluster, at 1 and 2 processes (the trained networks are reused: the executor
   is in no key). The label stores of every variant are checked equal to the first one's.
2. Training, steps/s: the default profile's classifier for ``--steps`` steps in 1 and 2 DDP processes (Gloo),
   with batches prepared in this process or in 2 loader workers (``workers.loader_workers``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PER_IMAGE = ["make_seeds", "eval_seeds", "make_pseudo_labels", "eval_pseudo_labels", "eval_segmentation"]
TRAINED = ["train_classifier", "eval_classifier", "train_segmentation"]
STORES = ["make_seeds/seeds.zarr", "make_pseudo_labels/pseudo_labels.zarr", "eval_segmentation/predictions.zarr"]


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(r.stderr[-2000:])


def records(run: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "record.json").read_text()) for d in (run / "stages").iterdir()
            if (d / "record.json").is_file()}


def per_image(out: Path, n_images: int, size: tuple[int, int]) -> list[tuple]:
    data = [f"data.synthetic.train={n_images}", "data.synthetic.val=30", f"data.synthetic.min_size={size[0]}",
            f"data.synthetic.max_size={size[1]}"]
    base = out / "base"
    if not (base / "stages/eval_segmentation/record.json").is_file():
        cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", str(base), *sum((["--set", s] for s in data), []))
    rows, first = [], None
    for executor in ("local", "dask"):
        for n in (1, 2):
            run = out / f"{executor}{n}"
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(base, run, ignore=lambda d, names: [x for x in names if x in PER_IMAGE])
            sets = [*data, f"workers.executor={executor}", f"workers.processes={n}"]
            t0 = time.time()
            cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", str(run), *sum((["--set", s] for s in sets), []))
            wall = time.time() - t0
            rec = records(run)
            assert all(rec[s]["status"] == "cached" for s in TRAINED if s in rec), "a trained network was recomputed"
            same = check_same(first, run) if first else "reference"
            first = first or run
            rows.append((executor, n, *[rec[s]["metrics"].get("images", 0) / rec[s]["seconds"] for s in PER_IMAGE], wall, same))
    return rows


def check_same(a: Path, b: Path) -> str:
    from pipeline.store import LabelStore
    for name in STORES:
        sa, sb = LabelStore(a / "stages" / name), LabelStore(b / "stages" / name)
        if sorted(sa.ids()) != sorted(sb.ids()) or any(not np.array_equal(sa.read(i), sb.read(i)) for i in sa.ids()):
            return f"DIFFERS ({name})"
    return "identical"


def training(out: Path, steps: int) -> list[tuple]:
    from pipeline.runs import Run, run_stage
    from pipeline.synthetic import embedded_dataset  # noqa: F401  (the default data, made on first use)
    from stages.train_classifier import TRAIN_CLASSIFIER
    from workflows import get_flow
    rows = []
    for devices in (1, 2):
        for loader in (0, 2):
            run_dir = out / f"train-d{devices}-l{loader}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cfg = get_flow("cam_voc").resolve("default", [f"train_classifier.steps={steps}", "train_classifier.log_every=5",
                                                          f"devices={devices}", f"workers.loader_workers={loader}"])
            run = Run.create(run_dir, cfg)
            t0 = time.time()
            run_stage(run, TRAIN_CLASSIFIER)
            wall = time.time() - t0
            log = [json.loads(ln) for ln in (run_dir / "stages/train_classifier/log.jsonl").read_text().splitlines()]
            # steps/s after the first logged steps (start-up and the first batches' warm-up excluded)
            (s0, t0_), (s1, t1) = (log[0]["step"], log[0]["seconds"]), (log[-1]["step"], log[-1]["seconds"])
            rows.append((devices, loader, (s1 - s0) / max(1e-9, t1 - t0_), wall, log[-1]["loss"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--size", type=int, nargs=2, default=(320, 480), help="synthetic image sides (VOC: ~375×500)")
    ap.add_argument("--skip", choices=["images", "training"], default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import workflows  # noqa: F401
    if args.skip != "images":
        print("| executor | processes | " + " | ".join(PER_IMAGE) + " | wall s | stores |")
        print("|---|---|" + "---|" * len(PER_IMAGE) + "---|---|")
        for ex, n, *ips, wall, same in per_image(args.out, args.images, tuple(args.size)):
            print(f"| {ex} | {n} | " + " | ".join(f"{v:.1f}" for v in ips) + f" | {wall:.0f} | {same} |", flush=True)
    if args.skip != "training":
        print("\n| DDP processes | loader workers | steps/s | wall s | last loss |")
        print("|---|---|---|---|---|")
        for d, lw, sps, wall, loss in training(args.out, args.steps):
            print(f"| {d} | {lw} | {sps:.2f} | {wall:.0f} | {loss:.4f} |", flush=True)


if __name__ == "__main__":
    main()
