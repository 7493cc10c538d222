"""Whole flows with the smoke profile: inspect, caching, resume after SIGKILL, a foreign VOC folder (CAM and the
supervised baseline; ACR and AFA: tests/test_flows_acr.py, tests/test_flows_afa.py)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from pipeline.voc import save_label_png
from tests.helpers import ROOT, cli, inspect_json, statuses

CAM_STAGES = ["train_classifier", "eval_classifier", "make_seeds", "eval_seeds", "make_pseudo_labels",
              "eval_pseudo_labels", "train_segmentation", "eval_segmentation"]


# ``env`` and ``cam_run`` (the smoke cam_voc run, shared with tests/test_eval_classifier.py) are in conftest.py


def test_cam_voc_smoke_reports_every_stage(cam_run, env):
    run_dir, seconds, info = cam_run
    assert info["flow"] == "cam_voc"
    assert [s["name"] for s in info["stages"]] == CAM_STAGES
    assert set(statuses(info).values()) == {"completed"}
    for k in ("seed_miou", "pseudo_miou", "pseudo_coverage", "seg_miou"):
        assert 0.0 <= info["summary"][k] <= 1.0, k
    st = {s["name"]: s["metrics"] for s in info["stages"]}
    seeds = st["eval_seeds"]
    assert len(seeds["fp"]) == 21 and len(seeds["fn"]) == 21 and 0 < seeds["threshold"] < 1
    # pseudo.bkg_threshold: auto — the pseudo labels use the threshold eval_seeds chose without a mask (Otsu), and
    # the seeds are reported at that same threshold beside them, and at the sweep's best (docs/labels.md)
    pseudo = st["make_pseudo_labels"]
    assert pseudo["threshold"] == seeds["threshold"] and pseudo["threshold_from"].startswith("eval_seeds: Otsu's threshold")
    assert seeds["best_threshold_miou"] >= seeds["miou"] and info["summary"]["seed_miou_best_threshold"] == seeds["best_threshold_miou"]
    # no calibration split: the method's route (the seeds + PAR) labels every image, no route is scored
    assert pseudo["route"] == f"make_seeds/seeds (t {seeds['threshold']:g}) + par" and "routes" not in pseudo
    assert "no mask read" in pseudo["guard"] and info["summary"]["calibration"] is None
    assert info["summary"]["pseudo_threshold"] == seeds["threshold"]
    assert abs(info["summary"]["seed_miou_matched"] - info["summary"]["seed_miou"]) < 1e-4
    assert all(s["seconds"] is not None for s in info["stages"])
    assert (run_dir / "stages/make_pseudo_labels/pseudo_labels.zarr/zarr.json").is_file()
    assert (run_dir / "stages/train_classifier/model.safetensors").is_file()
    assert (run_dir / "stages/train_classifier/curves.png").is_file()


def test_rerun_is_cached_and_changes_rerun_downstream_only(cam_run, env, tmp_path):
    run_dir, _, _ = cam_run
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", run_dir, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(statuses(inspect_json(run_dir, env)).values()) == {"cached"}
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", run_dir, "--set", "pseudo.bkg_threshold=0.05",
            "--set", "segmentation.train.steps=10", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    st = statuses(inspect_json(run_dir, env))
    assert st["train_classifier"] == st["make_seeds"] == st["eval_seeds"] == "cached"
    assert st["make_pseudo_labels"] == st["train_segmentation"] == "completed"
    r = cli("show", run_dir, "--out", tmp_path / "grid.png", env=env)
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > 400
    r = cli("inspect", run_dir, "--per-class", env=env)
    assert r.returncode == 0 and "FP" in r.stdout


def test_supervised_voc_smoke(tmp_path, env):
    r = cli("run-flow", "supervised_voc", "--profile", "smoke", "--run-dir", tmp_path / "sup", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(tmp_path / "sup", env)
    assert [s["name"] for s in info["stages"]] == ["train_segmentation", "eval_segmentation"]
    assert 0 < info["summary"]["seg_miou"] <= 1
    assert info["summary"]["seed_miou"] is None


def _wait_for(pred, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _run_and_kill_when(cmd, env, ready) -> bool:
    """Start the flow, SIGKILL its process group once ``ready()`` holds; whether it ever did."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ok = _wait_for(ready, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return ok


