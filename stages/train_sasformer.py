"""Stage ``train_sasformer``: SASFormer's single-stage training (``models/sasformer.py``) of SegFormer on sparse
labels: partial cross-entropy on the labelled pixels plus α times the hierarchical attention affinity loss over
the encoder's four blocks. α is ``sasformer.alpha``, or the paper's for ``data.sparse.kind`` (1.2 scribbles, 0.2
points); α = 0 trains the SegFormer baseline on the same network, data and schedule."""
from __future__ import annotations

from models.sasformer import SASFormerLoss, resolve_alpha, sasformer_spec
from pipeline.checkpoint import MODEL_FILE
from pipeline.stage import Stage
from pipeline.store import LabelStore
from stages.common import run_training
from stages.train_segmentation import SegmentationSamples


def run(ctx) -> dict:
    cfg = ctx.config
    s = cfg.sasformer
    store = LabelStore(ctx.input("labels"))
    ids = store.ids()
    alpha = resolve_alpha(s.alpha, cfg.data.sparse.kind)
    loss = SASFormerLoss(alpha, tuple(s.blocks), s.distance)
    metrics = run_training(ctx, sasformer_spec(s), SegmentationSamples(ctx.run.voc_root, ids, store.path, s.train),
                           len(ids), lambda model: loss, s.train)
    return {**metrics, "labels": ctx.input_stage("labels"), "alpha": alpha, "blocks": list(s.blocks), "distance": s.distance}


TRAIN_SASFORMER = Stage("train_sasformer", run,
                        reads=("amp", "sasformer", "seed", "data.train_split", "data.max_images", "data.sparse.kind"),
                        writes=(MODEL_FILE,), inputs=("labels",),
                        description="SASFormer: SegFormer on sparse labels + the hierarchical attention affinity loss")
