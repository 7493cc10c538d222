"""No mask is read while labelling (CONTRACT.md, "Ground truth and datasets"): every flow that writes seeds or pseudo
labels, run on the smoke data with every training image's mask deleted, writes byte-identical label stores.

One copy of the session's smoke data without its training masks serves every flow; ``cam_voc`` is compared with the
session's ``cam_run`` (its config, whatever later tests set, through ``--from-run``); the other flows run twice, up
to their pseudo labels. The multi-stage flows label with their single-stage flow's stages under the same keys
(``tests/test_stages.py::test_flows_share_stages_they_wire_alike``), so their single-stage flows stand for them.
"""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli

#: the flows that write labels, each run up to its pseudo labels (its last label store but the val predictions)
#: each flow runs twice (two smoke flows, minutes on 2 cores): the suite keeps one sparse flow beside cam_voc; the other
#: flows' twins are not run by the suite (too slow for it): run them with `pytest tests/test_no_masks.py` after widening FLOWS
FLOWS = ("partial_ce_voc",)
UNTIL = "make_pseudo_labels"


@pytest.fixture(scope="module")
def bare_root(env, tmp_path_factory) -> Path:
    """The smoke data of the session's runs (the embedded synthetic data in the ``env`` cache) with every training
    image's mask deleted (val keeps its masks)."""
    from pipeline.synthetic import embedded_dataset
    from workflows import get_flow
    s = get_flow("cam_voc").resolve("smoke").data.synthetic
    old = os.environ.get("WSSS_CACHE")
    os.environ["WSSS_CACHE"] = env["WSSS_CACHE"]
    try:
        source = embedded_dataset(s.train, s.val, s.seed, s.min_size, s.max_size, s.style)
    finally:
        if old is None:
            os.environ.pop("WSSS_CACHE")
        else:
            os.environ["WSSS_CACHE"] = old
    root = tmp_path_factory.mktemp("bare") / "VOC2012"
    shutil.copytree(source, root)
    lists = root / "ImageSets" / "Segmentation"
    train = {i for split in ("train", "train_aug") for i in lists.joinpath(f"{split}.txt").read_text().split()}
    for i in train:
        for sub in ("SegmentationClass", "SegmentationClassAug"):
            (root / sub / f"{i}.png").unlink(missing_ok=True)
    assert not any((root / "SegmentationClass" / f"{i}.png").exists() for i in train)
    return root


def label_stores(run_dir: Path) -> dict[str, Path]:
    """Every label store a run wrote, by ``stage/store``."""
    return {f"{p.parent.name}/{p.name}": p for p in sorted((Path(run_dir) / "stages").glob("*/*.zarr"))
            if (p / "zarr.json").is_file()}


def assert_same_stores(with_masks: Path, without: Path) -> int:
    """The label stores of the run ``without`` masks equal, array for array, byte for byte, those of the same names in
    the run ``with_masks``; returns how many arrays were compared."""
    from pipeline.store import LabelStore
    mine, theirs = label_stores(without), label_stores(with_masks)
    assert mine and set(mine) <= set(theirs), (sorted(mine), sorted(theirs))
    n = 0
    for name, path in mine.items():
        a, b = LabelStore(theirs[name]), LabelStore(path)
        assert a.ids() == b.ids(), name
        for i in a.ids():
            x, y = a.read(i), b.read(i)
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{name}: {i} differs"
            assert a.read_attrs(i) == b.read_attrs(i), f"{name}: {i}'s attributes differ"
            n += 1
    return n


def test_cam_voc_labels_without_masks_are_byte_identical(cam_run, bare_root, env, tmp_path):
    run_dir = tmp_path / "bare"
    t0 = time.time()
    r = cli("run-flow", "--from-run", cam_run[0], "--data-root", bare_root, "--run-dir", run_dir, "--until", UNTIL, env=env,
            timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert assert_same_stores(cam_run[0], run_dir) > 0
    print(f"cam_voc without masks: {time.time() - t0:.1f} s")


@pytest.mark.parametrize("flow", FLOWS)
def test_labels_without_masks_are_byte_identical(flow, bare_root, env, tmp_path):
    t0 = time.time()
    runs = {}
    for name, data in (("masks", ()), ("bare", ("--data-root", bare_root))):
        runs[name] = tmp_path / name
        r = cli("run-flow", flow, "--profile", "smoke", *data, "--run-dir", runs[name], "--until", UNTIL, env=env,
                timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
    assert assert_same_stores(runs["masks"], runs["bare"]) > 0
    print(f"{flow} with and without masks: {time.time() - t0:.1f} s")


def test_the_bare_data_has_no_training_mask_and_still_tags(bare_root):
    """The tags come from the annotations, as IRN's (``pipeline.voc.VOCFolder.image_labels``), so they survive."""
    from pipeline.voc import VOCDataset
    ds = VOCDataset(bare_root, "train")
    assert not any(ds.has_mask(i) for i in ds.ids)
    assert (ds.label_matrix.sum(1) > 0).all() and np.isin(ds.label_matrix, (0, 1)).all()
