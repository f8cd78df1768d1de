"""Clustering, alpha filter, HDBSCAN map filtering (method-spec §2.6-2.7)."""

import dataclasses

import numpy as np
import pytest

from csad_jax.errors import DataError
from label_gen import clustering
from label_gen.settings import ClusterSettings


def _blobs(n_images, centres, spread=0.05, seed=0):
    """One component per image per centre, features around the centres."""
    rng = np.random.default_rng(seed)
    feats, kinds, index = [], [], []
    for i in range(n_images):
        for k, c in enumerate(centres):
            feats.append(np.asarray(c) + rng.normal(0, spread, len(c)))
            kinds.append(k)
            index.append(i)
    return np.array(feats, np.float32), np.array(kinds), np.array(index)


def test_projection_has_its_own_seed():
    s = ClusterSettings(projection_seed=3)
    first = clustering.random_projection(10, s)
    np.random.seed(123)  # noqa: NPY002 - the legacy global stream must not matter
    np.random.default_rng(5).normal(size=100)
    np.random.normal(size=50)  # noqa: NPY002
    second = clustering.random_projection(10, s)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (10, 512)
    assert first.std() == pytest.approx(0.01, rel=0.05)
    other = clustering.random_projection(10, dataclasses.replace(s, projection_seed=4))
    assert not np.allclose(first, other)


def test_clusters_are_found_and_stable_under_other_random_draws():
    centres = np.eye(6)[:3] * 300.0  # far apart after the 0.01 projection
    feats, kinds, _ = _blobs(20, centres)
    s = ClusterSettings()
    a = clustering.cluster_components(feats, 20, s)
    np.random.seed(0)  # noqa: NPY002 - the legacy global stream must not matter
    np.random.default_rng().normal(size=1000)
    b = clustering.cluster_components(feats, 20, s)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert len(np.unique(a.labels)) == 3
    for k in range(3):  # one cluster per kind
        assert len(np.unique(a.labels[kinds == k])) == 1


def test_alpha_filter_drops_rare_clusters():
    feats, kinds, _ = _blobs(20, np.eye(6)[:2] * 300.0)
    rare = np.eye(6)[5] * 300.0 + np.zeros((9, 6))  # 9 < int(0.5 * 20)
    feats = np.concatenate([feats, rare.astype(np.float32)])
    res = clustering.cluster_components(feats, 20, ClusterSettings())
    assert (res.labels[-9:] == -1).all() and (res.labels[:-9] >= 0).all()
    assert res.raw_count == 3


def test_fixed_bandwidth_is_used_as_given():
    feats, _, _ = _blobs(10, np.eye(6)[:2] * 300.0)
    # projected centres are ~96 apart: a 500 bandwidth merges them, 20 does not
    res = clustering.cluster_components(feats, 10, ClusterSettings(bandwidth=500.0))
    assert res.bandwidth == 500.0 and (res.labels == 0).all()
    res = clustering.cluster_components(feats, 10, ClusterSettings(bandwidth=20.0))
    assert len(np.unique(res.labels)) == 2


def _identical_images(n_images):
    """Two classes with two slightly different components each, every image alike."""
    rng = np.random.default_rng(1)
    centres = np.repeat(np.eye(6)[:2] * 300.0, 2, axis=0)
    one_image = centres + rng.normal(0, 3.0, centres.shape)
    return np.tile(one_image, (n_images, 1)).astype(np.float32)


def test_identical_images_do_not_collapse_the_automatic_bandwidth():
    feats = _identical_images(10)
    res = clustering.cluster_components(feats, 10, ClusterSettings())
    assert res.floored and res.estimate < 1e-3 < res.bandwidth
    assert len(np.unique(res.labels)) == 2  # one class per kind, not per component
    assert (res.labels[0::4] == res.labels[1::4]).all()
    tiny = clustering.cluster_components(feats, 10, ClusterSettings(bandwidth=1e-3))
    assert len(np.unique(tiny.labels)) == 4  # what the floor prevents
    with pytest.raises(DataError, match="give a larger --bandwidth"):
        no_floor = ClusterSettings(min_bandwidth_spread=0.0, min_bandwidth_norm=0.0)
        clustering.cluster_components(feats + 1e-3, 10, no_floor)


