"""MS COCO 2014 (issue 37): the reader of the official layout and of the VOC-style one, its bad-input lines, the
synthetic COCO data of ``make-synthetic --format coco``, and a smoke run of every ``*_coco`` flow on it."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import cli, cli_here, inspect_json, statuses

# ------------------------------------------------------------------------------------------- hand-made roots


def write_root(root: Path, train: dict, val: dict | None = None, missing: tuple[str, ...] = ()) -> Path:
    """An official-layout root with the instances dicts ``train`` (and ``val``) and a grey JPEG for every image they
    list (its size from the entry) but ``missing``."""
    for split, data in (("train2014", train), ("val2014", val)):
        if data is None:
            continue
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        for im in data.get("images", []):
            if im["file_name"] not in missing:
                Image.new("RGB", (im["width"], im["height"]), (120, 120, 120)).save(root / split / im["file_name"])
    return root


def image(i: int, split: str = "train", h: int = 6, w: int = 8) -> dict:
    return {"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg", "height": h, "width": w}


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A polygon list of the rectangle with corners (x0, y0), (x1, y1): pixels x0..x1−1, y0..y1−1 (pixel centres inside)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


CATS = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 13, "name": "stop sign"}]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSS_CACHE", str(tmp_path / "cache"))  # the index of each root is kept there


def test_classes_by_sorted_id_a_val_only_category_and_unannotated_images(tmp_path):
    from pipeline.coco import COCODataset
    from pipeline.voc import VOCDataset, VOCFolder, detect_layout
    from stages.common import labelled_images
    train = {"images": [image(1), image(2), image(3)], "categories": CATS,
             "annotations": [{"id": 1, "image_id": 1, "category_id": 90, "segmentation": rect(0, 0, 2, 2), "iscrowd": 0},
                             {"id": 2, "image_id": 2, "category_id": 1, "segmentation": rect(1, 1, 3, 3), "iscrowd": 0}]}
    val = {"images": [image(7, "val")], "categories": [*CATS, {"id": 50, "name": "spoon"}],
           "annotations": [{"id": 3, "image_id": 7, "category_id": 50, "segmentation": rect(0, 0, 4, 4), "iscrowd": 0}]}
    root = write_root(tmp_path / "coco", train, val)
    assert detect_layout(root) == ("coco", root)
    folder = VOCFolder(root)
    # ids 1, 13, 50, 90 → 1, 2, 3, 4 whichever file lists them; 50 only in val still has its index
    assert folder.class_names == ("background", "person", "stop sign", "spoon", "toothbrush")
    assert folder.image_labels("COCO_train2014_000000000001").tolist() == [0, 0, 0, 1]
    assert folder.image_labels("COCO_val2014_000000000007").tolist() == [0, 0, 1, 0]
    assert np.unique(folder.mask("COCO_val2014_000000000007")).tolist() == [0, 3]
    ds = VOCDataset(root, "train")
    assert isinstance(ds, COCODataset) and ds.ids == [f"COCO_train2014_00000000000{i}" for i in (1, 2, 3)]
    assert ds.unannotated == 1  # image 3: listed, no annotation
    ids, labels = labelled_images(ds)
    assert ids == ds.ids[:2] and labels.shape == (2, 4)  # kept out of classifier training


def test_masks_polygons_rle_compressed_and_uncompressed_crowd_ignored(tmp_path):
    from pycocotools import mask as mask_utils

    from pipeline.voc import VOCFolder
    h, w = 6, 8
    blob = np.zeros((h, w), np.uint8)
    blob[3:6, 5:8] = 1
    compressed = mask_utils.encode(np.asfortranarray(blob))
    compressed = {"size": [h, w], "counts": compressed["counts"].decode()}
    # uncompressed: column-major runs from background, 6 rows a column: column 0 rows 2-3, i.e. pixels 2, 3
    uncompressed = {"size": [h, w], "counts": [2, 2, 44]}
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rect(0, 0, 4, 3), "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 13, "segmentation": compressed, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 90, "segmentation": uncompressed, "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 13, "segmentation": rect(2, 1, 3, 2), "iscrowd": 1},
            # a degenerate polygon (2 vertices): no pixel (pycocotools alone would read it as the box 0, 0, 8 × 6)
            {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 8, 6]], "iscrowd": 0}]
    root = write_root(tmp_path / "coco", {"images": [image(1)], "categories": CATS, "annotations": anns})
    expected = np.zeros((h, w), np.uint8)
    expected[0:3, 0:4] = 1  # the polygon, person (index 1)
    expected[3:6, 5:8] = 2  # the compressed RLE, stop sign (2)
    expected[2:4, 0] = 3  # the uncompressed RLE, toothbrush (3), over the polygon where they meet
    expected[1, 2] = 255  # the crowd region: ignored, over everything
    got = VOCFolder(root).mask("COCO_train2014_000000000001")
    np.testing.assert_array_equal(got, expected)
    assert VOCFolder(root).image_labels("COCO_train2014_000000000001").tolist() == [1, 1, 1]  # a crowd's class counts


def test_the_voc_style_layout_of_afa_is_detected(tmp_path):
    from pipeline.coco import COCOMaskDataset, COCOMaskFolder
    from pipeline.voc import VOCDataset, VOCFolder, detect_layout, save_label_png
    root = tmp_path / "coco"
    for split, image_id, cls in (("train", "COCO_train2014_000000000009", 80), ("val", "COCO_val2014_000000000042", 1)):
        (root / "JPEGImages" / split).mkdir(parents=True)
        (root / "SegmentationClass" / split).mkdir(parents=True)
        Image.new("RGB", (8, 6)).save(root / "JPEGImages" / split / f"{image_id}.jpg")
        m = np.zeros((6, 8), np.uint8)
        m[2:4, 2:5], m[0, 0] = cls, 255
        save_label_png(root / "SegmentationClass" / split / f"{image_id}.png", m)
    (root / "train.txt").write_text("COCO_train2014_000000000009\n")  # AFA's datasets/coco/train.txt
    assert detect_layout(root) == ("coco_masks", root)
    folder = VOCFolder(root)
    assert isinstance(folder, COCOMaskFolder) and folder.num_classes == 81 and folder.class_names[80] == "toothbrush"
    assert np.nonzero(folder.image_labels("COCO_train2014_000000000009"))[0].tolist() == [79]
    ds = VOCDataset(root, "val")  # no val.txt: every image of JPEGImages/val
    assert isinstance(ds, COCOMaskDataset) and ds.ids == ["COCO_val2014_000000000042"]
    assert VOCDataset(root, "train").ids == ["COCO_train2014_000000000009"]


# ------------------------------------------------------------------------------ an image without foreground tags


def test_an_image_without_classes_is_stored_whole_and_labelled_background(tmp_path):
    """COCO's unannotated training images: their 0×H×W seeds are a whole store entry (loose and packed), and every
    route labels them all background — AFA's propagation included, whose interpolation refuses 0 channels."""
    from pipeline.config import CrfConfig, ParConfig
    from pipeline.store import LabelStore
    from stages.afa_labels import PresentClasses, label_scores
    from stages.make_pseudo_labels import make_pseudo_label
    store = LabelStore(tmp_path / "seeds.zarr")
    store.write("empty", np.zeros((0, 5, 6), np.float16), {"classes": []})
    store.write("one", np.ones((1, 5, 6), np.float16), {"classes": [3]})
    assert store.read("empty").shape == (0, 5, 6) and sorted(store.ids()) == ["empty", "one"]
    store.pack(min_loose=1)
    assert LabelStore(store.path).read("empty").shape == (0, 5, 6)
    image = np.zeros((5, 6, 3), np.uint8)

    def afa_scores(t):  # AFA's unpropagated scores of the stored maps (stages.afa_pseudo_labels.propagated_scores)
        import torch
        return label_scores(torch.zeros(1, 0, 5, 6), PresentClasses.all_of(0), t, (5, 6))[0].numpy()
    for band in (None, (0.3, 0.6)):
        for refine in ([], ["par"], ["par", "crf"]):
            label = make_pseudo_label(image, np.zeros((0, 5, 6), np.float32), [], 0.4, band, refine, ParConfig(),
                                      CrfConfig(), afa_scores)
            assert label.dtype == np.uint8 and label.shape == (5, 6) and not label.any(), (band, refine)


