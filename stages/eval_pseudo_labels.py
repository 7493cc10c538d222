"""Stage ``eval_pseudo_labels``: pseudo-label mIoU (ignored pixels skipped) and coverage on the scored images
(``stages.eval_seeds.score_ids``: never a calibration image), beside the seeds
scored at the same background threshold (``seed_miou_at_threshold``, from the ``seed_sweep`` input), so
that "refinement helps" is read at matched thresholds; ``route`` repeats which route made the labels."""
from __future__ import annotations

from pipeline.stage import Stage
from pipeline.store import LabelStore
from stages.common import image_pool
from stages.eval_seeds import miou_at, score_ids
from stages.evaluate import evaluate_labels


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    store = LabelStore(ctx.input("labels"))
    out = evaluate_labels(ds, store, image_pool(ctx), ctx.stage.name, score_ids(ctx))
    t = store.attrs.get("threshold")
    out["threshold"] = t
    out["route"] = store.attrs.get("route")  # the guard's choice (stages/make_pseudo_labels.py)
    if ctx.has_input("seed_sweep") and t is not None:
        out["seed_miou_at_threshold"] = miou_at(ctx.input("seed_sweep"), t)
    return out


EVAL_PSEUDO_LABELS = Stage("eval_pseudo_labels", run, reads=("data.score_split", "pseudo.calibrate", "data.label_split",
                                                           "data.max_images"),
                           inputs=("labels",), optional=("seed_sweep",), masks="score",
                           summary={"pseudo_miou": "miou", "pseudo_coverage": "coverage", "pseudo_threshold": "threshold",
                                    "seed_miou_matched": "seed_miou_at_threshold"},
                           description="pseudo-label mIoU and coverage, and the seeds at the same threshold")
