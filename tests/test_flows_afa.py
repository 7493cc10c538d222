"""AFA's whole flow with the smoke profile: the three mIoUs, the multi-stage variant, switched off, resume after SIGKILL, a
foreign VOC folder (a file of its own: the suite's two workers take a file each)."""
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cli, inspect_json, statuses
from tests.test_flows import _run_and_kill_when, make_foreign_voc

AFA_STAGES = ["train_single_stage", "eval_classifier", "make_seeds", "eval_seeds", "make_pseudo_labels",
              "eval_pseudo_labels", "eval_segmentation"]


@pytest.fixture(scope="module")
def afa_run(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("afa") / "run"
    r = cli("run-flow", "afa_voc", "--profile", "smoke", "--run-dir", run_dir, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, inspect_json(run_dir, env)


def test_afa_voc_smoke_reports_the_three_mious(afa_run, env):
    run_dir, info = afa_run
    assert info["flow"] == "afa_voc"
    assert [s["name"] for s in info["stages"]] == AFA_STAGES
    assert set(statuses(info).values()) == {"completed"}
    for k in ("seed_miou", "pseudo_miou", "seg_miou"):
        assert 0.0 <= info["summary"][k] <= 1.0, k
    pseudo = next(s for s in info["stages"] if s["name"] == "make_pseudo_labels")["metrics"]
    # no calibration split: the method's route (the propagated seeds + PAR); ``propagated`` says it propagates
    assert "routes" not in pseudo and pseudo["route"].startswith("propagated") and pseudo["propagated"]
    log = [__import__("json").loads(ln) for ln in (run_dir / "stages/train_single_stage/log.jsonl").read_text().splitlines()]
    # the warm-ups: classification alone, then + affinity, then + segmentation and L_reg (smoke: 20 / 40 of 80 steps)
    first, last = log[0], log[-1]
    assert first["aff"] == first["seg"] == first["reg"] == 0 and first["cls"] > 0
    assert last["aff"] > 0 and last["seg"] > 0 and last["reg"] > 0


def test_afa_multistage_reuses_the_single_stage_and_reports_both_routes(afa_run, env, tmp_path):
    run_dir, ref = afa_run
    r = cli("run-flow", "afa_voc_multistage", "--profile", "smoke", "--run-dir", run_dir, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    st = statuses(info)
    assert [s["name"] for s in info["stages"]] == AFA_STAGES[:-1] + ["eval_single_stage_segmentation", "train_segmentation",
                                                                      "eval_segmentation"]
    assert all(st[s] == "cached" for s in AFA_STAGES[:-1])
    own = next(s for s in info["stages"] if s["name"] == "eval_single_stage_segmentation")["metrics"]["miou"]
    assert abs(own - ref["summary"]["seg_miou"]) < 1e-6  # the same network, scored again beside the second route
    assert 0 <= info["summary"]["seg_miou"] <= 1


def test_afa_switched_off_retrains_and_skips_propagation(afa_run, env, tmp_path):
    run_dir = tmp_path / "no_afa"
    r = cli("run-flow", "afa_voc", "--profile", "smoke", "--run-dir", run_dir, "--set", "afa.affinity=false",
            "--set", "afa.train.steps=30", "--set", "afa.aff_warmup_steps=20", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    assert next(s for s in info["stages"] if s["name"] == "make_pseudo_labels")["metrics"]["propagated"] is False
    log = (run_dir / "stages/train_single_stage/log.jsonl").read_text().splitlines()
    assert '"aff": 0.0' in log[-1]  # no affinity loss without the AFA module


def test_afa_sigkill_during_training_and_pseudo_labels_resumes(afa_run, env, tmp_path):
    ref = afa_run[1]["summary"]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "cli.py"), "run-flow", "afa_voc", "--profile", "smoke", "--run-dir", str(run_dir)]
    ok = _run_and_kill_when(cmd, env, lambda: (run_dir / "stages/train_single_stage/checkpoint.json").is_file())
    assert ok, "the flow never checkpointed the single-stage network"
    store = run_dir / "stages/make_pseudo_labels/pseudo_labels.zarr"
    _run_and_kill_when(cmd, env, lambda: store.is_dir() and len([p for p in store.iterdir() if p.is_dir()]) >= 3)
    assert statuses(inspect_json(run_dir, env))["train_single_stage"] in ("completed", "cached")
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    st = statuses(info)
    assert st["train_single_stage"] == st["make_seeds"] == "cached"
    assert all(v in ("completed", "cached") for v in st.values())
    for k in ("seed_miou", "pseudo_miou", "seg_miou"):
        assert abs(info["summary"][k] - ref[k]) <= 0.02, (k, info["summary"][k], ref[k])


def test_afa_voc_on_a_foreign_voc_folder(tmp_path, env):
    root = make_foreign_voc(tmp_path / "data")
    r = cli("run-flow", "afa_voc_multistage", "--profile", "smoke", "--data-root", root, "--run-dir", tmp_path / "run",
            "--set", "afa.train.steps=30", "--set", "segmentation.train.steps=20", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(tmp_path / "run", env)
    assert set(statuses(info).values()) == {"completed"}
    assert all(info["summary"][k] is not None for k in ("seed_miou", "pseudo_miou", "seg_miou"))
