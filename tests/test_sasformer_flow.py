"""``sasformer_voc`` with the smoke profile: points from the field's standard files on a foreign VOC folder, killed
and resumed (inspect, both loss terms, α by kind), the multi-stage variant on the cached single stage, bad input.
Scribbles train in ``tests/test_sasformer.py`` (the loss) and the other sparse flows' tests (the readers)."""
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cli, inspect_json, statuses
from tests.test_flows import _run_and_kill_when
from tests.test_sparse_flows import _foreign_with_annotations

STAGES = ["sparse_labels", "eval_sparse_labels", "train_sasformer", "make_pseudo_labels", "eval_pseudo_labels", "eval_segmentation"]
FAST = ["--set", "sasformer.train.steps=30", "--set", "sasformer.train.checkpoint_every=10"]


def _cmd(run_dir, root, *extra):
    return [sys.executable, str(ROOT / "cli.py"), "run-flow", "sasformer_voc", "--profile", "smoke", "--run-dir", str(run_dir),
            "--data-root", str(root), "--set", "data.sparse.kind=point", *FAST, *extra]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, env):
    """Points on a foreign VOC folder, killed after the network's first checkpoint, then resumed to the end."""
    root, _ = _foreign_with_annotations(tmp_path_factory.mktemp("sasformer") / "data")
    run_dir = root.parent / "run"
    ok = _run_and_kill_when(_cmd(run_dir, root), env, lambda: (run_dir / "stages/train_sasformer/checkpoint.json").is_file())
    assert ok, "the flow never checkpointed the SASFormer network"
    killed = statuses(inspect_json(run_dir, env))["train_sasformer"]
    r = subprocess.run(_cmd(run_dir, root), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, killed, inspect_json(run_dir, env), root


def test_points_resume_after_sigkill_and_report_pseudo_and_val(killed_and_resumed):
    run_dir, killed, info, _ = killed_and_resumed
    assert killed == "failed"  # nothing half-written is marked complete
    st = statuses(info)
    assert [s["name"] for s in info["stages"]] == STAGES and st["sparse_labels"] == "cached"  # done before the kill
    assert all(st[s] == "completed" for s in STAGES[2:])
    s = info["summary"]
    assert 0 < s["sparse_coverage"] < 0.05  # a click or two per image
    assert 0 <= s["pseudo_miou"] <= 1 and s["pseudo_coverage"] == 1.0 and 0 <= s["seg_miou"] <= 1
    m = {x["name"]: x["metrics"] for x in info["stages"]}
    assert m["train_sasformer"]["alpha"] == 0.2 and m["train_sasformer"]["blocks"] == [1, 2, 3, 4]  # the paper's α for points
    assert any(x.endswith("voc_whats_the_point.json") for x in m["sparse_labels"]["sources"])
    assert m["make_pseudo_labels"]["route"] == "prediction"
    log = [json.loads(ln) for ln in (run_dir / "stages/train_sasformer/log.jsonl").read_text().splitlines()]
    assert log[-1]["affinity"] > 0 and log[-1]["partial_ce"] > 0  # both terms of Eq. 1 reached the log


def test_multistage_trains_the_segmentation_on_the_cached_single_stage(killed_and_resumed, env):
    run_dir, _, single, root = killed_and_resumed
    r = cli("run-flow", "sasformer_voc_multistage", "--profile", "smoke", "--run-dir", run_dir, "--data-root", root,
            "--set", "data.sparse.kind=point", *FAST, "--set", "segmentation.train.steps=10", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    st = statuses(info)
    assert all(st[s] == "cached" for s in STAGES[:-1])
    m = {x["name"]: x["metrics"] for x in info["stages"]}
    # the single-stage network's val score, under its own name beside the multi-stage one
    assert m["eval_single_stage_segmentation"]["miou"] == pytest.approx(single["summary"]["seg_miou"], abs=1e-9)
    assert st["train_segmentation"] == "completed" and m["train_segmentation"]["labels"] == "make_pseudo_labels"
    assert info["summary"]["seg_miou"] is not None


def test_bad_blocks_are_one_line(tmp_path, env):
    r = cli("run-flow", "sasformer_voc", "--profile", "smoke", "--run-dir", tmp_path / "run", "--set", "sasformer.blocks=[0,5]", env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()][-1]
    assert "sasformer.blocks" in last and "1, 2, 3, 4" in last, r.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # refused before anything is written
