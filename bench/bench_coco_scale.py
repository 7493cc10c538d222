"""COCO at scale on this machine: the label store of a simulated corpus and the per-image stages at 640×480.

    nice -n 10 python bench/bench_coco_scale.py [--images 100000] [--loose 2000] [--out DIR] [--skip store|stages]

1. Store (``pipeline.store.LabelStore``), ``--images`` small uint8 labels (random 24..64 px a side): the per-image
   atomic write of a worker (a loose entry: today's layout) on ``--loose`` of them and their packing (``pack``), the
   rest written straight into packs (``write_many``, what the packing leaves); then files on disk, reads/s of a fresh
   process, the resume check (``complete_ids`` + the record's digest, what a cached stage re-checks), and
   ``python cli.py inspect RUN`` / ``inspect --json`` on a run folder whose make_seeds stage holds the store. The old
   layout's figures (files, resume check) are measured on the loose entries and scaled to ``--images``.
2. Per-image stages at COCO's 640×480 on one core (``torch.set_num_threads(1)``; CPU seconds of the process, so
   the figures hold on a machine that others share), untrained networks of the default
   profiles (the time does not depend on the weights): seeds (the CAM of the smoke ``cam_voc`` classifier, and of the
   paper one, ViT-B/16, at scale 1 + flip: its 4 scales need over 10 GB at 640×480 and the default profile's
   stride-8 hybrid over 3.7 GB for one attention map at scale 1.5, beyond this machine; 80 classes, 3 present), PAR (3 maps + background, AFA's 10 iterations), the dense CRF (pydensecrf,
   10 iterations), the random walk (ACR default: AffinityNet resnet18 at stride 8, radius 5, its β and log t; the
   sparse affinity of the pairs within the radius that the stage walks, and the dense N×N one it walked before; and
   the attention route's stride-16 grid). Projection: COCO train's 82,783 images on 16 cores (one image a core).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COCO_TRAIN = 82_783
CORES = 16


def _labels(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = rng.integers(24, 65, 2)
        yield f"COCO_train2014_{k:012d}", rng.integers(0, 81, (h, w)).astype(np.uint8)


def _fresh_caches() -> None:
    import pipeline.store as s
    s._PACK_META.clear()
    s._INDEX.clear()
    s._ARRAYS.clear()


def bench_store(out: Path, n: int, n_loose: int) -> list[tuple[str, str]]:
    from pipeline.runs import Run
    from pipeline.store import LabelStore, open_for_stage
    from workflows import get_flow
    flow = get_flow("cam_voc")
    run = Run.create(out / "run", flow.resolve("smoke", [], None))
    run.write_description("bench_coco_scale", flow.stages)
    path = run.stage_dir("make_seeds") / "seeds.zarr"
    store = open_for_stage(path, "bench-key", {"stage": "make_seeds"})
    gen = _labels(n)
    t = time.perf_counter()
    for _ in range(n_loose):
        i, a = next(gen)
        LabelStore(path).write(i, a)  # a worker's write: a fresh handle per image, as the stages do
    t_loose = time.perf_counter() - t
    files_loose = sum(len(f) + len(d) for _, d, f in os.walk(path))
    _fresh_caches()
    t = time.perf_counter()
    old_check = len(LabelStore(path).complete_ids())
    t_old_check = time.perf_counter() - t
    t = time.perf_counter()
    packed = store.pack()
    t_pack = time.perf_counter() - t
    t = time.perf_counter()
    batch, written = [], 0
    for i, a in gen:
        batch.append((i, a, None))
        if len(batch) == 8192:
            store.write_many(batch)
            written += len(batch)
            batch = []
    if batch:
        store.write_many(batch)
        written += len(batch)
    t_bulk = time.perf_counter() - t
    files = sum(len(f) for _, _, f in os.walk(path))
    inodes = sum(len(f) + len(d) for _, d, f in os.walk(path))
    _fresh_caches()
    t = time.perf_counter()
    ids = LabelStore(path).complete_ids()
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    t_check = time.perf_counter() - t
    assert len(ids) == n, (len(ids), n)
    _fresh_caches()
    rng = np.random.default_rng(1)
    sample = [ids[k] for k in rng.choice(n, min(n, 2000), replace=False)]
    t = time.perf_counter()
    for i in sample:
        LabelStore(path).read(i)
    t_read = time.perf_counter() - t
    for st in flow.stages:
        outputs = {"seeds.zarr": {"entries": n, "ids": digest}} if st.name == "make_seeds" else {}
        run.write_record(st.name, {"name": st.name, "key": "bench", "status": "completed", "seconds": 1.0,
                                   "metrics": {"images": n} if outputs else {}, "outputs": outputs})
    times = {}
    for flag in ([], ["--json"]):
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "inspect", str(run.dir), *flag], capture_output=True,
                               text=True, cwd=ROOT)
            best = min(best, time.perf_counter() - t)
            assert r.returncode == 0, r.stderr[-2000:]
        times[" ".join(flag) or "table"] = best
    per_old = files_loose / n_loose
    return [
        ("images in the store", f"{n:,}"),
        ("per-image atomic write (a worker's loose entry)", f"{n_loose / t_loose:,.0f} images/s ({n_loose:,} written)"),
        ("packing the loose entries (`pack`)", f"{packed / t_pack:,.0f} images/s"),
        ("writing straight into packs (`write_many`)", f"{written / t_bulk:,.0f} images/s"),
        ("files on disk, packed (files + folders)", f"{files:,} files, {inodes:,} inodes ({inodes / n:.4f} an image)"),
        ("files on disk, old per-image layout", f"{per_old:.1f} inodes an image (2 files + 3 folders): {per_old * n:,.0f}"),
        ("reads of a fresh process (random images)", f"{len(sample) / t_read:,.0f} images/s"),
        ("resume check, packed (`complete_ids` + digest)", f"{t_check:.2f} s"),
        ("resume check, old layout (measured on the loose entries, scaled)",
         f"{t_old_check / max(1, old_check) * n:.1f} s ({t_old_check:.2f} s for {old_check:,})"),
        ("`python cli.py inspect RUN`", f"{times['table']:.2f} s"),
        ("`python cli.py inspect RUN --json`", f"{times['--json']:.2f} s"),
    ]


def _timeit(fn, repeat: int = 3) -> float:
    """The CPU seconds of this process (one thread) of the best of ``repeat`` runs after a warm-up (``repeat=0``:
    the one run): on a shared machine, what the work costs a core, without the time it waited for one."""
    best = math.inf
    if repeat == 0:
        t = time.process_time()
        fn()
        return time.process_time() - t
    fn()
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def bench_stages() -> list[tuple[str, float, str]]:
    import torch
    torch.set_num_threads(1)
    from models.affinity_net import affinity_spec
    from models.cam_classifier import cam_classifier_spec
    from stages.crf import dense_crf
    from stages.make_seeds import image_cams
    from stages.random_walk_seeds import random_walk_maps
    from stages.refine import par
    from workflows import get_flow
    h, w = 480, 640
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img_t = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    probs = rng.random((4, h, w)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    def classifier(profile: str, sets: list[str]):
        cfg = get_flow("cam_voc").resolve(profile, sets, None)
        spec = cam_classifier_spec(cfg.model, cfg.train_classifier.crop_size, num_classes=80)
        return spec.for_inference().build().eval(), cfg.cam

    smoke, smoke_cam = classifier("smoke", [])
    vit_b, _ = classifier("paper", ["model.pretrained=false"])  # ViT-B/16 (384), untrained: no weights here
    aff_cfg = get_flow("acr_voc").resolve("default", [], None).affinity
    affnet = affinity_spec(aff_cfg).for_inference().build().eval()
    seeds = rng.random((3, h, w)).astype(np.float32)

    def walk_network(sparse: bool):
        with torch.no_grad():
            a, grid = (affnet.sparse_affinity if sparse else affnet.affinity)(img_t / 255.0)
        return random_walk_maps(seeds, a[0], grid, aff_cfg.beta, aff_cfg.log_t)

    def walk_attention():
        n = (h // 16) * (w // 16)
        a = torch.rand(n, n)
        return random_walk_maps(seeds, (a + a.T) / 2, (h // 16, w // 16), aff_cfg.beta, aff_cfg.log_t)

    with torch.no_grad():
        rows = [
            ("seeds: CAM, smoke cam_voc classifier (ViT-S/8, 2 blocks of 64; scale 1 + flip)",
             _timeit(lambda: image_cams(smoke, img, [1, 5, 9], smoke_cam.scales, smoke_cam.flip), 1), "smoke"),
            ("seeds: CAM, paper cam_voc classifier (ViT-B/16), scale 1 + flip only (the paper's 4 scales: >= 7.5x)",
             _timeit(lambda: image_cams(vit_b, img, [1, 5, 9], [1.0], True), 0), "paper"),
            ("PAR (3 maps + background, 10 iterations, 6 dilations)",
             _timeit(lambda: par(img_t, torch.from_numpy(probs)[None]), 1), "AFA"),
            ("dense CRF (pydensecrf, 4 labels, 10 iterations)", _timeit(lambda: dense_crf(img, probs), 2), "IRN/ACR"),
            ("random walk: AffinityNet resnet18 at stride 8 (N=4,800, sparse: radius 5) + walk",
             _timeit(lambda: walk_network(True), 1), "ACR default"),
            ("random walk as before: the same with the dense N×N affinity", _timeit(lambda: walk_network(False), 1),
             "dense"),
            ("random walk over an attention affinity at stride 16 (N=1,200)", _timeit(walk_attention, 2), "attention"),
        ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--loose", type=int, default=2000, help="images written one by one as a worker does")
    ap.add_argument("--out", type=Path, default=None, help="folder for the simulated run (default: a temporary one)")
    ap.add_argument("--skip", choices=["store", "stages"], default=None)
    args = ap.parse_args()
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
          f"`{' '.join(['python', 'bench/bench_coco_scale.py', *sys.argv[1:]])}`\n")
    if args.skip != "store":
        out = args.out or Path(tempfile.mkdtemp(prefix="coco_scale_"))
        shutil.rmtree(out / "run", ignore_errors=True)
        rows = bench_store(out, args.images, min(args.loose, args.images))
        print("| label store | measured |\n| --- | --- |")
        for name, v in rows:
            print(f"| {name} | {v} |")
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
        print()
    if args.skip != "stages":
        rows = bench_stages()
        print(f"| per-image stage at 640×480, one core | CPU s/image | COCO train ({COCO_TRAIN:,}) on {CORES} cores |\n"
              "| --- | --- | --- |")
        total = 0.0
        for name, sec, tag in rows:
            hours = sec * COCO_TRAIN / CORES / 3600
            total += hours if tag not in ("attention", "smoke", "dense") else 0.0
            print(f"| {name} | {sec:.3f} | {hours * 60:.0f} min |")
        over = [name.split(":")[0].split(" (")[0] for name, sec, tag in rows
                if sec * COCO_TRAIN / CORES > 3600 and tag != "dense"]
        print(f"\nOver 1 h on {CORES} cores: {', '.join(over) or 'none'}; seeds (paper, 1 scale) + PAR + CRF + walk "
              f"(network) together {total:.1f} h.")


if __name__ == "__main__":
    main()
