"""Class/patch histograms, Gaussian and branch scores vs a NumPy/SciPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import LedoitWolf

from csad_jax.errors import ConfigError, DataError
from csad_jax.patch_histogram import (
    HistogramGaussian,
    PatchHistogramScorer,
    check_label_maps,
    checked_patch_histogram,
    class_histogram,
    fit_precision,
    grid_histograms,
    grids_from_patch_sizes,
    mahalanobis,
    patch_histogram,
)

K = 5


# --- NumPy reference, written like the official per-image code ---------------


def ref_histogram(patch, num_classes, background="zero"):
    hist = np.zeros(num_classes)
    for c in range(num_classes):
        hist[c] = (patch == c).sum()
    hist /= patch.size
    if background == "zero":
        hist[0] = 0.0
    return hist


def ref_patch_histogram(label_map, num_classes, grid, background="zero"):
    h, w = label_map.shape
    ph, pw = h // grid, w // grid
    hists = []
    for x in range(0, w, pw):  # x-offset outer loop, as empatches
        for y in range(0, h, ph):
            patch = label_map[y : y + ph, x : x + pw]
            hists.append(ref_histogram(patch, num_classes, background))
    return np.concatenate(hists)


def ref_distances(train_vectors, test_vectors):
    mean = train_vectors.mean(axis=0)
    precision = np.linalg.pinv(np.cov(train_vectors.T))
    return np.array([scipy_mahalanobis(v, mean, precision) for v in test_vectors])


def random_maps(seed, n, h=16, w=16, num_classes=K):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, size=(n, h, w)).astype(np.uint8)


# --- histograms --------------------------------------------------------------


@pytest.mark.parametrize("background", ["zero", "fraction"])
@pytest.mark.parametrize("grid,h,w", [(1, 16, 16), (2, 16, 16), (4, 8, 12)])
def test_patch_histogram_matches_loop_reference(grid, h, w, background):
    maps = random_maps(grid, 3, h, w)
    got = patch_histogram(jnp.asarray(maps), K, grid, background)
    want = [ref_patch_histogram(m, K, grid, background) for m in maps]
    assert got.shape == (3, grid * grid * K) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_several_grids_share_counts_and_match_the_reference():
    maps = random_maps(5, 11, 12, 12)  # 11 maps: one full step of 8 + 3 more
    hists = grid_histograms(jnp.asarray(maps), K, (1, 2, 3, 6), "fraction")
    for grid, got in zip((1, 2, 3, 6), hists, strict=True):
        want = [ref_patch_histogram(m, K, grid, "fraction") for m in maps]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_unchecked_histogram_drops_unknown_labels():
    maps = np.zeros((1, 4, 4), np.int32)
    maps[0, 0, :] = [K, -1, 99, 1]
    hist = np.asarray(patch_histogram(jnp.asarray(maps), K, 1, "fraction"))[0]
    np.testing.assert_allclose(hist, [12 / 16, 1 / 16, 0, 0, 0])


def test_class_histogram_is_the_one_by_one_grid():
    maps = jnp.asarray(random_maps(7, 2))
    np.testing.assert_array_equal(class_histogram(maps, K), patch_histogram(maps, K, 1))
    sums = class_histogram(maps, K, "fraction").sum(axis=1)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-6)


def test_patch_order_is_tl_bl_tr_br():
    label_map = np.zeros((1, 4, 4), np.int32)
    label_map[0, :2, :2], label_map[0, :2, 2:] = 1, 2  # top-left, top-right
    label_map[0, 2:, :2], label_map[0, 2:, 2:] = 3, 4  # bottom-left, bottom-right
    hist = np.asarray(patch_histogram(jnp.asarray(label_map), K, 2)).reshape(4, K)
    assert hist.argmax(axis=1).tolist() == [1, 3, 2, 4]


def test_grid_must_divide_the_map():
    with pytest.raises(ConfigError, match="divisible by 3"):
        patch_histogram(jnp.zeros((1, 16, 16), jnp.int32), K, 3)
    with pytest.raises(ConfigError, match="background"):
        patch_histogram(jnp.zeros((1, 16, 16), jnp.int32), K, 2, "ignore")
    assert grids_from_patch_sizes((256, 128)) == (1, 2)
    with pytest.raises(ConfigError, match="does not tile"):
        grids_from_patch_sizes((100,))


@pytest.mark.parametrize("bad_label", [K, 200, -1])
def test_out_of_range_labels_are_refused(bad_label):
    maps = np.zeros((2, 8, 8), np.int32)
    maps[1, 3, 3] = bad_label
    with pytest.raises(DataError, match=f"label {bad_label}, outside 0..{K - 1}"):
        checked_patch_histogram(maps, K)
    scorer = PatchHistogramScorer.fit(random_maps(0, 6, 8, 8), K)
    with pytest.raises(DataError, match="outside"):
        scorer.raw_scores(maps)


@pytest.mark.parametrize(
    "maps", [np.zeros((8, 8), np.int32), np.zeros((1, 8, 8), np.float32)]
)
def test_wrong_shape_or_dtype_is_refused(maps):
    with pytest.raises(DataError, match="label maps"):
        check_label_maps(maps, K)


def test_num_classes_must_be_at_least_two():
    with pytest.raises(ConfigError, match="num_classes"):
        check_label_maps(np.zeros((1, 4, 4), np.int32), 1)


# --- Gaussian and Mahalanobis -------------------------------------------------


@pytest.mark.parametrize("grid,n_train", [(1, 40), (2, 40), (2, 6)])
def test_distances_match_scipy_with_official_pinv(grid, n_train):
    # n_train = 6 < D = 20: singular covariance, the normal case for small data.
    train = np.stack([ref_patch_histogram(m, K, grid) for m in random_maps(1, n_train)])
    test = np.stack([ref_patch_histogram(m, K, grid) for m in random_maps(2, 9)])
    gaussian = HistogramGaussian.fit(train)
    got = gaussian.distance(jnp.asarray(test, jnp.float32))
    np.testing.assert_allclose(got, ref_distances(train, test), rtol=2e-4)


def test_precision_is_numpy_pinv_of_unbiased_covariance():
    train = np.random.default_rng(3).random((7, 12))
    train[:, 0] = 0.0  # the zero background slot
    want = np.linalg.pinv(np.cov(train.T))
    np.testing.assert_allclose(fit_precision(train), want, rtol=1e-12, atol=1e-12)


def test_ledoit_wolf_alternative_matches_sklearn():
    train = np.stack([ref_patch_histogram(m, K, 1) for m in random_maps(4, 30)])
    test = np.stack([ref_patch_histogram(m, K, 1) for m in random_maps(5, 4)])
    gaussian = HistogramGaussian.fit(train, method="ledoit_wolf")
    precision = np.linalg.pinv(LedoitWolf().fit(train).covariance_)
    mean = train.mean(axis=0)
    want = [scipy_mahalanobis(v, mean, precision) for v in test]
    np.testing.assert_allclose(gaussian.distance(jnp.asarray(test)), want, rtol=2e-4)


@pytest.mark.parametrize("method", ["pinv", "ledoit_wolf"])
def test_single_or_identical_training_maps_give_euclidean_distance(method):
    one = np.stack([ref_patch_histogram(m, K, 2) for m in random_maps(6, 1)])
    test = np.stack([ref_patch_histogram(m, K, 2) for m in random_maps(8, 3)])
    euclid = np.linalg.norm(test - one[0], axis=1)
    for train in (one, np.repeat(one, 5, axis=0)):
        got = HistogramGaussian.fit(train, method=method).distance(jnp.asarray(test))
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, euclid, rtol=1e-5)


def _fit_without_class(unseen_std=None, constant_fraction=None):
    """Class-histogram Gaussian where class 3 is never (or constantly) present."""
    maps = random_maps(9, 30, num_classes=3)  # labels 0..2 only
    if constant_fraction:
        maps[:, :4, :] = 3  # class 3 always covers the same 4 rows
    train = np.stack([ref_patch_histogram(m, K, 1) for m in maps])
    return train, HistogramGaussian.fit(train, unseen_std=unseen_std)


@pytest.mark.parametrize("constant", [False, True])
def test_class_without_training_variance_is_ignored_unless_penalised(constant):
    train, official = _fit_without_class(constant_fraction=constant)
    base = train[0].copy()
    moved = base.copy()
    moved[3] += 0.1  # a new (or resized) class-3 component, nothing else changes
    d_official = official.distance(jnp.asarray(np.stack([base, moved])))
    assert np.all(np.isfinite(d_official))
    np.testing.assert_allclose(d_official[0], d_official[1], rtol=1e-4)

    _, penalised = _fit_without_class(unseen_std=0.01, constant_fraction=constant)
    d_pen = penalised.distance(jnp.asarray(np.stack([base, moved])))
    np.testing.assert_allclose(d_pen[0], d_official[0], rtol=1e-4)
    want = np.sqrt(d_official[1] ** 2 + (0.1 / 0.01) ** 2)
    np.testing.assert_allclose(d_pen[1], want, rtol=1e-4)


def test_gaussian_refuses_bad_inputs():
    with pytest.raises(DataError, match="N>=1"):
        HistogramGaussian.fit(np.zeros((0, 4)))
    with pytest.raises(DataError, match="NaN"):
        HistogramGaussian.fit(np.full((3, 4), np.nan))
    with pytest.raises(ConfigError, match="method"):
        HistogramGaussian.fit(np.eye(4), method="shrunk")
    with pytest.raises(ConfigError, match="unseen_std"):
        HistogramGaussian.fit(np.eye(4), unseen_std=0.0)
    gaussian = HistogramGaussian.fit(np.eye(4))
    with pytest.raises(DataError, match=r"\[B, 4\]"):
        mahalanobis(gaussian, jnp.zeros((2, 5)))


def test_distance_is_clamped_not_nan_for_indefinite_precision():
    gaussian = HistogramGaussian(mean=jnp.zeros(2), precision=-jnp.eye(2))
    np.testing.assert_array_equal(gaussian.distance(jnp.ones((1, 2))), [0.0])


def test_background_fraction_gives_the_same_distances_as_zero_slot():
    # The fraction slot is 1 - sum(others): a linear function the pinv ignores.
    train, test = random_maps(10, 40), random_maps(11, 6)
    raw = {}
    for background in ("zero", "fraction"):
        scorer = PatchHistogramScorer.fit(train, K, background=background)
        raw[background] = scorer.raw_scores(test)
    for grid in (1, 2):
        np.testing.assert_allclose(raw["fraction"][grid], raw["zero"][grid], 1e-3)


# --- the branch scorer --------------------------------------------------------


def official_branch_scores(train, val, test, grids=(1, 2)):
    """§4.4 with the NumPy reference: per-grid distances, trimmed z, sum."""
    total = np.zeros(len(test))
    for grid in grids:

        def vectors(maps, g=grid):
            return np.stack([ref_patch_histogram(m, K, g) for m in maps])

        d_val = ref_distances(vectors(train), vectors(val))
        d_test = ref_distances(vectors(train), vectors(test))
        q, p = np.quantile(d_val, 0.2), np.quantile(d_val, 0.8)
        kept = d_val[(d_val > q) & (d_val < p)]
        total += (d_test - kept.mean()) / kept.std()
    return total


@pytest.fixture(scope="module")
def scorer_and_maps():
    train, val, test = random_maps(20, 40), random_maps(21, 15), random_maps(22, 8)
    scorer = PatchHistogramScorer.fit(train, K).calibrate(val)
    return scorer, train, val, test


def test_branch_score_matches_official_reference(scorer_and_maps):
    scorer, train, val, test = scorer_and_maps
    want = official_branch_scores(train, val, test)
    np.testing.assert_allclose(scorer.score(test), want, rtol=1e-3, atol=1e-3)


def test_batch_of_eight_equals_eight_single_calls_and_jit(scorer_and_maps):
    scorer, _, _, test = scorer_and_maps
    batched = scorer.score(test)
    singles = np.concatenate([scorer.score(test[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(batched, singles, rtol=1e-5)
    jitted = jax.jit(lambda s, m: s.score(m))(scorer, jnp.asarray(test))
    np.testing.assert_allclose(jitted, batched, rtol=1e-5)
    raw = scorer.raw_scores(test)
    for i in range(8):
        single = scorer.raw_scores(test[i : i + 1])
        for grid in (1, 2):
            np.testing.assert_allclose(single[grid][0], raw[grid][i], rtol=1e-5)


def test_calibration_batching_does_not_change_statistics(scorer_and_maps):
    scorer, _, val, _ = scorer_and_maps
    other = scorer.calibrate(val, batch_size=4)  # 15 maps: last batch padded
    for a, b in zip(scorer.stats, other.stats, strict=True):
        np.testing.assert_allclose([a.mean, a.std], [b.mean, b.std], rtol=1e-6)


def test_scorer_is_a_pytree_and_needs_calibration(scorer_and_maps):
    scorer, _, _, test = scorer_and_maps
    leaves, treedef = jax.tree_util.tree_flatten(scorer)
    assert len(leaves) == 8  # 2 x (mean, precision) + 2 x (mean, std)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_array_equal(rebuilt.score(test), scorer.score(test))
    with pytest.raises(ConfigError, match="not calibrated"):
        scorer.replace(stats=None).score(test)
    with pytest.raises(ConfigError, match="distinct"):
        PatchHistogramScorer.fit(test, K, grids=(2, 2))
