"""``cam_voc``: ViT CAM baseline — classifier, CAM seeds, PAR/CRF pseudo labels, segmentation."""
from pipeline.checkpoint import MODEL_FILE
from stages.eval_classifier import EVAL_CLASSIFIER
from stages.eval_pseudo_labels import EVAL_PSEUDO_LABELS
from stages.eval_seeds import EVAL_SEEDS, THRESHOLD
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.make_pseudo_labels import MAKE_PSEUDO_LABELS, PSEUDO_LABELS
from stages.make_seeds import MAKE_SEEDS, SEEDS
from stages.train_classifier import TRAIN_CLASSIFIER
from stages.train_segmentation import TRAIN_SEGMENTATION
from workflows.registry import define_flow

seeds = MAKE_SEEDS.wire(model=TRAIN_CLASSIFIER.out(MODEL_FILE))
seed_scores = EVAL_SEEDS.wire(seeds=seeds.out(SEEDS))
pseudo = MAKE_PSEUDO_LABELS.wire(scores=seeds.out(SEEDS), threshold=seed_scores.out(THRESHOLD))
segmentation = TRAIN_SEGMENTATION.wire(labels=pseudo.out(PSEUDO_LABELS))

SPEC = define_flow(
    "cam_voc",
    [TRAIN_CLASSIFIER, EVAL_CLASSIFIER.wire(model=TRAIN_CLASSIFIER.out(MODEL_FILE)), seeds, seed_scores, pseudo,
     EVAL_PSEUDO_LABELS.wire(labels=pseudo.out(PSEUDO_LABELS), seed_sweep=seed_scores.out(THRESHOLD)), segmentation,
     EVAL_SEGMENTATION.wire(model=segmentation.out(MODEL_FILE))],
    "ViT CAM baseline: classifier → CAM seeds → PAR/CRF pseudo labels → segmentation")
