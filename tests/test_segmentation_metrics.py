"""Tests for mIoU and mIoU under optimal one-to-one class matching."""

import numpy as np
import pytest

from csad_jax.errors import DataError
from csad_jax.segmentation_metrics import (
    confusion_matrix,
    match_classes,
    matched_miou,
    miou,
)


def _true_maps():
    t = np.zeros((2, 6, 6), np.uint8)
    t[0, :3, :3] = 1
    t[0, 4:, 4:] = 2
    t[1, 1:4, 1:4] = 1
    t[1, 5, :] = 3
    return t


def test_permuted_labels_match_perfectly():
    true = _true_maps()
    perm = np.array([0, 3, 1, 2], np.uint8)  # true id -> predicted id
    value, mapping, per_class = matched_miou(perm[true], true)
    assert value == pytest.approx(1.0)
    assert mapping == {0: 0, 3: 1, 1: 2, 2: 3}
    assert set(per_class) == {0, 1, 2, 3}


def test_matched_miou_against_hand_computed_iou():
    true = np.zeros((4, 4), np.int64)
    true[:2, :2] = 1  # 4 px of class 1
    pred = np.zeros((4, 4), np.int64)
    pred[:2, :1] = 5  # 2 px, all inside class 1
    pred[3, 3] = 7  # an extra predicted class on background, unmatched
    value, mapping, per_class = matched_miou([pred], [true])
    assert mapping == {0: 0, 5: 1}
    # class 1: inter 2, union 4. background: 12 true px, 13 predicted-0 px
    # (2 of them class 1), inter 11, union 14 (the class-7 px is wrong).
    assert per_class[1] == pytest.approx(0.5)
    assert per_class[0] == pytest.approx(11 / 14)
    assert value == pytest.approx((0.5 + 11 / 14) / 2)


def test_missing_predicted_class_scores_zero():
    true = _true_maps()
    pred = np.where(true == 3, 0, true)
    value, mapping, per_class = matched_miou(pred, true)
    assert per_class[3] == 0.0
    assert per_class[1] == pytest.approx(1.0)
    assert 3 not in mapping.values()
    assert value < 1.0


def test_matching_maximises_total_iou():
    # two predicted classes each overlap both true classes; best total wins
    conf = np.array([[10, 0, 0], [0, 6, 4], [0, 5, 1]])
    inter = conf[1:, 1:]
    union = conf[1:].sum(1)[:, None] + conf[:, 1:].sum(0)[None] - inter
    iou = inter / union
    best = max(iou[0, 0] + iou[1, 1], iou[0, 1] + iou[1, 0])
    got = match_classes(conf)
    total = sum(iou[t - 1, p - 1] for p, t in got.items() if p)
    assert total == pytest.approx(best)
    assert got == {0: 0, 1: 2, 2: 1}  # the crossed pairing wins (0.78 vs 0.5)


def test_plain_miou_and_absent_class_is_nan():
    true = _true_maps()
    value, iou = miou(true, true, num_classes=5)
    assert value == pytest.approx(1.0)
    assert np.isnan(iou[4])
    with pytest.raises(DataError):
        miou(true, true, num_classes=3)


def test_confusion_counts_and_errors():
    true = _true_maps()
    conf = confusion_matrix(true, true)
    assert conf.sum() == true.size
    np.testing.assert_array_equal(np.diag(conf), np.bincount(true.ravel()))
    with pytest.raises(DataError, match="predicted maps"):
        confusion_matrix(true[:1], true)
    with pytest.raises(DataError, match="2-D integer"):
        confusion_matrix([np.zeros((2, 2), np.float32)], [np.zeros((2, 2), int)])
    with pytest.raises(DataError, match="prediction"):
        confusion_matrix([np.zeros((2, 3), int)], [np.zeros((2, 2), int)])
