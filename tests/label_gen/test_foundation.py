"""Foundation backend: phrase mapping, SAM plumbing with a tiny random SAM,
a stand-in box detector, coarse/fine proposals and the empty cases."""

import dataclasses

import numpy as np
import pytest
import torch

from label_gen import foundation as fd
from label_gen.errors import MissingFileError, MissingPackageError
from label_gen.sam_amg import StreamingMaskGenerator, remove_small_regions
from label_gen.settings import SamSettings, settings_for, with_prompts
from tests.label_gen.sam_stand_in import tiny_sam
from tests.label_gen.scenes import scene

FAST_AMG = SamSettings(
    points_per_side=4, crop_n_layers=0, pred_iou_thresh=0.0, stability_score_thresh=0.0
)


class StandInDetector:
    """A BoxDetector returning fixed boxes, checking it is asked properly."""

    def __init__(self, detections):
        self.detections = detections
        self.asked = []

    def detect(self, image, phrases, box_threshold, text_threshold):
        self.asked.append((tuple(phrases), box_threshold, text_threshold))
        return list(self.detections)


@pytest.fixture(scope="module")
def sam():
    return tiny_sam()


def test_assign_phrases_maps_each_box_to_one_phrase():
    probs = np.array(
        [[0.1, 0.9, 0.2, 0.3], [0.1, 0.2, 0.25, 0.6], [0.5, 0.1, 0.1, 0.1]]
    )
    tokens = {"zip-lock bag": [1, 2], "screw": [3], "nut": []}
    hits = fd.assign_phrases(probs, tokens, 0.3)
    assert hits[0] == ("zip-lock bag", pytest.approx(0.9))
    assert hits[1] == ("screw", pytest.approx(0.6))
    assert hits[2] is None  # only a non-phrase token is high


def test_token_indices_follow_character_offsets():
    caption = "zip - lock bag . screw ."
    offsets = [
        (0, 0),
        (0, 3),
        (4, 5),
        (6, 10),
        (11, 14),
        (15, 16),
        (17, 22),
        (23, 24),
        (0, 0),
    ]
    toks = fd.token_indices(offsets, caption, ["zip - lock bag", "screw"])
    assert toks == {"zip-lock bag": [1, 2, 3, 4], "screw": [6]}


@pytest.mark.parametrize(
    ("hw", "out"),
    [((1000, 1700), (784, 1332)), ((800, 600), (1066, 800)), ((800, 800), (800, 800))],
)
def test_grounding_dino_test_size(hw, out):
    assert fd._resized_size(*hw) == out


def test_missing_files_and_packages_are_one_line_errors(tmp_path):
    with pytest.raises(MissingFileError, match="GroundingDINO config"):
        fd.GroundingDinoDetector(tmp_path / "a.py", tmp_path / "b.pth", tmp_path)
    for name in ("cfg.py", "w.pth"):
        (tmp_path / name).write_text("x")
    with pytest.raises(MissingFileError, match="text-encoder"):
        fd.GroundingDinoDetector(
            tmp_path / "cfg.py", tmp_path / "w.pth", tmp_path / "bert"
        )
    (tmp_path / "bert").mkdir()
    try:
        import groundingdino  # noqa: F401
    except ImportError:
        with pytest.raises(MissingPackageError, match="groundingdino-py"):
            fd.GroundingDinoDetector(
                tmp_path / "cfg.py", tmp_path / "w.pth", tmp_path / "bert"
            )
    with pytest.raises(MissingFileError, match="SAM checkpoint"):
        fd.load_sam(tmp_path / "sam.pth")


def test_load_sam_refuses_non_sam_weights(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save(
        {"image_encoder.patch_embed.proj.weight": torch.zeros(64, 3, 16, 16)}, path
    )
    with pytest.raises(fd.WeightsError, match="not a SAM"):
        fd.load_sam(path)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(fd.WeightsError, match="not a readable"):
        fd.load_sam(tmp_path / "junk.pth")


@pytest.mark.slow
def test_load_sam_vit_b_round_trip_with_hq_keys(tmp_path):
    from segment_anything import sam_model_registry

    model = sam_model_registry["vit_b"]()
    state = dict(model.state_dict())
    state["mask_decoder.hf_token.weight"] = torch.zeros(1, 256)  # HQ-SAM extra
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)
    loaded = fd.load_sam(path)
    key = "image_encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])
    with pytest.raises(fd.ConfigError, match="vit_h"):
        fd.load_sam(path, variant="vit_h")


def test_remove_small_regions_holes_and_islands():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a 1-pixel hole
    mask[15:17, 15:17] = True  # a 4-pixel island
    filled, changed = remove_small_regions(mask, 3, "holes")
    assert changed and filled[5, 5]
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[15:17, 15:17].any() and cleaned[2:12, 2:12].all()
    tiny = np.zeros((5, 5), bool)
    tiny[0, 0] = tiny[4, 4] = True
    kept, _ = remove_small_regions(tiny, 10, "islands")
    assert kept.sum() == 1  # all small: the largest is kept


