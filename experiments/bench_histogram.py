"""Throughput of patch-histogram scoring: jitted JAX vs NumPy references.

Scores random 256 x 256 label maps with K = 6 classes under the two official
detectors (grids 1 and 2: histogram + Mahalanobis distance each) for batches of
1, 8 and 64 maps, and prints maps/s as a Markdown table. References:
"numpy official" is the official per-image code path (per-patch, per-class
counting loops, x-offset outer loop, then scipy's mahalanobis); "numpy
vectorised" is a batched bincount + einsum version, for a fair comparison.

Run: .venv/bin/python experiments/bench_histogram.py [--seconds 1.0]
Timings are wall-clock on a shared CPU and therefore noisy.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from csad_jax.patch_histogram import PatchHistogramScorer

K = 6
SIZE = 256
GRIDS = (1, 2)
BATCHES = (1, 8, 64)


def official_histogram(label_map: np.ndarray, grid: int) -> np.ndarray:
    """One map's patch histogram, written like the official per-image code."""
    side = SIZE // grid
    hists = []
    for x in range(0, SIZE, side):
        for y in range(0, SIZE, side):
            patch = label_map[y : y + side, x : x + side]
            hist = np.zeros(K)
            for c in range(1, K):
                hist[c] = (patch == c).sum()
            hists.append(hist / patch.size)
    return np.concatenate(hists)


def numpy_official(maps, params):
    """Per-image loops + scipy mahalanobis, as in the official scoring."""
    out = np.empty((len(maps), len(GRIDS)))
    for i, label_map in enumerate(maps):
        for j, (grid, (mean, precision)) in enumerate(zip(GRIDS, params, strict=True)):
            vector = official_histogram(label_map, grid)
            out[i, j] = scipy_mahalanobis(vector, mean, precision)
    return out


def numpy_vectorised(maps, params):
    """Batched NumPy: one bincount over (map, patch, class), then einsum."""
    b = len(maps)
    out = np.empty((b, len(GRIDS)))
    for j, (grid, (mean, precision)) in enumerate(zip(GRIDS, params, strict=True)):
        side = SIZE // grid
        rows = np.arange(SIZE) // side
        patch = rows[None, :] * grid + rows[:, None]  # column-major patch index
        index = (np.arange(b)[:, None, None] * grid * grid + patch) * K + maps
        counts = np.bincount(index.ravel(), minlength=b * grid * grid * K)
        hist = counts.reshape(b, grid * grid, K) / (side * side)
        hist[..., 0] = 0.0
        delta = hist.reshape(b, -1) - mean
        quad = np.einsum("bi,ij,bj->b", delta, precision, delta)
        out[:, j] = np.sqrt(np.maximum(quad, 0.0))
    return out


def throughput(fn, maps, seconds: float) -> float:
    """Maps per second of fn(maps), after one warm-up call."""
    fn(maps)
    calls, start = 0, time.perf_counter()
    while True:
        fn(maps)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * len(maps) / elapsed


def main() -> None:
    """Fit on random maps, time each implementation, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per cell")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    train = rng.integers(0, K, size=(64, SIZE, SIZE)).astype(np.uint8)
    scorer = PatchHistogramScorer.fit(train, K, grids=GRIDS)
    params = [(np.asarray(g.mean), np.asarray(g.precision)) for g in scorer.gaussians]

    @jax.jit
    def jax_scores(maps):
        raw = scorer.raw_scores(maps)
        return jnp.stack([raw[g] for g in GRIDS], axis=1)

    def jax_call(maps):
        return jax_scores(maps).block_until_ready()

    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, K={K}, "
        f"{SIZE}x{SIZE} maps, grids {GRIDS}; maps/s (higher is better)\n"
    )
    print("| batch | jax jit | numpy vectorised | numpy official | jit / official |")
    print("|---:|---:|---:|---:|---:|")
    for batch in BATCHES:
        maps = rng.integers(0, K, size=(batch, SIZE, SIZE)).astype(np.uint8)
        on_device = jnp.asarray(maps)
        check = np.asarray(jax_call(on_device))
        np.testing.assert_allclose(check, numpy_official(maps, params), rtol=1e-3)
        fast = throughput(jax_call, on_device, args.seconds)
        vec = throughput(lambda m: numpy_vectorised(m, params), maps, args.seconds)
        ref = throughput(lambda m: numpy_official(m, params), maps, args.seconds)
        print(
            f"| {batch} | {fast:,.0f} | {vec:,.0f} | {ref:,.0f} | {fast / ref:.1f}x |"
        )


if __name__ == "__main__":
    main()
