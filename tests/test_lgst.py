"""Tests for LGST anomaly maps, map quantiles and image scores."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lgst_stand_in import tiny_config, tiny_networks

from csad_jax.errors import ConfigError
from csad_jax.lgst import (
    LGSTModel,
    MapQuantiles,
    exact_quantiles,
    fit_map_quantiles,
    normalize_maps,
    raw_maps,
)
from csad_jax.models.layers import resize_bilinear
from csad_jax.models.teacher import TeacherStats


@pytest.fixture(scope="module")
def nets_and_stats():
    nets = tiny_networks(tiny_config())
    rng = np.random.default_rng(0)
    stats = TeacherStats(
        jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32),
        jnp.asarray(rng.uniform(0.5, 2.0, size=(1, 1, 1, 8)), jnp.float32),
    )
    return nets, stats


def _quantiles(values=(0.1, 0.6, 0.2, 1.2)):
    return MapQuantiles(*(jnp.float32(v) for v in values))


def test_raw_maps_match_definition(nets_and_stats):
    nets, stats = nets_and_stats
    images = jax.random.normal(jax.random.key(0), (2, 128, 128, 3))
    maps = nnx.jit(raw_maps)(nets, stats, images)
    parts = nnx.jit(
        lambda n, x: (n.teacher(x)["proj"], n.local_student(x), n.global_student(x))
    )
    t, s, a = parts(nets, images)
    t = (np.asarray(t) - stats.mean) / stats.std
    ref_local = np.mean((t - np.asarray(s["local_head"])) ** 2, axis=-1)
    ref_global = np.mean((a - np.asarray(s["global_head"])) ** 2, axis=-1)
    assert maps["map_local"].shape == maps["map_global"].shape == (2, 32, 32)
    np.testing.assert_allclose(maps["map_local"], ref_local, rtol=1e-5)
    np.testing.assert_allclose(maps["map_global"], ref_global, rtol=1e-5)


def test_quantiles_exact_on_20_million_values():
    rng = np.random.default_rng(0)
    maps = rng.gamma(2.0, 1.0, size=(1221, 128, 128)).astype(np.float32)
    assert maps.size > 20_000_000
    q = fit_map_quantiles([maps[:600], maps[600:]], maps[:10])
    ref = np.quantile(maps.astype(np.float64), [0.9, 0.995])
    np.testing.assert_allclose([q.local_start, q.local_end], ref, rtol=1e-7)
    small = np.quantile(maps[:10].astype(np.float64), [0.9, 0.995])
    np.testing.assert_allclose([q.global_start, q.global_end], small, rtol=1e-7)


def test_exact_quantiles_interpolates_linearly():
    values = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(exact_quantiles(values, (0.9, 0.995)), [36.0, 39.8])


def test_normalize_maps_both_variants():
    rng = np.random.default_rng(1)
    maps = {
        "map_local": jnp.asarray(rng.random((2, 8, 8)), jnp.float32),
        "map_global": jnp.asarray(rng.random((2, 8, 8)), jnp.float32),
    }
    q = _quantiles()
    local = 0.1 * (np.asarray(maps["map_local"]) - 0.1) / 0.5
    glob = 0.1 * (np.asarray(maps["map_global"]) - 0.2) / 1.0
    fused = normalize_maps(maps, q, (32, 32), "fused")
    np.testing.assert_allclose(fused["map_local"], local, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fused["anomaly_map"], local + glob, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        fused["pred_score"], (local + glob).max(axis=(1, 2)), rtol=1e-5
    )
    up = normalize_maps(maps, q, (32, 32), "upsampled")
    assert up["anomaly_map"].shape == (2, 32, 32)
    up_ref = resize_bilinear(jnp.asarray(local + glob)[..., None], (32, 32))[..., 0]
    np.testing.assert_allclose(up["anomaly_map"], up_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(up["pred_score"], np.max(up_ref, axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ConfigError, match="variant"):
        normalize_maps(maps, q, (32, 32), "bogus")


def test_degenerate_quantiles_warn_and_leave_map_unnormalised(caplog):
    caplog.set_level(logging.WARNING, logger="csad_jax")
    flat = np.ones((3, 4, 4), np.float32)
    varied = np.random.default_rng(2).random((3, 4, 4)).astype(np.float32)
    q = fit_map_quantiles(flat, varied)
    assert "local map quantiles" in caplog.text
    out = normalize_maps(
        {"map_local": flat, "map_global": varied}, q, (16, 16), "fused"
    )
    np.testing.assert_array_equal(out["map_local"], flat)


def test_lgst_model_scores_and_requires_quantiles(nets_and_stats):
    nets, stats = nets_and_stats
    images = jax.random.normal(jax.random.key(3), (3, 128, 128, 3))
    model = LGSTModel(nets, stats, variant="fused")
    with pytest.raises(ConfigError, match="not fitted"):
        model.score(images)
    model.fit_quantiles([images])
    maps = model.maps(images)
    ref = fit_map_quantiles(maps["map_local"], maps["map_global"])
    np.testing.assert_allclose(model.quantiles.local_end, ref.local_end, rtol=1e-6)
    out = model.score(images)
    direct = normalize_maps(maps, model.quantiles, (128, 128), "fused")
    assert set(out) == {"map_local", "map_global", "anomaly_map", "pred_score"}
    np.testing.assert_allclose(out["pred_score"], direct["pred_score"], rtol=1e-5)
    assert model.score(images, "upsampled")["anomaly_map"].shape == (3, 128, 128)
    with pytest.raises(ConfigError, match="variant"):
        LGSTModel(nets, stats, variant="max")
