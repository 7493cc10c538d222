"""``swtformer_voc``: SWTformer — Swin Transformer CAM (V1) or R-CAM (V2) seeds, offline affinity + random walk,
pseudo labels, segmentation.

SWTformer's parts: ``models/swtformer.py`` (network, HFF, seed locating, prototypes, losses, the ``swtformer``
config section), ``stages/train_swtformer.py``, ``stages/swtformer_seeds.py``; the offline affinity and the
random walk are the ones ``acr_voc`` uses (``models/affinity_net.py``, ``stages/train_affinity.py``,
``stages/random_walk_seeds.py``).
"""
from pipeline.checkpoint import MODEL_FILE
from stages.swtformer_seeds import MAKE_SWTFORMER_SEEDS
from stages.train_swtformer import TRAIN_SWTFORMER
from workflows.registry import define_flow, offline_affinity_stages

classifier = TRAIN_SWTFORMER
seeds = MAKE_SWTFORMER_SEEDS.wire(model=classifier.out(MODEL_FILE))

SPEC = define_flow(
    "swtformer_voc",
    offline_affinity_stages(classifier, seeds),
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
