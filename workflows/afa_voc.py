"""``afa_voc``: AFA as one merged single-stage training, its seeds and pseudo labels stored and scored."""
from prefect import flow

from workflows.stages import (EVAL_PSEUDO_LABELS, EVAL_SEEDS, EVAL_SINGLE_STAGE_SEGMENTATION, MAKE_AFA_PSEUDO_LABELS,
                              MAKE_SEEDS_FROM_AFA, TRAIN_SINGLE_STAGE, as_task)

STAGES = [TRAIN_SINGLE_STAGE, MAKE_SEEDS_FROM_AFA, EVAL_SEEDS, MAKE_AFA_PSEUDO_LABELS, EVAL_PSEUDO_LABELS,
          EVAL_SINGLE_STAGE_SEGMENTATION]
DESCRIPTION = "AFA single stage: MiT classifier + affinity from attention + segmentation → seeds, pseudo labels, val mIoU"

#: the flow's own defaults (under every profile) and its per-profile ones (over the profile)
DEFAULTS: dict = {"pseudo": {"bkg_threshold": 0.1}}
PROFILE_DEFAULTS: dict[str, dict] = {
    # from scratch on 2 CPU cores: a longer schedule than the other flows' 1000 steps, and β_l = 0.02 so that
    # the peaked from-scratch CAMs still leave background labels below it (README, AFA: with 1000 steps and
    # (0.05, 0.15) the module did not beat switching it off)
    "default": {"afa": {"bkg_band": [0.02, 0.15], "train": {"steps": 1500}}},
    # MiT-B1 with ImageNet weights, 512 crops, 20k iterations (warm-ups 2k / 4k), AdamW 6e-5, poly power 1
    "paper": {"afa": {"backbone": "pvt_v2_b1", "pretrained": True, "embed_dims": None, "depths": None, "num_heads": None,
                      "output_stride": 16, "decoder_dim": 256, "attention_per_token": False, "bkg_band": [0.35, 0.55],
                      "radius": 8, "cls_warmup_steps": 2000, "aff_warmup_steps": 4000,
                      "train": {"steps": 20000, "batch_size": 8, "crop_size": 512, "scale_range": [0.5, 2.0], "lr": 6e-5,
                                "weight_decay": 0.01, "warmup_steps": 1500, "poly_power": 1.0, "checkpoint_every": 1000,
                                "log_every": 50, "color_jitter": 0.3}},
              "cam": {"scales": [1.0, 0.5, 1.5], "flip": True},
              "pseudo": {"bkg_threshold": 0.45, "refine": ["par"], "par": {"num_iter": 10}},
              "segmentation": {"eval_scales": [1.0, 0.75, 1.25], "eval_flip": True, "eval_crf": True}},
}


@flow(name="afa_voc", description=DESCRIPTION)
def afa_voc(run_dir: str) -> None:
    for stage in STAGES:
        as_task(stage)(run_dir)
