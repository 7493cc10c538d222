"""The background threshold by rule: Otsu without masks, checked against a brute-force Otsu."""
import numpy as np
import pytest

from pipeline.parallel import ImagePool
from pipeline.store import LabelStore
from stages.evaluate import otsu_threshold


def _brute_otsu(values: np.ndarray, bins: int) -> float:
    """Otsu by exhaustive search: the bin edge that maximises the between-class variance of the histogram."""
    counts, edges = np.histogram(values, bins=bins, range=(0, 1))
    centers = (edges[:-1] + edges[1:]) / 2
    best, best_t = -1.0, None
    for k in range(1, bins):
        w0, w1 = counts[:k].sum(), counts[k:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0 = (counts[:k] * centers[:k]).sum() / w0
        m1 = (counts[k:] * centers[k:]).sum() / w1
        var = w0 * w1 * (m0 - m1) ** 2
        if var > best:
            best, best_t = var, centers[k - 1]
    return best_t


def test_otsu_threshold_of_the_top_scores_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    store = LabelStore(tmp_path / "s.zarr")
    tops = []
    for i in range(4):
        maps = np.clip(rng.normal(0.15, 0.05, (2, 20, 30)), 0, 1).astype(np.float32)
        maps[int(i % 2), 5:12, 8:20] = np.clip(rng.normal(0.75, 0.08, (7, 12)), 0, 1)  # an activated object
        store.write(f"im{i}", maps.astype(np.float16), {"classes": [3, 5]})
        tops.append(maps.astype(np.float16).astype(np.float32).max(0).ravel())
    t = otsu_threshold(store, store.ids(), ImagePool(), bins=64)
    assert abs(t - _brute_otsu(np.concatenate(tops), 64)) < 1e-9
    assert 0.3 < t < 0.6  # between the two modes
    empty = LabelStore(tmp_path / "e.zarr")
    empty.write("flat", np.full((1, 4, 4), 0.2, np.float16), {"classes": [1]})
    assert otsu_threshold(empty, empty.ids(), ImagePool()) == 0.5  # one occupied bin: no split to find


def test_threshold_labels_are_the_argmax_with_a_background_score():
    """The two forms of the one rule (the sweep's and the pseudo labels') give the same labels, ties included."""
    from stages.labels import threshold_labels, with_background
    rng = np.random.default_rng(3)
    cams = np.round(rng.uniform(0, 1, (3, 9, 11)), 1).astype(np.float32)  # many ties with the thresholds
    classes = [2, 7, 15]
    ts = np.array([0.0, 0.3, 0.5, 0.9, 1.0], np.float32)
    lookup = np.array([0, *classes], np.uint8)
    want = np.stack([lookup[with_background(cams, t).argmax(0)] for t in ts])
    assert (threshold_labels(cams, classes, ts) == want).all()


def test_sweep_keeps_every_threshold_apart(synthetic_root, tmp_path):
    """Thresholds below 0.01 get their own entries (a fixed two-decimal key once merged them)."""
    from pipeline.voc import VOCDataset
    from stages.evaluate import evaluate_sweep
    ds = VOCDataset(synthetic_root, "train")
    store = LabelStore(tmp_path / "seeds.zarr")
    rng = np.random.default_rng(0)
    for i in ds.ids[:3]:
        h, w = ds.mask(i).shape
        store.write(i, rng.uniform(0, 0.01, (1, h, w)).astype(np.float16), {"classes": [1]})
    out = evaluate_sweep(ds, store, [0.001, 0.002, 0.005, 0.075], ImagePool())
    assert list(out["sweep"]) == ["0.001", "0.002", "0.005", "0.075"]


def _eval_seeds_on(store_maker, root, tmp_path, sets=(), mask_root=None):
    """``eval_seeds``'s rule on a store of maps made from each image's mask (read from ``mask_root``, default ``root``),
    in a throwaway run on ``root``."""
    import json

    from pipeline.runs import Run
    from pipeline.stage import StageContext
    from pipeline.voc import VOCDataset
    from stages.eval_seeds import EVAL_SEEDS, THRESHOLD, choose_threshold
    from workflows import get_flow
    cfg = get_flow("cam_voc").resolve("smoke", ["cam.sweep=[0.01, 0.05, 0.1]", "data.max_images=6", *sets], str(root))
    run = Run.create(tmp_path / "run", cfg)
    run.stage_dir("eval_seeds").mkdir(parents=True)
    ds = VOCDataset(mask_root or root, "train", 6)
    store = LabelStore(tmp_path / "seeds.zarr")
    for i in ds.ids:
        store_maker(store, i, ds.mask(i))
    out = choose_threshold(StageContext(run, EVAL_SEEDS, "k"), store)
    return out, json.loads((run.stage_dir("eval_seeds") / THRESHOLD).read_text())


def _faint(store, i, mask):
    """Maps that are 0.003 on each object class and 0 elsewhere: only a threshold below 0.003 finds the objects."""
    classes = [int(c) for c in np.unique(mask) if c not in (0, 255)]
    maps = np.stack([(mask == c) * 0.003 for c in classes]).astype(np.float16)
    store.write(i, maps, {"classes": classes})


def _noisy(store, i, mask):
    """Maps of each object class: high on the object, low and noisy elsewhere (seeded by the image id)."""
    rng = np.random.default_rng(sum(map(ord, i)))
    classes = [int(c) for c in np.unique(mask) if c not in (0, 255)]
    maps = np.stack([np.clip(np.where(mask == c, 0.7, 0.15) + rng.normal(0, 0.1, mask.shape), 0, 1) for c in classes])
    store.write(i, maps.astype(np.float16), {"classes": classes})


@pytest.fixture(scope="module")
def calib_root(synthetic_root, tmp_path_factory):
    """The session's synthetic data with a calibration split (its first 3 training images)."""
    import shutil
    root = tmp_path_factory.mktemp("thr") / "VOC2012"
    shutil.copytree(synthetic_root, root)
    lists = root / "ImageSets" / "Segmentation"
    lists.joinpath("calib.txt").write_text("\n".join(lists.joinpath("train.txt").read_text().split()[:3]) + "\n")
    return root


def test_a_best_threshold_at_the_sweeps_edge_widens_the_calibration_sweep(calib_root, tmp_path):
    out, saved = _eval_seeds_on(_faint, calib_root, tmp_path, ["pseudo.calibrate.split=calib"])
    assert out["threshold"] < 0.003 and out["calibration_miou"] > 0.9 and out["miou"] > 0.9
    assert "widened past its edge" in out["threshold_rule"] and "3 masks of calibration split calib" in out["threshold_rule"]
    assert out["calibration"] == {"split": "calib", "images": 3} and out["images"] == 3  # the other 3 are scored
    assert saved["threshold"] == out["threshold"]
    off, _ = _eval_seeds_on(_faint, calib_root, tmp_path / "off", ["pseudo.calibrate.split=calib", "cam.sweep_widen=false"])
    assert off["threshold"] == 0.01 and off["miou"] < 0.5 and "at the edge of the sweep" in off["threshold_rule"]


def test_the_default_threshold_reads_no_mask_and_the_best_is_reported_beside_it(synthetic_root, tmp_path):
    """Without calibration: Otsu's threshold of the maps, the same when every training mask is gone; the seeds are
    scored at it (``miou``) and at the best threshold of the sweep (``best_threshold_miou``, as the papers report)."""
    import shutil
    out, saved = _eval_seeds_on(_noisy, synthetic_root, tmp_path / "with")
    store = LabelStore(tmp_path / "with" / "seeds.zarr")
    assert out["threshold"] == round(otsu_threshold(store, store.ids(), ImagePool()), 4)
    assert out["threshold_rule"].startswith("Otsu's threshold") and "no mask read" in out["threshold_rule"]
    assert 0.3 < out["threshold"] < 0.6 and out["images"] == 6
    assert out["best_threshold_miou"] >= out["miou"] > 0.5
    assert saved["best_threshold"] == out["best_threshold"] and saved["best_miou"] == out["best_threshold_miou"]
    assert [t for t, _ in saved["sweep"]] == sorted({0.01, 0.05, 0.1, out["threshold"], *[t for t, _ in saved["sweep"]]})
    bare = tmp_path / "VOC2012"
    shutil.copytree(synthetic_root, bare)
    for png in (bare / "SegmentationClass").glob("synth_train_*.png"):
        png.unlink()
    none, _ = _eval_seeds_on(_noisy, bare, tmp_path / "without", mask_root=synthetic_root)
    assert none["threshold"] == out["threshold"] and none["miou"] is None and none["images"] == 0


def test_an_empty_store_has_no_threshold(synthetic_root, tmp_path):
    """ACR's unrefined seeds outside grad_aff mode: nothing to score, a null threshold and a rule that says so."""
    out, saved = _eval_seeds_on(lambda store, i, mask: None, synthetic_root, tmp_path)
    assert out["threshold"] is None and out["miou"] is None and saved["threshold"] is None
    assert out["threshold_rule"] == "no maps to score (the store is empty)"
