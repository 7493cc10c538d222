import numpy as np
import pydensecrf.densecrf as dcrf

from stages.crf import dense_crf


def _reference(img, probs, t=10):
    """The AFA/ToCo crf_inference: unary_from_softmax, Gaussian (3, 3) + bilateral (80, 13, 10)."""
    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(c, -1).astype(np.float32)
    d.setUnaryEnergy(np.ascontiguousarray(unary))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(img), compat=10)
    return np.array(d.inference(t)).reshape(c, h, w)


def test_dense_crf_matches_reference_and_is_a_distribution():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    p = rng.random((3, 20, 24)).astype(np.float32)
    p /= p.sum(0, keepdims=True)
    out = dense_crf(img, p)
    np.testing.assert_allclose(out, _reference(img, p), atol=1e-6)
    np.testing.assert_allclose(out.sum(0), 1, atol=1e-4)


def test_dense_crf_snaps_to_colour_edge():
    img = np.zeros((20, 20, 3), np.uint8)
    img[:, 10:] = 255
    p = np.empty((2, 20, 20), np.float32)
    p[0], p[1] = 0.7, 0.3  # background on the dark half ...
    p[0, :, 7:], p[1, :, 7:] = 0.45, 0.55  # ... but the "object" leaks 3 px past the edge at column 10
    lab = dense_crf(img, p).argmax(0)
    assert (lab[:, 10:] == 1).mean() > 0.95
    assert (lab[:, :10] == 0).mean() > 0.95
