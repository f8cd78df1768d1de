"""Logical Synthetic Anomalies and the labelled-batch jitter: invariants."""

import dataclasses

import numpy as np
import pytest

from csad_jax.lsa import (
    LSAConfig,
    augment_labelled,
    brightness_contrast,
    logical_synthetic_anomaly,
    shift_scale_rotate,
)

S = 64
RED, GREEN = (220, 30, 30), (30, 200, 30)
FAST = LSAConfig(attempts=60, target_points=2000)


def _scene():
    """Two components (class 1 red, class 2 green) inside an object area."""
    img = np.full((S, S, 3), 90, np.uint8)
    lab = np.zeros((S, S), np.uint8)
    inst = np.zeros((S, S), np.int32)
    bg = np.ones((S, S), bool)
    bg[4:-4, 4:-4] = False
    img[bg] = 10
    lab[10:18, 10:22], inst[10:18, 10:22], img[10:18, 10:22] = 1, 7, RED
    lab[40:52, 42:47], inst[40:52, 42:47], img[40:52, 42:47] = 2, 9, GREEN
    return img, lab, inst, bg


@pytest.mark.parametrize("seed", range(6))
def test_pasted_pixels_carry_the_pasted_class(seed):
    img, lab, inst, bg = _scene()
    out_img, out_lab = logical_synthetic_anomaly(
        img, lab, inst, bg, np.random.default_rng(seed), FAST
    )
    changed = out_lab != lab
    assert changed.any()  # at least the mandatory copy
    assert set(np.unique(out_lab[changed])) <= {1, 2}
    red = out_lab[changed] == 1
    pix = out_img[changed].astype(int)
    # bilinear RGB inside a mask kept where >= 78 % of the weight is in-mask
    assert np.all(pix[red, 0] > 150) and np.all(pix[~red, 1] > 140)
    # the component count grew by one or two copies (areas up to rotation)
    grown = np.bincount(out_lab.ravel(), minlength=3)[1:] - (96, 60)
    assert 0.6 * 60 <= grown.sum() <= 1.4 * (96 + 96)


@pytest.mark.parametrize("seed", range(6))
def test_mandatory_copy_lies_mostly_off_the_background(seed):
    img, lab, inst, bg = _scene()
    cfg = dataclasses.replace(FAST, max_pastes=1)
    _, out_lab = logical_synthetic_anomaly(
        img, lab, inst, bg, np.random.default_rng(seed), cfg
    )
    changed = out_lab != lab
    assert changed.any()
    assert np.count_nonzero(changed & bg) / np.count_nonzero(changed) < 0.5


def test_deterministic_by_seed():
    scene = _scene()
    a = augment_labelled(*scene, np.random.default_rng(5))
    b = augment_labelled(*scene, np.random.default_rng(5))
    c = augment_labelled(*scene, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_map_without_components_is_unchanged():
    img, lab, inst, bg = _scene()
    empty_lab, empty_inst = np.zeros_like(lab), np.zeros_like(inst)
    out_img, out_lab = logical_synthetic_anomaly(
        img, empty_lab, empty_inst, bg, np.random.default_rng(0), FAST
    )
    np.testing.assert_array_equal(out_img, img)
    np.testing.assert_array_equal(out_lab, empty_lab)
    # instances too small (<= 0.1 % of the image) are no candidates either
    tiny = np.zeros_like(inst)
    tiny[30, 30:34] = 3
    out_img, _ = logical_synthetic_anomaly(
        img, lab, tiny, bg, np.random.default_rng(0), FAST
    )
    np.testing.assert_array_equal(out_img, img)


def test_no_paste_without_a_valid_position():
    img, lab, inst, _ = _scene()
    everywhere = np.ones((S, S), bool)  # the whole image is background
    out_img, out_lab = logical_synthetic_anomaly(
        img, lab, inst, everywhere, np.random.default_rng(0), FAST
    )
    np.testing.assert_array_equal(out_img, img)
    np.testing.assert_array_equal(out_lab, lab)


def test_candidate_on_unlabelled_pixels_is_skipped():
    img, lab, inst, bg = _scene()
    inst = inst.copy()
    inst[inst == 9] = 0
    inst[20:40, 20:40] = 4  # an instance lying on label 0 only
    cfg = dataclasses.replace(FAST, min_foreground_overlap=-1.0)
    for seed in range(4):
        _, out_lab = logical_synthetic_anomaly(
            img, lab, inst, bg, np.random.default_rng(seed), cfg
        )
        # only the red component may be copied
        assert set(np.unique(out_lab[out_lab != lab])) <= {1}


def test_labels_are_warped_nearest_not_bilinear():
    img, lab, inst, bg = _scene()
    lab, inst = lab.copy(), inst.copy()
    lab[10:18, 16:22] = 3  # one instance spanning classes 1 and 3
    inst[inst == 9] = 0  # ... and the only candidate
    for seed in range(5):
        _, out_lab = logical_synthetic_anomaly(
            img, lab, inst, bg, np.random.default_rng(seed), FAST
        )
        changed = out_lab != lab
        assert changed.any()
        # bilinear label warping would blend 1 and 3 into 2 along the seam
        assert set(np.unique(out_lab[changed])) <= {1, 3}


def test_jitter_keeps_label_values_and_identity_at_p0():
    img, lab, _, _ = _scene()
    rng = np.random.default_rng(1)
    always = LSAConfig(ssr_p=1.0, bc_p=1.0)
    for _ in range(3):
        out_img, out_lab = shift_scale_rotate(img, lab, rng, always)
        assert out_img.shape == img.shape and out_img.dtype == np.uint8
        assert set(np.unique(out_lab)) <= {0, 1, 2}
        assert abs(int((out_lab == 1).sum()) - 96) < 20
    never = LSAConfig(ssr_p=0.0, bc_p=0.0)
    same_img, same_lab = shift_scale_rotate(img, lab, rng, never)
    assert same_img is img and same_lab is lab
    assert brightness_contrast(img, rng, never) is img
    out = brightness_contrast(img, rng, always).astype(int)
    assert np.abs(out - img).max() <= 0.05 * 255 + 0.05 * 255 + 1
    order = np.argsort(img[..., 0].ravel(), kind="stable")
    assert np.all(np.diff(out[..., 0].ravel()[order]) >= 0)  # monotone LUT
