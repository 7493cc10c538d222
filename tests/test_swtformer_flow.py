"""``swtformer_voc`` with the smoke profile: V2 on the synthetic data (inspect, mAP, both seed stores), V1 on a
foreign VOC folder, resume after SIGKILL, bad input in one line."""
import shutil
import subprocess
import sys

import pytest

from pipeline.store import LabelStore
from tests.helpers import ROOT, cli, inspect_json, statuses
from tests.test_flows import _run_and_kill_when, make_foreign_voc

STAGES = ["train_classifier", "eval_classifier", "make_seeds", "eval_seeds", "eval_unrefined_seeds", "train_affinity",
          "random_walk", "eval_random_walk", "make_pseudo_labels", "eval_pseudo_labels", "train_segmentation",
          "eval_segmentation"]
FAST = ["--set", "segmentation.train.steps=20", "--set", "segmentation.train.checkpoint_every=10", "--set", "train_classifier.steps=30",
        "--set", "train_classifier.checkpoint_every=10", "--set", "affinity.train.steps=20"]


def _cmd(run_dir, *extra):
    return [sys.executable, str(ROOT / "cli.py"), "run-flow", "swtformer_voc", "--profile", "smoke", "--run-dir", str(run_dir),
            *FAST, *extra]


@pytest.fixture(scope="module")
def v2_killed_and_resumed(tmp_path_factory, env):
    """V2 killed after the classifier's first checkpoint, then resumed to the end."""
    run_dir = tmp_path_factory.mktemp("swtformer") / "run"
    ok = _run_and_kill_when(_cmd(run_dir), env, lambda: (run_dir / "stages/train_classifier/checkpoint.json").is_file())
    assert ok, "the flow never checkpointed the classifier"
    killed = statuses(inspect_json(run_dir, env))["train_classifier"]
    r = subprocess.run(_cmd(run_dir), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, killed, inspect_json(run_dir, env)


def test_v2_resumes_after_sigkill_and_reports_seeds_map_and_pseudo(v2_killed_and_resumed):
    run_dir, killed, info = v2_killed_and_resumed
    assert killed == "failed"  # nothing half-written is marked complete
    assert [s["name"] for s in info["stages"]] == STAGES and set(statuses(info).values()) == {"completed"}
    s = info["summary"]
    for k in ("cls_map", "seed_miou", "pseudo_miou", "seg_miou"):
        assert 0 <= s[k] <= 1, k
    m = {x["name"]: x["metrics"] for x in info["stages"]}
    assert m["make_seeds"]["maps"] == "rcam" and m["eval_unrefined_seeds"]["miou"] is not None
    log = (run_dir / "stages/train_classifier/log.jsonl").read_text()
    assert '"gsc"' in log and '"ccl"' in log
    seeds = LabelStore(run_dir / "stages/make_seeds/seeds.zarr")
    cams = LabelStore(run_dir / "stages/make_seeds/seeds_unrefined.zarr")
    i = seeds.ids()[0]
    assert seeds.read(i).shape == cams.read(i).shape and len(seeds) == len(cams) > 0


def test_affinity_source_attention_is_refused_in_one_line(v2_killed_and_resumed, env, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(v2_killed_and_resumed[0], run_dir)
    r = cli("run-flow", "swtformer_voc", "--profile", "smoke", "--run-dir", run_dir, *FAST, "--set", "affinity.source=attention",
            env=env)
    assert r.returncode != 0
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "affinity.source=network" in line[0], r.stderr[-2000:]


def test_v1_on_a_foreign_voc_folder(tmp_path, env):
    root = make_foreign_voc(tmp_path / "data")
    run_dir = tmp_path / "run"
    r = cli("run-flow", "swtformer_voc", "--profile", "smoke", "--data-root", root, "--run-dir", run_dir, *FAST,
            "--set", "swtformer.version=1", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    info = inspect_json(run_dir, env)
    assert set(statuses(info).values()) == {"completed"}
    m = {x["name"]: x["metrics"] for x in info["stages"]}
    assert m["make_seeds"]["maps"] == "cam" and m["eval_unrefined_seeds"]["miou"] is None  # V1 has no R-CAM
    assert info["summary"]["cls_map"] is not None and info["summary"]["seed_miou"] is not None


def test_bad_version_is_one_line(tmp_path, env):
    r = cli("run-flow", "swtformer_voc", "--profile", "smoke", "--run-dir", tmp_path / "run", "--set", "swtformer.version=3",
            env=env)
    assert r.returncode != 0 and "swtformer.version" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
