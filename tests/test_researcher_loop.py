"""The researcher's loop (issue 17): config files, reproducing a run, partial runs and ablations that reuse upstream
stages, compare, export, logs without a terminal, inspect while a stage runs, strict JSON, fast inspect."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import cli as cli_module
from pipeline.records import summarise
from pipeline.runs import Run
from pipeline.store import LabelStore
from pipeline.voc import PALETTE
from tests.helpers import ROOT, cli, inspect_json, start_prefect_server, statuses, stop_prefect_server


def invoke(*args):
    r = CliRunner().invoke(cli_module.main, [str(a) for a in args])
    return r


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def ablation(cam_run, env, tmp_path_factory):
    """A variant of the session's smoke cam_voc run in a new folder, reusing its upstream stages."""
    base = cam_run[0]
    variant = tmp_path_factory.mktemp("ablation") / "no_refine"
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", variant, "--reuse", base, "--set", "pseudo.refine=[]",
            "--until", "eval_pseudo_labels", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return base, variant, r


def test_an_ablation_reuses_the_upstream_stages_of_another_run(ablation):
    base, variant, r = ablation
    st = statuses(inspect_json(variant))
    assert [st[s] for s in ("train_classifier", "eval_classifier", "make_seeds", "eval_seeds")] == ["cached"] * 4
    assert st["make_pseudo_labels"] == st["eval_pseudo_labels"] == "completed"
    assert st["train_segmentation"] == st["eval_segmentation"] == "pending"  # --until eval_pseudo_labels
    assert "reused from" in r.stderr and "train_classifier" in r.stderr
    # off a terminal: Prefect's states and plain progress lines
    assert "Finished in state Cached(" in r.stderr
    assert any("make_pseudo_labels" in ln and "/48 images" in ln and "ETA" in ln for ln in r.stderr.splitlines())
    model = "stages/train_classifier/model.safetensors"
    assert (variant / model).read_bytes() == (base / model).read_bytes()


def test_force_reruns_a_stage_and_what_depends_on_it_and_a_changed_key_is_announced(ablation, env):
    _, variant, _ = ablation
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", variant, "--set", "pseudo.refine=[crf]",
            "--force", "eval_seeds", "--until", "make_pseudo_labels", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    st = statuses(inspect_json(variant))
    assert st["make_seeds"] == "cached" and st["eval_seeds"] == st["make_pseudo_labels"] == "completed"
    note = next(ln for ln in r.stderr.splitlines() if ln.startswith("note:"))
    assert "make_pseudo_labels" in note and "--reuse" in note  # its config changed: announced before it reruns
    assert "eval_seeds" not in note and "make_seeds" not in note  # forced or unchanged stages are not


def test_compare_and_export(ablation, tmp_path):
    base, variant, _ = ablation
    r = invoke("compare", base, variant, "--json", "--out", tmp_path / "charts" / "cmp.png")
    assert r.exit_code == 0, r.output
    out = strict_json(r.stdout)
    assert "pseudo.refine" in out["differing_keys"] and "seed" not in out["differing_keys"]
    assert [run["run_dir"] for run in out["runs"]] == [str(base), str(variant)]
    assert out["runs"][1]["summary"]["seg_miou"] is None and out["runs"][0]["summary"]["seed_miou"] is not None
    assert out["stage"] == "eval_pseudo_labels"  # the last evaluation both runs scored
    assert len(out["runs"][0]["per_class"]) == 21
    with Image.open(tmp_path / "charts" / "cmp.png") as im:
        assert im.size[0] >= 600
    r = invoke("compare", base, variant)
    assert r.exit_code == 0 and "pseudo.refine" in r.stdout and "IoU per class" in r.stdout
    # export: palette PNGs equal to the store, and a split list
    out_dir = tmp_path / "png"
    r = invoke("export", variant, "--stage", "make_pseudo_labels", out_dir)
    assert r.exit_code == 0, r.output
    store = LabelStore(variant / "stages/make_pseudo_labels/pseudo_labels.zarr")
    ids = (out_dir / "train.txt").read_text().split()
    assert ids == store.ids() and len(ids) == 48
    for i in ids[:5]:
        with Image.open(out_dir / f"{i}.png") as im:
            assert im.mode == "P"
            assert np.array_equal(np.asarray(im), store.read(i))
            assert np.array_equal(np.asarray(im.getpalette()[:63]).reshape(21, 3), PALETTE[:21])
    r = invoke("export", variant, "--stage", "make_seeds", tmp_path / "seeds")
    assert r.exit_code != 0 and "not H×W uint8 labels" in r.stderr and not (tmp_path / "seeds").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    r = invoke("export", variant, "--stage", "make_pseudo_labels", tmp_path / "mine")
    assert r.exit_code != 0 and "not empty" in r.stderr


