"""AFA's Table 2 on the synthetic data: what PAR, the propagation over the learned affinity, the AFA
module, L_reg and CRF each do to the pseudo labels and the segmentation branch; prints a table.

    python bench/bench_afa_ablation.py OUT [--profile default] [--set KEY=VALUE ...] [--training] [--only ROW ...]

Without ``--training``: one network (the full AFA training) and its pseudo labels made four ways —
raw CAM labels, + PAR, + propagation, both — plus its segmentation with CRF. With ``--training``:
networks trained without the AFA module, without training-label PAR, without L_reg (one training
each, 8–11 minutes on 2 CPU cores with the default profile). Every row runs with ``pseudo.guard=false``:
its pseudo labels are the row's own route, not the best of the guard's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ablation import run_variant

LABELS = {"CAM labels (threshold)": ["afa.propagate=false", "pseudo.refine=[]"],
          "+ PAR": ["afa.propagate=false", "pseudo.refine=[par]"],
          "+ propagation": ["pseudo.refine=[]"],
          "+ propagation + PAR (AFA)": [],
          "+ propagation + PAR, seg. + CRF": ["segmentation.eval_crf=true"]}
TRAINING = {"full AFA": [], "without AFA module": ["afa.affinity=false"], "without training-label PAR": ["afa.par=false"],
            "without L_reg": ["afa.reg=false"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--training", action="store_true", help="the training switches instead of the label variants")
    ap.add_argument("--only", nargs="+", type=int, help="run only these rows (0-based), e.g. --only 0 1")
    a = ap.parse_args()
    table = TRAINING if a.training else LABELS
    print(f"{'setting':<34} {'seed mIoU':>9} {'pseudo mIoU':>11} {'seg mIoU':>8} {'seconds':>8}")
    for i, (name, sets) in enumerate(table.items()):
        if a.only is not None and i not in a.only:
            continue
        # the label variants share one network (its stage is cached across them)
        run_dir = a.out / (f"training-{i}" if a.training else "labels")
        # each row's own labels, not the guard's best route (pseudo.guard)
        m, sec = run_variant("afa_voc", run_dir, a.profile, ["pseudo.guard=false", *a.sets, *sets], "eval_segmentation")
        print(f"{name:<34} {m['eval_seeds']['miou']:>9.4f} {m['eval_pseudo_labels']['miou']:>11.4f} "
              f"{m['eval_segmentation']['miou']:>8.4f} {sec:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
