"""Offline proposals (no foundation weights) on small generated images."""

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from label_gen.offline import OfflineProposer, background_distance, offline_proposals
from label_gen.settings import OfflineSettings
from tests.label_gen.scenes import SURFACE, scene


def _best_iou(mask, comps):
    ious = [
        (mask & (comps == i)).sum() / (mask | (comps == i)).sum()
        for i in range(1, int(comps.max()) + 1)
    ]
    return max(ious, default=0.0)


def test_each_part_becomes_one_component():
    image, truth = scene(0, 96)
    props = OfflineProposer(OfflineSettings())(image)
    assert props.components.max() == 3
    for kind in (1, 2, 3):
        assert _best_iou(truth == kind, props.components) > 0.85
    agree = (props.background == (truth == 0)).mean()
    assert agree > 0.97
    np.testing.assert_array_equal(props.components, props.instances)


def test_touching_parts_of_different_colours_are_split():
    img = Image.new("RGB", (80, 80), SURFACE)
    draw = ImageDraw.Draw(img)
    draw.rectangle([10, 20, 39, 50], fill=(220, 60, 40))
    draw.rectangle([40, 20, 69, 50], fill=(40, 80, 200))
    props = offline_proposals(np.asarray(img), OfflineSettings())
    assert props.components.max() == 2
    assert len(np.unique(props.components[25:45, 12:38])) == 1
    assert props.components[30, 20] != props.components[30, 60]


def test_shading_inside_a_part_does_not_split_it():
    yy, xx = np.mgrid[:80, :80]
    img = np.zeros((80, 80, 3), np.float32) + SURFACE
    disc = (yy - 40) ** 2 + (xx - 40) ** 2 < 20**2
    shade = 1.0 - 0.5 * np.sqrt((yy - 40) ** 2 + (xx - 40) ** 2) / 20
    img[disc] = np.array([230.0, 130.0, 30.0]) * shade[disc, None]
    props = offline_proposals(img.astype(np.uint8), OfflineSettings())
    assert props.components.max() == 1
    assert _best_iou(disc, props.components) > 0.9


def test_uniform_image_has_no_components():
    image = np.full((64, 64, 3), 128, np.uint8)
    props = offline_proposals(image, OfflineSettings())
    assert props.components.max() == 0 and props.info["components"] == 0


def test_surface_gradient_is_modelled_not_segmented():
    _, xx = np.mgrid[:64, :64]
    image = np.stack([100 + xx, 110 + xx, 120 + xx], -1).astype(np.uint8)
    dist, threshold = background_distance(
        np.asarray(image, np.float64) / 2.55, OfflineSettings()
    )
    assert (dist < threshold).mean() > 0.99
    assert offline_proposals(image, OfflineSettings()).components.max() == 0


def test_working_resolution_maps_back_to_the_original_size():
    image, truth = scene(1, 128)
    small = dataclasses.replace(OfflineSettings(), max_side=64)
    props = offline_proposals(image, small)
    assert props.components.shape == (128, 128) and props.background.shape == (128, 128)
    assert props.components.max() == 3
    assert _best_iou(truth == 1, props.components) > 0.8
