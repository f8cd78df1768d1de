"""LOCO layout listing: sorting, stem pairing, labels, regions and bad trees."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from csad_jax.data.batching import iterate_batches
from csad_jax.data.image_io import read_rgb
from csad_jax.data.loco import (
    DefectSpec,
    Sample,
    list_categories,
    load_category,
    read_defects_config,
    read_gt_regions,
    scan_category,
)
from csad_jax.errors import ConfigError, DataError

from .conftest import DEFECTS, build_category, random_rgb, rect_mask, write_png


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_clean_category_lists_every_split_sorted(loco_root):
    cat = load_category(loco_root, "box")
    assert cat.name == "box" and cat.path == loco_root / "box"
    assert [s.stem for s in cat.samples("train")] == ["000", "001", "002"]
    assert len(cat.samples("validation")) == 2
    test = cat.samples("test")
    assert [s.kind for s in test] == ["good"] * 2 + ["logical_anomalies"] * 2 + [
        "structural_anomalies"
    ]
    assert [s.is_anomalous for s in test] == [False, False, True, True, True]
    assert all(s.mask_paths == () for s in cat.samples("test", "good"))
    logical = cat.samples("test", kind="logical_anomalies")
    assert logical[1].mask_paths == (
        loco_root / "box/ground_truth/logical_anomalies/001/000.png",
    )
    assert cat.defects_config == [
        DefectSpec("missing_item", 255, 1.0, True),
        DefectSpec("scratch", 240, 30.0, False),
    ]
    assert cat.defect_for_value(240).defect_name == "scratch"
    assert cat.defect_for_value(17) is None


def test_sample_is_a_frozen_dataclass(loco_root):
    sample = load_category(loco_root, "box").samples("train")[0]
    assert isinstance(sample, Sample)
    with pytest.raises(AttributeError):
        sample.kind = "logical_anomalies"


def test_acceptance_mixed_modes_sizes_and_suffixes(tmp_path):
    root = tmp_path / "loco"
    folder = build_category(root, counts=(0, 1, 1, 1, 1))
    train = folder / "train" / "good"
    write_png(train / "000.png", np.full((10, 14), 90, np.uint8))  # grayscale
    write_png(train / "001.png", np.full((10, 14), 50000, np.uint16))  # 16-bit
    rgba = np.concatenate([random_rgb(10, 14, 1), np.zeros((10, 14, 1), np.uint8)], 2)
    write_png(train / "002.png", rgba)
    palette = Image.fromarray(random_rgb(10, 14, 2)).convert("P")
    palette.save(train / "003.png")
    big = np.broadcast_to(
        np.arange(1600, dtype=np.uint8)[None, :, None], (1100, 1600, 3)
    )
    Image.fromarray(np.ascontiguousarray(big)).save(train / "004.png", compress_level=1)
    write_png(train / "005.PNG", random_rgb(10, 14, 3))  # upper-case suffix
    cat = load_category(root, "box")
    samples = cat.require_nonempty("train")
    assert [s.path.name for s in samples] == [
        "000.png",
        "001.png",
        "002.png",
        "003.png",
        "004.png",
        "005.PNG",
    ]
    shapes = [read_rgb(s.path).shape for s in samples]
    assert shapes == [(10, 14, 3)] * 4 + [(1100, 1600, 3), (10, 14, 3)]
    assert read_rgb(samples[1].path)[0, 0, 0] == 50000 >> 8
    batches = list(iterate_batches(samples, (8, 8), 4, progress=False))
    assert [b[0].shape for b in batches] == [(4, 8, 8, 3), (2, 8, 8, 3)]


def test_truncated_png_in_a_category(loco_root):
    path = loco_root / "box" / "train" / "good" / "001.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    samples = load_category(loco_root, "box").samples("train")  # no file is opened
    with pytest.raises(DataError) as err:
        list(iterate_batches(samples, 8, 2, progress=False))
    assert str(path) in one_line(err) and "truncated" in str(err.value)


def test_mask_value_240_is_an_anomalous_region(loco_root):
    cat = load_category(loco_root, "box")
    sample = cat.samples("test", "structural_anomalies")[0]
    assert sample.is_anomalous
    regions = read_gt_regions(sample)
    assert len(regions) == 1
    value, region = regions[0]
    assert value == 240 and region.dtype == np.bool_
    np.testing.assert_array_equal(region, rect_mask(12, 16, 240) > 0)
    assert read_gt_regions(cat.samples("test", "good")[0]) == []


def test_each_mask_file_and_each_value_is_a_region(loco_root):
    gt = loco_root / "box/ground_truth/logical_anomalies/000"
    mask = np.zeros((12, 16), np.uint8)
    mask[0, :3] = 7
    mask[5, 5] = 255
    write_png(gt / "001.png", mask)
    write_png(gt / "002.png", rect_mask(12, 16, 255))
    sample = load_category(loco_root, "box").samples("test", "logical_anomalies")[0]
    assert [p.name for p in sample.mask_paths] == ["000.png", "001.png", "002.png"]
    regions = read_gt_regions(sample)
    assert [v for v, _ in regions] == [255, 7, 255, 255]
    assert [int(r.sum()) for _, r in regions] == [12, 3, 1, 12]


def test_mask_size_mismatch_names_both_files(loco_root):
    mask = loco_root / "box/ground_truth/logical_anomalies/000/000.png"
    write_png(mask, rect_mask(6, 16, 255))
    sample = load_category(loco_root, "box").samples("test", "logical_anomalies")[0]
    with pytest.raises(DataError) as err:
        read_gt_regions(sample)
    assert str(mask) in one_line(err) and str(sample.path) in str(err.value)


def test_all_zero_mask_is_refused(loco_root):
    mask = loco_root / "box/ground_truth/logical_anomalies/001/000.png"
    write_png(mask, np.zeros((12, 16), np.uint8))
    sample = load_category(loco_root, "box").samples("test", "logical_anomalies")[1]
    with pytest.raises(DataError, match="no non-zero"):
        read_gt_regions(sample)


@pytest.mark.parametrize("root_name", ["goods_line", "logical_anomalies_data"])
def test_labels_come_from_split_folder_not_path_substrings(tmp_path, root_name):
    root = tmp_path / root_name / "structural_anomalies_here"
    build_category(root, name="good_logical_anomalies")
    cat = load_category(root, "good_logical_anomalies")
    assert [s.kind for s in cat.samples("train")] == ["good"] * 3
    assert not any(s.is_anomalous for s in cat.samples("test", "good"))
    assert [s.is_anomalous for s in cat.samples("test")].count(True) == 3
    assert {s.split for s in cat.samples("validation")} == {"validation"}


def test_files_are_sorted_and_paired_by_stem_not_position(tmp_path):
    root = tmp_path / "loco"
    folder = build_category(root, counts=(0, 1, 1, 0, 0))
    logical = folder / "test" / "logical_anomalies"
    gt = folder / "ground_truth" / "logical_anomalies"
    # Written in reverse order; the b image has no "a"-style neighbour in a list.
    for stem, value in [("c", 3), ("b", 2), ("a10", 4), ("a", 1)]:
        write_png(logical / f"{stem}.png", random_rgb(12, 16, value))
        write_png(gt / stem / "000.png", rect_mask(12, 16, value))
    for name in ["z", "m", "0"]:
        write_png(folder / "train" / "good" / f"{name}.png", random_rgb(12, 16, 9))
    cat = load_category(root, "box")
    assert [s.stem for s in cat.samples("train")] == ["0", "m", "z"]
    samples = cat.samples("test", "logical_anomalies")
    assert [s.stem for s in samples] == ["a", "a10", "b", "c"]
    for sample in samples:
        assert sample.mask_paths[0].parent.name == sample.stem
        ((value, _),) = read_gt_regions(sample)
        assert value == {"a": 1, "a10": 4, "b": 2, "c": 3}[sample.stem]


def test_anomalous_image_without_ground_truth_names_the_file(loco_root):
    shutil.rmtree(loco_root / "box/ground_truth/logical_anomalies/001")
    with pytest.raises(DataError) as err:
        load_category(loco_root, "box")
    image = loco_root / "box/test/logical_anomalies/001.png"
    assert str(image) in one_line(err) and "no ground-truth folder" in str(err.value)


def test_ground_truth_without_image_names_the_folder(loco_root):
    (loco_root / "box/test/structural_anomalies/000.png").unlink()
    with pytest.raises(DataError) as err:
        load_category(loco_root, "box")
    gt = loco_root / "box/ground_truth/structural_anomalies/000"
    assert str(gt) in one_line(err)


def test_empty_ground_truth_folder_is_refused(loco_root):
    shutil.rmtree(loco_root / "box/ground_truth/logical_anomalies/000")
    (loco_root / "box/ground_truth/logical_anomalies/000").mkdir()
    with pytest.raises(DataError, match="contains no mask PNG"):
        load_category(loco_root, "box")


def test_missing_root_and_category(tmp_path, loco_root):
    with pytest.raises(DataError) as err:
        load_category(tmp_path / "nowhere", "box")
    assert "dataset root not found" in one_line(err)
    build_category(loco_root, "cable")
    with pytest.raises(DataError) as err:
        load_category(loco_root, "boxx")
    assert "categories found: box, cable" in one_line(err)
    assert list_categories(loco_root) == ["box", "cable"]
    with pytest.raises(DataError, match="itself looks like a category"):
        load_category(loco_root / "box", "box")
    with pytest.raises(DataError, match="invalid category"):
        load_category(loco_root, "../loco")


def test_folder_that_is_not_a_category(loco_root):
    (loco_root / "notes").mkdir()
    assert list_categories(loco_root) == ["box"]
    with pytest.raises(DataError, match="not a LOCO category folder"):
        load_category(loco_root, "notes")


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_empty_validation_is_refused_where_needed(loco_root, state):
    val = loco_root / "box" / "validation" / "good"
    shutil.rmtree(val)
    if state == "empty":
        val.mkdir()
    cat = load_category(loco_root, "box")  # listing works; fitting must refuse
    assert cat.samples("validation") == []
    with pytest.raises(DataError) as err:
        cat.require_nonempty("validation")
    assert str(loco_root / "box" / "validation") in one_line(err)
    assert len(cat.require_nonempty("train")) == 3
    scan = scan_category(loco_root, "box")
    assert scan.empty_splits == [f"split folder {val} is {state}"]


def test_unexpected_entries_are_refused_and_hidden_ones_ignored(loco_root):
    (loco_root / "box/train/good/.DS_Store").write_bytes(b"x")
    (loco_root / "box/.cache").mkdir()
    assert len(load_category(loco_root, "box").samples("train")) == 3
    (loco_root / "box/train/good/readme.txt").write_text("x")
    (loco_root / "box/test/bad").mkdir()
    with pytest.raises(DataError) as err:
        load_category(loco_root, "box")
    assert "readme.txt" in one_line(err) or "bad" in str(err.value)
    assert "and 1 more" in str(err.value)
    scan = scan_category(loco_root, "box")
    assert len(scan.unexpected) == 2 and scan.problems == []


def test_duplicate_stems_are_refused(loco_root):
    Image.fromarray(random_rgb(12, 16, 1)).save(loco_root / "box/train/good/001.jpg")
    with pytest.raises(DataError, match="duplicate image stem '001'"):
        load_category(loco_root, "box")


def test_unknown_split_or_kind_is_a_config_error(loco_root):
    cat = load_category(loco_root, "box")
    with pytest.raises(ConfigError):
        cat.samples("val")
    with pytest.raises(ConfigError):
        cat.samples("train", "logical_anomalies")


def test_defects_config_absent_is_none(tmp_path):
    build_category(tmp_path, defects=None)
    assert load_category(tmp_path, "box").defects_config is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"defect_name": "x"}), "JSON list"),
        (json.dumps([{"defect_name": "x", "pixel_value": 3}]), "lacks"),
        (json.dumps([dict(DEFECTS[0], pixel_value=0)]), "pixel_value"),
        (json.dumps([dict(DEFECTS[0], saturation_threshold=1.5)]), "in \\(0, 1\\]"),
        (json.dumps([dict(DEFECTS[1], saturation_threshold=-3)]), "pixel count"),
        (json.dumps([dict(DEFECTS[0], relative_saturation="yes")]), "true or false"),
        (json.dumps([DEFECTS[0], dict(DEFECTS[1], pixel_value=255)]), "more than once"),
        (b"\xce\x00\xff binary", "not UTF-8 text"),
    ],
)
def test_bad_defects_config_names_the_file(tmp_path, content, match):
    folder = build_category(tmp_path)
    path = folder / "defects_config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=match) as err:
        load_category(tmp_path, "box")
    assert str(path) in one_line(err)
    with pytest.raises(DataError, match=match):
        read_defects_config(path)


def test_components_and_split_folders_are_not_categories(tmp_path):
    box = build_category(tmp_path, "box")
    build_category(box, "components", defects=None)  # mirrors the splits
    (box / "components" / "train" / "good" / "000.png").touch()
    assert list_categories(tmp_path) == ["box"]
    assert list_categories(box) == []
    for name in ("components", "train", "ground_truth"):
        with pytest.raises(DataError) as err:
            load_category(box, name)
        assert "pass its parent" in one_line(err)
    (tmp_path / "bare" / "train").mkdir(parents=True)  # no train/good
    assert list_categories(tmp_path) == ["box"]
    with pytest.raises(DataError, match="not a LOCO category folder"):
        load_category(tmp_path, "bare")
    other = tmp_path / "other"
    build_category(other, "components")  # a real category may have this name
    assert list_categories(other) == ["components"]
    assert len(load_category(other, "components").samples("train")) == 3


def test_incomplete_synthetic_category_is_refused(loco_root):
    meta = loco_root / "box" / "synthetic_meta.json"
    meta.write_text(json.dumps({"complete": False}))
    with pytest.raises(DataError) as err:
        load_category(loco_root, "box")
    text = one_line(err)
    assert "incomplete" in text and "csad synth" in text and "--overwrite" in text
    assert scan_category(loco_root, "box").incomplete in text
    meta.write_text(json.dumps({"complete": True}))
    assert len(load_category(loco_root, "box").samples("train")) == 3
    meta.write_text("{oops")
    with pytest.raises(DataError, match="cannot read .*synthetic_meta.json"):
        load_category(loco_root, "box")
