"""Stage ``make_pseudo_labels``: seeds (or random-walk maps) → background threshold → PAR and/or dense CRF → labels.

Scores are [t, CAM_1..CAM_K] with the background score t; ``refine`` applies PAR
(``stages.refine.par``) and then a dense CRF (``stages.crf.dense_crf``) to them; the label is the
argmax. With an ``ignore_band`` (t_low, t_high) this is done at both thresholds and pixels where
the two labels disagree are set to 255 (AFA's reliable/unreliable split).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from pipeline.config import PseudoConfig
from pipeline.store import LabelStore
from pipeline.voc import IGNORE_INDEX, VOCFolder
from stages.common import fill_store
from stages.crf import dense_crf
from stages.refine import par


def refine_scores(image: np.ndarray, scores: np.ndarray, cfg: PseudoConfig) -> np.ndarray:
    """Apply the configured refinements to (K+1)×H×W scores of one H×W×3 uint8 image."""
    if "par" in cfg.refine:
        img = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
        p = cfg.par
        scores = par(img, torch.from_numpy(scores)[None], p.dilations, p.num_iter, p.w_rgb, p.w_pos, p.w_mix)[0].numpy()
    if "crf" in cfg.refine:
        probs = np.clip(scores, 1e-5, None)
        probs = probs / probs.sum(0, keepdims=True)
        c = cfg.crf
        scores = dense_crf(image, probs, c.n_iter, c.pos_xy_std, c.pos_w, c.bi_xy_std, c.bi_rgb_std, c.bi_w)
    return scores


def constant_background(cams: np.ndarray) -> Callable[[float], np.ndarray]:
    """Scores [t, CAM_1..CAM_K] for a background score t (the CAM papers' rule)."""
    return lambda bkg: np.concatenate([np.full((1, *cams.shape[1:]), bkg, np.float32), cams.astype(np.float32)])


def label_at(image: np.ndarray, scores: np.ndarray, classes: list[int], cfg: PseudoConfig) -> np.ndarray:
    """Refine (K+1)×H×W scores (background first) and take the argmax as VOC labels."""
    return np.asarray([0, *classes], np.uint8)[refine_scores(image, scores, cfg).argmax(0)]


def make_pseudo_label(image: np.ndarray, cams: np.ndarray, classes: list[int], cfg: PseudoConfig,
                      scores_at: Callable[[float], np.ndarray] | None = None) -> np.ndarray:
    """H×W uint8 pseudo label of one image from its normalised CAMs (K×H×W) of ``classes``.

    ``scores_at(t)`` gives the (K+1)×H×W scores for background score t (default: t prepended to the CAMs).
    """
    scores_at = scores_at or constant_background(cams)
    if cfg.ignore_band is None:
        return label_at(image, scores_at(cfg.bkg_threshold), classes, cfg)
    low, high = cfg.ignore_band
    lab_h = label_at(image, scores_at(high), classes, cfg)
    lab_l = label_at(image, scores_at(low), classes, cfg)
    return np.where(lab_h == lab_l, lab_h, IGNORE_INDEX).astype(np.uint8)


@dataclass
class PseudoLabelWorker:
    root: Path
    seeds: Path
    out: Path
    config: dict

    @cached_property
    def cfg(self) -> PseudoConfig:
        return PseudoConfig.model_validate(self.config)

    def __call__(self, image_id: str) -> None:
        cfg = self.cfg
        seeds = LabelStore(self.seeds)
        image = VOCFolder(self.root).image(image_id)
        label = make_pseudo_label(image, seeds.read(image_id), seeds.read_attrs(image_id)["classes"], cfg)
        LabelStore(self.out).write(image_id, label)


#: the stage whose score maps a flow's pseudo labels come from, and its store
SCORE_SOURCES = {"make_seeds": "seeds.zarr", "random_walk": "rw_seeds.zarr"}


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.label_split)
    source = next(s for s in ctx.stage.inputs if s in SCORE_SOURCES)
    seeds = LabelStore(ctx.input_dir(source) / SCORE_SOURCES[source])
    store, done = fill_store(ctx, "pseudo_labels.zarr", {"stage": "make_pseudo_labels", "kind": "labels", "refine": list(cfg.pseudo.refine)},
                             seeds.ids(), lambda out: PseudoLabelWorker(ds.root, seeds.path, out, cfg.pseudo.model_dump(mode="json")),
                             cfg.pseudo.workers, "make_pseudo_labels")
    return {"images": len(store), "resumed_from": done, "scores": source}
