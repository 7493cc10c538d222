import numpy as np

from pipeline.transforms import denormalise, normalise, random_crop, train_transform


def test_crop_pads_small_images_with_ignore():
    rng = np.random.default_rng(0)
    img = np.full((20, 30, 3), 200, np.uint8)
    mask = np.ones((20, 30), np.uint8)
    ci, cm, valid = random_crop(img, mask, 40, rng)
    assert ci.shape == (40, 40, 3) and cm.shape == (40, 40)
    assert (cm[valid == 0] == 255).all() and (cm[valid == 1] == 1).all()
    assert valid.sum() == 20 * 30


def test_train_transform_shapes_and_determinism():
    img = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:20, 10:30] = 7
    a = train_transform(img, mask, 48, (0.7, 1.3), True, 0.3, np.random.default_rng(5))
    b = train_transform(img, mask, 48, (0.7, 1.3), True, 0.3, np.random.default_rng(5))
    assert a[0].shape == (3, 48, 48) and a[1].shape == (48, 48)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert set(np.unique(a[1].numpy())) <= {0, 7, 255}  # nearest resize keeps label values


def test_normalise_roundtrip():
    img = np.random.default_rng(2).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    assert np.abs(denormalise(normalise(img)).astype(int) - img).max() <= 1
