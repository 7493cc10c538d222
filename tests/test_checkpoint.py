import json

import numpy as np
import torch

from pipeline.checkpoint import load_weights, save_weights
from pipeline.config import TrainConfig
from pipeline.training import StepIndexedDataset, train


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.backbone(x))

    def backbone_parameters(self):
        return list(self.backbone.parameters())

    def head_parameters(self):
        return list(self.head.parameters())


def _load(i, rng):
    x = torch.from_numpy(rng.normal(size=4).astype(np.float32)) + i
    return x, x.sum().reshape(1)


def _loss(model, batch, step=0):
    x, y = batch
    return {"loss": ((model(x) - y) ** 2).mean()}


def _train(out, steps_stop=None, torn_line=""):
    torch.manual_seed(0)
    model = Tiny()
    cfg = TrainConfig(steps=12, batch_size=3, lr=1e-2, warmup_steps=2, checkpoint_every=4, log_every=2)
    ds = StepIndexedDataset(5, _load, seed=0)
    if steps_stop is not None:
        # simulate a kill right after the checkpoint at `steps_stop`
        class Stop(Exception):
            pass
        import pipeline.training as tr
        orig = tr.save_train_state

        def save_then_die(path, m, opt, step, meta, scaler=None):
            orig(path, m, opt, step, meta, scaler)
            if step == steps_stop:
                raise Stop
        tr.save_train_state = save_then_die
        try:
            train(model, ds, _loss, cfg, out, {"key": "k"}, "t")
        except Stop:
            pass
        finally:
            tr.save_train_state = orig
        with open(out / "log.jsonl", "a") as f:
            f.write(torn_line)
        torch.manual_seed(123)  # a fresh process would not share the RNG
        model = Tiny()
    train(model, ds, _loss, cfg, out, {"key": "k"}, "t")
    return load_weights(out / "model.safetensors")[0]


def test_resume_from_checkpoint_is_exact(tmp_path):
    straight = _train(tmp_path / "a")
    resumed = _train(tmp_path / "b", steps_stop=8)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    log = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert log == [2, 4, 6, 8, 10, 12]
    assert (tmp_path / "b" / "curves.png").is_file()
    assert not (tmp_path / "b" / "checkpoint.safetensors").exists()


def test_weights_sidecar_and_no_pickle(tmp_path):
    save_weights(tmp_path / "w.safetensors", {"a": torch.ones(2)}, {"step": 3, "config": {"x": 1}})
    state, meta = load_weights(tmp_path / "w.safetensors")
    assert meta["step"] == 3 and torch.equal(state["a"], torch.ones(2))
    assert (tmp_path / "w.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


def test_resume_drops_a_log_line_torn_by_a_kill(tmp_path):
    """A kill in the middle of writing log.jsonl leaves half a line: the resumed run keeps the whole lines up to
    its checkpoint and goes on (it used to stop on the torn line)."""
    straight = _train(tmp_path / "a")
    resumed = _train(tmp_path / "b", steps_stop=8, torn_line='{"step": 10, "lo')
    for k in straight:
        assert torch.equal(straight[k], resumed[k])
    log = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert log == [2, 4, 6, 8, 10, 12]