def test_sam_segmenter_prompts_return_full_size_masks(sam):
    image, _ = scene(0, 80)
    seg = fd.SamSegmenter(sam, FAST_AMG)
    seg.set_image(image)
    boxes = np.array([[5, 5, 30, 30], [40, 10, 70, 50]], np.float32)
    masks = list(seg.box_masks(boxes))
    assert len(masks) == 2 and masks[0].shape == (80, 80) and masks[0].dtype == bool
    assert seg.corner_background((80, 80)).shape == (80, 80)
    proposals = list(seg.proposals(image))
    assert all(p.shape == (80, 80) and p.dtype == bool for p in proposals)


def test_sam_amg_without_masks_is_empty_not_an_error(sam):
    strict = dataclasses.replace(FAST_AMG, crop_n_layers=1, pred_iou_thresh=1.5)
    gen = StreamingMaskGenerator(sam, strict)
    assert list(gen.stream(scene(1, 72)[0])) == []


def _coarse(prompts=("disc", "square", "tray"), background=("tray",)):
    s = settings_for("toy", "foundation")
    return with_prompts(s, prompts, background)


def test_coarse_proposals_with_a_stand_in_detector(sam):
    image, _ = scene(2, 80)
    det = StandInDetector(
        [
            fd.Detection((5, 5, 35, 35), "disc", 0.9),
            fd.Detection((40, 5, 75, 40), "Square.", 0.8),
            fd.Detection((0, 0, 80, 80), "tray", 0.7),
        ]
    )
    settings = _coarse()
    props = fd.FoundationProposer(settings, fd.SamSegmenter(sam, FAST_AMG), det)(image)
    assert det.asked == [(("disc", "square", "tray"), 0.3, 0.25)]
    assert props.info["detections"] == 3 and props.info["background_hits"] == ["tray"]
    assert props.components.max() <= 2 and props.components.shape == (80, 80)
    assert props.instances.shape == (80, 80) and props.background.dtype == bool


@pytest.mark.parametrize(
    "detections", [[], [fd.Detection((0, 0, 60, 60), "tray", 0.9)]]
)
def test_no_detection_or_only_background_gives_no_components(sam, detections):
    image, _ = scene(3, 64)
    proposer = fd.FoundationProposer(
        _coarse(), fd.SamSegmenter(sam, FAST_AMG), StandInDetector(detections)
    )
    props = proposer(image)
    assert props.components.max() == 0 and props.instances.max() == 0


def test_fine_mode_runs_sam_proposals_and_refinement(sam):
    image, _ = scene(4, 72)
    settings = dataclasses.replace(_coarse(), mode="fine", use_grounding_filter=False)
    det = StandInDetector([fd.Detection((0, 0, 72, 72), "tray", 0.9)])
    props = fd.FoundationProposer(settings, fd.SamSegmenter(sam, FAST_AMG), det)(image)
    assert "components" in props.info
    np.testing.assert_array_equal(props.components, props.instances)


def test_detector_requirement():
    coarse = _coarse()
    assert fd.needs_detector(coarse)
    juice = settings_for("juice_bottle", "foundation")
    assert not fd.needs_detector(juice)  # fine, no grounding filter, no background
    with pytest.raises(fd.ConfigError, match="GroundingDINO"):
        fd.FoundationProposer(coarse, sam=None, detector=None)


def test_foundation_backend_through_the_whole_pipeline(sam, tmp_path):
    from PIL import Image

    from label_gen.output import InputImage
    from label_gen.pipeline import Backend, generate_pseudo_labels
    from tests.label_gen.scenes import colour_features

    images = []
    for i in range(3):
        path = tmp_path / f"{i:03d}.png"
        Image.fromarray(scene(i, 64)[0]).save(path)
        images.append(InputImage(f"{i:03d}", path))
    det = StandInDetector([fd.Detection((4, 4, 30, 30), "disc", 0.9)])
    settings = dataclasses.replace(_coarse(), sam=FAST_AMG)

    def proposer():
        return fd.FoundationProposer(settings, fd.SamSegmenter(sam, settings.sam), det)

    backend = Backend(proposer, lambda: colour_features, {"sam": "tiny"})
    with pytest.warns(UserWarning, match="'tray' matched no detection"):
        meta = generate_pseudo_labels(
            images, tmp_path / "out", settings, backend, False
        )
    assert meta["complete"] and meta["backend"] == "foundation"
    assert len(det.asked) == 3 and meta["stats"]["components_per_image"] == [1, 1, 1]
    assert (tmp_path / "out" / "toy" / "background" / "002.png").is_file()
