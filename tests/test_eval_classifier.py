"""``stages/eval_classifier.py``: average precision, the class scores of every flow's classifier, ``summary.cls_map``."""
import math

import numpy as np
import pytest
import torch

from stages.eval_classifier import average_precision


def brute_force_ap(scores, targets) -> float:
    """The mean, over the positive items, of the precision among the items scored at least as high.

    sklearn's sum over thresholds groups equal scores into one step of the curve: a positive whose score
    ``s`` is tied with others counts every item scored ``>= s`` (its whole tie group, positives and
    negatives alike), so this is the same number item by item. NaN without positives.
    """
    positives = [i for i, t in enumerate(targets) if t]
    if not positives:
        return math.nan
    total = 0.0
    for i in positives:
        above = [j for j in range(len(scores)) if scores[j] >= scores[i]]
        total += sum(1 for j in above if targets[j]) / len(above)
    return total / len(positives)


def test_average_precision_matches_a_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        # few distinct values: many ties, across positives and negatives
        scores = rng.integers(0, int(rng.integers(1, 8)), n) / 4.0
        targets = rng.random(n) < rng.uniform(0.1, 0.9)
        want = brute_force_ap(scores.tolist(), targets.tolist())
        got = average_precision(scores, targets)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12), (trial, scores, targets)
        perm = rng.permutation(n)  # the order of the items (within a tie too) does not matter
        again = average_precision(scores[perm], targets[perm].astype(int))
        assert (math.isnan(got) and math.isnan(again)) or again == pytest.approx(got, abs=1e-12)
    # per column, as the stage calls it: 20 classes at once, one of them without positives
    scores, targets = rng.integers(0, 5, (30, 20)) / 5.0, rng.random((30, 20)) < 0.3
    targets[:, 7] = False
    got = average_precision(scores, targets)
    want = [brute_force_ap(scores[:, c].tolist(), targets[:, c].tolist()) for c in range(20)]
    assert got.shape == (20,) and np.isnan(got[7])
    np.testing.assert_allclose(np.delete(got, 7), np.delete(want, 7), atol=1e-12)


def test_average_precision_by_hand():
    # thresholds 0.9: P 0/1, R 0 │ 0.8 (two positives and a negative tied): P 2/4, R 2/3 │ 0.3: P 3/5, R 1 │ 0.1: R 1
    # AP = (2/3 − 0)·(2/4) + (1 − 2/3)·(3/5) + 0 = 1/3 + 1/5 = 8/15; ranking the tie in input order instead would
    # give (1/2 + 2/3 + 3/5)/3
    assert average_precision([0.9, 0.8, 0.8, 0.8, 0.3, 0.1], [0, 1, 1, 0, 1, 0]) == pytest.approx(8 / 15, abs=1e-12)
    assert average_precision([3.0, 2.0, 1.0], [1, 1, 0]) == 1.0  # positives first
    assert average_precision([1.0, 2.0, 3.0], [1, 0, 0]) == pytest.approx(1 / 3)  # the positive last
    assert average_precision([0.5, 0.5], [1, 1]) == 1.0  # every item positive
    assert math.isnan(average_precision([0.5, 0.2], [0, 0]))


def test_average_precision_refuses_what_it_cannot_rank():
    with pytest.raises(ValueError, match="shape"):
        average_precision([0.1, 0.2], [1, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        average_precision([0.1, 0.2], [2, 0])


@pytest.mark.parametrize("name", ["vit_cam_classifier", "vit_acr_classifier", "afa_mit", "swtformer"])
def test_class_scores_of_the_classifier_of_every_flow(name):
    """cam_voc and acr_voc: ``class_scores`` is ``model(x)``; afa_voc(_multistage): ``forward`` segments, and the
    scores are those of its training pass."""
    from tests.test_models import _tiny_specs
    torch.manual_seed(0)
    model = _tiny_specs()[name].build().eval()
    x = torch.randn(2, 3, 48, 56)
    with torch.no_grad():
        scores = model.class_scores(x)
        assert scores.shape == (2, 20)
        if name == "afa_mit":
            assert model(x).shape == (2, 21, 48, 56)  # the protocol's model(x) → B×20 does not hold for it
            torch.testing.assert_close(scores, model.forward_train(x).cls)
        else:
            torch.testing.assert_close(scores, model(x))


def test_image_scores_at_scale_one_and_under_amp():
    from pipeline.runtime import Runtime
    from pipeline.transforms import normalise
    from stages.eval_classifier import image_scores
    from tests.test_models import _tiny_specs
    torch.manual_seed(0)
    model = _tiny_specs()["vit_cam_classifier"].build().eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3)).astype(np.uint8)
    full = image_scores(model, image)
    assert full.shape == (20,) and full.dtype == np.float64
    with torch.no_grad():
        np.testing.assert_allclose(full, model(normalise(image)[None])[0].double().numpy(), rtol=1e-6)
    half = image_scores(model, image, Runtime(amp="bf16"))  # the CPU runs bf16 autocast too
    assert half.shape == (20,) and np.isfinite(half).all() and np.abs(half - full).max() < 0.1


def test_eval_classifier_knows_no_method():
    from tests.test_stages import test_shared_stages_know_no_method as knows_no_method
    knows_no_method("eval_classifier")


def test_every_flow_has_cls_map_in_its_summary(tmp_path):
    """The key is there in every flow, null until (and unless) a stage fills it; the classifier flows fill it."""
    from pipeline.runs import Run, summarise
    from workflows import FLOWS
    for name, spec in FLOWS.items():
        run = Run.create(tmp_path / name, spec.resolve("smoke"))
        assert summarise(run, spec.stages)["summary"]["cls_map"] is None, name
        fills = [s.name for s in spec.stages if "cls_map" in s.summary]
        want = ["eval_classifier"] if name in ("cam_voc", "acr_voc", "afa_voc", "afa_voc_multistage", "swtformer_voc",
                                                "cam_coco", "acr_coco", "afa_coco") else []
        assert fills == want, name


def test_smoke_cam_voc_reports_cls_map(cam_run):
    run_dir, _, info = cam_run  # the smoke cam_voc run of tests/test_flows.py (conftest.py), not a new one
    cls_map = info["summary"]["cls_map"]
    assert isinstance(cls_map, float) and 0.0 <= cls_map <= 1.0
    stage = next(s for s in info["stages"] if s["name"] == "eval_classifier")
    m = stage["metrics"]
    assert stage["status"] == "completed" and m["map"] == cls_map
    assert m["images"] > 0 and len(m["ap"]) == 20 and list(m["ap"])[0] == "aeroplane"
    scored = [v for v in m["ap"].values() if v is not None]
    assert len(scored) == m["classes"] > 0 and cls_map == pytest.approx(sum(scored) / len(scored), abs=1e-4)
    assert all((v is None) == (m["positives"][c] == 0) for c, v in m["ap"].items())
