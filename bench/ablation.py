"""Shared by the ablation benchmarks: run the first stages of a flow for one ``--set`` variant."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.runs import Run, run_stage  # noqa: E402
from workflows import get_flow  # noqa: E402


def run_variant(flow: str, run_dir: Path, profile: str, sets: list[str], upto: str) -> tuple[dict, float]:
    """Run ``flow``'s stages up to and including ``upto`` in ``run_dir`` (cached stages are reused).

    Returns each run stage's metrics by name and the seconds taken.
    """
    spec = get_flow(flow)
    cfg = spec.resolve(profile, sets)
    run = Run.create(run_dir, cfg)
    t = time.time()
    metrics = {}
    for stage in spec.stages:
        metrics[stage.name] = run_stage(run, stage)["metrics"]
        if stage.name == upto:
            break
    return metrics, time.time() - t


def main_rows(rows: dict[str, tuple[str, list[str]]], upto: str = "eval_segmentation") -> None:
    """The command line of a table of flow variants (``rows``: name → (flow, ``--set``s)): ``OUT [--profile P]
    [--set KEY=VALUE ...] [--only ROW ...]``; prints each row's val mIoU (``eval_segmentation``), the mIoU of its stored
    pseudo labels (``eval_pseudo_labels``) and seconds, each row in ``OUT/row-N``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--only", nargs="+", type=int, help="run only these rows (0-based), e.g. --only 0 1")
    a = ap.parse_args()
    print(f"{'row':<40} {'val mIoU':>8} {'pseudo mIoU':>11} {'seconds':>8}")
    for i, (name, (flow, sets)) in enumerate(rows.items()):
        if a.only is not None and i not in a.only:
            continue
        m, sec = run_variant(flow, a.out / f"row-{i}", a.profile, [*a.sets, *sets], upto)
        print(f"{name:<40} {m['eval_segmentation']['miou']:>8.4f} {m['eval_pseudo_labels']['miou']:>11.4f} {sec:>8.1f}", flush=True)
