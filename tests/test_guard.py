"""The pseudo-label guard: the labels come from the route that scores best on the scored masks, the method's on a tie."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import LabelStore
from pipeline.voc import VOCFolder


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


def test_the_guard_labels_by_the_best_route_and_says_why(synthetic_root, tmp_path):
    route, m = _guard(synthetic_root, tmp_path, [0.5, 0.0, 0.2])
    assert route.name == "route 1" and m["route"] == "route 1"
    assert m["routes"]["route 1"] == pytest.approx(1.0) and m["routes"]["route 0"] < m["routes"]["route 2"] < 1
    assert "6 masks of train" in m["guard"] and "route 0" in m["guard"]  # names the method's route that lost


def test_the_guard_keeps_the_methods_route_on_a_tie_or_when_off(synthetic_root, tmp_path):
    route, m = _guard(synthetic_root, tmp_path / "tie", [0.0, 0.0])
    assert route.name == "route 0" and m["guard"].endswith("the method's route")
    route, m = _guard(synthetic_root, tmp_path / "off", [0.5, 0.0], ["pseudo.guard=false"])
    assert route.name == "route 0" and "routes" not in m and "pseudo.guard=false" in m["guard"]


def test_the_guard_without_masks_keeps_the_methods_route(synthetic_root, tmp_path):
    route, m = _guard(synthetic_root, tmp_path, [0.5, 0.0], ["data.score_split=val"])
    assert route.name == "route 0" and m["guard"] == "no scored image has a mask to compare routes on"


def test_a_resumed_stage_keeps_the_route_it_started_with(synthetic_root, tmp_path):
    """Killed after two images labelled by route 0: the resumed stage must not switch to the better route 1
    (its store would mix two routes); under another key (a changed config) it chooses again."""
    from stages.make_pseudo_labels import guarded_route, write_route
    ctx, store, routes = _setup(synthetic_root, tmp_path, [0.5, 0.0])
    write_route(ctx, routes[0], {"route": "route 0", "guard": "chosen before"}, store.ids()[:2])
    route, m = guarded_route(ctx, routes, store)
    assert route.name == "route 0" and m["guard"] == "chosen before"
    metrics = write_route(ctx, route, m, store.ids())
    assert metrics["resumed_from"] == 2 and metrics["images"] == 6
    ctx2, store, routes = _setup(synthetic_root, tmp_path, [0.5, 0.0], key="another key")
    assert guarded_route(ctx2, routes, store)[0].name == "route 1"
