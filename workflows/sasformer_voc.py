"""``sasformer_voc``: SASFormer (Su et al.) single stage on points or scribbles — SegFormer trained with partial
cross-entropy plus the hierarchical attention affinity loss, its predictions on ``data.label_split`` (multi-scale
+ flip) stored as pseudo labels and scored, then val mIoU.

SASFormer's parts: ``models/sasformer.py`` (the network, Eq. 1–7, the ``sasformer`` config section),
``stages/train_sasformer.py``; the sparse annotations: ``pipeline/sparse.py``, ``stages/sparse_labels.py``.
"""
from pipeline.checkpoint import MODEL_FILE
from stages.eval_pseudo_labels import EVAL_PSEUDO_LABELS
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.make_pseudo_labels import PSEUDO_LABELS
from stages.predict_pseudo_labels import PREDICTED_PSEUDO_LABELS
from stages.sparse_labels import SPARSE_LABELS, SPARSE_LABELS_STAGE
from stages.train_sasformer import TRAIN_SASFORMER
from workflows.partial_ce_voc import SPARSE_STAGES
from workflows.registry import define_flow

network = TRAIN_SASFORMER.wire(labels=SPARSE_LABELS_STAGE.out(SPARSE_LABELS))
PSEUDO = PREDICTED_PSEUDO_LABELS.wire(model=network.out(MODEL_FILE))
#: the stages up to the pseudo labels' score, shared with ``sasformer_voc_multistage``
LABEL_STAGES = [*SPARSE_STAGES, network, PSEUDO, EVAL_PSEUDO_LABELS.wire(labels=PSEUDO.out(PSEUDO_LABELS))]
OWN_BRANCH = EVAL_SEGMENTATION.wire(model=network.out(MODEL_FILE))
PROFILE_DEFAULTS: dict[str, dict] = {
    # the reference code's multi-scale test (scales 0.5–2.0, flip), no CRF
    "paper": {"segmentation": {"eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], "eval_flip": True, "eval_crf": False}},
}

SPEC = define_flow("sasformer_voc", [*LABEL_STAGES, OWN_BRANCH],
                   "SASFormer on points/scribbles: SegFormer + hierarchical attention affinity loss → pseudo labels, val mIoU",
                   {}, PROFILE_DEFAULTS)
