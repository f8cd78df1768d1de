"""Batched loading: shapes, values, order, progress bar, errors and threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from csad_jax.data import batching
from csad_jax.data.batching import iterate_batches, load_batch
from csad_jax.data.image_io import read_rgb, resize_rgb
from csad_jax.data.loco import load_category
from csad_jax.errors import ConfigError, DataError

from .conftest import build_category


@pytest.fixture
def samples(tmp_path):
    build_category(tmp_path, size=(20, 30), counts=(7, 1, 1, 1, 1))
    return load_category(tmp_path, "box").samples("train")


@pytest.mark.parametrize("prefetch", [True, False])
def test_batches_have_model_size_values_and_order(samples, prefetch):
    batches = list(
        iterate_batches(samples, (8, 12), 3, progress=False, prefetch=prefetch)
    )
    assert [imgs.shape for imgs, _ in batches] == [(3, 8, 12, 3)] * 2 + [(1, 8, 12, 3)]
    assert [s for _, batch in batches for s in batch] == samples
    for images, batch in batches:
        assert images.dtype == np.float32
        for image, sample in zip(images, batch, strict=True):
            expected = resize_rgb(read_rgb(sample.path), (8, 12)) / np.float32(255)
            np.testing.assert_allclose(image, expected, rtol=0, atol=1e-7)
    assert (
        0.0 <= min(b[0].min() for b in batches) <= max(b[0].max() for b in batches) <= 1
    )


def test_square_int_size_and_empty_input(samples):
    assert load_batch(samples[:2], 5).shape == (2, 5, 5, 3)
    assert list(iterate_batches([], 5, 2, progress=False)) == []


def test_images_are_decoded_one_at_a_time(samples, monkeypatch):
    # Each full-resolution image is resized before the next one is decoded.
    events = []
    real_read, real_resize = batching.read_rgb, batching.resize_rgb
    monkeypatch.setattr(
        batching, "read_rgb", lambda p: events.append("r") or real_read(p)
    )
    monkeypatch.setattr(
        batching, "resize_rgb", lambda im, s: events.append("z") or real_resize(im, s)
    )
    list(iterate_batches(samples, 4, 4, progress=False, prefetch=False))
    assert "".join(events) == "rz" * len(samples)


def test_progress_bar_shows_desc_and_can_be_disabled(samples, capsys):
    list(iterate_batches(samples, 4, 2, desc="teacher stats", prefetch=False))
    assert "teacher stats" in capsys.readouterr().err
    list(iterate_batches(samples, 4, 2, desc="teacher stats", progress=False))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize("prefetch", [True, False])
def test_unreadable_image_stops_iteration_with_data_error(samples, prefetch):
    bad = samples[4].path
    bad.write_bytes(bad.read_bytes()[:40])
    seen = []
    with pytest.raises(DataError, match=str(bad)):
        for _, batch in iterate_batches(
            samples, 4, 2, progress=False, prefetch=prefetch
        ):
            seen.extend(batch)
    assert seen == samples[:4]


def test_stopping_early_leaves_no_loader_thread(samples):
    before = {t.name for t in threading.enumerate()}
    iterator = iterate_batches(samples, 4, 2, progress=False, prefetch=True)
    next(iterator)
    assert any(t.name.startswith("csad-load") for t in threading.enumerate())
    iterator.close()
    after = {t.name for t in threading.enumerate()}
    assert not any(n.startswith("csad-load") for n in after - before)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, np.int64(0), np.bool_(True)])
def test_bad_batch_size(samples, batch_size):
    with pytest.raises(ConfigError):
        iterate_batches(samples, 4, batch_size, progress=False)


def test_numpy_integer_sizes_and_batch_sizes_are_accepted(samples):
    batches = list(iterate_batches(samples, np.int64(4), np.int64(4), progress=False))
    assert [b[0].shape for b in batches] == [(4, 4, 4, 3), (3, 4, 4, 3)]
    pair = np.array([4, 6])
    assert load_batch(samples[:1], (pair[0], pair[1])).shape == (1, 4, 6, 3)
    assert load_batch(samples[:1], pair).shape == (1, 4, 6, 3)


@pytest.mark.parametrize("size", [64.0, None, np.float32(4), (4.0, 4)])
def test_bad_size_is_a_one_line_config_error(samples, size):
    with pytest.raises(ConfigError, match="size must be") as err:
        iterate_batches(samples, size, 4, progress=False)
    assert "\n" not in str(err.value)
