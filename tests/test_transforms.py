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


def test_brightness_shift_adds_one_value_to_every_pixel():
    img = np.random.default_rng(3).integers(20, 230, (16, 16, 3), dtype=np.uint8)
    shifts = []
    for seed in range(8):
        out = train_transform(img, None, 16, (1.0, 1.0), False, 0.0, np.random.default_rng(seed), brightness=10.0)[0]
        delta = denormalise(out).astype(int) - img
        assert delta.max() - delta.min() <= 1 and abs(delta.mean()) <= 10.5  # one shift (±1 rounding), at most 10
        shifts.append(delta.mean())
    assert np.std(shifts) > 2  # a new value per sample
    same = train_transform(img, None, 16, (1.0, 1.0), False, 0.0, np.random.default_rng(4))[0]
    assert (denormalise(same).astype(int) == img).all()  # 0: no shift
