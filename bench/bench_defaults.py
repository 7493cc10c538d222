"""Every flow's ``default`` profile on both synthetic styles: the README's tables.

    python bench/bench_defaults.py OUT [--flows cam_voc acr_voc] [--styles a b] [--set KEY=VALUE ...]

Runs ``run-flow FLOW --profile default --set data.synthetic.style=S`` in ``OUT/FLOW-S`` (resumable: finished
stages are cached) and prints one Markdown row per run: seed mIoU (and its auto threshold), pseudo-label
mIoU with the seeds at the same threshold and the guard's route, coverage, segmentation mIoU and its share of the pseudo labels,
minutes. Run it on an otherwise idle machine: the minutes are wall-clock.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.runs import Run, summarise  # noqa: E402
from workflows import get_flow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOWS = ["cam_voc", "acr_voc", "afa_voc", "afa_voc_multistage", "swtformer_voc", "supervised_voc", "partial_ce_voc", "apro_voc"]


def _f(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def row(flow: str, style: str, run_dir: Path, minutes: float) -> str:
    spec = get_flow(flow)
    info = summarise(Run.open(run_dir), spec.stages)
    s = info["summary"]
    metrics = {st["name"]: st["metrics"] for st in info["stages"]}
    t = metrics.get("eval_seeds", {}).get("threshold")
    seed = f"{_f(s['seed_miou'])} (t {t:g})" if t is not None else _f(s["seed_miou"])
    matched = s.get("seed_miou_matched")
    pseudo = _f(s["pseudo_miou"]) + (f" (seeds at t {s['pseudo_threshold']:g}: {_f(matched)})" if matched is not None else "")
    route = metrics.get("make_pseudo_labels", {}).get("route")
    pseudo += f" [{route}]" if route else ""
    share = f"{s['seg_miou'] / s['pseudo_miou']:.0%}" if s["seg_miou"] and s["pseudo_miou"] else "–"
    return f"| `{flow}` | {style} | {seed} | {pseudo} | {_f(s['pseudo_coverage'], 2)} | {_f(s['seg_miou'])} ({share}) | {minutes:.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--flows", nargs="+", default=FLOWS)
    ap.add_argument("--styles", nargs="+", default=["a", "b"])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    rows = ["| flow | style | seed mIoU | pseudo mIoU | coverage | seg mIoU (of pseudo) | minutes |", "|---|---|---|---|---|---|---|"]
    for flow in args.flows:
        for style in args.styles:
            run_dir = args.out / f"{flow}-{style}"
            cmd = [sys.executable, str(ROOT / "cli.py"), "run-flow", flow, "--profile", "default", "--run-dir", str(run_dir),
                   "--set", f"data.synthetic.style={style}", *sum((["--set", s] for s in args.sets), [])]
            t = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            rows.append(row(flow, style, run_dir, (time.time() - t) / 60))
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
