"""Stage ``train_apro``: APro's single-stage training (``models/apro.py``) of the shared segmentation network on
sparse labels: partial cross-entropy on the labelled pixels plus the L1 distance to the network's own predictions
propagated by GP and LP. Same network, data and schedule as ``train_segmentation`` on the same store (with
``apro.propagation=none`` the two are one loss: the partial-CE baseline)."""
from __future__ import annotations

from models.apro import AProLoss
from models.segmentation import segmentation_spec
from pipeline.checkpoint import MODEL_FILE
from pipeline.stage import Stage
from pipeline.store import LabelStore
from pipeline.voc import VOCFolder
from stages.common import run_training
from stages.train_segmentation import SEGMENTATION_READS, SegmentationSamples


def run(ctx) -> dict:
    cfg = ctx.config
    store = LabelStore(ctx.input("labels"))
    ids, tcfg = store.ids(), cfg.segmentation.train
    loss = AProLoss(cfg.apro, tcfg.steps)
    metrics = run_training(ctx, segmentation_spec(cfg.segmentation, VOCFolder(ctx.run.voc_root).num_classes),
                           SegmentationSamples(ctx.run.voc_root, ids, store.path, tcfg),
                           len(ids), lambda model: loss, tcfg)
    return {**metrics, "labels": ctx.input_stage("labels"), "propagation": cfg.apro.propagation}


TRAIN_APRO = Stage("train_apro", run, reads=(*SEGMENTATION_READS, "apro"), writes=(MODEL_FILE,), inputs=("labels",),
                   description="APro: segmentation on sparse labels + affinity-propagated soft pseudo labels")
