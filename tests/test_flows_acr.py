"""ACR's whole flow with the smoke profile: every stage and store, the attention route, bad layers, resume after SIGKILL, a
foreign VOC folder (a file of its own: the suite's two workers take a file each)."""
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cli, inspect_json, statuses
from tests.test_flows import _run_and_kill_when, make_foreign_voc

ACR_STAGES = ["train_classifier", "eval_classifier", "make_seeds", "eval_seeds", "eval_unrefined_seeds", "train_affinity",
              "random_walk", "eval_random_walk", "make_pseudo_labels", "eval_pseudo_labels", "train_segmentation",
              "eval_segmentation"]


@pytest.fixture(scope="module")
def acr_run(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("acr") / "run"
    r = cli("run-flow", "acr_voc", "--profile", "smoke", "--run-dir", run_dir, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, inspect_json(run_dir, env)


def test_acr_voc_smoke_reports_every_stage_and_store(acr_run, env):
    run_dir, info = acr_run
    assert info["flow"] == "acr_voc"
    assert [s["name"] for s in info["stages"]] == ACR_STAGES
    assert set(statuses(info).values()) == {"completed"}
    for k in ("seed_miou", "pseudo_miou", "seg_miou"):
        assert 0.0 <= info["summary"][k] <= 1.0, k
    st = {s["name"]: s["metrics"] for s in info["stages"]}
    assert st["train_affinity"]["source"] == "network" and 0 < st["train_affinity"]["label_coverage"] <= 1
    assert st["random_walk"]["images"] == st["make_seeds"]["images"] and 0 <= st["eval_random_walk"]["miou"] <= 1
    pseudo = st["make_pseudo_labels"]
    assert pseudo["scores"] == "random_walk"
    # no calibration split: the method's route (the walk's maps + PAR at the walk's own label-free threshold)
    t_walk = st["eval_random_walk"]["threshold"]
    assert pseudo["route"] == f"random_walk/rw_seeds (t {t_walk:g}) + par" and "routes" not in pseudo
    assert st["eval_pseudo_labels"]["route"] == pseudo["route"]  # read back from the store's attrs
    assert pseudo["threshold_from"].startswith("eval_random_walk: Otsu's threshold") and pseudo["threshold"] == t_walk
    assert info["summary"]["seed_miou"] == st["eval_seeds"]["miou"]  # the walk's score fills no seed summary
    assert st["eval_pseudo_labels"]["seed_miou_at_threshold"] is not None
    for store in ("make_seeds/seeds.zarr", "make_seeds/seeds_unrefined.zarr", "train_affinity/affinity_labels.zarr",
                  "random_walk/rw_seeds.zarr", "make_pseudo_labels/pseudo_labels.zarr"):
        assert (run_dir / "stages" / store / "zarr.json").is_file(), store
    log = (run_dir / "stages/train_classifier/log.jsonl").read_text()
    assert '"act"' in log and '"aff"' in log  # the ACR terms are logged


def test_acr_affinity_from_attention_reuses_the_classifier(acr_run, env):
    run_dir, _ = acr_run
    r = cli("run-flow", "acr_voc", "--profile", "smoke", "--run-dir", run_dir, "--set", "affinity.source=attention",
            "--set", "segmentation.train.steps=10", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    st = statuses(info)
    assert st["train_classifier"] == st["make_seeds"] == st["eval_seeds"] == "cached"
    assert st["train_affinity"] == st["random_walk"] == st["make_pseudo_labels"] == "completed"
    assert next(s for s in info["stages"] if s["name"] == "train_affinity")["metrics"]["source"] == "attention"


def test_acr_bad_layer_is_one_line(tmp_path, env):
    r = cli("run-flow", "acr_voc", "--profile", "smoke", "--run-dir", tmp_path / "r", "--set", "train_classifier.steps=5",
            "--set", "acr.seed_layers=[9]", env=env)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert "acr.seed_layers" in lines[-1] and "Traceback" not in r.stderr


def test_acr_bad_attention_layer_is_one_line(acr_run, env):
    run_dir, _ = acr_run
    r = cli("run-flow", "acr_voc", "--profile", "smoke", "--run-dir", run_dir, "--set", "affinity.source=attention",
            "--set", "affinity.attention_layers=[0,7]", env=env)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert "affinity.attention_layers" in lines[-1] and "Traceback" not in r.stderr


def test_acr_sigkill_during_affinity_training_resumes(acr_run, env, tmp_path):
    ref = acr_run[1]["summary"]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "cli.py"), "run-flow", "acr_voc", "--profile", "smoke", "--run-dir", str(run_dir)]
    ok = _run_and_kill_when(cmd, env, lambda: (run_dir / "stages/train_affinity/checkpoint.json").is_file())
    assert ok, "the flow never checkpointed the affinity network"
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    st = statuses(info)
    assert st["train_classifier"] == st["make_seeds"] == "cached"
    assert all(v in ("completed", "cached") for v in st.values())
    for k in ("seed_miou", "pseudo_miou", "seg_miou"):
        assert abs(info["summary"][k] - ref[k]) <= 0.02, (k, info["summary"][k], ref[k])


def test_acr_voc_on_a_foreign_voc_folder(tmp_path, env):
    root = make_foreign_voc(tmp_path / "data")
    r = cli("run-flow", "acr_voc", "--profile", "smoke", "--data-root", root, "--run-dir", tmp_path / "run",
            "--set", "train_classifier.steps=20", "--set", "affinity.train.steps=10", "--set", "segmentation.train.steps=20",
            env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(tmp_path / "run", env)
    assert set(statuses(info).values()) == {"completed"}
    assert all(info["summary"][k] is not None for k in ("seed_miou", "pseudo_miou", "seg_miou"))
