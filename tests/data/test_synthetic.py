"""The synthetic LOCO-layout generator: layout, masks, component maps, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from csad_jax import cli
from csad_jax.data import synthetic
from csad_jax.data.loco import load_category, read_gt_regions
from csad_jax.errors import ConfigError, DataError

TINY = {
    "train": 3,
    "validation": 1,
    "test_good": 2,
    "logical_per_subtype": 1,
    "structural_per_subtype": 1,
}
SIZE = (96, 96)  # (height, width)
CATEGORIES = tuple(synthetic.CATEGORIES)


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, keyed by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All categories at 96 x 96 with one image per anomaly subtype."""
    out = tmp_path_factory.mktemp("synth")
    synthetic.generate(out, seed=0, image_size=SIZE, counts=TINY)
    return out


@pytest.mark.parametrize("name", CATEGORIES)
def test_layout_and_counts_follow_mvtec_loco(root: Path, name: str):
    cat = load_category(root, name)
    assert len(cat.samples("train")) == TINY["train"]
    assert len(cat.samples("validation")) == TINY["validation"]
    assert len(cat.samples("test", "good")) == TINY["test_good"]
    n_logical = len(synthetic.LOGICAL_SUBTYPES) * TINY["logical_per_subtype"]
    n_structural = len(synthetic.STRUCTURAL_SUBTYPES) * TINY["structural_per_subtype"]
    assert len(cat.samples("test", "logical_anomalies")) == n_logical
    assert len(cat.samples("test", "structural_anomalies")) == n_structural
    assert [s.stem for s in cat.samples("train")] == ["000", "001", "002"]
    defects = {d.defect_name: d.pixel_value for d in cat.defects_config}
    assert defects == synthetic.PIXEL_VALUES
    with Image.open(cat.samples("train")[0].path) as image:
        assert (image.mode, image.size) == ("RGB", (SIZE[1], SIZE[0]))


@pytest.mark.parametrize("name", CATEGORIES)
def test_masks_exist_exactly_for_anomalous_images(root: Path, name: str):
    cat = load_category(root, name)
    meta = json.loads((root / name / synthetic.META_NAME).read_text())
    assert meta["complete"] is True
    test = cat.samples("test")
    assert sorted(meta["anomalies"]) == sorted(f"test/{s.kind}/{s.stem}" for s in test)
    for sample in test:
        subtype = meta["anomalies"][f"test/{sample.kind}/{sample.stem}"]
        gt = root / name / "ground_truth" / sample.kind / sample.stem
        assert gt.is_dir() == sample.is_anomalous
        assert (subtype == "good") == (not sample.is_anomalous)
        regions = read_gt_regions(sample)
        assert bool(regions) == sample.is_anomalous
        for value, region in regions:
            assert value == synthetic.PIXEL_VALUES[subtype]
            assert region.any() and region.shape == SIZE
    gt_stems = {
        f"{p.parent.name}/{p.name}" for p in (root / name / "ground_truth").glob("*/*")
    }
    assert gt_stems == {f"{s.kind}/{s.stem}" for s in test if s.is_anomalous}


@pytest.mark.parametrize("name", CATEGORIES)
def test_component_maps_have_image_size_and_kinds(root: Path, name: str):
    meta = json.loads((root / name / synthetic.META_NAME).read_text())
    k = meta["num_component_kinds"]
    spec = synthetic.CATEGORIES[name]
    assert meta["component_kinds"] == list(spec.kinds) and k == len(spec.kinds)
    images = sorted((root / name).glob("*/*/*.png"))
    assert len(images) == len(synthetic.image_plan(TINY)) == 15
    for path in images:
        rel = path.relative_to(root / name)
        labels = _read(root / name / "components" / rel)
        assert labels.dtype == np.uint8 and labels.shape == SIZE
        assert labels.max() <= k
        if rel.parts[1] == "good":
            assert set(np.unique(labels)) == set(range(k + 1))


@pytest.mark.parametrize("name", ["breakfast_tray", "screw_kit"])
def test_good_images_have_the_normal_instance_counts(root: Path, name: str):
    spec = synthetic.CATEGORIES[name]
    for path in sorted((root / name / "components" / "train" / "good").glob("*")):
        labels = _read(path)
        for k, kind in enumerate(spec.kinds, start=1):
            _, n = ndimage.label(labels == k, structure=np.ones((3, 3)))
            assert n == spec.counts[kind], (path, kind)


