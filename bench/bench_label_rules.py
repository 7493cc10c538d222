"""Label-free background-threshold rules scored on a run's stored maps (docs/labels.md).

    python bench/bench_label_rules.py RUN_DIR [--store make_seeds/seeds.zarr] [--par [--par-size 256]]

For the maps of ``RUN_DIR`` (the seeds, or the random walk's ``random_walk/rw_seeds.zarr``) it prints the seeds' mIoU
on the label split's masks at the threshold each rule picks — without reading a mask to pick it — beside the best
threshold of a fine sweep (the oracle, what a mask-tuned threshold gets):

- ``otsu``: Otsu's threshold of the per-pixel top scores of every image (``stages.evaluate.otsu_threshold``, the rule
  ``eval_seeds`` uses);
- ``otsu_per_image``: Otsu's threshold of each image's own top scores (``stages.eval_seeds.image_otsu_threshold``,
  ``pseudo.bkg_rule: otsu_image``);
- ``mean_top``: the mean of the per-pixel top scores;
- fixed 0.25 and 0.45 (the papers' values).

Masks are read here only to score; ``--par`` also scores the PAR-refined labels at the Otsu and best thresholds, at
the working size ``--par-size`` (``pseudo.par.size``, default 256) and at the image's own resolution.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workflows  # noqa: E402,F401  (every config section registered)
from pipeline.metrics import confusion_matrix, scores  # noqa: E402
from pipeline.parallel import ImagePool  # noqa: E402
from pipeline.runs import Run  # noqa: E402
from pipeline.store import LabelStore  # noqa: E402
from pipeline.voc import NUM_CLASSES  # noqa: E402
from stages.eval_seeds import image_otsu_threshold  # noqa: E402
from stages.evaluate import otsu_threshold  # noqa: E402
from stages.labels import threshold_labels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--store", default="make_seeds/seeds.zarr")
    ap.add_argument("--par", action="store_true")
    ap.add_argument("--par-size", type=int, default=256, help="PAR's working short side to score beside the native size")
    args = ap.parse_args()
    run = Run.open(args.run_dir)
    store = LabelStore(run.stage_dir("x").parent / args.store)
    ds = run.dataset(run.config.data.label_split)
    ids = [i for i in ds.ids if i in store and ds.has_mask(i)]
    t_otsu = otsu_threshold(store, store.ids(), ImagePool())
    sweep = np.round(np.arange(0.02, 0.96, 0.01), 3)
    fixed = {"otsu": t_otsu, "fixed 0.25": 0.25, "fixed 0.45": 0.45}
    tops = [LabelStore(store.path).read(i).astype(np.float32) for i in ids]
    t_mean = float(np.mean(np.concatenate([m.max(0).ravel() for m in tops if len(m)])))
    fixed["mean_top"] = t_mean
    conf_sweep = np.zeros((len(sweep), NUM_CLASSES, NUM_CLASSES), np.int64)
    conf_fixed = {k: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for k in fixed}
    conf_img = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for i, maps in zip(ids, tops):
        gt = ds.mask(i)
        classes = store.read_attrs(i)["classes"]
        for t, lab in zip(sweep, threshold_labels(maps, classes, sweep)):
            conf_sweep[list(sweep).index(t)] += confusion_matrix(gt, lab, NUM_CLASSES)
        for k, t in fixed.items():
            conf_fixed[k] += confusion_matrix(gt, threshold_labels(maps, classes, np.array([t]))[0], NUM_CLASSES)
        t_i = image_otsu_threshold(maps)  # pseudo.bkg_rule: otsu_image
        conf_img += confusion_matrix(gt, threshold_labels(maps, classes, np.array([t_i]))[0], NUM_CLASSES)
    per_t = [scores(c)["miou"] for c in conf_sweep]
    best = int(np.nanargmax(per_t))
    print(f"{args.run_dir} {args.store}: {len(ids)} images scored (style {run.config.data.synthetic.style})")
    print(f"  best of sweep (oracle)  t={sweep[best]:.2f}  mIoU={per_t[best]:.4f}")
    for k, t in fixed.items():
        print(f"  {k:22s}  t={t:.3f}  mIoU={scores(conf_fixed[k])['miou']:.4f}")
    print(f"  {'otsu_per_image':22s}  t=each  mIoU={scores(conf_img)['miou']:.4f}")
    if args.par:
        from stages.make_pseudo_labels import pseudo_label
        from pipeline.stage import ConfigView
        for size in (args.par_size, None):  # the working size (pseudo.par.size), then the image's own resolution
            config = run.config.model_copy(deep=True)
            config.pseudo.par.size = size
            view = ConfigView(config, ("pseudo", "device"), "bench")
            for name, t in (("otsu", t_otsu), ("best", float(sweep[best]))):
                conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
                for i, maps in zip(ids, tops):
                    lab = pseudo_label(view, t, ds.image(i), maps, store.read_attrs(i)["classes"], refine=["par"])
                    conf += confusion_matrix(ds.mask(i), lab, NUM_CLASSES)
                print(f"  PAR ({run.config.pseudo.par.num_iter} iterations, working short side {size or 'native'}) at "
                      f"{name:5s} t={t:.3f}  mIoU={scores(conf)['miou']:.4f}")


if __name__ == "__main__":
    main()
