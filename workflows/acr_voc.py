"""``acr_voc``: ACR — attention-consistent ViT, gradient-attention seeds, offline affinity + random walk, segmentation.

ACR's parts: ``models/acr.py`` (network, losses, seeds, the ``acr`` config section), ``models/token_views.py``
(views and f⁻¹), ``stages/train_acr_classifier.py``, ``stages/acr_seeds.py``; the offline affinity is PSA's
(``models/affinity_net.py``, ``stages/train_affinity.py``, ``stages/random_walk_seeds.py``).
"""
from pipeline.checkpoint import MODEL_FILE
from stages.acr_seeds import MAKE_ACR_SEEDS
from stages.eval_classifier import EVAL_CLASSIFIER
from stages.eval_pseudo_labels import EVAL_PSEUDO_LABELS
from stages.eval_seeds import EVAL_SEEDS, THRESHOLD
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.make_pseudo_labels import MAKE_PSEUDO_LABELS, PSEUDO_LABELS
from stages.make_seeds import SEEDS, SEEDS_UNREFINED
from stages.random_walk_seeds import RANDOM_WALK, RW_SEEDS
from stages.train_acr_classifier import TRAIN_ACR_CLASSIFIER
from stages.train_affinity import TRAIN_AFFINITY
from stages.train_segmentation import TRAIN_SEGMENTATION
from workflows.registry import define_flow

classifier = TRAIN_ACR_CLASSIFIER
seeds = MAKE_ACR_SEEDS.wire(model=classifier.out(MODEL_FILE))
affinity = TRAIN_AFFINITY.wire(seeds=seeds.out(SEEDS), unrefined_seeds=seeds.out(SEEDS_UNREFINED))
seed_scores = EVAL_SEEDS.wire(seeds=seeds.out(SEEDS))
# ACR* (the grad maps before the affinity refinement, grad_aff mode) scored the same way
unrefined_scores = EVAL_SEEDS.named("eval_unrefined_seeds", summary={}).wire(seeds=seeds.out(SEEDS_UNREFINED))
walk = RANDOM_WALK.wire(seeds=seeds.out(SEEDS), affinity=affinity.out(MODEL_FILE), attention=classifier.out(MODEL_FILE))
# the random-walk maps scored like the seeds; the pseudo labels take the threshold chosen on the maps they threshold,
# and the guard compares them with the seeds before the walk and with ACR*, each at its own threshold
walk_scores = EVAL_SEEDS.named("eval_random_walk", summary={}).wire(seeds=walk.out(RW_SEEDS))
pseudo = MAKE_PSEUDO_LABELS.wire(scores=walk.out(RW_SEEDS), threshold=walk_scores.out(THRESHOLD),
                                 seeds=seeds.out(SEEDS), seed_threshold=seed_scores.out(THRESHOLD),
                                 unrefined_seeds=seeds.out(SEEDS_UNREFINED), unrefined_threshold=unrefined_scores.out(THRESHOLD))
segmentation = TRAIN_SEGMENTATION.wire(labels=pseudo.out(PSEUDO_LABELS))

SPEC = define_flow(
    "acr_voc",
    [classifier, EVAL_CLASSIFIER.wire(model=classifier.out(MODEL_FILE)), seeds, seed_scores, unrefined_scores, affinity, walk,
     walk_scores, pseudo,
     EVAL_PSEUDO_LABELS.wire(labels=pseudo.out(PSEUDO_LABELS), seed_sweep=seed_scores.out(THRESHOLD)), segmentation,
     EVAL_SEGMENTATION.wire(model=segmentation.out(MODEL_FILE))],
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
