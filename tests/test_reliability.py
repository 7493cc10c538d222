"""Nothing lost, nothing stale: run-folder locks, foreign folders, data and code fingerprints, verified caches,
paired checkpoints, record schemas, and bad input refused with one line before any stage (issue 16)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cli as cli_module
from pipeline import checkpoint as ckpt_mod
from pipeline.codeversion import source_digest
from pipeline.errors import UserError
from pipeline.runs import Run, RunLock, key_of, run_stage
from pipeline.stage import Stage
from pipeline.store import LabelStore, open_for_stage
from pipeline.synthetic import make_synthetic
from pipeline.voc import save_label_png
from tests.helpers import ROOT
from tests.test_voc import make_voc


def invoke(*args):
    """``cli.py ARGS`` in this process: (exit code, the lines on stderr)."""
    r = CliRunner().invoke(cli_module.main, [str(a) for a in args])
    return r.exit_code, [ln for ln in r.stderr.splitlines() if ln.strip()]


def assert_refused(args, *needles):
    code, lines = invoke(*args)
    assert code != 0
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def cam_config(data_root=None, *sets):
    from workflows import get_flow
    return get_flow("cam_voc").resolve("smoke", list(sets), None if data_root is None else str(data_root))


# 1 -------------------------------------------------------------------------------------------------------------
def test_make_synthetic_refuses_a_dataset_it_did_not_write(tmp_path):
    v = make_voc(tmp_path / "out")  # out/VOCdevkit/VOC2012: move it to out/VOC2012, where make-synthetic writes
    (tmp_path / "out" / "VOCdevkit" / "VOC2012").rename(tmp_path / "out" / "VOC2012")
    users = tmp_path / "out" / "VOC2012" / "JPEGImages" / "2008_000001.jpg"
    assert_refused(["make-synthetic", tmp_path / "out", "--train", "2", "--val", "1"], "VOC2012", "not written by make-synthetic")
    assert users.is_file() and not v.exists()
    # its own folder is still rewritten when the parameters change
    root = make_synthetic(tmp_path / "own", 2, 1)
    make_synthetic(tmp_path / "own", 3, 1)
    assert len((root / "ImageSets/Segmentation/train.txt").read_text().split()) == 3


# 2 -------------------------------------------------------------------------------------------------------------
def test_a_second_flow_on_a_locked_run_folder_is_refused_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    Run.create(run_dir, cam_config())
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]); "
                               "from pipeline.runs import RunLock; RunLock(sys.argv[1]); print('held', flush=True); "
                               "time.sleep(120)", str(run_dir), str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = assert_refused(["run-flow", "cam_voc", "--profile", "smoke", "--run-dir", run_dir, "--set", "seed=5"],
                              "in use", f"pid {holder.pid}")
        assert str(run_dir) in line
        after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
        assert after == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunLock(run_dir).release()  # the OS released the dead holder's lock


def test_a_store_reset_under_another_key_refuses_an_old_writer(tmp_path):
    p = tmp_path / "labels.zarr"
    open_for_stage(p, "key-a", {})
    writer = LabelStore(p)
    writer.write("a", np.ones((2, 2), np.uint8))
    open_for_stage(p, "key-b", {})  # another config took the store over
    with pytest.raises(RuntimeError, match="reset under another config"):
        writer.write("b", np.ones((2, 2), np.uint8))
    fresh = LabelStore(p)
    assert fresh.ids() == [] and fresh.complete_ids() == []
    fresh.write("c", np.zeros((2, 2), np.uint8))
    assert fresh.complete_ids() == ["c"]


# 3 -------------------------------------------------------------------------------------------------------------
def test_a_failing_run_flow_writes_nothing_and_foreign_folders_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    Run.create(run_dir, cam_config())
    before = {n: (run_dir / n).read_bytes() for n in ("config.yaml", "run.json")}
    assert_refused(["run-flow", "cam_voc", "--profile", "smoke", "--run-dir", run_dir, "--data-root", tmp_path / "nowhere"],
                   "nowhere")
    assert {n: (run_dir / n).read_bytes() for n in before} == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("my: own\n")
    assert_refused(["run-flow", "cam_voc", "--run-dir", foreign], "not a run folder")
    assert (foreign / "config.yaml").read_text() == "my: own\n" and sorted(p.name for p in foreign.iterdir()) == ["config.yaml"]
    (run_dir / "run.json").write_text(json.dumps({"schema": 9, "flow": "cam_voc"}))
    assert_refused(["run-flow", "cam_voc", "--profile", "smoke", "--run-dir", run_dir], "newer version")
    fresh = tmp_path / "fresh"
    assert_refused(["run-flow", "cam_voc", "--profile", "smoke", "--run-dir", fresh, "--data-root", tmp_path / "nowhere"],
                   "nowhere")
    assert not fresh.exists()  # the folder the failing call made for its lock is gone again


# 4 -------------------------------------------------------------------------------------------------------------
def _keys(run_dir, data_root):
    from workflows import get_flow
    run = Run.open(run_dir) if (run_dir / "config.yaml").is_file() else Run.create(run_dir, cam_config(data_root))
    run = Run.open(run_dir)
    return {st.name: key_of(run, st) for st in get_flow("cam_voc").stages}


@pytest.mark.parametrize("change", ["image", "mask", "xml", "content"])
def test_a_replaced_image_mask_or_annotation_changes_the_data_stages_keys(tmp_path, change):
    v = make_voc(tmp_path / "data")
    run_dir = tmp_path / "run"
    sets = ["data.fingerprint=content"] if change == "content" else []
    Run.create(run_dir, cam_config(tmp_path / "data", *sets))
    before = _keys(run_dir, tmp_path / "data")
    path = {"image": v / "JPEGImages" / "2008_000002.jpg", "mask": v / "SegmentationClass" / "2008_000001.png",
            "xml": v / "Annotations" / "2008_000003.xml", "content": v / "JPEGImages" / "2008_000001.jpg"}[change]
    stat = path.stat()
    if change == "xml":
        path.write_text(path.read_text().replace("dog", "cat"))
    elif change == "content":  # same size and modification time, other bytes: only content hashes see it
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        arr = np.asarray(Image.open(path))
        if change == "mask":
            save_label_png(path, np.where(arr == 15, 8, arr).astype(np.uint8))
        else:
            Image.fromarray(255 - arr).save(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = _keys(run_dir, tmp_path / "data")
    assert after["train_classifier"] != before["train_classifier"]
    assert after["eval_segmentation"] != before["eval_segmentation"]


def test_the_code_version_follows_the_code_and_not_its_docs(tmp_path):
    pkg = tmp_path / "stages"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text('"""Stage a."""\nfrom stages.b import f\n\ndef run(ctx):\n    return f()\n')
    (pkg / "b.py").write_text('def f():\n    """Doc."""\n    return 1  # one\n')
    (pkg / "c.py").write_text("X = 1\n")
    digest = lambda: source_digest("stages.a", tmp_path, ("stages",))  # noqa: E731

    from pipeline.codeversion import _digest, _parsed
    first = digest()
    (pkg / "b.py").write_text('def f():\n    """Other words."""\n    return 1  # another comment\n\n')
    _digest.cache_clear(), _parsed.cache_clear()
    assert digest() == first  # docstrings, comments and blank lines are not code
    (pkg / "c.py").write_text("X = 2\n")
    _digest.cache_clear(), _parsed.cache_clear()
    assert digest() == first  # a module it does not import
    (pkg / "b.py").write_text('def f():\n    return 2\n')
    _digest.cache_clear(), _parsed.cache_clear()
    assert digest() != first  # a module it imports


def test_a_stage_key_changes_with_its_code(tmp_path, monkeypatch):
    import pipeline.stage as stage_mod
    run = Run.create(tmp_path / "run", cam_config())
    from workflows import get_flow
    seg = get_flow("cam_voc").stages[-1]
    before = key_of(run, seg)
    real = stage_mod.source_digest
    monkeypatch.setattr(stage_mod, "source_digest", lambda m: real(m) + ("x" if m == "stages.train_classifier" else ""))
    assert key_of(run, seg) != before  # the classifier's code changed: every stage after it too


# 5 -------------------------------------------------------------------------------------------------------------
class _Square:
    def __init__(self, out):
        self.out = out

    def __call__(self, image_id):
        LabelStore(self.out).write(image_id, np.full((3, 3), int(image_id[1:]), np.uint8))


CALLS = []


def _per_image(ctx):
    from pipeline.parallel import ImagePool
    from stages.common import fill_store
    store, done = fill_store(ctx, "out.zarr", {}, ["i1", "i2", "i3"], _Square, ImagePool().in_process())
    CALLS.append(done)
    return {"images": len(store), "resumed_from": done}


def test_a_deleted_entry_or_chunk_reruns_only_what_is_missing(tmp_path):
    run = Run.create(tmp_path / "run", cam_config())
    stage = Stage("per_image", _per_image, writes=("out.zarr",), reads_data=False)
    assert run_stage(run, stage)["status"] == "completed" and CALLS == [0]
    assert run_stage(run, stage)["status"] == "cached" and CALLS == [0]
    store = run.stage_dir("per_image") / "out.zarr"
    (store / "i2" / "c" / "0" / "0").unlink()  # a chunk: it would read as zeros
    assert run_stage(run, stage)["status"] == "completed" and CALLS == [0, 2]
    assert LabelStore(store).read("i2").tolist() == [[2] * 3] * 3
    import shutil
    shutil.rmtree(store / "i3")  # an entry
    assert run_stage(run, stage)["status"] == "completed" and CALLS == [0, 2, 2]
    assert run_stage(run, stage)["status"] == "cached" and LabelStore(store).complete_ids() == ["i1", "i2", "i3"]


# 6 -------------------------------------------------------------------------------------------------------------
def test_a_crash_between_checkpoint_writes_resumes_consistently(tmp_path, monkeypatch):
    from pipeline.checkpoint import load_train_state, save_train_state
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "checkpoint.safetensors"
    save_train_state(path, model, opt, 4, {"key": "k"})
    with torch.no_grad():
        model.weight.add_(1.0)
    at_8 = model.weight.detach().clone()

    def crash(*a, **k):
        raise OSError("killed between the two writes")
    monkeypatch.setattr(ckpt_mod, "atomic_write_text", crash)
    with pytest.raises(OSError):
        save_train_state(path, model, opt, 8, {"key": "k"})
    assert json.loads(path.with_suffix(".json").read_text())["step"] == 4  # the sidecar fell behind
    fresh = torch.nn.Linear(3, 2)
    meta = load_train_state(path, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    assert meta["step"] == 8 and torch.equal(fresh.weight, at_8)  # the step belongs to the weights read
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_writes_use_unique_temporaries_and_fsync(tmp_path, monkeypatch):
    import pipeline.fsutil as fsutil
    synced = []
    real = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    assert fsutil.temp_sibling(tmp_path / "x") != fsutil.temp_sibling(tmp_path / "x")
    fsutil.atomic_write_text(tmp_path / "x", "1")
    assert len(synced) == 2  # the file, then its folder after the rename
    synced.clear()
    LabelStore(tmp_path / "s.zarr").write("a", np.zeros((2, 2), np.uint8))
    assert len(synced) >= 5  # the chunk, the entry's metadata, their folders, the store folder


@pytest.mark.parametrize("content,needle", [("{not json", "not a readable stage record"),
                                            ('{"schema": 99, "status": "completed"}', "newer version")])
def test_a_corrupt_or_newer_record_gives_one_line_naming_it(tmp_path, content, needle):
    run_dir = tmp_path / "run"
    Run.create(run_dir, cam_config())
    rec = run_dir / "stages" / "train_classifier" / "record.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(content)
    assert_refused(["inspect", run_dir, "--json"], str(rec), needle)
    (run_dir / "run.json").write_text(json.dumps({"schema": 7, "flow": "cam_voc"}))
    assert_refused(["inspect", run_dir], "run.json", "newer version")


# 7, 8, 9 ---------------------------------------------------------------------------------------------------------
def _truncate(v):
    p = v / "JPEGImages" / "2008_000002.jpg"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return "2008_000002.jpg"


def _bad_mask_values(v):
    m = np.zeros((77, 101), np.uint8)
    m[5:9, 5:9] = 40
    save_label_png(v / "SegmentationClass" / "2008_000001.png", m)
    return "2008_000001.png"


def _size_mismatch(v):
    save_label_png(v / "SegmentationClassAug" / "2008_000002.png", np.zeros((50, 64), np.uint8))
    return "2008_000002.png"


def _sixteen_bit(v):
    Image.fromarray(np.full((53, 64), 40000, np.uint16)).save(v / "JPEGImages" / "2008_000002.jpg", format="PNG")
    return "8-bit"


def _huge_header(v):
    p = v / "JPEGImages" / "2008_000003.jpg"
    data = bytearray(p.read_bytes())
    sof = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[sof + 5: sof + 9] = (9000).to_bytes(2, "big") + (9000).to_bytes(2, "big")  # height, width
    p.write_bytes(bytes(data))
    return "data.max_pixels"


def _no_scorable(v):
    (v / "Annotations" / "2008_000001.xml").write_text("<annotation><object><name>person</name></object></annotation>")
    for p in [*(v / "SegmentationClass").iterdir(), *(v / "SegmentationClassAug").iterdir()]:
        if p.stem == "2008_000001":
            p.unlink()
    return "segmentation.eval_split"


def _bad_id(v):
    (v / "ImageSets/Segmentation/val.txt").write_text("zarr.json\n")
    return "zarr.json"


@pytest.mark.parametrize("breaker", [_truncate, _bad_mask_values, _size_mismatch, _sixteen_bit, _huge_header,
                                     _no_scorable, _bad_id])
def test_bad_data_is_refused_with_one_line_before_any_stage(tmp_path, breaker):
    v = make_voc(tmp_path / "data")
    needle = breaker(v)
    run_dir = tmp_path / "run"
    assert_refused(["run-flow", "cam_voc", "--profile", "smoke", "--data-root", tmp_path / "data", "--run-dir", run_dir], needle)
    assert not run_dir.exists()


@pytest.mark.parametrize("pair,key", [("train_classifier.steps=-5", "train_classifier.steps"),
                                      ("segmentation.train.checkpoint_every=0", "checkpoint_every"),
                                      ("train_classifier.batch_size=0", "batch_size"),
                                      ("segmentation.train.lr=-1", "lr"),
                                      ("data.max_images=-2", "data.max_images"),
                                      ("cam.scales=[]", "cam.scales"),
                                      ("pseudo.par.w_rgb=0", "w_rgb"),
                                      ("workers.processes=0", "workers.processes")])
def test_out_of_range_knobs_are_refused(tmp_path, pair, key):
    assert_refused(["run-flow", "cam_voc", "--run-dir", tmp_path / "r", "--set", pair], key)
    assert not (tmp_path / "r").exists()


def test_every_numeric_knob_has_a_range():
    """Every int or float of every section (and inside its lists) is bounded, or checked by a validator."""
    import typing
    from types import UnionType

    import annotated_types as at
    from pydantic import BaseModel

    import workflows  # noqa: F401  (registers every section)
    from pipeline.config import run_config_type

    def bounded(meta):
        return any(isinstance(m, (at.Ge, at.Gt, at.Le, at.Lt, at.Interval)) or getattr(m, "func", None)
                   or bounded(getattr(m, "metadata", ())) for m in meta)

    def unbounded(tp):
        if tp in (int, float):
            return True
        args = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Annotated:
            return not bounded(args[1:]) and unbounded(args[0])
        if typing.get_origin(tp) in (list, tuple, typing.Union, UnionType):
            return any(unbounded(a) for a in args if a not in (Ellipsis, type(None)))
        return False

    missing = []

    def walk(model, prefix=""):
        validated = {f for d in model.__pydantic_decorators__.field_validators.values() for f in d.info.fields}
        for name, f in model.model_fields.items():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                walk(f.annotation, f"{prefix}{name}.")
            elif name not in validated and not bounded(f.metadata) and unbounded(f.annotation):
                missing.append(prefix + name)
    walk(run_config_type())
    assert missing == []


# 10 ------------------------------------------------------------------------------------------------------------
def test_store_ids_are_validated_on_read_and_write(tmp_path):
    s = LabelStore(tmp_path / "a.zarr")
    LabelStore(tmp_path / "b.zarr").write("x", np.ones((2, 2), np.uint8))
    for bad in ("zarr.json", "../b.zarr/x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            s.write(bad, np.zeros((2, 2), np.uint8))
        with pytest.raises(KeyError):
            s.read(bad)
        assert bad not in s
    assert (tmp_path / "a.zarr" / "zarr.json").is_file() and s.ids() == []


def test_validation_is_remembered_until_the_data_change(tmp_path):
    from pipeline.runs import VALIDATED_FILE, validate_data
    from workflows import get_flow
    v = make_voc(tmp_path / "data")
    run = Run.create(tmp_path / "run", cam_config(tmp_path / "data"))
    validate_data(run, get_flow("cam_voc").stages)
    assert (run.dir / VALIDATED_FILE).is_file()
    _truncate(v)
    t = time.time()
    with pytest.raises(UserError, match="2008_000002.jpg"):
        validate_data(Run.open(run.dir), get_flow("cam_voc").stages)
    assert time.time() - t < 5