def test_sigkill_and_resume_matches_uninterrupted(cam_run, env, tmp_path):
    ref = cam_run[2]["summary"]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "cli.py"), "run-flow", "cam_voc", "--profile", "smoke", "--run-dir", str(run_dir)]
    # kill 1: mid classifier training, after its first checkpoint
    ok = _run_and_kill_when(cmd, env, lambda: (run_dir / "stages/train_classifier/checkpoint.json").is_file())
    assert ok, "the flow never checkpointed the classifier"
    assert inspect_json(run_dir, env)["stages"][0]["status"] == "failed"
    # kill 2: while pseudo labels are being written
    store = run_dir / "stages/make_pseudo_labels/pseudo_labels.zarr"
    _run_and_kill_when(cmd, env, lambda: store.is_dir() and len([p for p in store.iterdir() if p.is_dir()]) >= 3)
    st = statuses(inspect_json(run_dir, env))
    assert st["train_classifier"] in ("completed", "cached")
    # resume to the end
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    st = statuses(info)
    assert st["train_classifier"] == "cached" and st["make_seeds"] == "cached"
    assert all(v in ("completed", "cached") for v in st.values())
    for k in ("seed_miou", "pseudo_miou", "seg_miou"):
        assert abs(info["summary"][k] - ref[k]) <= 0.02, (k, info["summary"][k], ref[k])


def make_foreign_voc(root):
    """A VOC folder unlike the synthetic one: odd sizes, wide void borders, XML-only train labels."""
    v = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (v / sub).mkdir(parents=True)
    rng = np.random.default_rng(7)
    ids = {"train": [f"2011_{i:06d}" for i in range(10)], "val": [f"2012_{i:06d}" for i in range(4)]}
    for split, names in ids.items():
        for n, i in enumerate(names):
            h, w = int(rng.integers(57, 131)), int(rng.integers(61, 127))
            img = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
            m = np.zeros((h, w), np.uint8)
            cls = [2, 9][n % 2]
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            img[y0:y0 + h // 3, x0:x0 + w // 3] = (200, 60, 40) if cls == 2 else (40, 60, 200)
            m[y0:y0 + h // 3, x0:x0 + w // 3] = cls
            m[max(0, y0 - 3):y0, x0:x0 + w // 3] = 255
            Image.fromarray(img).save(v / "JPEGImages" / f"{i}.jpg")
            name = ["bicycle", "chair"][n % 2]
            (v / "Annotations" / f"{i}.xml").write_text(f"<annotation><object><name>{name}</name></object></annotation>")
            if split == "val" or n % 3 == 0:  # most train images have no mask: labels from XML
                save_label_png(v / "SegmentationClass" / f"{i}.png", m)
        (v / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_cam_voc_on_a_foreign_voc_folder(tmp_path, env):
    root = make_foreign_voc(tmp_path / "data")
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--data-root", root, "--run-dir", tmp_path / "run",
            "--set", "train_classifier.steps=20", "--set", "segmentation.train.steps=20", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(tmp_path / "run", env)
    assert set(statuses(info).values()) == {"completed"}
    seeds = next(s for s in info["stages"] if s["name"] == "eval_seeds")["metrics"]
    assert seeds["images"] == 4  # seeds scored only where masks exist
    assert info["summary"]["seg_miou"] is not None


def test_without_masks_the_threshold_is_otsus(tmp_path, env):
    root = make_foreign_voc(tmp_path / "data")
    for m in (root / "VOCdevkit/VOC2012/SegmentationClass").glob("2011_*.png"):  # no train image keeps its mask
        m.unlink()
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--data-root", root, "--run-dir", tmp_path / "run",
            "--set", "train_classifier.steps=10", "--set", "segmentation.train.steps=10", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(tmp_path / "run", env)
    st = {s["name"]: s["metrics"] for s in info["stages"]}
    assert st["eval_seeds"]["threshold_rule"].startswith("Otsu") and st["eval_seeds"]["images"] == 0
    assert 0 < st["make_pseudo_labels"]["threshold"] == st["eval_seeds"]["threshold"] < 1
    assert info["summary"]["seed_miou"] is None and info["summary"]["pseudo_miou"] is None
    assert info["summary"]["seg_miou"] is not None
