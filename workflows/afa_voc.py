"""``afa_voc``: AFA as one merged single-stage training, its seeds and pseudo labels stored and scored.

AFA's parts: ``models/afa.py`` (network, AFA module, losses, the ``afa`` config section),
``models/mix_transformer.py``, ``stages/train_single_stage.py``, ``stages/afa_labels.py``,
``stages/afa_pseudo_labels.py``.
"""
from pipeline.checkpoint import MODEL_FILE
from stages.afa_pseudo_labels import MAKE_AFA_PSEUDO_LABELS
from stages.eval_classifier import EVAL_CLASSIFIER
from stages.eval_pseudo_labels import EVAL_PSEUDO_LABELS
from stages.eval_seeds import EVAL_SEEDS, THRESHOLD
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.make_pseudo_labels import PSEUDO_LABELS
from stages.make_seeds import MAKE_SEEDS, SEEDS
from stages.train_single_stage import TRAIN_SINGLE_STAGE
from workflows.registry import define_flow

network = TRAIN_SINGLE_STAGE.out(MODEL_FILE)
seeds = MAKE_SEEDS.wire(model=network)
seed_scores = EVAL_SEEDS.wire(seeds=seeds.out(SEEDS))
pseudo = MAKE_AFA_PSEUDO_LABELS.wire(seeds=seeds.out(SEEDS), model=network, threshold=seed_scores.out(THRESHOLD))
#: the stages up to the pseudo labels' score (and the classifier's mAP), shared with ``afa_voc_multistage``
LABEL_STAGES = [TRAIN_SINGLE_STAGE, EVAL_CLASSIFIER.wire(model=network), seeds, seed_scores, pseudo,
                EVAL_PSEUDO_LABELS.wire(labels=pseudo.out(PSEUDO_LABELS), seed_sweep=seed_scores.out(THRESHOLD))]
OWN_BRANCH = EVAL_SEGMENTATION.wire(model=network)
PSEUDO = pseudo
DEFAULTS: dict = {}
PROFILE_DEFAULTS: dict[str, dict] = {
    # from scratch on 2 CPU cores: a longer schedule than the other flows' 1000 steps, and β_l = 0.02 so that
    # the peaked from-scratch CAMs still leave background labels below it (README, AFA: with 1000 steps and
    # (0.05, 0.15) the module did not beat switching it off)
    "default": {"afa": {"bkg_band": [0.02, 0.15], "train": {"steps": 1500}}},
    # the released code (rulixiang/afa: configs/voc_attn_reg.yaml, launch/run_sbatch_attn_reg.sh,
    # scripts/dist_train_voc.py, utils/camutils.py, wetr/): every value with its file:line in docs/afa.md
    "paper": {"afa": {"backbone": "mit_b1", "pretrained": False, "weights": "pretrained/mit_b1.pth",
                      "embed_dims": None, "depths": None, "num_heads": None,
                      "output_stride": 16, "decoder_dim": 256, "attention_per_token": False, "attention": "logits",
                      "label_cams": "multiscale", "label_scales": [1.0, 0.5, 1.5], "cam_fusion": "released",
                      "walk_eps": 0.1, "seg_loss": "balanced", "par_on_box": True, "train_norm": False, "crop_pad": "black",
                      "decoder_init": "mmcv",
                      "bkg_band": [0.35, 0.55], "radius": 8, "reg": False,
                      # L_cls alone while n_iter <= 2000, then + 0.1 L_seg + 0.1 L_aff; L_seg on the PAR labels of the
                      # CAM while n_iter <= 6000 (dist_train_voc.py:339,347)
                      "cls_warmup_steps": 2001, "aff_warmup_steps": 2001, "seg_propagated_from": 6001,
                      # 2 images per GPU on 2 GPUs (voc_attn_reg.yaml:24, run_sbatch_attn_reg.sh:20), crop 512 as the
                      # launch script passes (run_sbatch_attn_reg.sh:15), no colour jitter (datasets/voc.py:107)
                      "train": {"steps": 20000, "batch_size": 4, "crop_size": 512, "scale_range": [0.5, 2.0], "lr": 6e-5,
                                "head_lr_mult": 10.0, "weight_decay": 0.01, "warmup_steps": 1500, "poly_power": 1.0,
                                "checkpoint_every": 1000, "log_every": 50, "color_jitter": 0.0, "hflip": True}},
              "amp": "off",  # the released code trains and labels in float32 (no autocast in dist_train_voc.py)
              "cam": {"scales": [1.0, 0.5, 1.5], "flip": True},
              "pseudo": {"bkg_threshold": 0.45, "refine": ["par"], "par": {"num_iter": 10},
                         # the released test script's CRF (scripts/test_msc_flip.py:106-113)
                         "crf": {"n_iter": 10, "pos_xy_std": 3, "pos_w": 3, "bi_xy_std": 64, "bi_rgb_std": 5, "bi_w": 4}},
              "segmentation": {"eval_scales": [1.0, 0.5, 0.75], "eval_flip": True, "eval_crf": True}},
}

SPEC = define_flow("afa_voc", [*LABEL_STAGES, OWN_BRANCH],
                   "AFA single stage: MiT classifier + affinity from attention + segmentation → seeds, pseudo labels, val mIoU",
                   DEFAULTS, PROFILE_DEFAULTS)
