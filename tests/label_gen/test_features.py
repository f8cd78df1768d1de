"""Component crops and rotation-averaged features (method-spec §2.5)."""

import numpy as np
import pytest

from label_gen import features
from label_gen.refine import Region
from label_gen.settings import FeatureSettings
from tests.label_gen.scenes import colour_features


def _rotated_rect_points(w, h, angle_deg, n=40):
    t = np.radians(angle_deg)
    u, v = np.meshgrid(np.linspace(-w / 2, w / 2, n), np.linspace(-h / 2, h / 2, n))
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.stack([u.ravel(), v.ravel()], 1) @ rot.T + 100.0


@pytest.mark.parametrize("angle", [0.0, 17.0, 45.0, 80.0])
def test_min_area_rect_finds_a_rotated_rectangle(angle):
    long, short = features.min_area_rect_size(_rotated_rect_points(30, 10, angle))
    assert long == pytest.approx(30, abs=1e-6) and short == pytest.approx(10, abs=1e-6)


def test_min_area_rect_degenerate_inputs():
    assert features.min_area_rect_size(np.array([[3, 4]])) == (0.0, 0.0)
    line = np.array([[0, 0], [3, 4], [6, 8]])
    assert features.min_area_rect_size(line) == (pytest.approx(10.0), 0.0)


def test_resize_linear_matches_half_pixel_bilinear():
    img = np.array([[0, 100], [200, 40]], np.uint8)[:, :, None]
    np.testing.assert_array_equal(features.resize_linear(img, (2, 2)), img)
    up = features.resize_linear(np.array([[0, 100]], np.uint8)[:, :, None], (1, 4))
    # sample points -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    np.testing.assert_array_equal(up[0, :, 0], [0, 25, 75, 100])
    down = features.resize_linear(np.arange(8, dtype=np.uint8)[None, :, None], (1, 2))
    np.testing.assert_array_equal(down[0, :, 0], [2, 6])  # no antialias: 1.5, 5.5


def test_component_crop_scales_the_diagonal_to_the_crop_size():
    image = np.full((120, 160, 3), 255, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[20:50, 30:110] = True  # 80 x 30 rectangle, diagonal ~85.2
    crop = features.component_crop(image, Region.from_full(mask), 65)
    assert crop.shape == (65, 65, 3)
    rows, cols = np.nonzero(crop[..., 0])
    scale = 65 / (np.hypot(79, 29) + 1)
    assert cols.max() - cols.min() + 1 == int(80 * scale)
    assert rows.max() - rows.min() + 1 == int(30 * scale)
    # odd padding goes to the top/left
    assert rows.min() == 65 - int(30 * scale) - (65 - int(30 * scale)) // 2


def test_component_crop_zeroes_pixels_outside_the_mask():
    image = np.full((50, 50, 3), 200, np.uint8)
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True
    mask[10:20, 10:20] = False  # an L shape
    crop = features.component_crop(image, Region.from_full(mask), 65)
    assert crop[5:20, 5:20].max() == 0 and crop[50, 50, 0] == 200


def test_rotation_angles_and_rotations():
    official = FeatureSettings(rotations=60, rotation_endpoint=True)
    angles = features.rotation_angles(official)
    assert len(angles) == 60 and angles[0] == 0 and angles[-1] == 360
    fast = features.rotation_angles(
        FeatureSettings(rotations=4, rotation_endpoint=False)
    )
    np.testing.assert_allclose(fast, [0, 90, 180, 270])
    crop = np.zeros((65, 65, 3), np.uint8)
    crop[10:20, 30:35] = 255
    rot = features.rotated_crops(crop, fast)
    assert rot.shape == (4, 65, 65, 3)
    np.testing.assert_array_equal(rot[2], crop[::-1, ::-1])  # 180 degrees


def test_component_features_average_over_rotations():
    image = np.zeros((64, 64, 3), np.uint8)
    image[5:25, 5:25] = (255, 0, 0)
    image[35:60, 30:40] = (0, 0, 255)
    regions = [
        Region.from_full(np.pad(np.ones((20, 20), bool), ((5, 39), (5, 39)))),
        Region.from_full(np.pad(np.ones((25, 10), bool), ((35, 4), (30, 24)))),
    ]
    calls = []

    def extractor(x):
        calls.append(len(x))
        return colour_features(x)

    settings = FeatureSettings(rotations=6, rotation_endpoint=False, batch_size=5)
    f = features.component_features(image, regions, extractor, settings)
    assert f.shape == (2, 3) and calls == [5, 5, 2]
    assert f[0, 0] > 15 and f[0, 2] < 1 and f[1, 2] > 15
    empty = features.component_features(image, [], extractor, settings)
    assert empty.shape == (0, 0)


def test_backbone_features_pool_the_last_stage():
    from csad_jax.backbones import load_backbone

    bb = load_backbone("efficientnet_lite0", random_init=True)
    ext = features.BackboneFeatures(
        "efficientnet_lite0", "layer4", batch_size=4, backbone=bb
    )
    x = np.random.default_rng(0).normal(size=(6, 33, 33, 3)).astype(np.float32)
    out = ext(x)
    assert out.shape == (6, 320) and np.isfinite(out).all()
    scale = np.abs(out).max()  # random weights give tiny activations
    np.testing.assert_allclose(ext(x[:2]), out[:2], rtol=1e-4, atol=1e-4 * scale)
    assert np.abs(out[0] - out[1]).max() > 1e-2 * scale
