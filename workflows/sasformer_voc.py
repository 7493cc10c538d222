"""``sasformer_voc``: SASFormer (Su et al.) single stage on points or scribbles — SegFormer trained with partial
cross-entropy plus the hierarchical attention affinity loss, its predictions on ``data.label_split`` (multi-scale
+ flip) stored as pseudo labels and scored, then val mIoU.

SASFormer's parts: ``models/sasformer.py`` (the network, Eq. 1–7, the ``sasformer`` config section),
``stages/train_sasformer.py``; the sparse annotations: ``pipeline/sparse.py``, ``stages/sparse_labels.py``.
"""
from stages.predict_pseudo_labels import PREDICTED_PSEUDO_LABELS
from stages.train_sasformer import TRAIN_SASFORMER
from workflows.registry import define_flow, sparse_network_stages

#: the sparse stages, the training, the pseudo labels and their score (shared with ``sasformer_voc_multistage``), val
STAGES = sparse_network_stages(TRAIN_SASFORMER, PREDICTED_PSEUDO_LABELS)
PROFILE_DEFAULTS: dict[str, dict] = {
    # the reference code's multi-scale test (scales 0.5–2.0, flip; configs/voc2012/Segformerb4_512_3.json:36,
    # segmentor/tester.py:326), no CRF; fp16 mixed precision with a gradient scaler (segmentor/trainer.py:150, 221)
    "paper": {"amp": "fp16", "segmentation": {"eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], "eval_flip": True, "eval_crf": False}},
}

SPEC = define_flow("sasformer_voc", [*STAGES.label_stages, STAGES.own_branch],
                   "SASFormer on points/scribbles: SegFormer + hierarchical attention affinity loss → pseudo labels, val mIoU",
                   {}, PROFILE_DEFAULTS)
