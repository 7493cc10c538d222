"""``acr_voc``: ACR — attention-consistent ViT, gradient-attention seeds, offline affinity + random walk, segmentation.

ACR's parts: ``models/acr.py`` (network, losses, seeds, the ``acr`` config section), ``models/token_views.py``
(views and f⁻¹), ``stages/train_acr_classifier.py``, ``stages/acr_seeds.py``; the offline affinity is PSA's
(``models/affinity_net.py``, ``stages/train_affinity.py``, ``stages/random_walk_seeds.py``).
"""
from pipeline.checkpoint import MODEL_FILE
from stages.acr_seeds import MAKE_ACR_SEEDS
from stages.train_acr_classifier import TRAIN_ACR_CLASSIFIER
from workflows.registry import define_flow, offline_affinity_stages

classifier = TRAIN_ACR_CLASSIFIER
seeds = MAKE_ACR_SEEDS.wire(model=classifier.out(MODEL_FILE))

SPEC = define_flow(
    "acr_voc",
    offline_affinity_stages(classifier, seeds),
    "ACR: attention-consistent ViT → gradient-attention seeds → affinity random walk → pseudo labels → segmentation",
    profile_defaults={
        # on 2 CPU cores: the classifier starts from the ViT-hybrid stand-in (the `model` section's default) with
        # light consistency weights, chosen from scratch (at α = β = 1 from scratch the attention collapses to
        # uniform, which satisfies both terms; see README "ACR")
        "default": {"train_classifier": {"lr": 1e-3}, "acr": {"alpha": 0.02, "beta": 0.02},
                    "affinity": {"log_t": 1}},
        "smoke": {"acr": {"alpha": 0.02, "beta": 0.02}, "affinity": {"log_t": 1}},
        # ViT-hybrid-B/16 (ResNet-50 stem) at 384 crops with ImageNet weights, as in the paper
        "paper": {"model": {"backbone": "vit_base_r50_s16_384"}, "pseudo": {"bkg_threshold": 0.25},
                  "affinity": {"log_t": 8, "backbone": "resnet50", "channels": None, "pretrained": True, "weights": None, "dims": [64, 128, 256],
                               "train": {"steps": 8000, "batch_size": 8, "crop_size": 448, "lr": 0.1, "optimizer": "sgd",
                                         "weight_decay": 5e-4, "warmup_steps": 0, "checkpoint_every": 1000, "log_every": 50,
                                         "scale_range": [0.7, 1.3], "color_jitter": 0.0}}},
    })