def test_show_makes_missing_folders(ablation, tmp_path):
    _, variant, _ = ablation
    r = invoke("show", variant, "--out", tmp_path / "new" / "deeper" / "grid.png", "--num", "2")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "new" / "deeper" / "grid.png") as im:
        assert im.size[1] > 300


def test_a_run_is_reproducible_from_its_folder(ablation, tmp_path):
    _, variant, _ = ablation
    desc = json.loads((variant / "run.json").read_text())
    prov = desc["provenance"]
    config = yaml.safe_load((variant / "config.yaml").read_text())
    assert prov["overrides"] == {"pseudo": {"refine": config["pseudo"]["refine"]}}  # the last call's --set
    assert prov["argv"][:3] == ["python", "cli.py", "run-flow"] and "--set" in prov["argv"]
    assert len(prov["git"]["commit"] or "x" * 40) == 40 and prov["packages"]["torch"] and prov["device"] == "cpu"
    assert [s["name"] for s in desc["stages"]][0] == "train_classifier"
    r = invoke("run-flow", "--from-run", variant, "--show-config")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout) == yaml.safe_load((variant / "config.yaml").read_text())
    # an edited --show-config file runs as the config (here: shown), --set on top
    shown = yaml.safe_load(invoke("run-flow", "cam_voc", "--profile", "smoke", "--show-config").stdout)
    shown["train_classifier"]["steps"] = 33
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(shown))
    r = invoke("run-flow", "cam_voc", "--config", tmp_path / "exp.yaml", "--set", "seed=4", "--show-config")
    cfg = yaml.safe_load(r.stdout)
    assert cfg["train_classifier"]["steps"] == 33 and cfg["seed"] == 4 and cfg["profile"] == "smoke"
    shown["model"]["nope"] = 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(shown))
    r = invoke("run-flow", "cam_voc", "--config", tmp_path / "bad.yaml")
    assert r.exit_code != 0 and "bad.yaml" in r.stderr and "model.nope" in r.stderr


def test_inspect_json_is_strict_and_shows_a_running_stage(tmp_path):
    from workflows import get_flow
    spec = get_flow("cam_voc")
    run = Run.create(tmp_path / "run", spec.resolve("smoke"))
    run.write_description(stages=spec.stages)
    run.write_record("eval_seeds", {"name": "eval_seeds", "key": "k", "status": "completed", "seconds": 1.0,
                                    "metrics": {"miou": float("nan"), "iou": [0.5, float("nan")]}})
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.write_record("make_pseudo_labels", {"name": "make_pseudo_labels", "key": "k", "status": "running",
                                                "pid": holder.pid, "seconds": None, "metrics": {}})
        (run.stage_dir("make_pseudo_labels") / "progress.json").write_text(json.dumps({"done": 7, "total": 48, "unit": "images"}))
        r = invoke("inspect", run.dir, "--json")
        info = strict_json(r.stdout)
        stages = {s["name"]: s for s in info["stages"]}
        assert stages["eval_seeds"]["metrics"] == {"miou": None, "iou": [0.5, None]}
        assert stages["make_pseudo_labels"]["status"] == "pending"
        assert stages["make_pseudo_labels"]["progress"]["done"] == 7
        assert "running: 7/48 images" in invoke("inspect", run.dir).stdout
    finally:
        holder.kill()
        holder.wait()
    assert summarise(run.dir, "cam_voc", [{"name": "make_pseudo_labels"}])["stages"][0]["status"] == "failed"


def test_list_flows_a_misspelt_flow_and_inspect_answer_without_torch_or_prefect(cam_run):
    from workflows import FLOWS
    assert sorted(cli_module.flow_catalog()) == sorted((s.name, s.description) for s in FLOWS.values())
    code = ("import sys, runpy; sys.argv = ['cli.py', *sys.argv[1:]]\n"
            "try:\n    runpy.run_path('cli.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'prefect', 'timm') if m in sys.modules]\n"
            "assert not heavy, heavy")
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    for args in (["list-flows"], ["run-flow", "cam_vco"], ["inspect", str(cam_run[0]), "--json"], ["inspect", str(cam_run[0])]):
        t = time.time()
        r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert time.time() - t < 3.0  # an interpreter start and a few reads; torch alone takes longer
    assert "cam_voc" in r.stdout


