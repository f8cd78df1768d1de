"""Trimmed z-normalisation and score fusion against hand computations."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csad_jax.errors import ConfigError, DataError
from csad_jax.score_fusion import (
    EXPORT_STD_FLOOR,
    TrimmedStats,
    fit_trimmed_stats,
    fuse,
    normalize,
    trimmed_values,
)


def official_normalize(score, val_score):
    """The official trimmed z-normalisation (method-spec.md §4.4), for reference."""
    q, p = np.quantile(val_score, 0.2), np.quantile(val_score, 0.8)
    kept = val_score[(val_score > q) & (val_score < p)]
    score = score - np.mean(kept)
    if np.std(kept) != 0:
        score = score / np.std(kept)
    return score


def test_stats_of_one_to_ten_match_hand_computation():
    # q20 = 2.8, q80 = 8.2 -> kept 3..8, mean 5.5, population variance 17.5 / 6.
    stats = fit_trimmed_stats(np.arange(1.0, 11.0))
    np.testing.assert_allclose(float(stats.mean), 5.5, rtol=1e-6)
    np.testing.assert_allclose(float(stats.std), np.sqrt(17.5 / 6), rtol=1e-6)


def test_trimming_is_strict_at_the_quantiles():
    # q20 = 2 and q80 = 8 are data points; strict inequalities drop them.
    kept, fallback = trimmed_values(np.arange(11.0))
    assert not fallback
    np.testing.assert_array_equal(kept, [3, 4, 5, 6, 7])
    stats = fit_trimmed_stats(np.arange(11.0))
    np.testing.assert_allclose([stats.mean, stats.std], [5.0, np.sqrt(2.0)], 1e-6)


def test_normalize_matches_the_official_function_on_random_scores():
    rng = np.random.default_rng(0)
    val, test = rng.gamma(2.0, size=57), rng.gamma(2.0, size=31)
    got = normalize(test, fit_trimmed_stats(val))
    np.testing.assert_allclose(got, official_normalize(test, val), rtol=1e-5)


def test_fallback_to_all_scores_when_trimmed_range_is_nearly_empty(caplog):
    # q20 = q80 = 1: no value strictly inside; official code gives NaN here.
    with caplog.at_level(logging.WARNING, logger="csad_jax.score_fusion"):
        stats = fit_trimmed_stats([1.0, 1.0, 1.0, 1.0, 5.0])
    assert "distinct validation scores" in caplog.text
    np.testing.assert_allclose([stats.mean, stats.std], [1.8, 1.6], rtol=1e-6)


def test_fallback_counts_distinct_values():
    # 2 distinct values inside (2 twice, 3) -> fallback; 3 distinct -> no fallback.
    assert trimmed_values([0, 1, 2, 2, 3, 4, 5])[1]
    kept, fallback = trimmed_values([0, 1, 2, 2.5, 3, 4, 5, 6])
    assert not fallback and np.unique(kept).size >= 3


def test_constant_validation_scores_give_unit_std():
    stats = fit_trimmed_stats([3.0, 3.0, 3.0])
    assert float(stats.mean) == 3.0 and float(stats.std) == 1.0
    np.testing.assert_allclose(normalize(jnp.array([4.0, 2.0]), stats), [1.0, -1.0])


def test_std_floor_training_rule_versus_export_rule():
    val = 1.0 + 1e-4 * np.arange(11.0)  # trimmed std = sqrt(2) * 1e-4
    training = fit_trimmed_stats(val)
    export = fit_trimmed_stats(val, std_floor=EXPORT_STD_FLOOR)
    np.testing.assert_allclose(float(training.std), np.sqrt(2.0) * 1e-4, rtol=1e-5)
    assert float(export.std) == 1.0
    np.testing.assert_allclose(float(export.mean), 1.0005, rtol=1e-6)


def test_fuse_sums_normalised_scores_and_works_under_jit():
    stats = {
        "a": TrimmedStats(jnp.float32(1.0), jnp.float32(2.0)),
        "b": TrimmedStats(jnp.float32(-1.0), jnp.float32(0.5)),
    }
    scores = {"a": jnp.array([1.0, 5.0]), "b": jnp.array([0.0, -1.0])}
    np.testing.assert_allclose(fuse(scores, stats), [2.0, 2.0])
    np.testing.assert_allclose(jax.jit(fuse)(scores, stats), [2.0, 2.0])


def test_fuse_refuses_mismatched_or_empty_inputs():
    stats = {"a": TrimmedStats(jnp.float32(0.0), jnp.float32(1.0))}
    with pytest.raises(ConfigError, match="statistics for"):
        fuse({"b": jnp.zeros(2)}, stats)
    with pytest.raises(ConfigError, match="no scores"):
        fuse({}, {})


@pytest.mark.parametrize(
    "bad", [[], [[1.0, 2.0]], [1.0, np.nan, 2.0], [1.0, np.inf, 3.0]]
)
def test_bad_validation_scores_are_refused(bad):
    with pytest.raises(DataError, match="validation scores"):
        fit_trimmed_stats(bad)


def test_bad_quantile_range_is_refused():
    with pytest.raises(ConfigError, match="low < high"):
        fit_trimmed_stats(np.arange(10.0), 0.8, 0.2)
