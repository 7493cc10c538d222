"""The label-free background rule ``pseudo.bkg_rule`` (docs/labels.md, "The label-free rules"): each image's own Otsu
threshold of its top scores (``otsu_image``), against a hand-computed case and a brute-force Otsu."""
import numpy as np
import pytest


def brute_force_otsu(top: np.ndarray, bins: int) -> float:
    """The bin centre t_k maximising ω₀ω₁(μ₀ − μ₁)² over the splits after bin k (the first on a tie), by enumeration."""
    counts = np.histogram(top, bins=bins, range=(0.0, 1.0))[0].astype(float)
    centres = (np.arange(bins) + 0.5) / bins
    best, arg = -1.0, None
    for k in range(bins - 1):
        w0, w1 = counts[: k + 1].sum(), counts[k + 1:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0 = (counts[: k + 1] * centres[: k + 1]).sum() / w0
        m1 = (counts[k + 1:] * centres[k + 1:]).sum() / w1
        v = w0 * w1 * (m0 - m1) ** 2
        if v > best + 1e-12:
            best, arg = v, centres[k]
    return float(arg)


def test_image_otsu_threshold_by_hand():
    """Top scores 0.1, 0.1, 0.5, 0.9 in 10 bins (centres 0.15, 0.55, 0.95): the split after 0.15 has between-class
    variance ½·½·(0.15 − 0.75)² = 0.09, the split after 0.55 ¾·¼·(0.2833 − 0.95)² = 0.0833: t = 0.15; the per-pixel
    top over two maps is taken first."""
    from stages.eval_seeds import image_otsu_threshold
    maps = np.array([[[0.1, 0.0, 0.5, 0.2]], [[0.0, 0.1, 0.3, 0.9]]], np.float32)
    assert image_otsu_threshold(maps, bins=10) == pytest.approx(0.15)
    assert image_otsu_threshold(np.full((1, 2, 2), 0.3, np.float32)) == 0.5  # one bin: no split
    assert image_otsu_threshold(np.zeros((0, 2, 2), np.float32)) == 0.5  # no class


def test_image_otsu_threshold_equals_a_brute_force_otsu():
    from stages.eval_seeds import image_otsu_threshold
    rng = np.random.default_rng(0)
    for _ in range(20):
        k, h, w = rng.integers(1, 4), rng.integers(3, 20), rng.integers(3, 20)
        maps = rng.beta(0.5, 2.0, (k, h, w)).astype(np.float32)
        bins = int(rng.choice([16, 64, 256]))
        assert image_otsu_threshold(maps, bins) == pytest.approx(brute_force_otsu(maps.max(0), bins), abs=1e-9)


def test_each_image_is_labelled_at_its_own_threshold(tmp_path):
    """Two images whose top scores split at different levels: one global threshold cannot split both, each image's own
    does (the labels the pseudo-label stage makes: ``pseudo_label`` at ``PER_IMAGE``, unrefined)."""
    from stages.eval_seeds import PER_IMAGE, image_otsu_threshold
    from stages.make_pseudo_labels import pseudo_label
    from workflows import get_flow
    from pipeline.stage import ConfigView
    cfg = get_flow("cam_voc").resolve("smoke", ["pseudo.refine=[]"])
    view = ConfigView(cfg, ("pseudo", "device"), "test")
    image = np.zeros((1, 4, 3), np.uint8)
    low = np.array([[[0.04, 0.04, 0.3, 0.3]]], np.float32)  # object at 0.3 over 0.04
    high = np.array([[[0.5, 0.5, 0.95, 0.95]]], np.float32)  # object at 0.95 over a clutter of 0.5
    assert 0.04 <= image_otsu_threshold(low) < 0.3 and 0.5 <= image_otsu_threshold(high) < 0.95
    for maps in (low, high):
        assert pseudo_label(view, PER_IMAGE, image, maps, [7]).tolist() == [[0, 0, 7, 7]]
    assert pseudo_label(view, 0.2, image, high, [7]).tolist() == [[7, 7, 7, 7]]  # one threshold fails one of them


def test_eval_seeds_scores_the_per_image_rule_and_hands_it_to_the_pseudo_labels(synthetic_root, tmp_path):
    """``eval_seeds`` under ``otsu_image``: ``threshold.json`` names the rule, its ``miou`` is the seeds' mIoU with each
    image at its own threshold (computed here directly), and ``make_pseudo_labels`` reads the rule from it."""
    import json

    from pipeline.metrics import confusion_matrix, scores
    from pipeline.runs import Run
    from pipeline.stage import StageContext
    from pipeline.store import LabelStore
    from pipeline.voc import VOCFolder
    from stages.eval_seeds import EVAL_SEEDS, PER_IMAGE, THRESHOLD, choose_threshold, image_otsu_threshold, miou_at
    from stages.labels import threshold_labels
    from stages.make_pseudo_labels import MAKE_PSEUDO_LABELS, background_threshold
    from workflows import get_flow
    cfg = get_flow("cam_voc").resolve("smoke", ["workers.processes=1", "pseudo.bkg_rule=otsu_image"], str(synthetic_root))
    run = Run.create(tmp_path / "run", cfg)
    store, folder = LabelStore(tmp_path / "seeds.zarr"), VOCFolder(run.voc_root)
    rng = np.random.default_rng(1)
    conf = 0
    for i in run.dataset("train").ids[:5]:
        gt = folder.mask(i)
        fg = ((gt > 0) & (gt < 255)).astype(np.float32)
        maps = np.clip(0.6 * fg + rng.uniform(0, 0.5, gt.shape), 0, 1)[None].astype(np.float16)
        classes = [int(np.unique(gt[(gt > 0) & (gt < 255)])[0])] if fg.any() else [1]
        store.write(i, maps, {"classes": classes})
        m = maps.astype(np.float32)
        conf = conf + confusion_matrix(gt, threshold_labels(m, classes, np.array([image_otsu_threshold(m)]))[0], 21)
    ctx = StageContext(run, EVAL_SEEDS, "k")
    ctx.dir.mkdir(parents=True)
    out = choose_threshold(ctx, store)
    chosen = json.loads(ctx.output(THRESHOLD).read_text())
    assert out["threshold"] == chosen["threshold"] == PER_IMAGE and "own Otsu threshold" in out["threshold_rule"]
    assert out["miou"] == pytest.approx(scores(conf)["miou"]) == pytest.approx(miou_at(ctx.output(THRESHOLD), PER_IMAGE))
    assert out["best_threshold_miou"] is not None  # the sweep's best stays a report
    pseudo = MAKE_PSEUDO_LABELS.wire(scores=EVAL_SEEDS.out(THRESHOLD), threshold=EVAL_SEEDS.out(THRESHOLD))
    t, source = background_threshold(StageContext(run, pseudo, "k"))
    assert t == PER_IMAGE and source.startswith("eval_seeds: each image's own Otsu")
