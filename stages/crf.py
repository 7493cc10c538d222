"""Dense CRF post-processing (Krähenbühl & Koltun 2011) with pydensecrf, as in the AFA/ToCo code."""
from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax


def dense_crf(image: np.ndarray, probs: np.ndarray, n_iter: int = 10, pos_xy_std: float = 3, pos_w: float = 3,
              bi_xy_std: float = 80, bi_rgb_std: float = 13, bi_w: float = 10) -> np.ndarray:
    """Mean-field inference of a fully connected CRF; returns C×H×W marginals.

    Unary ψ_u = −log(probs) (probabilities clipped at 1e-5); pairwise: a Gaussian kernel
    (σ_xy = ``pos_xy_std``, weight ``pos_w``) plus a bilateral kernel (σ_xy = ``bi_xy_std``,
    σ_rgb = ``bi_rgb_std``, weight ``bi_w``), Potts compatibility.

    ``image`` H×W×3 uint8, ``probs`` C×H×W float (each pixel's column sums to 1).
    """
    c, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and probs {(h, w)} differ in size")
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image.astype(np.uint8)), compat=bi_w)
    q = d.inference(n_iter)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)