def test_the_floor_leaves_ordinary_data_alone():
    feats, kinds, _ = _blobs(20, np.eye(6)[:3] * 300.0, spread=3.0)
    res = clustering.cluster_components(feats, 20, ClusterSettings())
    assert not res.floored and res.bandwidth == res.estimate
    all_same = clustering.cluster_components(np.ones((8, 6)), 4, ClusterSettings())
    assert all_same.bandwidth > 0 and (all_same.labels == 0).all()


def test_empty_and_single_component():
    res = clustering.cluster_components(np.zeros((0, 4)), 5, ClusterSettings())
    assert res.labels.shape == (0,)
    res = clustering.cluster_components(np.ones((1, 4)), 2, ClusterSettings())
    assert res.labels.tolist() == [0]


def test_class_histograms_sum_areas_per_label():
    index = np.array([0, 0, 1, 1, 1])
    labels = np.array([0, 2, 0, -1, 2])
    areas = np.array([0.1, 0.2, 0.3, 0.4, 0.05])
    hist = clustering.class_histograms(index, labels, areas, 3)
    np.testing.assert_allclose(hist, [[0.1, 0, 0.2], [0.3, 0, 0.05], [0, 0, 0]])
    assert clustering.class_histograms(index, -np.ones(5, int), areas, 3).shape == (
        3,
        0,
    )


def _histograms(seed=0):
    rng = np.random.default_rng(seed)
    good = np.array([0.10, 0.05]) + rng.normal(0, 0.003, (40, 2))
    odd = np.array([0.02, 0.20]) + rng.normal(0, 0.003, (12, 2))
    hist = np.abs(np.concatenate([good, odd]))
    return np.concatenate([hist, np.full((52, 1), 0.0005)], axis=1)


def test_filter_keeps_the_closest_half_of_the_largest_cluster():
    hist = _histograms()
    mf = clustering.filter_label_maps(hist, ClusterSettings(filter_hist=True))
    assert len(mf.largest_cluster) >= 30 and set(mf.largest_cluster) <= set(range(40))
    assert len(mf.labelled) == int(0.5 * len(mf.largest_cluster))
    mean = hist[mf.largest_cluster].mean(0)
    dist = np.abs(hist - mean).max(1)
    expected = np.sort(np.argsort(dist, kind="stable")[: len(mf.labelled)])
    np.testing.assert_array_equal(mf.labelled, expected)
    # class 2 has mean area 0.0005 <= 0.001: pruned
    np.testing.assert_array_equal(mf.kept_labels, [0, 1])


def test_ranking_orders_every_map_by_distance_to_the_largest_cluster():
    hist = _histograms()
    mf = clustering.filter_label_maps(hist, ClusterSettings())
    dist = np.abs(hist - hist[mf.largest_cluster].mean(0)).max(1)
    assert sorted(mf.ranking.tolist()) == list(range(len(hist)))
    assert np.all(np.diff(dist[mf.ranking]) >= 0)
    # The official rule picks the first maps of this ranking.
    k = len(mf.labelled)
    assert set(mf.ranking[:k].tolist()) == set(mf.labelled.tolist())


def test_filter_hist_false_takes_the_union_over_clusters():
    hist = _histograms()
    union = clustering.filter_label_maps(hist, ClusterSettings(filter_hist=False))
    single = clustering.filter_label_maps(hist, ClusterSettings(filter_hist=True))
    assert set(single.labelled) < set(union.labelled)
    assert any(i >= 40 for i in union.labelled)


def test_hdbscan_min_cluster_size_falls_back_until_a_cluster_exists():
    rng = np.random.default_rng(1)
    # 30 maps: int(0.1 * 30) = 3; three tight pairs and scattered maps
    hist = rng.uniform(0, 1, (30, 2))
    labels = clustering._hdbscan_labels(hist, ClusterSettings())
    assert (labels >= 0).any()
    tiny = clustering.filter_label_maps(np.array([[0.1, 0.2]]), ClusterSettings())
    assert tiny.largest_cluster.tolist() == [0]


def test_remap_labels_to_ascending_classes():
    out = clustering.remap_labels(np.array([-1, 0, 3, 5, 3]), np.array([3, 5]))
    assert out.tolist() == [0, 0, 1, 2, 1]
