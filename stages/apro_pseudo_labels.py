"""Stage ``make_pseudo_labels`` of the APro flows: the APro network's predictions on ``data.label_split``, refined
by GP on the image then LP (``models.apro.refine_predictions``) before the arg-max (``apro.refine_labels``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.apro import refine_predictions
from pipeline.stage import ConfigView, Stage
from stages.make_pseudo_labels import PSEUDO_LABELS
from stages.predict_pseudo_labels import PREDICT_READS, predict_pseudo_labels


@dataclass
class AProRefinement:
    apro: ConfigView

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return refine_predictions(image, probs, self.apro)


def run(ctx) -> dict:
    apro = ctx.config.apro
    if not apro.refine_labels:
        return predict_pseudo_labels(ctx)
    return predict_pseudo_labels(ctx, AProRefinement(apro), "apro")


APRO_PSEUDO_LABELS = Stage("make_pseudo_labels", run,
                           reads=(*PREDICT_READS, "apro.refine_labels", "apro.guide", "apro.zeta_g", "apro.gp_edges", "apro.zeta_f", "apro.high_level", "apro.zeta_s", "apro.kernel_size", "apro.num_iter"),
                           writes=(PSEUDO_LABELS,), inputs=("model",),
                           description="the APro network's predictions, refined by GP and LP, as pseudo labels")