def test_progress_lines_off_a_terminal(tmp_path, monkeypatch):
    import logging

    from pipeline import progress
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    logger = progress.progress_logger()  # outside a Prefect run: the ``wsss`` logger on stderr
    assert logger.name == "wsss"
    records = []
    catch = logging.Handler()
    catch.emit = records.append
    logger.addHandler(catch)
    try:
        with progress.progress_bar("make_seeds", total=20, status=tmp_path / "progress.json") as advance:
            for _ in range(20):
                advance()
    finally:
        logger.removeHandler(catch)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 10 and lines[-1].startswith("make_seeds 20/20 images (100%)") and "ETA" in lines[0]
    assert json.loads((tmp_path / "progress.json").read_text())["done"] == 20


def test_artifact_keys_are_per_run(tmp_path):
    from workflows import get_flow
    from workflows.tasks import artifact_key, summary_markdown
    spec = get_flow("cam_voc")
    a, b = (Run.create(tmp_path / n, spec.resolve("smoke")) for n in ("a", "b"))
    assert artifact_key(a, "eval_seeds") != artifact_key(b, "eval_seeds")
    assert artifact_key(a, "eval_seeds").startswith("cam-voc-eval-seeds-")
    md = summary_markdown({"flow": "cam_voc", "run_dir": "r", "stages": [{"name": "s", "status": "cached", "seconds": 1.0,
                                                                          "metrics": {"miou": 0.5}}], "summary": {"seg_miou": None}})
    assert "| s | cached | 1.0000 | 0.5000 |" in md and "| seg_miou | – |" in md


QUERY = """
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
with get_client(sync_client=True) as c:
    out = []
    for fr in c.read_flow_runs():
        flow = c.read_flow(fr.flow_id)
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
        out.append({"flow": flow.name, "state": fr.state.name, "parameters": fr.parameters,
                    "tasks": {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks},
                    "waits": {t.name.rsplit("-", 1)[0]: len(t.task_inputs.get("wait_for", [])) for t in tasks}})
    arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="summary")))
    print(json.dumps({"runs": out, "artifacts": [[a.key, a.type, a.data] for a in arts]}))
"""

LAUNCH = """
import sys
from workflows import get_flow
get_flow("cam_voc").launch(run_dir=sys.argv[1], profile="smoke", overrides={"pseudo": {"refine": []}},
                           reuse=[sys.argv[2]], until="eval_pseudo_labels")
"""


def test_a_real_prefect_server_sees_the_runs_their_cached_tasks_and_the_summary(cam_run, env, tmp_path):
    """``prefect server start`` on loopback: a CLI run and a run started with the config as flow parameters (what a
    served deployment executes) show up with their task states (cached ones as ``Cached``), edges and summaries."""
    (home := tmp_path / "prefect").mkdir()
    server, url = start_prefect_server(home, timeout=120)
    if server is None:
        pytest.fail("prefect server did not start")
    penv = {**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    try:
        r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", tmp_path / "cli_run", "--reuse", cam_run[0],
                "--until", "eval_seeds", env=penv)
        assert r.returncode == 0, r.stderr[-3000:]
        r = subprocess.run([sys.executable, "-c", LAUNCH, str(tmp_path / "launched"), str(tmp_path / "cli_run")],
                           cwd=ROOT, env=penv, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        r = subprocess.run([sys.executable, "-c", QUERY], cwd=ROOT, env=penv, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        seen = json.loads(r.stdout)
    finally:
        stop_prefect_server(server)
    runs = {(x["flow"], x["parameters"].get("run_dir")): x for x in seen["runs"]}
    cli_run = runs[("cam_voc", str((tmp_path / "cli_run").resolve()))]
    assert cli_run["state"] == "Completed"
    assert cli_run["tasks"] == {s: "Cached" for s in ("train_classifier", "eval_classifier", "make_seeds", "eval_seeds")}
    assert cli_run["waits"]["make_seeds"] >= 1 and cli_run["waits"]["train_classifier"] == 0  # the graph's edges
    launched = runs[("cam_voc-from-config", str(tmp_path / "launched"))]
    assert launched["state"] == "Completed" and launched["parameters"]["overrides"] == {"pseudo": {"refine": []}}
    sub = runs[("cam_voc", str((tmp_path / "launched").resolve()))]  # its stages, as a subflow
    assert sub["tasks"]["make_seeds"] == "Cached" and sub["tasks"]["make_pseudo_labels"] == "Completed"
    summaries = [a for a in seen["artifacts"] if a[0].startswith("cam-voc-summary-")]
    assert len({a[0] for a in summaries}) == 2  # one key per run folder
    assert any("| make_seeds | cached |" in a[2] for a in summaries)
