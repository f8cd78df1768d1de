"""Tests for the offline penalty-image source."""

import numpy as np

from csad_jax.penalty import PHOTO_NAMES, PenaltySource, load_photographs


def test_bundled_photographs_load_without_network():
    photos = load_photographs()
    assert len(photos) == len(PHOTO_NAMES)
    for photo in photos:
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3


def test_samples_are_reproducible_valid_and_varied():
    source = PenaltySource(64)
    a = source.batch(np.random.default_rng(7), 40)
    b = source.batch(np.random.default_rng(7), 40)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (40, 64, 64, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    gray = np.all(np.abs(a - a[..., :1]) < 1e-6, axis=(1, 2, 3))
    assert 0 < gray.sum() < 40  # grayscale p = 0.3 plus grey photographs
    flat = a.reshape(40, -1)
    assert len({row.tobytes() for row in flat}) == 40


def test_textures_only_source():
    source = PenaltySource(32, photos=[])
    batch = source.batch(np.random.default_rng(0), 8)
    assert batch.shape == (8, 32, 32, 3)
    assert np.all(batch.std(axis=(1, 2, 3)) > 0)
