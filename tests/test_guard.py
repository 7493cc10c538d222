"""The pseudo-label guard, which survives only as calibration: without ``pseudo.calibrate`` the method's route labels
every image and no mask is read; with it the route that scores best on the calibration masks alone, the method's on
a tie. Bad calibration settings stop before any stage with one line."""
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.store import LabelStore
from pipeline.voc import VOCFolder

#: the calibration split the tests write: the first three training images
CALIB = "calib"


@pytest.fixture(scope="module")
def calib_root(synthetic_root, tmp_path_factory) -> Path:
    """A copy of the session's synthetic data with a calibration split list (3 of the training images)."""
    root = tmp_path_factory.mktemp("calib") / "VOC2012"
    shutil.copytree(synthetic_root, root)
    lists = root / "ImageSets" / "Segmentation"
    train = lists.joinpath("train.txt").read_text().split()
    lists.joinpath(f"{CALIB}.txt").write_text("\n".join(train[:3]) + "\n")
    lists.joinpath("later.txt").write_text("\n".join(train[3:6]) + "\n")
    lists.joinpath("nomasks.txt").write_text("\n".join(train[:3]) + "\n")
    return root


@dataclass
class MaskLabeler:
    """A route whose labels are the mask with ``wrong`` of its foreground pixels set to background."""
    root: Path
    wrong: float

    def __call__(self, image_id: str) -> np.ndarray:
        m = VOCFolder(self.root).mask(image_id).copy()
        fg = np.flatnonzero((m > 0) & (m < 255))
        m.flat[fg[: int(len(fg) * self.wrong)]] = 0
        return m


def _setup(root, tmp_path, wrongs, sets=(), key="k"):
    """A stage context, the store of maps whose images the routes are scored on, and the routes."""
    from pipeline.runs import Run
    from pipeline.stage import StageContext
    from pipeline.voc import VOCDataset
    from stages.make_pseudo_labels import MAKE_PSEUDO_LABELS, Route
    from workflows import get_flow
    cfg = get_flow("cam_voc").resolve("smoke", ["data.max_images=6", "workers.processes=1", *sets], str(root))
    run = Run.create(tmp_path / "run", cfg) if not (tmp_path / "run").exists() else Run.open(tmp_path / "run")
    store = LabelStore(tmp_path / "maps.zarr")
    for i in VOCDataset(root, "train", 6).ids:
        store.write(i, np.zeros((1, 2, 2), np.float16), {"classes": [1]})
    routes = [Route(f"route {k}", MaskLabeler(root, w), 0.5, []) for k, w in enumerate(wrongs)]
    return StageContext(run, MAKE_PSEUDO_LABELS, key), store, routes


def _guard(root, tmp_path, wrongs, sets=()):
    from stages.make_pseudo_labels import guarded_route
    ctx, store, routes = _setup(root, tmp_path, wrongs, sets)
    return guarded_route(ctx, routes, store)


def test_calibration_labels_by_the_best_route_on_its_masks_and_says_why(calib_root, tmp_path):
    route, m = _guard(calib_root, tmp_path, [0.5, 0.0, 0.2], [f"pseudo.calibrate.split={CALIB}"])
    assert route.name == "route 1" and m["route"] == "route 1"
    assert m["routes"]["route 1"] == pytest.approx(1.0) and m["routes"]["route 0"] < m["routes"]["route 2"] < 1
    assert "3 masks of calibration split calib" in m["guard"] and "route 0" in m["guard"]  # names the route that lost
    assert m["calibration"] == {"split": CALIB, "images": 3}


def test_without_calibration_the_methods_route_labels_and_no_mask_is_read(calib_root, tmp_path, monkeypatch):
    def no_mask(self, image_id):
        raise AssertionError(f"mask of {image_id} read while labelling")
    ctx, store, routes = _setup(calib_root, tmp_path, [0.5, 0.0])
    monkeypatch.setattr(VOCFolder, "mask", no_mask)
    from stages.make_pseudo_labels import guarded_route
    route, m = guarded_route(ctx, routes, store)
    assert route.name == "route 0" and "routes" not in m and "no mask read" in m["guard"]


