"""The label store at scale: packs keep the file count bounded, read back byte-identical, resume finds a missing or
corrupt packed image, per-image workers' loose entries are packed by the stage, and old-layout stores still read."""
import os
import shutil

import numpy as np
import pytest
import zarr

import pipeline.store as store_mod
import stages.common as common_mod
from pipeline.store import KEY_ATTR, PACKS, CorruptEntry, LabelStore, open_for_stage


def _images(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n):
        h, w = rng.integers(1, 24, 2)
        out[f"COCO_train2014_{k:012d}"] = rng.integers(0, 256, (h, w)).astype(np.uint8)
    return out


def _pack_dirs(path) -> list[str]:
    return sorted(n for n in os.listdir(path / PACKS) if n.startswith("p"))


def test_2000_images_in_packs_are_few_files_and_read_back_byte_identical(tmp_path):
    store = open_for_stage(tmp_path / "labels.zarr", "k", {"stage": "x"})
    imgs = _images(2000)
    maps = {f"m{k}": np.random.default_rng(k).random((3, 7, 5)).astype(np.float16) for k in range(50)}
    store.write_many([(i, a, {"n": k}) for k, (i, a) in enumerate(imgs.items())] +
                     [(i, a, {"classes": [1, 2, 3]}) for i, a in maps.items()])
    # 2000 uint8 images: 2 packs of <= 1024 (+1 float16 pack), each a zarr.json and one shard file
    assert len(_pack_dirs(store.path)) == 3 and store.files() <= 2 + 2 * 3, store.files()
    fresh = LabelStore(store.path)
    assert fresh.ids() == fresh.complete_ids() == sorted([*imgs, *maps]) and fresh.loose_ids() == []
    for i, a in {**imgs, **maps}.items():
        b = fresh.read(i)
        assert b.dtype == a.dtype and b.shape == a.shape and b.tobytes() == a.tobytes(), i
    assert fresh.read_attrs("m3") == {"classes": [1, 2, 3]} and fresh.read_attrs(next(iter(imgs))) == {"n": 0}
    # any Zarr v3 reader finds an image from the pack's attributes
    g = zarr.open_group(str(store.path), mode="r", zarr_format=3)
    pack = g[PACKS][_pack_dirs(store.path)[0]]
    e = pack.attrs["images"]["COCO_train2014_000000000007"]
    assert np.array_equal(pack[e["at"]:e["at"] + np.prod(e["shape"])].reshape(e["shape"]), imgs["COCO_train2014_000000000007"])


def test_resume_check_finds_a_truncated_deleted_or_corrupt_pack(tmp_path):
    store = open_for_stage(tmp_path / "labels.zarr", "k", {})
    imgs = _images(1500, seed=1)
    store.write_many([(i, a, None) for i, a in imgs.items()])
    first, second = _pack_dirs(store.path)
    in_first = {i for i, name in store.packed().items() if name == first}
    shard = store.path / PACKS / first / "c" / "0"
    data = shard.read_bytes()
    shard.write_bytes(data[:-7])  # truncated: its images are not complete, the others are
    assert set(LabelStore(store.path).complete_ids()) == set(imgs) - in_first
    shard.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:4000]) + data[4000:])  # same size, damaged
    damaged = LabelStore(store.path)
    assert len(damaged.complete_ids()) == len(imgs)  # the size check passes: the checksum catches it on read
    with pytest.raises(CorruptEntry, match="does not match its checksum"):
        [damaged.read(i) for i in sorted(in_first)]
    shutil.rmtree(store.path / PACKS / second)
    assert set(LabelStore(store.path).complete_ids()) == in_first
    # redone images supersede the broken pack, which is then deleted
    shard.write_bytes(data[:-7])
    redo = LabelStore(store.path)
    redo.write_many([(i, imgs[i], None) for i in sorted(set(imgs) - set(redo.complete_ids()))])
    assert redo.complete_ids() == sorted(imgs) and first not in _pack_dirs(store.path)
    assert all(np.array_equal(redo.read(i), a) for i, a in list(imgs.items())[::50])


