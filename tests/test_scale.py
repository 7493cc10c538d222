"""The scale knobs on the CPU: device checks, bf16/fp16 autocast, 2-process Gloo DDP, a Dask cluster."""
import json
import os
import signal
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
    assert not (tmp_path / "run" / "stages").exists()  # no stage started
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
    rec = run_stage(two, TRAIN_CLASSIFIER)
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
    from pipeline.runs import run_stage
    from stages.train_classifier import TRAIN_CLASSIFIER
    sets = ["devices=2", "train_classifier.steps=40", "train_classifier.checkpoint_every=8"]
    straight = _classifier_run(tmp_path / "straight", synthetic_root, sets)
    run_stage(straight, TRAIN_CLASSIFIER)
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
    rec = run_stage(killed, TRAIN_CLASSIFIER)
    assert rec["status"] == "completed"
    a, b = _losses(straight.dir), _losses(killed.dir)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    assert np.allclose([x["loss"] for x in a], [x["loss"] for x in b], rtol=1e-4, atol=1e-5)
