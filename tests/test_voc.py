import numpy as np
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.synthetic import make_synthetic
from pipeline.voc import VOCDataset, find_voc_root, save_label_png


def make_voc(root, with_aug=True):
    """A small VOC folder: odd sizes, void borders, one image labelled only by XML."""
    v = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets/Segmentation"):
        (v / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"2008_000001": (77, 101), "2008_000002": (53, 64), "2008_000003": (90, 61)}
    for i, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(v / "JPEGImages" / f"{i}.jpg")
    m = np.zeros((77, 101), np.uint8)
    m[10:40, 20:60] = 15
    m[9, 20:60] = 255
    save_label_png(v / "SegmentationClass" / "2008_000001.png", m)
    m2 = np.zeros((53, 64), np.uint8)
    m2[5:20, 5:20] = 12
    save_label_png(v / "SegmentationClass" / "2008_000002.png", m2)
    if with_aug:
        m2b = m2.copy()
        m2b[30:40, 30:40] = 7
        save_label_png(v / "SegmentationClassAug" / "2008_000002.png", m2b)
    (v / "Annotations" / "2008_000003.xml").write_text(
        "<annotation><object><name>dog</name></object><object><name>person</name></object></annotation>")
    (v / "ImageSets/Segmentation/train.txt").write_text("2008_000001\n2008_000002\n2008_000003\n")
    (v / "ImageSets/Segmentation/val.txt").write_text("2008_000001\n")
    return v


def test_reader_masks_labels_and_roots(tmp_path):
    v = make_voc(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", v):
        assert find_voc_root(root) == v
    ds = VOCDataset(tmp_path, "train")
    assert len(ds) == 3
    assert ds.image("2008_000001").shape == (77, 101, 3)
    assert ds.mask("2008_000001")[9, 30] == 255
    assert set(np.unique(ds.mask("2008_000002"))) == {0, 7, 12}  # SegmentationClassAug first
    assert np.nonzero(ds.image_labels("2008_000001"))[0].tolist() == [14]  # person
    assert np.nonzero(ds.image_labels("2008_000003"))[0].tolist() == [11, 14]  # from XML
    assert ds.mask("2008_000003") is None


def test_reader_errors_name_the_culprit(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_voc_root(tmp_path / "missing")
    v = make_voc(tmp_path)
    with pytest.raises(UserError, match="trainval.txt"):
        VOCDataset(v, "trainval")
    (v / "ImageSets/Segmentation/bad.txt").write_text("2008_000001\n2008_999999\n")
    with pytest.raises(UserError, match="2008_999999"):
        VOCDataset(v, "bad").check_images()
    (v / "JPEGImages" / "2008_000002.jpg").write_text("not a jpeg")
    with pytest.raises(UserError, match="2008_000002.jpg cannot be read"):
        VOCDataset(v, "train").image("2008_000002")


def test_synthetic_is_deterministic_and_varied(tmp_path):
    a = make_synthetic(tmp_path / "a", 6, 2, seed=5, min_size=64, max_size=96)
    b = make_synthetic(tmp_path / "b", 6, 2, seed=5, min_size=64, max_size=96)
    for f in sorted((a / "SegmentationClass").iterdir()):
        assert f.read_bytes() == (b / "SegmentationClass" / f.name).read_bytes()
    ds = VOCDataset(a, "train")
    sizes = {ds.image(i).shape for i in ds.ids}
    assert len(sizes) > 1  # varying image sizes
    for i in ds.ids:
        m = ds.mask(i)
        assert (m == 255).any() and (m == 0).any()  # void borders, background
        assert 1 <= ds.image_labels(i).sum() <= 3
    assert (a / "Annotations" / f"{ds.ids[0]}.xml").is_file()
    assert len(VOCDataset(a, "val")) == 2


def test_synthetic_style_b_is_deterministic_and_another_dataset(tmp_path):
    b1 = make_synthetic(tmp_path / "b1", 6, 2, seed=5, min_size=64, max_size=96, style="b")
    b2 = make_synthetic(tmp_path / "b2", 6, 2, seed=5, min_size=64, max_size=96, style="b")
    a = make_synthetic(tmp_path / "a", 6, 2, seed=5, min_size=64, max_size=96)
    for f in sorted((b1 / "SegmentationClass").iterdir()):
        assert f.read_bytes() == (b2 / "SegmentationClass" / f.name).read_bytes()
    ds_b, ds_a = VOCDataset(b1, "train"), VOCDataset(a, "train")
    classes_b = {c for i in ds_b.ids for c in (ds_b.image_labels(i).nonzero()[0] + 1).tolist()}
    classes_a = {c for i in ds_a.ids for c in (ds_a.image_labels(i).nonzero()[0] + 1).tolist()}
    assert classes_b and not classes_b & classes_a  # other classes
    for i in ds_b.ids:
        m = ds_b.mask(i)
        assert (m == 255).any() and (m == 0).any()
        labels = ds_b.image_labels(i).nonzero()[0] + 1
        assert set(np.unique(m)) - {0, 255} == set(labels.tolist())  # the XML names exactly the visible classes
    assert '"style": "b"' in (b1 / "synthetic.json").read_text()
    with pytest.raises(ValueError, match="style"):
        make_synthetic(tmp_path / "c", 2, 1, style="c")