class _Label:
    def __init__(self, out):
        self.out = out

    def __call__(self, image_id):
        LabelStore(self.out).write(image_id, np.full((3, 4), int(image_id[1:]) % 251, np.uint8), {"k": image_id})


CALLS = []


def _per_image(ctx):
    from pipeline.parallel import ImagePool
    from stages.common import fill_store
    ids = [f"i{k}" for k in range(40)]
    store, done = fill_store(ctx, "out.zarr", {}, ids, _Label, ImagePool(processes=2))
    CALLS.append(done)
    return {"images": len(store), "resumed_from": done}


def test_a_stage_packs_its_workers_loose_entries_and_redoes_a_lost_pack(tmp_path, monkeypatch):
    from pipeline.runs import Run, run_stage
    from pipeline.stage import Stage
    from tests.test_reliability import cam_config
    monkeypatch.setattr(store_mod, "PACK_MIN", 8)
    monkeypatch.setattr(common_mod, "PACK_MIN", 8)
    monkeypatch.setattr(store_mod, "PACK_IMAGES", 16)
    run = Run.create(tmp_path / "run", cam_config())
    stage = Stage("per_image", _per_image, writes=("out.zarr",), reads_data=False)
    assert run_stage(run, stage)["status"] == "completed" and CALLS == [0]
    path = run.stage_dir("per_image") / "out.zarr"
    store = LabelStore(path)
    assert store.loose_ids() == [] and len(_pack_dirs(path)) >= 3  # 40 images in packs of <= 16, nothing loose
    assert store.read("i17").tolist() == [[17] * 4] * 3 and store.read_attrs("i17") == {"k": "i17"}
    assert run_stage(run, stage)["status"] == "cached" and CALLS == [0]
    lost = _pack_dirs(path)[0]
    n_lost = len(zarr.open_array(str(path / PACKS / lost), mode="r").attrs["images"])
    shutil.rmtree(path / PACKS / lost)
    assert run_stage(run, stage)["status"] == "completed" and CALLS == [0, 40 - n_lost]  # only the lost ones redone
    again = LabelStore(path)
    assert again.complete_ids() == sorted(f"i{k}" for k in range(40)) and again.loose_ids() == []
    assert all(int(again.read(f"i{k}")[0, 0]) == k for k in range(40))


def test_an_old_layout_store_reads_resumes_and_packs(tmp_path):
    """A store written before packs (one Zarr array a folder, as ``LabelStore.write`` wrote them) reads as it is."""
    path = tmp_path / "old.zarr"
    zarr.open_group(str(path), mode="a", zarr_format=3).attrs.update({"stage": "make_seeds", "key": "k"})
    imgs = _images(30, seed=2)
    for i, a in imgs.items():
        arr = zarr.create_array(store=str(path / i), shape=a.shape, dtype=a.dtype, chunks=a.shape, zarr_format=3,
                                attributes={"classes": [1], KEY_ATTR: "k"}, config={"write_empty_chunks": True})
        arr[...] = a
    old = LabelStore(path)
    assert old.ids() == old.complete_ids() == sorted(imgs) and not (path / PACKS).exists()
    assert all(np.array_equal(old.read(i), a) for i, a in imgs.items()) and old.read_attrs(next(iter(imgs))) == {"classes": [1]}
    gone = sorted(imgs)[3]
    (path / gone / "c" / "0" / "0").unlink()  # a lost chunk: not complete, and never read as zeros
    assert gone not in old.complete_ids()
    with pytest.raises(KeyError, match="not whole"):
        old.read(gone)
    assert old.pack(min_loose=1) == 29 and old.loose_ids() == [gone]  # the whole entries move into a pack
    assert all(np.array_equal(old.read(i), a) for i, a in imgs.items() if i != gone)
    assert old.read_attrs(sorted(imgs)[0]) == {"classes": [1]}
