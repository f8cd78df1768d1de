"""Tests for the LGST teacher and its channel statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from csad_jax.errors import ConfigError
from csad_jax.models.layers import resize_bilinear
from csad_jax.models.teacher import Buffer, Teacher, TeacherStats, fit_teacher_stats

CHANNELS = {"layer2": 5, "layer3": 7}
_RNG = np.random.default_rng(0)
_W2 = _RNG.normal(size=(3, 5)).astype(np.float32)
_W3 = _RNG.normal(size=(3, 7)).astype(np.float32)


def stand_in_backbone(images, stages=("layer2", "layer3")):
    """Any callable works: mean-pooled pixels mapped to stride-8/16 features."""
    b, h, w, _ = images.shape
    x8 = images.reshape(b, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4))
    x16 = images.reshape(b, h // 16, 16, w // 16, 16, 3).mean(axis=(2, 4))
    feats = {"layer2": jnp.tanh(x8 @ _W2), "layer3": jnp.tanh(x16 @ _W3)}
    return {s: feats[s] for s in stages}


def _teacher(seed=0, out_dim=4):
    return Teacher(stand_in_backbone, CHANNELS, out_dim=out_dim, seed=seed)


def _avg_pool_3x3_numpy(x):
    b, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + h, dx : dx + w]
    return out / 9.0


def test_teacher_output_matches_reference():
    teacher = _teacher()
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    out = teacher(images)
    assert out["proj"].shape == (2, 16, 16, 4)
    assert out["layer2"].shape == (2, 8, 8, 5) and out["layer3"].shape == (2, 4, 4, 7)
    feats = stand_in_backbone(images)
    grid = [np.asarray(resize_bilinear(feats[s], (16, 16))) for s in CHANNELS]
    pooled = _avg_pool_3x3_numpy(np.concatenate(grid, -1))
    ref = pooled @ np.asarray(teacher.proj_kernel[...]) + np.asarray(
        teacher.proj_bias[...]
    )
    np.testing.assert_allclose(out["proj"], ref, atol=1e-5)


def test_projection_is_frozen_buffer_with_own_seed():
    teacher = _teacher(seed=3, out_dim=32)
    assert isinstance(teacher.proj_kernel, Buffer)
    assert not isinstance(teacher.proj_kernel, nnx.Param)
    assert jax.tree.leaves(nnx.state(teacher, nnx.Param)) == []
    kernel = np.asarray(teacher.proj_kernel[...])
    assert kernel.shape == (12, 32)
    bound = 1 / np.sqrt(12)  # PyTorch default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    assert np.abs(np.asarray(teacher.proj_bias[...])).max() <= bound
    # The projection depends only on its seed, not on other random draws.
    jax.random.normal(jax.random.key(3), (100,))
    np.testing.assert_array_equal(_teacher(seed=3, out_dim=32).proj_kernel[...], kernel)
    assert not np.allclose(_teacher(seed=4, out_dim=32).proj_kernel[...], kernel)


def test_teacher_output_has_no_gradient():
    teacher = _teacher()
    images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
    grad = jax.grad(lambda x: jnp.sum(teacher(x)["proj"]))(images)
    assert np.all(np.asarray(grad) == 0)


def test_teacher_errors():
    with pytest.raises(ConfigError, match="not in backbone stages"):
        Teacher(stand_in_backbone, {"layer2": 5}, out_dim=4)
    with pytest.raises(ConfigError, match="not divisible by 4"):
        _teacher()(jnp.zeros((1, 34, 34, 3)))


def test_fit_teacher_stats_matches_official_two_pass_formula():
    rng = np.random.default_rng(1)
    batches = [
        rng.normal(2.0, 3.0, size=(n, 4, 4, 6)).astype(np.float32) for n in (2, 2, 1)
    ]
    stats = fit_teacher_stats(lambda x: jnp.asarray(x), batches)
    # Official: mean = avg over batches of per-batch means; var likewise of
    # per-batch mean of (t - mean)^2.
    mean = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    var = np.mean([((b - mean) ** 2).mean(axis=(0, 1, 2)) for b in batches], axis=0)
    assert stats.mean.shape == stats.std.shape == (1, 1, 1, 6)
    np.testing.assert_allclose(stats.mean[0, 0, 0], mean, rtol=1e-5)
    np.testing.assert_allclose(stats.std[0, 0, 0], np.sqrt(var), rtol=1e-5)
    t = jnp.asarray(batches[0])
    np.testing.assert_allclose(stats.normalize(t), (t - stats.mean) / stats.std)
    with pytest.raises(ConfigError, match="at least one"):
        fit_teacher_stats(lambda x: x, [])


def test_teacher_stats_is_a_pytree():
    stats = TeacherStats(jnp.zeros((1, 1, 1, 3)), jnp.ones((1, 1, 1, 3)))
    doubled = jax.tree.map(lambda x: 2 * x, stats)
    assert isinstance(doubled, TeacherStats)
    np.testing.assert_array_equal(doubled.std, 2 * np.ones((1, 1, 1, 3)))
