"""The scale knobs on the CPU: device checks, bf16/fp16 autocast, 2-process Gloo DDP, a Dask cluster."""
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, cli

TRAIN_SETS = ["train_classifier.steps=12", "train_classifier.checkpoint_every=4", "train_classifier.log_every=2",
              "train_classifier.warmup_steps=2", "data.max_images=16"]


def _classifier_run(run_dir: Path, root: Path, sets: list[str]):
    from pipeline.runs import Run
    from workflows import get_flow
    cfg = get_flow("cam_voc").resolve("smoke", [*TRAIN_SETS, *sets], str(root))
    return Run.create(run_dir, cfg)


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "stages/train_classifier/log.jsonl").read_text().splitlines()]


def test_cuda_without_a_gpu_is_one_line_before_any_stage(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", tmp_path / "run", "--set", "device=cuda")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "device=cuda" in lines[0] and "no CUDA GPU" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()  # checked before anything is written
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", tmp_path / "run2", "--set", "device=gpu")
    assert r.returncode != 0 and "config key 'device'" in r.stderr and "cuda:N" in r.stderr


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_infers_on_the_cpu(tmp_path, synthetic_root, amp):
    from pipeline.checkpoint import MODEL_FILE
    from pipeline.runs import key_of, run_stage
    from stages.make_seeds import MAKE_SEEDS
    from stages.train_classifier import TRAIN_CLASSIFIER
    run = _classifier_run(tmp_path / "run", synthetic_root, [f"amp={amp}", "train_classifier.steps=6"])
    rec = run_stage(run, TRAIN_CLASSIFIER)
    assert np.isfinite(rec["metrics"]["final_loss"])
    off = _classifier_run(tmp_path / "off", synthetic_root, ["train_classifier.steps=6"])
    assert key_of(run, TRAIN_CLASSIFIER) != key_of(off, TRAIN_CLASSIFIER)  # precision changes the result: in the key
    seeds = MAKE_SEEDS.wire(model=TRAIN_CLASSIFIER.out(MODEL_FILE))
    run_stage(run, seeds)
    from pipeline.store import LabelStore
    store = LabelStore(run.stage_dir("make_seeds") / "seeds.zarr")
    maps = [store.read(i) for i in store.ids()]
    assert len(maps) == 12 and all(np.isfinite(m).all() and (m.size == 0 or m.max() <= 1.0) for m in maps)


def test_autocast_runs_the_network_in_bf16_on_the_cpu():
    from pipeline.runtime import Runtime
    lin = torch.nn.Linear(4, 4)
    with Runtime("cpu", "bf16").autocast():
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with Runtime("cpu", "off").autocast():
        assert lin(torch.randn(2, 4)).dtype == torch.float32
    assert Runtime("cpu", "fp16").grad_scaler().is_enabled() and not Runtime("cpu", "bf16").grad_scaler().is_enabled()


def test_two_gloo_processes_reproduce_one(tmp_path, synthetic_root):
    """DDP over 2 processes: the same steps on the same global batches, losses equal within float tolerance,
    rank 0 alone writes (one log line per logged step)."""
    from pipeline.runs import run_stage
    from stages.train_classifier import TRAIN_CLASSIFIER
    one = _classifier_run(tmp_path / "one", synthetic_root, [])
    two = _classifier_run(tmp_path / "two", synthetic_root, ["devices=2"])
    run_stage(one, TRAIN_CLASSIFIER)
    _run_stage_in_new_process(two, "cam_voc", "train_classifier")
    rec = json.loads((two.dir / "stages/train_classifier/record.json").read_text())
    a, b = _losses(one.dir), _losses(two.dir)
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(2, 13, 2))
    assert np.allclose([x["loss"] for x in a], [x["loss"] for x in b], rtol=1e-4, atol=1e-5), (a, b)
    assert rec["metrics"]["steps"] == 12 and (two.dir / "stages/train_classifier/model.safetensors").is_file()
    assert not (two.dir / "stages/train_classifier/checkpoint.safetensors").exists()
    from safetensors.torch import load_file
    wa, wb = (load_file(str(r.dir / "stages/train_classifier/model.safetensors")) for r in (one, two))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-3