# --------------------------------------------------------------------------------------------------- bad input


GOOD = {"images": [image(1)], "categories": CATS,
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": rect(0, 0, 2, 2), "iscrowd": 0}]}


@pytest.mark.parametrize("change, words", [
    (lambda d: d.pop("categories"), ["instances_train2014.json", "'categories'"]),
    (lambda d: d.pop("images"), ["instances_train2014.json", "'images'"]),
    (lambda d: d["annotations"][0].update(category_id=999), ["instances_train2014.json", "annotation 5", "999", "fix the entry"]),
    (lambda d: d["annotations"][0].update(image_id=77), ["instances_train2014.json", "annotation 5", "77", "fix the entry"]),
    (lambda d: d["annotations"][0].update(segmentation=rect(0, 0, 40, 2)), ["instances_train2014.json", "annotation 5",
                                                                           "outside its 8×6 image"]),
], ids=["no-categories", "no-images", "unknown-category", "unknown-image", "polygon-outside"])
def test_a_bad_instances_file_is_one_line_naming_the_file_and_entry(tmp_path, change, words):
    from pipeline.coco import CocoFormatError
    from pipeline.voc import VOCFolder
    data = json.loads(json.dumps(GOOD))
    change(data)
    root = write_root(tmp_path / "coco", data)
    with pytest.raises(CocoFormatError) as e:
        VOCFolder(root).class_names
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_listed_image_missing_on_disk_is_one_line(tmp_path):
    from pipeline.errors import UserError
    from pipeline.voc import VOCFolder
    root = write_root(tmp_path / "coco", GOOD, missing=(GOOD["images"][0]["file_name"],))
    with pytest.raises(UserError, match=r"COCO_train2014_000000000001\.jpg is missing: .*instances_train2014\.json lists it "
                                        r"\(image id 1\): add the image or remove its entry"):
        VOCFolder(root).check_image("COCO_train2014_000000000001", 1 << 20)


def test_bad_coco_data_fails_run_flow_in_one_line(tmp_path):
    data = json.loads(json.dumps(GOOD))
    data["annotations"][0]["category_id"] = 999
    root = write_root(tmp_path / "coco", data)
    r = cli("run-flow", "cam_coco", "--profile", "smoke", "--data-root", root, "--run-dir", tmp_path / "run", timeout=600)
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "instances_train2014.json: annotation 5" in err[0] and "999" in err[0], r.stderr[-2000:]


# ----------------------------------------------------------------------------------- synthetic data and the flows


#: the smallest data the flows run on (the images as small as conftest's VOC ``synthetic_root``)
SMALL = ("--train", 12, "--val", 4, "--seed", 3, "--min-size", 64, "--max-size", 96)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory, env) -> Path:
    """``make-synthetic --format coco``: the smallest data the flows' smoke profiles train on."""
    out = tmp_path_factory.mktemp("coco") / "coco"
    r = cli("make-synthetic", "--format", "coco", *SMALL, out, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    return out


def test_make_synthetic_coco_writes_the_official_layout(coco_root, env):
    from pipeline.coco import COCO_CATEGORIES
    from pipeline.synthetic import VAL_ONLY_CATEGORY
    train = json.loads((coco_root / "annotations/instances_train2014.json").read_text())
    val = json.loads((coco_root / "annotations/instances_val2014.json").read_text())
    for data, n in ((train, 12), (val, 4)):
        assert [(c["id"], c["name"]) for c in data["categories"]] == list(COCO_CATEGORIES)  # all 80, ids 1..90 with gaps
        assert len(data["images"]) == n
        assert any(a["iscrowd"] == 1 and isinstance(a["segmentation"]["counts"], list) for a in data["annotations"])
        assert any(isinstance(a["segmentation"], list) for a in data["annotations"])  # polygons
    assert {a["image_id"] for a in train["annotations"]} == {im["id"] for im in train["images"][:-1]}  # the last: none
    assert VAL_ONLY_CATEGORY in {a["category_id"] for a in val["annotations"]}
    assert VAL_ONLY_CATEGORY not in {a["category_id"] for a in train["annotations"]}
    for data, folder in ((train, "train2014"), (val, "val2014")):
        for im in data["images"]:
            with Image.open(coco_root / folder / im["file_name"]) as f:
                assert f.size == (im["width"], im["height"])
    # deterministic: the same command writes the same files
    again = coco_root.parent / "again"
    assert cli("make-synthetic", "--format", "coco", *SMALL, again, env=env).returncode == 0
    assert (again / "annotations/instances_train2014.json").read_bytes() == json.dumps(train).encode()
    assert (again / "train2014" / train["images"][0]["file_name"]).read_bytes() == \
        (coco_root / "train2014" / train["images"][0]["file_name"]).read_bytes()


def check_coco_run(info: dict, flow: str, keys=("seed_miou", "pseudo_miou", "seg_miou")) -> None:
    assert info["flow"] == flow
    assert set(statuses(info).values()) == {"completed"}, statuses(info)
    for k in keys:
        assert 0.0 <= info["summary"][k] <= 1.0, k
    for s in info["stages"]:
        if s["name"].startswith("eval_") and "iou" in (s["metrics"] or {}):
            assert len(s["metrics"]["iou"]) == 81, s["name"]  # background and the 80 categories


#: the smoke profile cut to a few steps a network: the wiring on COCO data is under test here, not what training
#: reaches (the VOC twins' smoke tests check that); AFA keeps its three phases (cls, + aff, + seg)
FEW_STEPS = [f"--set={k}={v}" for k, v in (("train_classifier.steps", 10), ("train_classifier.batch_size", 4),
                                           ("affinity.train.steps", 10), ("affinity.train.batch_size", 4),
                                           ("segmentation.train.steps", 10), ("segmentation.train.batch_size", 4),
                                           ("afa.train.steps", 12), ("afa.train.batch_size", 4),
                                           ("afa.cls_warmup_steps", 4), ("afa.aff_warmup_steps", 8))]


@pytest.mark.parametrize("flow", ["cam_coco", "acr_coco", "afa_coco"])
def test_weak_coco_flow_smoke(flow, coco_root, env, tmp_path):
    run_dir = tmp_path / "run"
    r = cli("run-flow", flow, "--profile", "smoke", "--data-root", coco_root, "--run-dir", run_dir, *FEW_STEPS, env=env,
            timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    info = inspect_json(run_dir, env)
    check_coco_run(info, flow)
    st = {s["name"]: s["metrics"] for s in info["stages"]}
    train = next(v for k, v in st.items() if k.startswith("train_") and "unlabelled_images" in (v or {}))
    assert train["unlabelled_images"] == 1  # the unannotated image: counted, not trained on
    assert st["make_pseudo_labels"]["images"] == 12  # ... but labelled (all background), as every training image
    if flow == "cam_coco":  # resume: a second call reuses every stage
        r = cli("run-flow", flow, "--profile", "smoke", "--data-root", coco_root, "--run-dir", run_dir, *FEW_STEPS, env=env,
                timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert set(statuses(inspect_json(run_dir, env)).values()) == {"cached"}


def test_supervised_coco_smoke(coco_root, env, tmp_path):
    r = cli("run-flow", "supervised_coco", "--profile", "smoke", "--data-root", coco_root, "--run-dir", tmp_path / "run",
            *FEW_STEPS, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    check_coco_run(inspect_json(tmp_path / "run", env), "supervised_coco", ("seg_miou",))


def test_the_papers_coco_settings_are_the_paper_profiles_and_the_docs_tables():
    """docs/coco.md's tables (row key → value) against ``paper`` of ``afa_coco`` and ``acr_coco``; the data section."""
    import re

    import workflows  # noqa: F401  (registers the flows)
    from workflows.registry import FLOWS
    doc = (Path(__file__).resolve().parents[1] / "docs" / "coco.md").read_text()
    afa, acr = FLOWS["afa_coco"].resolve("paper"), FLOWS["acr_coco"].resolve("paper")
    t = acr.train_classifier
    expected = {"afa.train.steps": afa.afa.train.steps, "afa.train.batch_size": afa.afa.train.batch_size,
                "afa.train.crop_size": afa.afa.train.crop_size, "afa.seg_propagated_from": afa.afa.seg_propagated_from,
                "pseudo.par.num_iter": afa.pseudo.par.num_iter, "train_classifier.lr": t.lr,
                "train_classifier.batch_size": t.batch_size, "train_classifier.crop_size": t.crop_size,
                "train_classifier.steps": t.steps}
    assert expected == {"afa.train.steps": 80000, "afa.train.batch_size": 8, "afa.train.crop_size": 512,
                        "afa.seg_propagated_from": 15001, "pseudo.par.num_iter": 15, "train_classifier.lr": 0.05,
                        "train_classifier.batch_size": 4, "train_classifier.crop_size": 384,
                        "train_classifier.steps": 82783 // 4 * 5}
    assert afa.afa.cls_warmup_steps == afa.afa.aff_warmup_steps == 5001 and (acr.acr.alpha, acr.acr.beta) == (100, 100)
    assert (t.momentum, t.weight_decay, t.optimizer, tuple(t.resize_long)) == (0.0005, 0.0, "sgd", (345, 438))
    for cfg in (afa, acr):
        assert (cfg.data.dataset, cfg.data.train_split, cfg.data.label_split, cfg.data.score_split) == ("coco", "train", "train", None)
    for key, value in expected.items():
        row = re.search(rf"^\| `{re.escape(key)}` \| ([^|]+) \|", doc, re.M)
        assert row and float(row.group(1).replace(",", "")) == value, key


def test_make_synthetic_coco_never_replaces_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    r = cli_here("make-synthetic", "--format", "coco", "--train", 2, "--val", 1, tmp_path / "mine")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "was not written by make-synthetic" in out and "Traceback" not in out
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"x"