def test_calibration_keeps_the_methods_route_on_a_tie_or_with_the_guard_off(calib_root, tmp_path):
    route, m = _guard(calib_root, tmp_path / "tie", [0.0, 0.0], [f"pseudo.calibrate.split={CALIB}"])
    assert route.name == "route 0" and m["guard"].endswith("the method's route")
    route, m = _guard(calib_root, tmp_path / "off", [0.5, 0.0], [f"pseudo.calibrate.split={CALIB}", "pseudo.guard=false"])
    assert route.name == "route 0" and "routes" not in m and "pseudo.guard=false" in m["guard"]


def test_a_resumed_stage_keeps_the_route_it_started_with(calib_root, tmp_path):
    """Killed after two images labelled by route 0: the resumed stage must not switch to the better route 1
    (its store would mix two routes); under another key (a changed config) it chooses again."""
    from stages.make_pseudo_labels import guarded_route, write_route
    sets = [f"pseudo.calibrate.split={CALIB}"]
    ctx, store, routes = _setup(calib_root, tmp_path, [0.5, 0.0], sets)
    write_route(ctx, routes[0], {"route": "route 0", "guard": "chosen before"}, store.ids()[:2])
    route, m = guarded_route(ctx, routes, store)
    assert route.name == "route 0" and m["guard"] == "chosen before"
    metrics = write_route(ctx, route, m, store.ids())
    assert metrics["resumed_from"] == 2 and metrics["images"] == 6
    ctx2, store, routes = _setup(calib_root, tmp_path, [0.5, 0.0], sets, key="another key")
    assert guarded_route(ctx2, routes, store)[0].name == "route 1"


def test_calibration_images_are_never_scored(calib_root, tmp_path):
    from pipeline.runs import Run
    from pipeline.stage import StageContext
    from stages.eval_seeds import EVAL_SEEDS, score_ids
    from workflows import get_flow
    cfg = get_flow("cam_voc").resolve("smoke", ["data.max_images=6", f"pseudo.calibrate.split={CALIB}"], str(calib_root))
    ctx = StageContext(Run.create(tmp_path / "run", cfg), EVAL_SEEDS, "k")
    calib = set(ctx.dataset(CALIB).ids)
    scored = score_ids(ctx)
    assert len(scored) == 3 and not calib & set(scored)


@pytest.mark.parametrize("sets, says", [
    (["pseudo.calibrate.split=nosuch"], "pseudo.calibrate.split=nosuch is not a split of the data"),
    (["pseudo.calibrate.split=val"], "has no image with a mask among the train images"),
    (["pseudo.calibrate.split=nomasks"], "has no image with a mask among the train images"),
    ([f"pseudo.calibrate.split={CALIB}", "data.score_split=train"], "share 3 images"),
    (["pseudo.calibrate.split=train"], "holds every train image with a mask"),
])
def test_bad_calibration_stops_before_any_stage_with_one_line(calib_root, tmp_path, sets, says):
    from pipeline.runs import Run, validate_data
    from workflows import get_flow
    root = calib_root
    if "pseudo.calibrate.split=nomasks" in sets:  # a split whose images' masks are gone
        root = tmp_path / "VOC2012"
        shutil.copytree(calib_root, root)
        for i in (root / "ImageSets/Segmentation/nomasks.txt").read_text().split():
            (root / "SegmentationClass" / f"{i}.png").unlink()
    spec = get_flow("cam_voc")
    cfg = spec.resolve("smoke", sets, str(root))
    with pytest.raises(UserError) as e:
        validate_data(Run(tmp_path / "run", cfg), spec.stages)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_calibration_is_one_line_from_the_command_line(calib_root, tmp_path):
    from tests.helpers import cli
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--data-root", calib_root, "--run-dir", tmp_path / "run",
            "--set", "pseudo.calibrate.split=nosuch")
    assert r.returncode != 0 and "pseudo.calibrate.split=nosuch" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "stages").exists()