def test_a_batch_that_does_not_split_over_devices_is_one_line(tmp_path, synthetic_root):
    from pipeline.errors import UserError
    from pipeline.runs import run_stage
    from stages.train_classifier import TRAIN_CLASSIFIER
    run = _classifier_run(tmp_path / "run", synthetic_root, ["devices=3"])
    with pytest.raises(UserError, match=r"batch_size=8 of train_classifier does not split over devices=3"):
        run_stage(run, TRAIN_CLASSIFIER)


_STAGE_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from pipeline.runs import Run, run_stage
from workflows import get_flow
run_stage(Run.open({run!r}), next(s for s in get_flow({flow!r}).stages if s.name == {stage!r}))
"""


def _run_stage_in_new_process(run, flow: str, stage: str) -> None:
    """Run one stage of ``run`` as a user's ``run-flow`` would: in a new process that spawns the DDP ranks."""
    cmd = [sys.executable, "-c", _STAGE_SCRIPT.format(root=str(ROOT), run=str(run.dir), flow=flow, stage=stage)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from pipeline.runs import Run, run_stage
from stages.train_classifier import TRAIN_CLASSIFIER
import workflows
run_stage(Run.open({run!r}), TRAIN_CLASSIFIER)
"""


def test_ddp_killed_mid_training_resumes_from_its_checkpoint(tmp_path, synthetic_root):
    """SIGKILL the process that leads 2 DDP ranks after a checkpoint: the ranks die with it, and a rerun
    continues from the checkpoint to the same losses as an uninterrupted 2-process run."""
    sets = ["devices=2", "train_classifier.steps=40", "train_classifier.checkpoint_every=8"]
    straight = _classifier_run(tmp_path / "straight", synthetic_root, sets)
    _run_stage_in_new_process(straight, "cam_voc", "train_classifier")
    killed = _classifier_run(tmp_path / "killed", synthetic_root, sets)
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT.format(root=str(ROOT), run=str(killed.dir))],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    side = killed.dir / "stages/train_classifier/checkpoint.json"
    t0 = time.time()
    while not side.is_file() and proc.poll() is None and time.time() - t0 < 240:
        time.sleep(0.05)
    assert side.is_file(), "no checkpoint was written"
    os.kill(proc.pid, signal.SIGKILL)  # the leader only: its ranks must not outlive it
    proc.wait()
    time.sleep(1.0)
    step = json.loads(side.read_text())["step"]
    assert 0 < step < 40
    # the rerun, as a user's: a new process
    r = subprocess.run([sys.executable, "-c", _KILL_SCRIPT.format(root=str(ROOT), run=str(killed.dir))],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((killed.dir / "stages/train_classifier/record.json").read_text())["status"] == "completed"
    a, b = _losses(straight.dir), _losses(killed.dir)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    assert np.allclose([x["loss"] for x in a], [x["loss"] for x in b], rtol=1e-4, atol=1e-5)


PER_IMAGE_STORES = ["make_seeds/seeds.zarr", "make_pseudo_labels/pseudo_labels.zarr", "eval_segmentation/predictions.zarr"]


def test_a_dask_cluster_writes_the_label_stores_of_the_local_pool(cam_run, env, tmp_path):
    """The per-image stages of the smoke cam_voc run, redone on a local Dask cluster of 2 workers, store the
    same arrays (the trained networks are kept: the executor is not in any key)."""
    import shutil

    from pipeline.store import LabelStore
    from tests.helpers import inspect_json, statuses
    local, run_dir = tmp_path / "local", tmp_path / "dask"
    shutil.copytree(cam_run[0], local)  # other tests may have run variants in it: bring it back to the smoke config
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", local, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.copytree(local, run_dir)
    trained = {"train_classifier", "train_segmentation"}
    for d in (run_dir / "stages").iterdir():
        if d.name not in trained:
            shutil.rmtree(d)
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", run_dir, "--set", "workers.executor=dask",
            "--set", "workers.processes=2", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    st = statuses(inspect_json(run_dir, env))
    assert {st[n] for n in trained} == {"cached"} and {v for k, v in st.items() if k not in trained} == {"completed"}
    for name in PER_IMAGE_STORES:
        a, b = LabelStore(local / "stages" / name), LabelStore(run_dir / "stages" / name)
        assert sorted(a.ids()) == sorted(b.ids()) and len(a.ids()) > 0, name
        for i in a.ids():
            assert np.array_equal(a.read(i), b.read(i)), (name, i)
            assert a.read_attrs(i) == b.read_attrs(i)


class SlowLabel:
    """A label of ones after a pause (a per-image task long enough to kill its worker mid-stage)."""

    def __call__(self, image_id: str) -> np.ndarray:
        time.sleep(0.3)
        return np.full((4, 5), int(image_id), np.uint8)


def test_a_killed_dask_worker_loses_no_image(tmp_path):
    from dask.distributed import Client, LocalCluster

    from pipeline import parallel
    from pipeline.parallel import ImagePool, map_images
    from pipeline.store import open_for_stage
    from stages.make_pseudo_labels import WriteLabels
    store = open_for_stage(tmp_path / "labels.zarr", "k", {})
    ids = [str(i) for i in range(24)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        parallel._CLIENTS[cluster.scheduler_address] = client
        pids = client.run(os.getpid)
        done = []
        try:
            for k, _ in enumerate(map_images(WriteLabels(SlowLabel(), store.path), ids,
                                             ImagePool("dask", cluster.scheduler_address, 2), "labels")):
                done.append(k)
                if k == 2:  # mid-stage: one worker dies with its tasks
                    os.kill(next(iter(pids.values())), signal.SIGKILL)
        finally:
            parallel._CLIENTS.pop(cluster.scheduler_address, None)
    assert len(done) == len(ids)
    assert sorted(store.ids(), key=int) == ids
    assert all(int(store.read(i)[0, 0]) == int(i) for i in ids)


def test_images_of_one_size_go_through_the_network_together_as_if_alone():
    """A GPU's batched inference (``workers.gpu_batch``) gives each image the maps and predictions it gets alone."""
    from stages.eval_segmentation import batch_probs, multiscale_probs
    from stages.make_seeds import batch_cams, image_cams
    from tests.test_models import _tiny_specs
    torch.manual_seed(0)
    cam = _tiny_specs()["vit_cam_classifier"].build().eval()
    seg = _tiny_specs()["afa_mit"].build().eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3)).astype(np.uint8) for _ in range(3)]
    classes = [[1, 5], [], [20]]
    together = batch_cams(cam, images, classes, [1.0, 0.5], True)
    for im, c, t in zip(images, classes, together):
        np.testing.assert_allclose(t, image_cams(cam, im, c, [1.0, 0.5], True), atol=1e-5)
    probs = batch_probs(seg, images, [1.0, 0.75], True)
    for im, p in zip(images, probs):
        np.testing.assert_allclose(p, multiscale_probs(seg, im, [1.0, 0.75], True), atol=1e-5)


