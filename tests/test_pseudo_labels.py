"""The pseudo-label reader: round trip, and clear errors on bad output."""

import json

import numpy as np
import pytest
from PIL import Image

from csad_jax.data.pseudo_labels import (
    LabelledMaps,
    load_pseudo_labels,
    write_pseudo_labels,
)
from csad_jax.errors import DataError


def _maps(seed):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, size=(12, 10)).astype(np.uint8)
    inst = (np.arange(120).reshape(12, 10) % 7 + 300).astype(np.int32)
    inst[cls == 0] = 0
    return LabelledMaps(cls, inst, cls == 0)


@pytest.fixture
def labels_root(tmp_path):
    labelled = {"000": _maps(0), "002": _maps(1)}
    write_pseudo_labels(tmp_path, "toy", labelled, ["001"], 3, backend="test")
    return tmp_path


def test_round_trip(labels_root):
    labels = load_pseudo_labels(labels_root, "toy")
    assert labels.labelled == ("000", "002") and labels.unlabelled == ("001",)
    assert labels.num_classes == 3 and len(labels.class_area_mean) == 3
    got = labels.read_labelled("002")
    want = _maps(1)
    np.testing.assert_array_equal(got.class_map, want.class_map)
    np.testing.assert_array_equal(got.instances, want.instances)  # 16-bit ids
    np.testing.assert_array_equal(got.background, want.background)
    # the category folder itself is accepted too
    assert load_pseudo_labels(labels_root / "toy", "toy").labelled == labels.labelled


def _edit_meta(root, **changes):
    path = root / "toy" / "labels.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"complete": False}, "incomplete"),
        ({"format": 2}, "format"),
        ({"category": "other"}, "category"),
        ({"num_classes": 0}, "num_classes"),
        ({"labelled": []}, "no labelled"),
        ({"labelled": ["000", "000"]}, "twice"),
        ({"unlabelled": ["000"]}, "both labelled and unlabelled"),
        ({"labelled": ["000", "009"]}, "lacks 1 labelled"),
        ({"class_area_mean": ["x"]}, "class_area_mean"),
    ],
)
def test_refuses_bad_labels_json(labels_root, changes, match):
    _edit_meta(labels_root, **changes)
    with pytest.raises(DataError, match=match):
        load_pseudo_labels(labels_root, "toy")


def test_refuses_missing_or_corrupt_files(labels_root):
    with pytest.raises(DataError, match="missing or their generation"):
        load_pseudo_labels(labels_root, "absent")
    meta = labels_root / "toy" / "labels.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match="cannot parse"):
        load_pseudo_labels(labels_root, "toy")
    meta.write_text(text)
    (labels_root / "toy" / "instances" / "000.png").unlink()
    with pytest.raises(DataError, match="instances lacks 1"):
        load_pseudo_labels(labels_root, "toy")


def test_refuses_bad_map_contents(labels_root):
    labels = load_pseudo_labels(labels_root, "toy")
    maps = labels_root / "toy" / "maps"
    (maps / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="cannot decode"):
        labels.class_map("000")
    Image.fromarray(np.full((12, 10), 9, np.uint8)).save(maps / "000.png")
    with pytest.raises(DataError, match="class id 9 > num_classes 3"):
        labels.class_map("000")
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(maps / "000.png")
    with pytest.raises(DataError, match="single-channel"):
        labels.class_map("000")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(maps / "000.png")
    with pytest.raises(DataError, match="different sizes"):
        labels.read_labelled("000")
    with pytest.raises(DataError, match="not a labelled stem"):
        labels.class_map("001")
