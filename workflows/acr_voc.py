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
        # the released run (OpenNLPLab/ACR_WSSS train_acr.sh, train_acr.py, tool/torchutils.py): SGD lr 0.05, poly 0.9,
        # 26,450 steps of a global batch 4 (1 × 4 GPUs); torchutils.PolyOptimizer passes weight_decay positionally
        # into SGD's momentum slot, so the run had momentum 0.0005 and no weight decay; every parameter at one lr;
        # long side in [345, 438], hflip, crop 384, no jitter (myTool.py get_data_from_chunk_v2); seeds at 384 × 384,
        # scale 1 + flip; the threshold swept 0.00-0.99 (evaluation.py --curve). PSA's affinity, PAR and CRF after
        # the seeds are our own route, not the released code's. float32 throughout: train_acr.py:137 runs the
        # training step under autocast(enabled=False) and infer_cam.py has no autocast (the base paper profile: bf16).
        "paper": {"model": {"backbone": "vit_base_r50_s16_384"}, "pseudo": {"bkg_threshold": 0.25}, "amp": "off",
                  "train_classifier": {"steps": 26450, "batch_size": 4, "crop_size": 384, "resize_long": [345, 438],
                                       "color_jitter": 0.0, "optimizer": "sgd", "lr": 0.05, "head_lr_mult": 1.0,
                                       "momentum": 0.0005, "weight_decay": 0.0, "warmup_steps": 0, "poly_power": 0.9},
                  "cam": {"scales": [1.0], "flip": True, "sweep": [i / 100 for i in range(100)], "sweep_widen": False},
                  "affinity": {"log_t": 8, "backbone": "resnet50", "channels": None, "pretrained": True, "weights": None, "dims": [64, 128, 256],
                               "train": {"steps": 8000, "batch_size": 8, "crop_size": 448, "lr": 0.1, "optimizer": "sgd",
                                         "weight_decay": 5e-4, "warmup_steps": 0, "checkpoint_every": 1000, "log_every": 50,
                                         "scale_range": [0.7, 1.3], "color_jitter": 0.0}}},
    })
