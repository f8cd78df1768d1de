"""Mask refinement (method-spec §2.2 step 6, §2.3 steps 2-8)."""

import numpy as np

from label_gen import refine
from label_gen.refine import Region


def _box_mask(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_region_round_trip_and_overlap():
    m = _box_mask((20, 30), 2, 7, 5, 9)
    r = Region.from_full(m)
    assert (r.y0, r.x0, r.area, r.mask.shape) == (2, 5, 20, (5, 4))
    np.testing.assert_array_equal(r.full(m.shape), m)
    assert r.overlap(_box_mask((20, 30), 0, 4, 0, 30)) == 8
    assert Region.from_full(np.zeros((4, 4), bool)) is None


def test_intersect_ratio_uses_the_smaller_area():
    assert refine.intersect_ratio(5, 10, 50) == 0.5
    assert refine.intersect_ratio(0, 0, 50) == 0.0


def test_merge_regions_paints_large_first_and_drops_tiny():
    shape = (100, 100)
    big = Region.from_full(_box_mask(shape, 0, 50, 0, 50))
    small = Region.from_full(_box_mask(shape, 10, 20, 10, 20))
    tiny = Region.from_full(_box_mask(shape, 90, 93, 90, 93))  # 9 px <= 10
    ids = refine.merge_regions([small, tiny, big], shape, 0.001)
    assert ids[15, 15] == 2 and ids[40, 40] == 1 and ids[91, 91] == 0
    assert ids.dtype == np.uint16


def test_regions_from_id_map_keeps_areas_above_the_fraction():
    ids = np.zeros((100, 100), np.uint8)
    ids[:10, :10] = 1  # 100 px
    ids[50:53, 50:53] = 3  # 9 px <= 0.001 * 10000
    regions = refine.regions_from_id_map(ids, 0.001)
    assert [r.area for r in regions] == [100]


def test_connected_regions_rules():
    shape = (100, 100)
    mask = _box_mask(shape, 0, 10, 0, 10)  # 100 px, kept
    mask |= _box_mask(shape, 50, 55, 50, 55)  # 25 px, <= 50: dropped
    mask |= _box_mask(shape, 10, 20, 10, 20)  # touches the first diagonally only
    pieces = refine.connected_regions(mask)
    assert sorted(p.area for p in pieces) == [100, 100]  # 4-connectivity
    # a mask covering almost everything: its piece has a huge box (dropped),
    # and the complement (OpenCV's label 0) is kept, as the official loop does
    full = ~_box_mask(shape, 40, 60, 40, 60)
    pieces = refine.connected_regions(full)
    assert [p.area for p in pieces] == [400]


def test_filter_by_combine_drops_masks_explained_by_smaller_ones():
    shape = (100, 100)
    a = Region.from_full(_box_mask(shape, 0, 20, 0, 20))
    b = Region.from_full(_box_mask(shape, 0, 20, 20, 40))
    union = Region.from_full(_box_mask(shape, 0, 20, 0, 40))  # = a | b
    other = Region.from_full(_box_mask(shape, 50, 90, 50, 90))
    kept = refine.filter_by_combine([union, other, b, a], shape, 0.001)
    assert sorted(r.area for r in kept) == [400, 400, 1600]
    # a larger mask that is mostly new is accepted in the second pass
    half = Region.from_full(_box_mask(shape, 0, 20, 10, 60))  # 1000, 500 new
    kept = refine.filter_by_combine([a, half], shape, 0.001)
    assert sorted(r.area for r in kept) == [400, 1000]


def test_select_components_grounding_filter_and_backgrounds():
    shape = (100, 100)
    inside = _box_mask(shape, 10, 30, 10, 30)
    outside = _box_mask(shape, 60, 80, 60, 80)
    on_bg = _box_mask(shape, 10, 30, 60, 80)
    fg = _box_mask(shape, 5, 35, 5, 35) | on_bg
    bg = _box_mask(shape, 0, 40, 55, 100)
    kept = refine.select_components([inside, outside, on_bg], fg, [bg])
    assert len(kept) == 1 and kept[0].overlap(inside) == 400
    kept = refine.select_components([inside, outside, on_bg], None, [])
    assert len(kept) == 3


def test_select_components_keeps_at_most_255_largest():
    shape = (200, 200)
    masks = []
    for i in range(300):
        m = np.zeros(shape, bool)
        y, x = divmod(i, 20)
        m[y * 10 : y * 10 + 8, x * 10 : x * 10 + 8] = True
        if i < 10:
            m[y * 10 : y * 10 + 9, x * 10 : x * 10 + 9] = True
        masks.append(m)
    kept = refine.select_components(masks, None, [])
    assert len(kept) == 255 and kept[0].area == 81


def test_refine_coarse_splits_ids_into_pieces():
    ids = np.zeros((100, 100), np.uint16)
    ids[0:10, 0:10] = 1
    ids[0:10, 50:60] = 1  # same box id, two pieces
    ids[40:60, 40:60] = 2
    out = refine.refine_coarse(ids, 0.001)
    assert out.max() == 3 and len(np.unique(out[ids == 1])) == 2


def test_proposals_check_shapes_and_empty():
    p = refine.Proposals.empty((4, 5))
    assert p.components.shape == (4, 5) and not p.background.any()
    try:
        refine.Proposals(np.zeros((4, 5)), np.zeros((4, 4)), np.zeros((4, 5)))
    except ValueError as err:
        assert "shape" in str(err)
    else:
        raise AssertionError("mismatched shapes must fail")
