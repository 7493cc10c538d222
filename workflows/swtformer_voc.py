"""``swtformer_voc``: SWTformer — Swin Transformer CAM (V1) or R-CAM (V2) seeds, offline affinity + random walk,
pseudo labels, segmentation.

SWTformer's parts: ``models/swtformer.py`` (network, HFF, seed locating, prototypes, losses, the ``swtformer``
config section), ``stages/train_swtformer.py``, ``stages/swtformer_seeds.py``; the offline affinity and the
random walk are the ones ``acr_voc`` uses (``models/affinity_net.py``, ``stages/train_affinity.py``,
``stages/random_walk_seeds.py``).
"""
from pipeline.checkpoint import MODEL_FILE
from stages.eval_classifier import EVAL_CLASSIFIER
from stages.eval_pseudo_labels import EVAL_PSEUDO_LABELS
from stages.eval_seeds import EVAL_SEEDS, THRESHOLD
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.make_pseudo_labels import MAKE_PSEUDO_LABELS, PSEUDO_LABELS
from stages.make_seeds import SEEDS, SEEDS_UNREFINED
from stages.random_walk_seeds import RANDOM_WALK, RW_SEEDS
from stages.swtformer_seeds import MAKE_SWTFORMER_SEEDS
from stages.train_affinity import TRAIN_AFFINITY
from stages.train_segmentation import TRAIN_SEGMENTATION
from stages.train_swtformer import TRAIN_SWTFORMER
from workflows.registry import define_flow

classifier = TRAIN_SWTFORMER
seeds = MAKE_SWTFORMER_SEEDS.wire(model=classifier.out(MODEL_FILE))
seed_scores = EVAL_SEEDS.wire(seeds=seeds.out(SEEDS))
# V2: the CAM of the same network before the prototypes' re-activation, scored the same way (empty for V1)
unrefined_scores = EVAL_SEEDS.named("eval_unrefined_seeds", summary={}).wire(seeds=seeds.out(SEEDS_UNREFINED))
affinity = TRAIN_AFFINITY.wire(seeds=seeds.out(SEEDS), unrefined_seeds=seeds.out(SEEDS_UNREFINED))
walk = RANDOM_WALK.wire(seeds=seeds.out(SEEDS), affinity=affinity.out(MODEL_FILE), attention=classifier.out(MODEL_FILE))
walk_scores = EVAL_SEEDS.named("eval_random_walk", summary={}).wire(seeds=walk.out(RW_SEEDS))
pseudo = MAKE_PSEUDO_LABELS.wire(scores=walk.out(RW_SEEDS), threshold=walk_scores.out(THRESHOLD),
                                 seeds=seeds.out(SEEDS), seed_threshold=seed_scores.out(THRESHOLD),
                                 unrefined_seeds=seeds.out(SEEDS_UNREFINED), unrefined_threshold=unrefined_scores.out(THRESHOLD))
segmentation = TRAIN_SEGMENTATION.wire(labels=pseudo.out(PSEUDO_LABELS))

SPEC = define_flow(
    "swtformer_voc",
    [classifier, EVAL_CLASSIFIER.wire(model=classifier.out(MODEL_FILE)), seeds, seed_scores, unrefined_scores, affinity, walk,
     walk_scores, pseudo,
     EVAL_PSEUDO_LABELS.wire(labels=pseudo.out(PSEUDO_LABELS), seed_sweep=seed_scores.out(THRESHOLD)), segmentation,
     EVAL_SEGMENTATION.wire(model=segmentation.out(MODEL_FILE))],
    "SWTformer: Swin CAM (V1) / HFF + background-aware prototypes (V2) seeds → affinity random walk → pseudo labels → segmentation",
    defaults={
        # the AffinityNet learns from the method's seeds (V2: the R-CAM; V1: the CAM)
        "affinity": {"label_seeds": "refined"},
    },
    profile_defaults={
        # from scratch on 2 CPU cores a Swin often stays at the class priors; one rate of 1e-3 for the whole network
        # (README "SWTformer": the run table)
        "default": {"train_classifier": {"lr": 1e-3, "head_lr_mult": 1.0}, "affinity": {"log_t": 1}},
        "smoke": {"affinity": {"log_t": 1}},
        # Swin-T with ImageNet weights (the section's paper profile), 224 crops, AdamW, batch 16, ≈ 30 epochs of the
        # 10,582 train_aug images (20k steps)
        "paper": {"train_classifier": {"steps": 20000, "batch_size": 16, "crop_size": 224, "optimizer": "adamw"},
                  "affinity": {"log_t": 8, "backbone": "resnet50", "channels": None, "pretrained": True, "weights": None, "dims": [64, 128, 256],
                               "train": {"steps": 8000, "batch_size": 8, "crop_size": 448, "lr": 0.1, "optimizer": "sgd",
                                         "weight_decay": 5e-4, "warmup_steps": 0, "checkpoint_every": 1000, "log_every": 50,
                                         "scale_range": [0.7, 1.3], "color_jitter": 0.0}}},
    })
