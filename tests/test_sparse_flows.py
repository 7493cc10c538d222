"""The sparse flows (``partial_ce_voc``, ``apro_voc``, ``apro_voc_multistage``) with the smoke profile: inspect,
resume after SIGKILL, a foreign VOC folder with the field's annotation files, bad annotation files."""
import json
import subprocess
import sys
import zipfile

import pytest

from pipeline.sparse import rasterise, scribble_xml
from pipeline.voc import save_label_png
from tests.helpers import ROOT, cli, inspect_json, statuses
from tests.test_flows import _run_and_kill_when, make_foreign_voc

APRO_STAGES = ["sparse_labels", "eval_sparse_labels", "train_apro", "make_pseudo_labels", "eval_pseudo_labels", "eval_segmentation"]
FAST = ["--set", "segmentation.train.steps=30", "--set", "segmentation.train.checkpoint_every=10"]


@pytest.fixture(scope="module")
def apro_run(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("apro") / "run"
    r = cli("run-flow", "apro_voc", "--profile", "smoke", "--run-dir", run_dir, *FAST, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, inspect_json(run_dir, env)


def test_apro_voc_smoke_reports_sparse_pseudo_and_val(apro_run, env, tmp_path):
    run_dir, info = apro_run
    assert [s["name"] for s in info["stages"]] == APRO_STAGES
    assert set(statuses(info).values()) == {"completed"}
    s = info["summary"]
    assert s["seed_miou"] is None and 0 < s["sparse_coverage"] < 0.3  # scribbles label a few percent of the pixels
    assert s["sparse_miou"] == 1.0  # the synthetic scribbles lie on their objects
    assert 0 <= s["pseudo_miou"] <= 1 and s["pseudo_coverage"] == 1.0 and 0 <= s["seg_miou"] <= 1
    stages = {x["name"]: x["metrics"] for x in info["stages"]}
    assert stages["sparse_labels"]["unannotated"] == 0 and stages["make_pseudo_labels"]["route"] == "apro"
    log = [json.loads(ln) for ln in (run_dir / "stages/train_apro/log.jsonl").read_text().splitlines()]
    assert log[-1]["unary"] > 0 and log[-1]["partial_ce"] > 0  # both terms of L = L_g + L_u reached the log
    r = cli("show", run_dir, "--out", tmp_path / "grid.png", "--num", "2", env=env)
    assert r.returncode == 0 and (tmp_path / "grid.png").stat().st_size > 1000, r.stderr


def test_apro_multistage_reuses_the_single_stage(apro_run, env):
    run_dir, ref = apro_run
    r = cli("run-flow", "apro_voc_multistage", "--profile", "smoke", "--run-dir", run_dir, *FAST, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    st = statuses(info)
    assert all(st[s] == "cached" for s in APRO_STAGES[:-1])
    assert st["train_segmentation"] == "completed" and info["summary"]["seg_miou"] is not None


def test_apro_sigkill_during_training_resumes(apro_run, env, tmp_path):
    ref = apro_run[1]["summary"]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "cli.py"), "run-flow", "apro_voc", "--profile", "smoke", "--run-dir", str(run_dir), *FAST]
    ok = _run_and_kill_when(cmd, env, lambda: (run_dir / "stages/train_apro/checkpoint.json").is_file())
    assert ok, "the flow never checkpointed the APro network"
    assert statuses(inspect_json(run_dir, env))["train_apro"] == "failed"
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = inspect_json(run_dir, env)
    assert statuses(info)["sparse_labels"] == "cached"
    for k in ("pseudo_miou", "seg_miou"):
        assert abs(info["summary"][k] - ref[k]) <= 0.02, (k, info["summary"][k], ref[k])


def _foreign_with_annotations(root):
    """The foreign VOC folder plus the field's files at the data root: a scribble zip (one image left out, one as
    a PNG in pascal_2012_scribble/) and both point JSONs."""
    make_foreign_voc(root)
    v = root / "VOCdevkit" / "VOC2012"
    from PIL import Image
    ids = (v / "ImageSets/Segmentation/train.txt").read_text().split()
    points, bg = {}, {}
    with zipfile.ZipFile(root / "voc_scribbles.zip", "w") as z:
        for i in ids[:-1]:
            w, h = Image.open(v / "JPEGImages" / f"{i}.jpg").size
            cls = 2 if int(i[-1]) % 2 == 0 else 9
            shapes = [(0, [(1, 1), (w - 2, 1), (w - 2, h - 2)]), (cls, [(w // 2, h // 2), (w // 2 + 3, h // 2)])]
            z.writestr(f"{i}.xml", scribble_xml(i, h, w, shapes))
            points[i] = [{"cls": cls, "x": w // 2, "y": h // 2}]
            bg[i] = [{"cls": 0, "x": 1, "y": 1}]
    (root / "voc_whats_the_point.json").write_text(json.dumps(points))
    (root / "voc_whats_the_point_bg_from_scribbles.json").write_text(json.dumps(bg))
    return root, ids


def test_sparse_flows_on_a_foreign_voc_folder_with_the_standard_files(tmp_path, env):
    root, ids = _foreign_with_annotations(tmp_path / "data")
    for kind, flow in (("scribble", "apro_voc"), ("point", "partial_ce_voc")):
        run_dir = tmp_path / f"run-{kind}"
        r = cli("run-flow", flow, "--profile", "smoke", "--data-root", root, "--run-dir", run_dir, "--set", f"data.sparse.kind={kind}",
                "--set", "segmentation.train.steps=10", env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "1 of 10 images of train have no" in r.stderr  # skipped with a count, not trained as unlabelled
        info = inspect_json(run_dir, env)
        assert set(statuses(info).values()) == {"completed"}
        m = {x["name"]: x["metrics"] for x in info["stages"]}["sparse_labels"]
        assert m["annotated"] == 9 and m["unannotated"] == 1
        src = "voc_scribbles.zip" if kind == "scribble" else "voc_whats_the_point.json"
        assert any(s.endswith(src) for s in m["sources"])
        if flow == "partial_ce_voc":  # the baseline trains the shared stage on the clicks and stores its predictions
            stages = {x["name"]: x["metrics"] for x in info["stages"]}
            assert stages["train_segmentation"]["labels"] == "sparse_labels"
            assert stages["make_pseudo_labels"]["route"] == "prediction" and 0 < info["summary"]["sparse_coverage"] < 0.05


def test_bad_annotation_files_are_one_line(tmp_path, env):
    root, ids = _foreign_with_annotations(tmp_path / "data")
    with zipfile.ZipFile(root / "voc_scribbles.zip", "a") as z:
        z.writestr(f"{ids[-1]}.xml", "<annotation><polygon><tag>puppy</tag><point><X>1</X><Y>1</Y></point></polygon></annotation>")
    r = cli("run-flow", "apro_voc", "--profile", "smoke", "--data-root", root, "--run-dir", tmp_path / "run", env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()][-1]
    assert "unknown tag 'puppy'" in last and f"voc_scribbles.zip:{ids[-1]}.xml" in last, r.stderr
    # a PNG of another size than its image
    png = root / "pascal_2012_scribble"
    png.mkdir()
    save_label_png(png / f"{ids[0]}.png", rasterise([(0, [(1, 1)])], 5, 5))
    r = cli("run-flow", "partial_ce_voc", "--profile", "smoke", "--data-root", root, "--run-dir", tmp_path / "run2",
            "--set", f"data.sparse.paths=[{png}]", env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()][-1]
    assert f"{ids[0]}.png is 5×5 but image {ids[0]}" in last, r.stderr
