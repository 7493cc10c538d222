import math

import numpy as np
import pytest

from pipeline.metrics import confusion_matrix, coverage, scores


def test_confusion_matrix_hand_computed():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [255, 2, 0]])
    conf = confusion_matrix(gt, pred, 3)
    # (0,0) (0,1) (1,1) [ (1,255) skipped ] (2,2) [ gt 255 skipped ]
    assert conf.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert conf.dtype == np.int64


def test_confusion_skips_gt_outside_range():
    conf = confusion_matrix(np.array([0, 5, 1]), np.array([0, 0, 1]), 3)
    assert conf.sum() == 2


def test_scores_hand_computed():
    conf = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    s = scores(conf)
    iou0 = 3 / (4 + 5 - 3)
    iou1 = 4 / (6 + 5 - 4)
    assert s["iou"][0] == pytest.approx(iou0)
    assert s["iou"][1] == pytest.approx(iou1)
    assert math.isnan(s["iou"][2])  # undefined: class 2 absent everywhere
    assert s["miou"] == pytest.approx((iou0 + iou1) / 2)  # only classes present in gt
    assert s["pixel_acc"] == pytest.approx(7 / 10)
    assert s["mean_acc"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert s["fp"][0] == pytest.approx((5 - 3) / 6)  # (col - TP)/union
    assert s["fn"][0] == pytest.approx((4 - 3) / 6)  # (row - TP)/union
    assert s["fp"][1] == pytest.approx((5 - 4) / 7)
    assert s["fn"][1] == pytest.approx((6 - 4) / 7)


def test_miou_ignores_class_only_predicted():
    # class 2 predicted but absent from gt: IoU 0 but not counted in mIoU
    conf = np.array([[2, 0, 1], [0, 2, 0], [0, 0, 0]])
    s = scores(conf)
    assert s["iou"][2] == 0.0
    assert s["miou"] == pytest.approx((2 / 3 + 1.0) / 2)


def test_coverage_counts_valid_gt_only():
    pred = np.array([0, 255, 1, 255])
    gt = np.array([0, 1, 255, 255])
    assert coverage(pred, gt) == (1, 2)
    assert coverage(pred) == (2, 4)
