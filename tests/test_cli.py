"""Errors a user can cause: one line naming the thing, a non-zero exit, no traceback.

Commands that stop before any stage run in this process (``cli_here``: the same click command and error path, without
a fresh interpreter's imports per call); ``test_unknown_flow`` and ``test_list_entry_without_image`` keep the console
path (``cli``: a real ``python cli.py``)."""
import pytest

from tests.helpers import cli, cli_here
from tests.test_voc import make_voc


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_list_flows():
    r = cli("list-flows")
    assert r.returncode == 0
    assert "cam_voc" in r.stdout and "supervised_voc" in r.stdout


def test_show_config_prints_resolved_yaml():
    r = cli_here("run-flow", "cam_voc", "--profile", "smoke", "--set", "train_classifier.steps=3", "--show-config")
    assert r.returncode == 0, r.stderr
    assert "steps: 3" in r.stdout and "profile: smoke" in r.stdout


def test_unknown_flow():
    assert_one_line_error(cli("run-flow", "nope_voc"), "nope_voc", "list-flows")


def test_unknown_and_ill_typed_keys():
    assert_one_line_error(cli_here("run-flow", "cam_voc", "--set", "cam.scalez=[1]", "--show-config"), "cam.scalez")
    assert_one_line_error(cli_here("run-flow", "cam_voc", "--set", "train_classifier.steps=abc", "--show-config"),
                          "train_classifier.steps")


def test_missing_data_root(tmp_path):
    assert_one_line_error(cli_here("run-flow", "cam_voc", "--data-root", tmp_path / "nowhere", "--run-dir", tmp_path / "r"),
                          "nowhere")


def test_list_entry_without_image(tmp_path):
    v = make_voc(tmp_path)
    (v / "ImageSets/Segmentation/train.txt").write_text("2008_000001\n2008_000404\n")
    assert_one_line_error(cli("run-flow", "cam_voc", "--profile", "smoke", "--data-root", tmp_path, "--run-dir", tmp_path / "r"),
                          "2008_000404")


def test_unreadable_image(tmp_path):
    v = make_voc(tmp_path)
    (v / "JPEGImages" / "2008_000002.jpg").write_bytes(b"garbage")
    assert_one_line_error(cli_here("run-flow", "cam_voc", "--profile", "smoke", "--data-root", tmp_path, "--run-dir", tmp_path / "r"),
                          "2008_000002.jpg")


@pytest.mark.parametrize("cmd", ["inspect", "show"])
def test_not_a_run_folder(tmp_path, cmd):
    args = [cmd, tmp_path] + (["--out", tmp_path / "g.png"] if cmd == "show" else [])
    assert_one_line_error(cli_here(*args), "not a run folder")


def test_make_synthetic_style_b(tmp_path):
    r = cli_here("make-synthetic", tmp_path / "b", "--train", "3", "--val", "1", "--style", "b")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b" / "VOC2012" / "ImageSets/Segmentation/train.txt").read_text().count("\n") == 3
    r = cli_here("make-synthetic", tmp_path / "c", "--style", "z")
    assert r.returncode != 0 and "'z'" in r.stderr and "Traceback" not in r.stderr