class Batched:
    def __init__(self):
        self.calls = []

    def __call__(self, i):
        return self.batch([i])[0]

    def batch(self, ids):
        self.calls.append(list(ids))
        return [int(i) for i in ids]


def test_a_pool_with_a_batch_hands_the_ids_over_in_chunks():
    from pipeline.parallel import ImagePool, map_images
    fn = Batched()
    assert sorted(map_images(fn, [str(i) for i in range(7)], ImagePool(batch=3), "x")) == list(range(7))
    assert fn.calls == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    fn = Batched()
    assert sorted(map_images(fn, ["0", "1"], ImagePool(batch=1), "x")) == [0, 1] and fn.calls == [["0"], ["1"]]


def test_loader_workers_prepare_the_same_batches(tmp_path, synthetic_root):
    from pipeline.runs import run_stage
    from stages.train_classifier import TRAIN_CLASSIFIER
    runs = [_classifier_run(tmp_path / f"l{n}", synthetic_root, ["train_classifier.steps=6", f"workers.loader_workers={n}"])
            for n in (0, 2)]
    for r in runs:
        run_stage(r, TRAIN_CLASSIFIER)
    a, b = (_losses(r.dir) for r in runs)
    assert [x["loss"] for x in a] == [x["loss"] for x in b]


