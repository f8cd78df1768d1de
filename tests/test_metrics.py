"""Image AUROC and AUC-sPRO against scikit-learn, hand values and brute force."""

from bisect import bisect_right

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from csad_jax import metrics as M
from csad_jax.data.loco import DefectSpec, Sample
from csad_jax.errors import DataError

KINDS = ["good"] * 6 + ["logical_anomalies"] * 5 + ["structural_anomalies"] * 4


def _scores(seed=0):
    return np.random.default_rng(seed).normal(size=len(KINDS)) * 7.0 - 3.0


# ------------------------------------------------------------------ AUROC


def test_auroc_matches_sklearn_per_kind_with_shared_good_images():
    scores = _scores()
    kinds = np.array(KINDS)
    result = M.image_auroc(scores, KINDS)
    for kind, folder in (
        ("logical", "logical_anomalies"),
        ("structural", "structural_anomalies"),
    ):
        keep = (kinds == "good") | (kinds == folder)
        expected = roc_auc_score(kinds[keep] == folder, scores[keep])
        assert result[kind] == pytest.approx(expected, abs=1e-12)
    assert result["mean"] == pytest.approx(
        (result["logical"] + result["structural"]) / 2
    )
    assert result["mean_over"] == ["logical", "structural"]


@pytest.mark.parametrize(
    "transform",
    [lambda s: 3.0 * s - 100.0, np.arctan, lambda s: np.exp(s / 10.0), np.cbrt],
)
def test_auroc_invariant_under_monotone_transform(transform):
    scores = _scores(1)  # negative and > 1 values, like sums of z-scores
    assert M.image_auroc(transform(scores), KINDS) == M.image_auroc(scores, KINDS)


def test_auroc_ties_count_one_half():
    kinds = ["good", "good", "logical", "logical"]
    # pairs (good, logical): 0<1, 0<2, 1=1 (1/2), 1<2 -> 3.5 / 4
    assert M.image_auroc([0.0, 1.0, 1.0, 2.0], kinds)["logical"] == 0.875
    assert M.image_auroc([5.0] * 4, kinds)["logical"] == 0.5


def test_absent_kind_is_none_and_mean_is_over_present_kinds():
    kinds = ["good", "good", "structural_anomalies", "structural_anomalies"]
    result = M.image_auroc([-1.0, -2.0, 3.0, -1.5], kinds)
    assert result["logical"] is None
    assert result["structural"] == 0.75
    assert result["mean"] == 0.75 and result["mean_over"] == ["structural"]
    none = M.image_auroc([1.0, 2.0], ["good", "good"])
    assert none["mean"] is None and none["mean_over"] == []


def test_branch_aurocs_covers_every_named_score():
    scores = {"patch_histogram": _scores(2), "lgst": _scores(3), "fused": _scores(4)}
    result = M.branch_aurocs(scores, KINDS)
    assert set(result) == set(scores)
    assert result["lgst"] == M.image_auroc(scores["lgst"], KINDS)


@pytest.mark.parametrize(
    "scores,kinds,match",
    [
        ([1.0, 2.0], ["logical", "structural"], "needs good"),
        ([1.0, np.nan], ["good", "logical"], "NaN"),
        ([1.0, 2.0, 3.0], ["good", "logical"], "expected 2 scores"),
        ([1.0, 2.0], ["good", "broken"], "unknown image kind"),
    ],
)
def test_auroc_bad_input_raises_data_error(scores, kinds, match):
    with pytest.raises(DataError, match=match):
        M.image_auroc(scores, kinds)


# ---------------------------------------------------------------- AUC-sPRO


def _region(mask, saturation=None, value=1):
    mask = np.asarray(mask, bool)
    return M.DefectRegion(
        mask, int(mask.sum()) if saturation is None else saturation, value
    )


