import numpy as np
import pytest
import torch

from stages.random_walk import propagate, transition_matrix


def test_propagate_against_numpy():
    rng = np.random.default_rng(0)
    a = rng.random((6, 6))
    a = a + a.T
    cams = rng.random((3, 6))
    t = a**2 / (a**2).sum(0, keepdims=True) + 0  # column-normalised A^β
    t = t @ t  # log_t = 1
    expected = cams @ t
    got = propagate(torch.tensor(cams), torch.tensor(a), beta=2.0, log_t=1, eps=0.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_eps_in_denominator_and_batch():
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    t = transition_matrix(a, beta=1.0, eps=1e-5)
    assert torch.allclose(t[0, :, 0], torch.tensor([1 / (1 + 1e-5), 0.0]))
    assert torch.all(t[0, :, 1] == 0)
    cams = torch.rand(4, 3, 2)
    assert propagate(cams, a.expand(4, 2, 2)).shape == (4, 3, 2)


def test_columns_of_transition_sum_to_one():
    a = torch.rand(10, 10)
    t = transition_matrix(a, beta=3.0, log_t=2, eps=0.0)
    assert torch.allclose(t.sum(0), torch.ones(10), atol=1e-5)


def test_few_maps_take_the_iterated_product_with_the_same_result():
    # C=1 map on N=40 nodes with log_t=4: 16 vector products instead of 4 squarings
    rng = np.random.default_rng(1)
    a = rng.random((40, 40))
    cams = rng.random((1, 40))
    t = a**2 / ((a**2).sum(0, keepdims=True) + 1e-5)
    expected = cams @ np.linalg.matrix_power(t, 16)
    got = propagate(torch.tensor(cams), torch.tensor(a), beta=2.0, log_t=4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)


def test_the_sparse_walk_is_the_dense_walk():
    # the AffinityNet's walk (sparse: the pairs within the radius) against the dense N×N formula, C maps, log_t 0–3
    from models.affinity_net import sparse_affinity
    from models.pairs import radius_mask
    torch.manual_seed(2)
    f = torch.randn(5, 6, 8, dtype=torch.float64)
    near = radius_mask(6, 8, 3, "euclidean")
    dense = torch.where(near, torch.exp(-torch.cdist(f.reshape(5, -1).T, f.reshape(5, -1).T, p=1) / 5), 0.0)
    rng = np.random.default_rng(3)
    for log_t in range(4):
        cams = rng.random((2, 3, 48))
        t = dense.numpy() ** 8.0
        t = t / (t.sum(0, keepdims=True) + 1e-5)
        expected = cams @ np.linalg.matrix_power(t, 2 ** log_t)
        got = propagate(torch.tensor(cams), sparse_affinity(f, 3), beta=8.0, log_t=log_t)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="not squared"):
        transition_matrix(sparse_affinity(f, 3), log_t=1)
