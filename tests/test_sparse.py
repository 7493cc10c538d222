"""Sparse annotations: every format read into the same label, the contract's rasterisation, bad files, synthetic data."""
import json
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.errors import UserError
from pipeline.sparse import SCRIBBLE_TAGS, rasterise, read_sparse, scribble_xml, standard_paths
from pipeline.voc import VOCFolder, save_label_png

SHAPES = [(0, [(0, 9), (5, 7), (13, 8)]), (12, [(3, 2), (8, 2), (9, 5)]), (15, [(11, 3)])]


def contract_raster(shapes, h, w):
    """The contract's recipe, written out: start from 255, per polygon a 3-wide curve-joint line, then 3-px ellipses."""
    im = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(im)
    for cls, pts in shapes:
        if len(pts) > 1:
            d.line(pts, fill=cls, width=3, joint="curve")
        for x, y in pts:
            d.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=cls)
    return np.asarray(im)


def test_later_shapes_paint_over_earlier_and_the_rest_is_unlabelled():
    lab = rasterise([(3, [(1, 1), (6, 1)]), (7, [(1, 1)])], 4, 9)
    assert lab.dtype == np.uint8 and lab.shape == (4, 9)
    assert lab[1, 1] == lab[0, 1] == lab[1, 0] == lab[1, 2] == 7  # the click painted over the line's start
    assert lab[1, 5] == 3 and lab[3, 8] == 255 and lab[0, 0] == 255


def test_every_format_gives_the_contract_raster(tmp_path):
    h, w = 12, 16
    ref = contract_raster(SHAPES, h, w)
    folder = tmp_path / "scribble_annotation" / "pascal_2012"
    folder.mkdir(parents=True)
    (folder / "img1.xml").write_text(scribble_xml("img1", h, w, SHAPES))
    with zipfile.ZipFile(tmp_path / "voc_scribbles.zip", "w") as z:
        z.writestr("img1.xml", scribble_xml("img1", h, w, SHAPES))
    pngs = tmp_path / "pascal_2012_scribble"
    pngs.mkdir()
    save_label_png(pngs / "img1.png", ref)
    for src in (folder, tmp_path / "voc_scribbles.zip", pngs):
        np.testing.assert_array_equal(read_sparse([src], "scribble").label("img1", h, w), ref, err_msg=str(src))
    clicks = [(12, [(3, 2)]), (15, [(11, 3)])]
    (tmp_path / "p.json").write_text(json.dumps({"img1": [{"cls": c, "x": p[0][0], "y": p[0][1], "rank": 1} for c, p in clicks]}))
    (tmp_path / "bg.json").write_text(json.dumps({"img1": [{"cls": 0, "x": 6, "y": 9}]}))
    got = read_sparse([tmp_path / "p.json", tmp_path / "bg.json"], "point").label("img1", h, w)
    np.testing.assert_array_equal(got, contract_raster(clicks + [(0, [(6, 9)])], h, w))
    assert standard_paths([tmp_path], "scribble") == [folder]
    assert standard_paths([tmp_path / "nowhere", tmp_path], "point") == []


def test_scribblesup_tags_are_voc_order():
    assert len(SCRIBBLE_TAGS) == 21 and SCRIBBLE_TAGS[12] == "dog" and SCRIBBLE_TAGS[20] == "monitor"


@pytest.mark.parametrize("case, expect", [
    ("tag", "unknown tag 'puppy'"),
    ("outside", "lies outside"),
    ("size", "declares 20×12 but image img1 is 16×12"),
    ("xml", "is not valid XML"),
])
def test_bad_scribble_files_name_the_file(tmp_path, case, expect):
    xml = scribble_xml("img1", 12, 16, SHAPES)
    if case == "tag":
        xml = xml.replace("<tag>dog</tag>", "<tag>puppy</tag>")
    elif case == "outside":
        xml = xml.replace("<X>13</X>", "<X>16</X>")
    elif case == "size":
        xml = xml.replace("<width>16</width>", "<width>20</width>")
    else:
        xml = xml[:-5]
    (tmp_path / "img1.xml").write_text(xml)
    with pytest.raises(UserError) as e:
        read_sparse([tmp_path], "scribble").label("img1", 12, 16)
    assert expect in str(e.value) and "img1.xml" in str(e.value)


def test_bad_point_files_and_missing_annotations(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"a": [{"cls": 3, "x": 40, "y": 1}], "b": [{"x": 1}]}))
    with pytest.raises(UserError, match="without numeric cls, x, y"):
        read_sparse([tmp_path / "p.json"], "point")
    (tmp_path / "p.json").write_text(json.dumps({"a": [{"cls": 3, "x": 40, "y": 1}], "c": [{"cls": 25, "x": 1, "y": 1}]}))
    sp = read_sparse([tmp_path / "p.json"], "point")
    with pytest.raises(UserError, match=r"point \(40, 1\) of image a lies outside its 16×12"):
        sp.label("a", 12, 16)
    with pytest.raises(UserError, match="class 25 of image c is not a VOC index"):
        sp.label("c", 12, 16)
    with pytest.raises(UserError, match="image 'z' has no point annotation"):
        sp.label("z", 12, 16)
    (tmp_path / "q.json").write_text("{not json")
    with pytest.raises(UserError, match="q.json is not readable JSON"):
        read_sparse([tmp_path / "q.json"], "point")
    with pytest.raises(UserError, match="does not exist: fix data.sparse.paths"):
        read_sparse([tmp_path / "none.zip"], "scribble")


def test_synthetic_sparse_annotations_lie_on_their_objects(synthetic_root):
    folder = VOCFolder(synthetic_root)
    train = (synthetic_root / "ImageSets/Segmentation/train.txt").read_text().split()
    for kind in ("scribble", "point"):
        sp = read_sparse(standard_paths([synthetic_root], kind), kind)
        assert sp.ids() == sorted(train)
        for i in train:
            gt = folder.mask(i)
            lab = sp.label(i, *gt.shape)
            on = lab != 255
            assert on.any() and (lab[on] == gt[on]).all(), (kind, i)  # every labelled pixel is right
            objects = set(np.unique(gt)) - {0, 255}
            if kind == "scribble":  # every class of the image has a scribble, and the background too
                assert objects | {0} <= set(np.unique(lab[on])) | {c for c in objects if (gt == c).sum() < 60}, i


def test_an_older_synthetic_folder_gets_its_annotations_without_new_images(tmp_path):
    from pipeline.synthetic import make_synthetic
    root = make_synthetic(tmp_path, n_train=3, n_val=1, seed=5, min_size=64, max_size=80)
    marker = json.loads((root / "synthetic.json").read_text())
    marker.pop("sparse")
    (root / "synthetic.json").write_text(json.dumps(marker))  # as a folder written before the annotations existed
    for name in ("voc_scribbles.zip", "voc_whats_the_point.json", "voc_whats_the_point_bg_from_scribbles.json"):
        (root / name).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (root / "JPEGImages").iterdir()}
    assert make_synthetic(tmp_path, n_train=3, n_val=1, seed=5, min_size=64, max_size=80) == root
    assert {p.name: p.stat().st_mtime_ns for p in (root / "JPEGImages").iterdir()} == before
    assert read_sparse([root / "voc_scribbles.zip"], "scribble").ids() == [f"synth_train_{i:05d}" for i in range(3)]
