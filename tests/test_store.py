import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from pipeline.store import LabelStore, open_for_stage


def test_write_read_sizes_and_attrs(tmp_path):
    s = LabelStore(tmp_path / "l.zarr", {"stage": "make_pseudo_labels", "key": "abc"})
    a = np.random.default_rng(0).integers(0, 21, (37, 53)).astype(np.uint8)
    b = np.full((120, 7), 255, np.uint8)
    s.write("2007_000032", a)
    s.write("img_b", b)
    assert s.ids() == ["2007_000032", "img_b"]
    assert "img_b" in s and "nope" not in s
    np.testing.assert_array_equal(s.read("2007_000032"), a)
    assert s.read("img_b").shape == (120, 7) and s.read("img_b").dtype == np.uint8
    assert s.attrs["stage"] == "make_pseudo_labels"
    # a plain Zarr v3 reader sees the same hierarchy
    g = zarr.open_group(str(tmp_path / "l.zarr"), mode="r", zarr_format=3)
    np.testing.assert_array_equal(g["img_b"][...], b)
    with pytest.raises(KeyError):
        s.read("nope")


def test_rewrite_replaces_with_new_shape(tmp_path):
    s = LabelStore(tmp_path / "l.zarr")
    s.write("x", np.zeros((4, 4), np.uint8))
    s.write("x", np.ones((2, 9), np.uint8))
    assert s.read("x").tolist() == [[1] * 9] * 2
    assert s.ids() == ["x"]


def test_interrupted_write_keeps_old_array(tmp_path, monkeypatch):
    s = LabelStore(tmp_path / "l.zarr")
    s.write("x", np.zeros((4, 4), np.uint8))
    import pipeline.store as store_mod

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(store_mod, "replace_dir", broken)
    with pytest.raises(OSError):
        s.write("x", np.ones((4, 4), np.uint8))
    assert s.read("x").sum() == 0
    # debris is staged outside the store and cleared on the next stage open
    s2 = open_for_stage(tmp_path / "l.zarr", key=None, attrs={})
    assert s2.ids() == ["x"]
    assert not s2._staging.exists()


def test_open_for_stage_resets_on_key_change(tmp_path):
    s = open_for_stage(tmp_path / "l.zarr", "k1", {"stage": "s"})
    s.write("a", np.zeros((2, 2), np.uint8))
    assert open_for_stage(tmp_path / "l.zarr", "k1", {"stage": "s"}).ids() == ["a"]
    s3 = open_for_stage(tmp_path / "l.zarr", "k2", {"stage": "s"})
    assert s3.ids() == [] and s3.attrs["key"] == "k2"


def test_other_process_reads_during_rewrites(tmp_path):
    """A reader in another process only ever sees a whole old or a whole new array."""
    path = tmp_path / "l.zarr"
    s = LabelStore(path)
    s.write("x", np.zeros((64, 64), np.uint8))
    reader = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r})
        from pipeline.store import LabelStore
        s = LabelStore({str(path)!r})
        bad = 0
        for _ in range(300):
            try:
                a = s.read("x")
            except KeyError:
                bad += 1; continue
            if not (a == a.flat[0]).all() or a.shape != (64, 64):
                bad += 1
        print(bad)
    """)
    proc = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True)
    for v in range(1, 200):
        s.write("x", np.full((64, 64), v % 250, np.uint8))
    out, _ = proc.communicate(timeout=120)
    assert out.strip() == "0"