def _quadrant_areas(labels: np.ndarray, k: int) -> np.ndarray:
    """Area of each kind in each image quadrant: [4, k]."""
    h, w = labels.shape
    quads = (
        labels[: h // 2, : w // 2],
        labels[: h // 2, w // 2 :],
        labels[h // 2 :, : w // 2],
        labels[h // 2 :, w // 2 :],
    )
    return np.array([np.bincount(q.ravel(), minlength=k + 1)[1:] for q in quads])


@pytest.mark.parametrize("name", CATEGORIES)
def test_count_and_position_anomalies_move_whole_instances(root: Path, name: str):
    """Quadrant kind areas stay within a fraction of one instance in normal
    images and change by about one instance in count/position anomalies."""
    spec = synthetic.CATEGORIES[name]
    k = len(spec.kinds)
    comp = root / name / "components"
    train = [_read(p) for p in sorted((comp / "train" / "good").glob("*"))]
    areas = np.array([_quadrant_areas(t, k) for t in train])
    mean = areas.mean(axis=0)
    instance = areas.sum(axis=1).mean(axis=0) / np.array(
        [spec.counts[n] for n in spec.kinds]
    )

    def deviation(labels: np.ndarray) -> float:
        return float(np.max(np.abs(_quadrant_areas(labels, k) - mean) / instance))

    for path in sorted((comp / "test" / "good").glob("*")):
        assert deviation(_read(path)) < 0.35
    meta = json.loads((root / name / synthetic.META_NAME).read_text())
    for key, subtype in meta["anomalies"].items():
        if subtype in ("missing", "extra", "wrong_count", "misplaced"):
            assert deviation(_read(comp / f"{key}.png")) > 0.6, key


def test_structural_defects_are_local(root: Path):
    for name in CATEGORIES:
        cat = load_category(root, name)
        for sample in cat.samples("test", "structural_anomalies"):
            union = np.any([r for _, r in read_gt_regions(sample)], axis=0)
            assert 0 < union.mean() < 0.05


def test_same_seed_gives_identical_files_and_categories_are_independent(
    root: Path, tmp_path: Path
):
    synthetic.generate(
        tmp_path / "a", ["screw_kit"], seed=0, image_size=SIZE, counts=TINY
    )
    assert _digest(tmp_path / "a" / "screw_kit") == _digest(root / "screw_kit")


def test_different_seed_gives_different_images(root: Path, tmp_path: Path):
    synthetic.generate(tmp_path, ["screw_kit"], seed=1, image_size=SIZE, counts=TINY)
    for rel in ("train/good/000.png", "test/logical_anomalies/000.png"):
        other = _read(tmp_path / "screw_kit" / rel)
        assert not np.array_equal(other, _read(root / "screw_kit" / rel))


def test_non_square_size(tmp_path: Path):
    assert synthetic.parse_size("320x256") == (256, 320)
    assert synthetic.parse_size("128") == (128, 128)
    counts = dict(TINY, train=1)
    synthetic.generate(
        tmp_path, ["connector_pair"], image_size=(80, 128), counts=counts
    )
    folder = tmp_path / "connector_pair"
    for path in sorted(folder.glob("*/*/*.png")):
        with Image.open(path) as image:
            assert image.size == (128, 80)
        assert _read(folder / "components" / path.relative_to(folder)).shape == (
            80,
            128,
        )


def test_refuses_to_overwrite_without_permission(tmp_path: Path):
    foreign = tmp_path / "screw_kit"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="not empty"):
        synthetic.generate(tmp_path, ["screw_kit"], image_size=(64, 64), counts=TINY)
    with pytest.raises(DataError, match="refusing"):
        synthetic.generate(
            tmp_path, ["screw_kit"], image_size=(64, 64), counts=TINY, overwrite=True
        )
    assert (foreign / "mine.txt").read_text() == "user data"
    ours = tmp_path / "ours"
    synthetic.generate(ours, ["screw_kit"], image_size=(64, 64), counts=TINY)
    with pytest.raises(DataError, match="--overwrite"):
        synthetic.generate(ours, ["screw_kit"], image_size=(64, 64), counts=TINY)
    synthetic.generate(
        ours, ["screw_kit"], image_size=(64, 64), counts=TINY, overwrite=True
    )
    assert load_category(ours, "screw_kit").samples("train")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": (32, 32)},
        {"image_size": (64, 200)},
        {"counts": {"train": -1}},
        {"counts": {"trian": 2}},
        {"categories": ["pushpins"]},
        {"seed": -3},
        {"scale": "huge"},
    ],
)
def test_bad_options_raise_config_error(tmp_path: Path, kwargs: dict):
    with pytest.raises(ConfigError):
        synthetic.generate(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_cli_writes_a_dataset_and_prints_a_summary(tmp_path: Path, capsys):
    argv = ["synth", "--out", str(tmp_path), "--categories", "breakfast_tray"]
    argv += ["--size", "80x64", "--scale", "small", "--seed", "2", "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "breakfast_tray" in out and "wrote 1 synthetic categories" in out
    cat = load_category(tmp_path, "breakfast_tray")
    assert len(cat.samples("train")) == synthetic.SCALES["small"]["train"]
    meta = json.loads((tmp_path / "breakfast_tray" / synthetic.META_NAME).read_text())
    assert meta["seed"] == 2 and meta["image_size"] == {"height": 64, "width": 80}
    assert cli.main(argv) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["synth", "--out", str(tmp_path), "--size", "big"]) == 2


ONE = dict(TINY, train=2, test_good=1)  # 2 + 1 + 1 + 6 + 3 = 13 images


def _make(root: Path, **kwargs) -> Path:
    kwargs = {"image_size": (64, 64), "counts": ONE, **kwargs}
    synthetic.generate(root, ["screw_kit"], **kwargs)
    return root / "screw_kit"


def test_overwrite_refuses_and_keeps_user_files(tmp_path: Path):
    folder = _make(tmp_path)
    before = _digest(folder)
    user = [folder / "my_experiments" / "results.csv"]
    user.append(folder / "train" / "good" / "my_real_photo.txt")
    user[0].parent.mkdir()
    for path in user:
        path.write_text("user data")
    with pytest.raises(DataError) as err:
        _make(tmp_path, overwrite=True)
    message = str(err.value)
    assert "\n" not in message and "refusing to overwrite" in message
    assert "my_experiments/" in message and "train/good/my_real_photo.txt" in message
    assert all(p.read_text() == "user data" for p in user)
    for path in user:
        path.unlink()
    user[0].parent.rmdir()
    assert _digest(folder) == before  # nothing of ours was touched either


def test_overwrite_replaces_exactly_its_own_files(tmp_path: Path):
    folder = _make(tmp_path, counts=dict(ONE, train=3))
    temp = folder / "train" / "good" / ".000.png.4242.0badf00d.csad-tmp"
    temp.write_bytes(b"half a png")  # left behind by a killed run
    _make(tmp_path, overwrite=True)  # fewer train images than before
    assert [s.stem for s in load_category(tmp_path, "screw_kit").samples("train")] == [
        "000",
        "001",
    ]
    assert not temp.exists()
    assert not (folder / "components" / "train" / "good" / "002.png").exists()
    fresh = tmp_path / "fresh"
    _make(fresh)
    assert _digest(folder) == _digest(fresh / "screw_kit")


def test_interrupted_run_is_refused_and_overwrite_repairs_it(tmp_path, monkeypatch):
    real = synthetic.synthesize
    calls = []

    def interrupt(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synthetic, "synthesize", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _make(tmp_path)
    monkeypatch.setattr(synthetic, "synthesize", real)
    folder = tmp_path / "screw_kit"
    assert json.loads((folder / synthetic.META_NAME).read_text())["complete"] is False
    with pytest.raises(DataError) as err:
        load_category(tmp_path, "screw_kit")
    assert "incomplete" in str(err.value) and "--overwrite" in str(err.value)
    assert "\n" not in str(err.value)
    _make(tmp_path, overwrite=True)
    assert len(load_category(tmp_path, "screw_kit").samples("train")) == 2


def test_atomic_write_leaves_no_partial_file_and_uses_umask(tmp_path: Path):
    target = tmp_path / "sub" / "000.png"

    def broken(handle):
        handle.write(b"\x89PNG" + b"x" * 29)  # 33 bytes, then the run dies
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthetic._write_atomic(target, broken)
    assert list(target.parent.iterdir()) == []
    old = os.umask(0o022)
    try:
        synthetic._save_png(target, np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    with pytest.raises(KeyboardInterrupt):
        synthetic._write_atomic(target, broken)
    assert _read(target).shape == (4, 4)  # the old file survives intact
    assert [p.name for p in target.parent.iterdir()] == ["000.png"]


def test_symlinked_category_and_file_root_give_one_line_errors(tmp_path, capsys):
    real = _make(tmp_path / "R")
    before = _digest(real)
    (tmp_path / "L").mkdir()
    (tmp_path / "L" / "screw_kit").symlink_to(real, target_is_directory=True)
    argv = ["synth", "--out", str(tmp_path / "L"), "--categories", "screw_kit"]
    argv += ["--scale", "small", "--size", "64x64", "--quiet"]
    for extra in ([], ["--overwrite"]):
        assert cli.main(argv + extra) == 2
        err = capsys.readouterr().err.strip()
        assert "symbolic link" in err and len(err.splitlines()) == 1
    assert _digest(real) == before
    (tmp_path / "afile").write_text("x")
    argv[2] = str(tmp_path / "afile" / "sub")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "not a folder" in err and len(err.splitlines()) == 1


def test_empty_category_list_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="no synthetic category"):
        synthetic.generate(tmp_path, [], image_size=(64, 64), counts=ONE)
