"""Shared by the ablation benchmarks: run the first stages of a flow for one ``--set`` variant."""
from __future__ import annotations

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
