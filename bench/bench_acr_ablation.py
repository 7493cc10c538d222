"""ACR's Table 4 (L_act / L_aff on or off) and Table 5 (seed modes) on the seeds; prints a table.

Runs the first three stages of ``acr_voc`` (train_classifier, make_seeds, eval_seeds) for each
setting in its own run folder under OUT, with the chosen profile and any extra ``--set`` pairs:

    python bench/bench_acr_ablation.py OUT [--profile default] [--set KEY=VALUE ...] [--modes]

The same settings through the command line are four ``run-flow acr_voc`` calls, e.g.
``--set acr.alpha=0 --set acr.beta=0`` for the baseline without regularization.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ablation import run_variant

TABLE4 = {"baseline (no reg.)": ["acr.alpha=0", "acr.beta=0"], "L_act": ["acr.beta=0"], "L_aff": ["acr.alpha=0"],
          "L_act + L_aff (ACR)": []}
TABLE5 = {"cam": ["acr.seed_mode=cam"], "grad": ["acr.seed_mode=grad"], "grad_aff": ["acr.seed_mode=grad_aff"]}


def seeds(run_dir: Path, profile: str, sets: list[str]) -> tuple[float, float, float]:
    metrics, seconds = run_variant("acr_voc", run_dir, profile, sets, "eval_seeds")
    m = metrics["eval_seeds"]
    return m["miou"], m["threshold"], seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--modes", action="store_true", help="Table 5 (seed modes, full ACR) instead of Table 4")
    a = ap.parse_args()
    table = TABLE5 if a.modes else TABLE4
    print(f"{'setting':<22} {'seed mIoU':>9} {'threshold':>9} {'seconds':>8}")
    for name, sets in table.items():
        # the seed modes share one classifier (its stage is cached across them)
        run_dir = a.out / ("modes" if a.modes else f"table4-{list(table).index(name)}")
        miou, thr, sec = seeds(run_dir, a.profile, a.sets + sets)
        print(f"{name:<22} {miou:>9.4f} {thr:>9.2f} {sec:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
