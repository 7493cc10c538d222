"""Stage ``make_seeds`` of SWTformer: V2's R-CAM (V1's CAM) of the image's classes, multi-scale + flip.

The trained network decides: V1 stores its CAM, ReLU(F_out), in ``seeds.zarr``; V2 stores scores of the R-CAM
(the prototypes' re-activation of F_hie, with the seeds located from the image labels, as SIPE's inference does)
in ``seeds.zarr`` and the CAM of the same pass in ``seeds_unrefined.zarr``, so the flow can score both and the
guard can compare them. V2's R-CAM has a background map of its own (the background prototype's): the stored
score of class k is R_k / (R_k + R_B), or ½ + (R_k − R_B) / 2 (``swtformer_seeds.scores``;
``models.swtformer.background_aware_scores``), so ``eval_seeds``'
threshold ½ is SIPE's argmax over the C+1 maps, and its sweep chooses the threshold as for every seed.

How V2 locates the seeds of an image is the ``swtformer_seeds`` section's (``models.swtformer.SWTformerSeedsConfig``):
per view (every scale and flip on its own) or SIPE's flip fusion before locating (``views: flip_fused``; the flip
then happens inside the network's pass, so ``multiscale_maps`` sums the scales only), on T_out's or F_hie's affinity,
absent classes masked or competing, and how the scores are stored (docs/swtformer.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.cam_classifier import multiscale_maps, normalise_cams
from models.swtformer import SWTformerSeedsConfig, background_aware_scores
from pipeline.runtime import Runtime
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore, open_for_stage
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import fill_store, image_pool, labels_to_onehot_classes, trained_model
from stages.make_seeds import SEED_READS, SEEDS, SEEDS_UNREFINED


@torch.no_grad()
def image_swtformer_seeds(model, image: np.ndarray, classes: list[int], scales: list[float], flip: bool,
                          runtime: Runtime = Runtime(), locating: SWTformerSeedsConfig = SWTformerSeedsConfig()
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(CAM, V2 seed scores) of one uint8 image's ``classes`` (VOC indices), each K×H×W float32 (V1: the CAM twice).

    The CAM is summed over scales and flips and max-normalised per class. V2's R-CAMs — background first — are
    summed and max-normalised the same way (SIPE make_cam.py:56-59), then turned into ``background_aware_scores``
    (at threshold ½, SIPE's argmax over the background and the classes, eval_cam.py:20). ``locating``: how the
    seeds are located (``views``, ``features``, ``absent``).
    """
    if not classes:
        empty = np.zeros((0, *image.shape[:2]), np.float32)
        return empty, empty
    idx = [c - 1 for c in classes]
    labels = torch.zeros(model.classifier.out_channels)  # the network's foreground classes (VOC 20, COCO 80)
    labels[idx] = 1

    fused = flip and locating.views == "flip_fused"

    def maps(batch: torch.Tensor) -> torch.Tensor:
        cam, rcam = model.seed_maps(batch, labels.to(batch.device).expand(batch.shape[0], -1),
                                    "flip_fused" if fused else "per_view", locating.features, locating.absent)
        if model.version == 1:
            return cam[:, idx]
        return torch.cat([cam[:, idx], rcam[:, [0, *(i + 1 for i in idx)]]], 1)

    with runtime.autocast():
        both = multiscale_maps(maps, runtime.to(normalise(image)), scales, flip and not fused)
    k = len(classes)
    cam = normalise_cams(both[:k]).cpu().numpy()
    if model.version == 1:
        return cam, cam
    return cam, background_aware_scores(normalise_cams(both[k:]), locating.scores).cpu().numpy()


@dataclass
class SWTformerSeedWorker:
    config: ConfigView
    model: Path
    root: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        cam = self.config.cam
        rt = Runtime.from_config(self.config)
        model = trained_model(self.model, rt)
        ds = VOCFolder(self.root)
        classes = labels_to_onehot_classes(ds.image_labels(image_id))
        cams, rcams = image_swtformer_seeds(model, ds.image(image_id), classes, cam.scales, cam.flip, rt,
                                            SWTformerSeedsConfig(**self.config.swtformer_seeds.model_dump()))
        stores = {SEEDS: cams} if model.version == 1 else {SEEDS_UNREFINED: cams, SEEDS: rcams}
        # the unrefined store first: the seeds store is the one fill_store checks for resumption
        for name, maps in stores.items():
            LabelStore(self.out.parent / name).write(image_id, maps.astype(np.float16), {"classes": classes})


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    version = trained_model(ctx.input("model")).version
    # opened for both versions, so that maps of an earlier run are never read as this run's (empty for V1)
    open_for_stage(ctx.output(SEEDS_UNREFINED), ctx.key, {"stage": ctx.stage.name, "kind": "cam_scores"})
    _, done = fill_store(ctx, SEEDS, {"kind": "cam_scores"}, ds.ids,
                         lambda out: SWTformerSeedWorker(cfg, ctx.input("model"), ds.root, out), image_pool(ctx, network=True))
    return {"images": len(ds), "resumed_from": done, "maps": "cam" if version == 1 else "rcam"}


MAKE_SWTFORMER_SEEDS = Stage("make_seeds", run, reads=(*SEED_READS, "swtformer_seeds"), writes=(SEEDS, SEEDS_UNREFINED), inputs=("model",),
                             description="SWTformer's seeds: R-CAM (V2) or CAM (V1), multi-scale + flip → seeds.zarr")