def test_a_scheduler_that_does_not_answer_is_one_line_before_any_stage(tmp_path):
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", tmp_path / "run", "--set", "workers.executor=dask",
            "--set", "workers.address=tcp://127.0.0.1:9")
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "workers.address=tcp://127.0.0.1:9: no Dask scheduler answers" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing written


def test_under_torchrun_rank_0_runs_the_flow_and_the_ranks_train_together(tmp_path, env):
    """``torchrun --nproc_per_node 2 cli.py run-flow ...``: one flow (one table, one set of records), every training
    stage in both processes (the losses of the 1-process run), the other rank released at the end."""
    sets = ["--set", "data.max_images=12", "--set", "train_classifier.steps=12", "--set", "segmentation.train.steps=8",
            "--set", "train_classifier.log_every=2"]
    one = tmp_path / "one"
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", one, *sets, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    two = tmp_path / "two"
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29561", str(ROOT / "cli.py"),
                        "run-flow", "cam_voc", "--profile", "smoke", "--run-dir", str(two), *sets],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    # both ranks leave their process groups before they exit (alive, their Gloo threads abort the exit: 4 of 10 runs)
    assert "terminate called" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.count("summary:") == 1  # one rank ran the flow
    a, b = _losses(one), _losses(two)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    assert np.allclose([x["loss"] for x in a], [x["loss"] for x in b], rtol=1e-4, atol=1e-5)


def test_a_spawned_pool_writes_what_a_forked_one_does(tmp_path):
    """On a GPU the local pool's processes are spawned (CUDA does not survive a fork): same labels."""
    from pipeline.parallel import ImagePool, map_images
    from pipeline.store import open_for_stage
    from stages.make_pseudo_labels import WriteLabels
    ids = [str(i) for i in range(6)]
    for start in ("fork", "spawn"):
        store = open_for_stage(tmp_path / f"{start}.zarr", "k", {})
        list(map_images(WriteLabels(SlowLabel(), store.path), ids, ImagePool(processes=2, start=start), start))
        assert sorted(store.ids(), key=int) == ids and all(int(store.read(i)[0, 0]) == int(i) for i in ids)


def test_acr_under_ddp_draws_one_view_for_the_global_batch(tmp_path, synthetic_root):
    """ACR's consistency view is drawn once per step from the global batch's first sample: 2 Gloo processes give
    the 1-process losses (each process's own first sample would give each its own view)."""
    from pipeline.runs import Run, run_stage
    from workflows import get_flow
    flow = get_flow("acr_voc")
    stage = next(s for s in flow.stages if s.name == "train_classifier")
    sets = ["train_classifier.steps=6", "train_classifier.log_every=1", "train_classifier.warmup_steps=1",
            "acr.start_step=0", "acr.ramp_steps=1", "data.max_images=12"]
    runs = [Run.create(tmp_path / f"d{n}", flow.resolve("smoke", [*sets, f"devices={n}"], str(synthetic_root)))
            for n in (1, 2)]
    run_stage(runs[0], stage)
    _run_stage_in_new_process(runs[1], "acr_voc", "train_classifier")
    a, b = (_losses(r.dir) for r in runs)
    assert len(a) == 6 and np.allclose([x["loss"] for x in a], [x["loss"] for x in b], rtol=1e-4, atol=1e-5), (a, b)
