"""Batched, progress-reported loading of samples at model resolution.

Images are decoded and resized one at a time straight into the batch buffer, so
a split is never held in memory at full resolution; at most two resized batches
exist at once (the one handed out and, with `prefetch`, the next one, which a
background thread prepares while the caller computes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import numpy as np
from tqdm import tqdm

from csad_jax.data.image_io import as_hw, is_positive_int, read_rgb, resize_rgb
from csad_jax.data.loco import Sample
from csad_jax.errors import ConfigError


def load_batch(samples: Sequence[Sample], size: int | tuple[int, int]) -> np.ndarray:
    """Decode, resize (antialiased bilinear) and scale a list of samples.

    Args:
      samples: the samples to load, in order.
      size: model input (h, w), or one int for a square.

    Returns:
      float32 [B, h, w, 3] in [0, 1] (not ImageNet-normalised).
    """
    h, w = as_hw(size)
    batch = np.empty((len(samples), h, w, 3), dtype=np.float32)
    for i, sample in enumerate(samples):
        resized = resize_rgb(read_rgb(sample.path), (h, w))
        np.multiply(resized, np.float32(1.0 / 255.0), out=batch[i])
    return batch


def _batches(
    chunks: list[list[Sample]], size: tuple[int, int], prefetch: bool
) -> Iterator[tuple[np.ndarray, list[Sample]]]:
    """Load chunks in order, optionally one ahead in a background thread."""
    if not prefetch:
        for chunk in chunks:
            yield load_batch(chunk, size), chunk
        return
    if not chunks:
        return
    # Leaving the `with` (end, error or the caller closing the generator) waits
    # for the one batch in flight, so no thread outlives the iteration.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="csad-load") as pool:
        pending = pool.submit(load_batch, chunks[0], size)
        for index, chunk in enumerate(chunks):
            images = pending.result()
            if index + 1 < len(chunks):
                pending = pool.submit(load_batch, chunks[index + 1], size)
            yield images, chunk


def iterate_batches(
    samples: Sequence[Sample],
    size: int | tuple[int, int],
    batch_size: int,
    desc: str | None = None,
    progress: bool = True,
    prefetch: bool = True,
) -> Iterator[tuple[np.ndarray, list[Sample]]]:
    """Yield batches of images at model size with a tqdm progress bar.

    Args:
      samples: samples in the order wanted (e.g. `CategoryData.samples(...)`).
      size: model input (h, w), or one int for a square.
      batch_size: images per batch; the last batch may be smaller.
      desc: progress-bar label.
      progress: show the progress bar (on stderr).
      prefetch: prepare the next batch in a background thread.

    Returns:
      An iterator of (images float32 [B, h, w, 3] in [0, 1], the B samples of
      the batch). Bad arguments raise ConfigError at the call, not at `next`.
    """
    hw = as_hw(size)
    if not is_positive_int(batch_size):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    samples = list(samples)
    chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    return _with_progress(chunks, hw, desc, progress, prefetch)


def _with_progress(
    chunks: list[list[Sample]],
    size: tuple[int, int],
    desc: str | None,
    progress: bool,
    prefetch: bool,
) -> Iterator[tuple[np.ndarray, list[Sample]]]:
    """The generator behind `iterate_batches` (arguments already checked)."""
    total = sum(len(chunk) for chunk in chunks)
    with tqdm(
        total=total, desc=desc, unit="img", disable=not progress, leave=False
    ) as bar:
        # closing() stops the loader thread at once if the caller stops early.
        with closing(_batches(chunks, size, prefetch)) as loaded:
            for images, chunk in loaded:
                bar.update(len(chunk))
                yield images, chunk
