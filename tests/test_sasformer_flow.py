"""``sasformer_voc`` with the smoke profile: scribbles on the synthetic data killed and resumed (inspect, both loss
terms, α by kind), the multi-stage variant on the cached single stage, points on a foreign VOC folder, bad input."""
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cli, inspect_json, statuses
from tests.test_flows import _run_and_kill_when
from tests.test_sparse_flows import _foreign_with_annotations

STAGES = ["sparse_labels", "eval_sparse_labels", "train_sasformer", "make_pseudo_labels", "eval_pseudo_labels", "eval_segmentation"]
FAST = ["--set", "sasformer.train.steps=30", "--set", "sasformer.train.checkpoint_every=10"]


def _cmd(run_dir, *extra):
    return [sys.executable, str(ROOT / "cli.py"), "run-flow", "sasformer_voc", "--profile", "smoke", "--run-dir", str(run_dir),
            *FAST, *extra]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, env):
    """Scribbles, killed after the network's first checkpoint, then resumed to the end."""
    run_dir = tmp_path_factory.mktemp("sasformer") / "run"
    ok = _run_and_kill_when(_cmd(run_dir), env, lambda: (run_dir / "stages/train_sasformer/checkpoint.json").is_file())
    assert ok, "the flow never checkpointed the SASFormer network"
    killed = statuses(inspect_json(run_dir, env))["train_sasformer"]
    r = subprocess.run(_cmd(run_dir), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, killed, inspect_json(run_dir, env)


def test_scribbles_resume_after_sigkill_and_report_pseudo_and_val(killed_and_resumed):
    run_dir, killed, info = killed_and_resumed
    assert killed == "failed"  # nothing half-written is marked complete
    st = statuses(info)
    assert [s["name"] for s in info["stages"]] == STAGES and st["sparse_labels"] == "cached"  # done before the kill
    assert all(st[s] == "completed" for s in STAGES[2:])
    s = info["summary"]
    assert s["sparse_miou"] == 1.0 and 0 < s["sparse_coverage"] < 0.3
    assert 0 <= s["pseudo_miou"] <= 1 and s["pseudo_coverage"] == 1.0 and 0 <= s["seg_miou"] <= 1
    m = {x["name"]: x["metrics"] for x in info["stages"]}
    assert m["train_sasformer"]["alpha"] == 1.2 and m["train_sasformer"]["blocks"] == [1, 2, 3, 4]  # the paper's α for scribbles
    assert m["make_pseudo_labels"]["route"] == "prediction"
    log = [json.loads(ln) for ln in (run_dir / "stages/train_sasformer/log.jsonl").read_text().splitlines()]
    assert log[-1]["affinity"] > 0 and log[-1]["partial_ce"] > 0  # both terms of Eq. 1 reached the log


def test_multistage_trains_the_segmentation_on_the_cached_single_stage(killed_and_resumed, env):
    run_dir, _, single = killed_and_resumed
    r = cli("run-flow", "sasformer_voc_multistage", "--profile", "smoke", "--run-dir", run_dir, *FAST,
            "--set", "segmentation.train.steps=10", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    st = statuses(info)
    assert all(st[s] == "cached" for s in STAGES[:-1])
    m = {x["name"]: x["metrics"] for x in info["stages"]}
    # the single-stage network's val score, under its own name beside the multi-stage one
    assert m["eval_single_stage_segmentation"]["miou"] == pytest.approx(single["summary"]["seg_miou"], abs=1e-9)
    assert st["train_segmentation"] == "completed" and m["train_segmentation"]["labels"] == "make_pseudo_labels"
    assert info["summary"]["seg_miou"] is not None


def test_points_on_a_foreign_voc_folder(tmp_path, env):
    root, _ = _foreign_with_annotations(tmp_path / "data")
    run_dir = tmp_path / "run"
    r = cli("run-flow", "sasformer_voc", "--profile", "smoke", "--data-root", root, "--run-dir", run_dir,
            "--set", "data.sparse.kind=point", "--set", "sasformer.train.steps=10", "--set", "sasformer.distance=kl", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    assert set(statuses(info).values()) == {"completed"}
    m = {x["name"]: x["metrics"] for x in info["stages"]}
    assert m["train_sasformer"]["alpha"] == 0.2 and m["train_sasformer"]["distance"] == "kl"  # α by kind: points
    assert any(s.endswith("voc_whats_the_point.json") for s in m["sparse_labels"]["sources"])


@pytest.mark.parametrize("key, says", [("sasformer.blocks=[0,5]", "sasformer.blocks"),
                                       ("sasformer.backbone=resnet18", "use a timm pvt_v2_b* name")])
def test_bad_input_is_one_line(tmp_path, env, key, says):
    r = cli("run-flow", "sasformer_voc", "--profile", "smoke", "--run-dir", tmp_path / "run", "--set", key, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()][-1]
    assert says in last, r.stderr[-2000:]
