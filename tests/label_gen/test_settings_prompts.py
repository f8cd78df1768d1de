"""Per-category settings (method-spec §2.1) and text prompt handling."""

import importlib.util

import numpy as np
import pytest

from csad_jax.errors import ConfigError
from label_gen import prompts
from label_gen.errors import MissingFileError, MissingPackageError
from label_gen.settings import LOCO_CATEGORIES, settings_for


def test_loco_settings_follow_the_official_table():
    s = settings_for("screw_bag", "foundation", "wide_resnet50_2")
    assert (s.mode, s.use_grounding_filter, s.clustering.filter_hist) == (
        "fine",
        True,
        True,
    )
    assert (s.grounding.box_threshold, s.grounding.text_threshold) == (0.3, 0.3)
    assert s.clustering.bandwidth == 3.0
    assert s.grounding.background == ("zip-lock bag",)
    assert "zip-lock bag" in s.grounding.prompts
    bb = settings_for("breakfast_box", "foundation", "wide_resnet50_2")
    assert bb.grounding.prompts == (
        "almond",
        "apple",
        "container",
        "oatmeal",
        "orange",
        "banana",
    )
    assert (bb.mode, bb.grounding.box_threshold, bb.clustering.bandwidth) == (
        "coarse",
        0.25,
        3.5,
    )
    sc = settings_for("splicing_connectors", "foundation", "wide_resnet50_2")
    assert (sc.clustering.bandwidth, sc.clustering.filter_hist) == (4.0, False)
    jb = settings_for("juice_bottle", "foundation", "wide_resnet50_2")
    assert (jb.mode, jb.use_grounding_filter) == ("fine", False)
    assert jb.grounding.prompts.count("bottle") == 3  # duplicates kept
    assert set(LOCO_CATEGORIES) == {
        "breakfast_box",
        "juice_bottle",
        "pushpins",
        "screw_bag",
        "splicing_connectors",
    }


def test_official_numbers_and_rotation_defaults():
    s = settings_for("pushpins", "foundation", "wide_resnet50_2")
    assert (s.features.rotations, s.features.rotation_endpoint) == (60, True)
    assert (s.features.crop_size, s.clustering.proj_dim) == (65, 512)
    assert (s.clustering.alpha_ratio, s.clustering.hdbscan_ratio) == (0.5, 0.1)
    assert s.sam.points_per_side == 32 and s.sam.min_mask_region_area == 500
    off = settings_for("pushpins", "offline")
    assert (off.features.rotations, off.features.rotation_endpoint) == (8, False)
    # other feature CNNs than the official one get the automatic bandwidth
    assert off.clustering.bandwidth is None


def test_unknown_category_gets_generic_settings_and_bad_values_fail():
    s = settings_for("my_new_part")
    assert s.clustering.bandwidth is None and s.grounding.prompts == ()
    with pytest.raises(ConfigError):
        settings_for("pushpins", "magic")
    with pytest.raises(ConfigError):
        settings_for("pushpins", rotations=0)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("  Zip - Lock  Bag. ", "zip-lock bag"),
        ("metal  hex nuts...", "metal hex nuts"),
        (" container .", "container"),
        ("", ""),
    ],
)
def test_normalize_phrase(raw, norm):
    assert prompts.normalize_phrase(raw) == norm


def test_caption_and_phrase_spans_cover_every_occurrence():
    phrases = ["bottle", "Glass Bottle", "bottle", "juice."]
    caption = prompts.build_caption(phrases)
    assert caption == "bottle . glass bottle . bottle . juice ."
    spans = prompts.phrase_spans(caption, phrases)
    assert [caption[a:b] for a, b in spans["bottle"]] == ["bottle", "bottle"]
    assert [caption[a:b] for a, b in spans["glass bottle"]] == ["glass bottle"]
    assert prompts.unique_phrases(phrases) == ("bottle", "glass bottle", "juice")


def test_pushpins_background_can_never_match_and_is_reported():
    s = settings_for("pushpins", "foundation")
    problems = prompts.background_problems(s.grounding.prompts, s.grounding.background)
    assert len(problems) == 1 and "'container'" in problems[0]
    sb = settings_for("screw_bag", "foundation")
    assert (
        prompts.background_problems(sb.grounding.prompts, sb.grounding.background) == []
    )


def test_unmatched_background_warns_only_for_phrases_never_hit():
    notes = prompts.unmatched_background(["zip-lock bag", "tray"], ["Zip - lock bag"])
    assert len(notes) == 1 and "'tray'" in notes[0]


def test_refine_tags_applies_the_stop_list():
    tags = prompts.refine_tags(["Connector ", "attach", "cable", "cable"], ["attach"])
    assert tags == ("connector", "cable")


def test_ram_tags_needs_a_file_and_the_package(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(MissingFileError, match="RAM"):
        prompts.ram_tags(image, tmp_path / "absent.pth", ())
    ckpt = tmp_path / "ram_plus.pth"
    ckpt.write_bytes(b"x")
    if importlib.util.find_spec("ram") is not None:
        pytest.skip("recognize-anything is installed")
    with pytest.raises(MissingPackageError, match="recognize-anything"):
        prompts.ram_tags(image, ckpt, ())