def _block(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def _official_trapz(x, y, limit):
    """The official integration rule: trapezoids, interpolated at the limit."""
    x, y = list(x), list(y)
    area = 0.0
    for i in range(1, len(x)):
        if x[i] > limit:
            break
        area += 0.5 * (y[i] + y[i - 1]) * (x[i] - x[i - 1])
    if limit not in x:
        ins = bisect_right(x, limit)
        y_lim = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (
            x[ins] - x[ins - 1]
        )
        area += 0.5 * (y_lim + y[ins - 1]) * (limit - x[ins - 1])
    return area / limit


def _brute_force_auc(maps, regions, limits):
    """sPRO curve evaluated at every distinct map value, one threshold at a time."""
    values = np.unique(np.concatenate([m.ravel() for m in maps]))
    thresholds = [values.max() + 1.0, *values[::-1], values.min() - 1.0]
    fprs, spros = [], []
    for t in thresholds:
        fp = negatives = 0
        per_channel = []
        for amap, channels in zip(maps, regions, strict=True):
            pred = amap > t
            union = np.zeros(amap.shape, bool)
            for r in channels:
                union |= r.mask
                overlap = np.sum(pred & r.mask)
                per_channel.append(min(overlap / max(r.saturation_area, 1), 1.0))
            fp += np.sum(pred & ~union)
            negatives += np.sum(~union)
        fprs.append(fp / negatives)
        spros.append(np.mean(per_channel))
    return {limit: _official_trapz(fprs, spros, limit) for limit in limits}


def _random_set(seed, levels):
    """Good and anomalous maps with overlapping channels and random saturation."""
    rng = np.random.default_rng(seed)
    maps, regions = [], []
    for i in range(6):
        amap = rng.random((7, 9))
        if levels:
            amap = np.floor(amap * levels)  # many ties across pixels and images
        channels = []
        if i >= 2:
            for _ in range(rng.integers(1, 4)):
                r0, c0 = rng.integers(0, 5), rng.integers(0, 6)
                mask = _block(
                    amap.shape,
                    slice(r0, r0 + rng.integers(1, 4)),
                    slice(c0, c0 + rng.integers(1, 5)),
                )
                amap[mask] += rng.random() * (levels or 1.0) * 0.5
                channels.append(_region(mask, int(rng.integers(0, mask.sum() + 2))))
        maps.append(amap)
        regions.append(
            [
                M.DefectRegion(
                    r.mask, min(r.saturation_area, r.mask.sum()), r.pixel_value
                )
                for r in channels
            ]
        )
    return maps, regions


@pytest.mark.parametrize("seed,levels", [(0, 0), (1, 0), (2, 5), (3, 3), (4, 12)])
def test_auc_spro_equals_brute_force_over_all_thresholds(seed, levels):
    maps, regions = _random_set(seed, levels)
    expected = _brute_force_auc(maps, regions, M.SPRO_LIMITS)
    result = M.auc_spro(maps, regions)
    assert list(result) == list(M.SPRO_LIMITS)
    for limit in M.SPRO_LIMITS:
        assert result[limit] == pytest.approx(expected[limit], abs=1e-12)


def test_perfect_map_gives_one():
    mask = _block((10, 20), slice(2, 7), slice(2, 12))
    maps = [mask.astype(float), np.zeros((10, 20)), np.zeros((5, 6))]
    result = M.auc_spro(maps, [[_region(mask)], [], []])
    assert result == {limit: 1.0 for limit in M.SPRO_LIMITS}


def test_constant_map_gives_the_diagonal():
    mask = _block((10, 20), slice(2, 7), slice(2, 12))
    maps = [np.full((10, 20), 3.5), np.full((10, 20), 3.5)]
    result = M.auc_spro(maps, [[_region(mask)], []])
    for limit in M.SPRO_LIMITS:  # area L^2 / 2 under y = x, divided by L
        assert result[limit] == pytest.approx(limit / 2, abs=1e-12)


@pytest.mark.parametrize("fraction,covered", [(1.0, 0.5), (0.5, 1.0)])
def test_half_covered_defect_with_relative_saturation(fraction, covered):
    mask = _block((12, 20), slice(2, 12), slice(2, 12))  # area 100
    amap = _block((12, 20), slice(2, 12), slice(2, 7)).astype(float)  # 50 px
    spec = {
        "pixel_value": 7,
        "saturation_threshold": fraction,
        "relative_saturation": True,
    }
    regions = M.defect_regions([(7, mask)], [spec])
    assert regions[0].saturation_area == int(100 * fraction)
    result = M.auc_spro([amap], [regions])
    for limit in M.SPRO_LIMITS:  # curve (0,0) -> (0,y) -> (1,1)
        assert result[limit] == pytest.approx(covered + (1 - covered) * limit / 2)


@pytest.mark.parametrize("pixels,covered", [(30, 1.0), (200, 0.5)])
def test_absolute_saturation_threshold(pixels, covered):
    mask = _block((10, 20), slice(0, 10), slice(0, 10))  # area 100
    amap = _block((10, 20), slice(0, 5), slice(0, 10)).astype(float)  # 50 px
    spec = DefectSpec("missing", 3, float(pixels), False)
    regions = M.defect_regions([(3, mask)], [spec])
    assert regions[0].saturation_area == min(pixels, 100)
    result = M.auc_spro([amap], [regions], limits=(0.05,))
    assert result[0.05] == pytest.approx(covered + (1 - covered) * 0.025)


def test_saturation_area_rules():
    assert M.saturation_area(101, 0.5, True) == 50  # floor
    assert M.saturation_area(101, 1.0, True) == 101
    assert M.saturation_area(40, 100.0, False) == 40  # min(s, A)
    assert M.saturation_area(400, 100.0, False) == 100
    with pytest.raises(DataError):
        M.saturation_area(10, 1.5, True)
    with pytest.raises(DataError):
        M.saturation_area(10, 2.5, False)


def test_several_channels_per_image_are_averaged():
    found = _block((8, 8), slice(0, 2), slice(0, 4))
    missed = _block((8, 8), slice(4, 8), slice(4, 8))
    overlapping = _block((8, 8), slice(0, 2), slice(2, 6))  # half inside `found`
    amap = found.astype(float)
    result = M.auc_spro([amap], [[_region(found), _region(missed)]])
    # curve (0,0) -> (0, 1/2) -> (1, 1)
    assert result[0.1] == pytest.approx(0.5 + 0.5 * 0.05)
    result = M.auc_spro([amap], [[_region(found), _region(overlapping)]])
    # sPROs 1 and 1/2 at FPR 0 -> mean 3/4
    assert result[0.1] == pytest.approx(0.75 + 0.25 * 0.05)


def test_good_only_set_and_absent_kinds_are_none():
    maps = [np.random.default_rng(0).random((4, 5)) for _ in range(3)]
    assert M.auc_spro(maps, [[], [], []]) is None
    mask = _block((4, 5), slice(0, 2), slice(0, 2))
    by_kind = M.auc_spro_by_kind(
        maps, [[], [], [_region(mask)]], ["good", "good", "structural_anomalies"]
    )
    assert by_kind["logical"] is None
    assert set(by_kind["structural"]) == set(M.SPRO_LIMITS)


def test_by_kind_uses_good_plus_one_kind():
    rng = np.random.default_rng(5)
    maps = [rng.random((5, 6)) for _ in range(5)]
    mask = _block((5, 6), slice(1, 3), slice(1, 4))
    regions = [[], [], [_region(mask)], [_region(mask, 2)], [_region(~mask)]]
    kinds = ["good", "good", "logical", "logical", "structural"]
    by_kind = M.auc_spro_by_kind(maps, regions, kinds)
    assert by_kind["logical"] == M.auc_spro(maps[:4], regions[:4])
    assert by_kind["structural"] == M.auc_spro(
        maps[:2] + maps[4:], regions[:2] + regions[4:]
    )


def test_no_defect_free_pixel_gives_none_per_limit():
    mask = np.ones((3, 3), bool)
    result = M.auc_spro([np.arange(9.0).reshape(3, 3)], [[_region(mask)]])
    assert result == {limit: None for limit in M.SPRO_LIMITS}


def test_spro_bad_maps_raise_data_error():
    mask = _block((4, 4), slice(0, 2), slice(0, 2))
    with pytest.raises(DataError, match="resize the map"):
        M.auc_spro([np.zeros((2, 2))], [[_region(mask)]])
    with pytest.raises(DataError, match="NaN"):
        M.auc_spro([np.full((4, 4), np.nan)], [[_region(mask)]])
    with pytest.raises(DataError, match="2 anomaly maps"):
        M.spro_curve([np.zeros((4, 4))] * 2, [[_region(mask)]])


def test_defect_regions_rejects_unknown_values_and_missing_config():
    mask = np.ones((2, 2), bool)
    spec = DefectSpec("x", 1, 1.0, True)
    with pytest.raises(DataError, match="value 9"):
        M.defect_regions([(9, mask)], [spec], "img.png")
    with pytest.raises(DataError, match="defects_config"):
        M.defect_regions([(1, mask)], None, "img.png")


def test_read_defect_regions_splits_mask_values(tmp_path):
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "000.png")
    mask = np.zeros((6, 8), np.uint8)
    mask[:2, :2] = 10
    mask[4:, 4:] = 20
    Image.fromarray(mask).save(tmp_path / "m000.png")
    other = np.zeros((6, 8), np.uint8)
    other[0, 7] = 10
    Image.fromarray(other).save(tmp_path / "m001.png")
    sample = Sample(
        tmp_path / "000.png",
        "test",
        "logical_anomalies",
        "000",
        (tmp_path / "m000.png", tmp_path / "m001.png"),
    )
    specs = [DefectSpec("a", 10, 0.5, True), DefectSpec("b", 20, 3.0, False)]
    regions = M.read_defect_regions(sample, specs)
    assert [(r.pixel_value, int(r.mask.sum()), r.saturation_area) for r in regions] == [
        (10, 4, 2),
        (20, 8, 3),
        (10, 1, 0),
    ]
    good = Sample(tmp_path / "000.png", "test", "good", "000")
    assert M.read_defect_regions(good, specs) == []


def test_area_under_curve_interpolates_at_the_limit():
    fpr = np.array([0.0, 0.0, 0.2, 1.0])
    y = np.array([0.0, 0.4, 0.8, 1.0])
    # up to 0.1: trapezoid from (0, .4) to (.1, .6) = .05 -> / .1
    assert M.area_under_curve(fpr, y, 0.1) == pytest.approx(0.5)
    assert M.area_under_curve(fpr, y, 0.2) == pytest.approx(0.12 / 0.2)


def test_resize_anomaly_map_is_bilinear_half_pixel():
    out = M.resize_anomaly_map(np.array([[0.0, 1.0]]), (1, 4))
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)
    batch = M.resize_anomaly_map(np.ones((2, 3, 5)), (7, 11))
    assert batch.shape == (2, 7, 11)
    np.testing.assert_allclose(batch, 1.0, atol=1e-6)
