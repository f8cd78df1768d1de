"""`csad labels`: end to end on a tiny LOCO-layout folder, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from csad_jax.cli import main
from csad_jax.data.pseudo_labels import load_pseudo_labels
from csad_jax.errors import DataError
from tests.label_gen.scenes import scene


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loco")
    folder = root / "toy" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(scene(i, 64)[0]).save(folder / f"{i:03d}.png")
    return root


def test_offline_cli_with_a_stand_in_feature_cnn(data, tmp_path, capsys, monkeypatch):
    from label_gen import cli
    from tests.label_gen.scenes import colour_features

    monkeypatch.setattr(cli, "_feature_extractor", lambda s, w: lambda: colour_features)
    out = tmp_path / "labels"
    argv = ["labels", "--data", str(data), "--category", "toy", "--out", str(out),
            "--bandwidth", "1.0", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((out / "toy" / "labels.json").read_text())
    assert meta["num_classes"] == 3 and "toy: 3 classes" in capsys.readouterr().out
    assert main(argv) == 0  # up to date: nothing recomputed, same answer
    assert json.loads((out / "toy" / "labels.json").read_text()) == meta


@pytest.mark.slow
def test_offline_labels_from_the_command_line(data, tmp_path, capsys):
    out = tmp_path / "labels"
    argv = ["labels", "--data", str(data), "--category", "toy", "--out", str(out),
            "--rotations", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "toy:" in said and "labelled" in said
    meta = json.loads((out / "toy" / "labels.json").read_text())
    assert meta["backend"] == "offline" and meta["complete"]
    features = meta["settings"]["label_settings"]["features"]
    assert features["backbone"] == "efficientnet_lite0" and features["rotations"] == 2
    maps = np.asarray(Image.open(out / "toy" / "maps" / "000.png"))
    assert maps.shape == (64, 64) and maps.max() == meta["num_classes"] >= 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--backend", "foundation"],
            "no SAM checkpoint given; give it with --sam-checkpoint (download "
            "sam_vit_h_4b8939.pth",
        ),
        (["--sam-checkpoint", "/nonexistent/sam.pth"], "SAM checkpoint file not found"),
        (["--bandwidth", "-1"], "--bandwidth must be finite and > 0, got -1.0"),
        (["--bandwidth", "nan"], "--bandwidth must be finite and > 0, got nan"),
        (["--bandwidth", "inf"], "--bandwidth must be finite and > 0, got inf"),
    ],
)
def test_bad_options_give_one_line_errors(data, tmp_path, capsys, extra, message):
    argv = ["labels", "--data", str(data), "--category", "toy",
            "--out", str(tmp_path), "--quiet", *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_foundation_needs_the_grounding_files(data, tmp_path, capsys):
    sam = tmp_path / "sam.pth"
    sam.write_bytes(b"x")
    argv = [
        "labels",
        "--data",
        str(data),
        "--category",
        "toy",
        "--out",
        str(tmp_path / "o"),
        "--sam-checkpoint",
        str(sam),
        "--prompts",
        "disc . bar",
    ]
    assert main(argv) == 2
    assert "GroundingDINO config" in capsys.readouterr().err
    argv = ["labels", "--data", str(data), "--category", "juice_bottle"]
    assert main([*argv, "--out", str(tmp_path), "--sam-checkpoint", str(sam)]) == 2
    assert "juice_bottle" in capsys.readouterr().err  # fine mode needs no GroundingDINO


def test_refuses_to_write_into_the_dataset(data, capsys):
    argv = ["labels", "--data", str(data), "--category", "toy", "--out", str(data)]
    assert main(argv) == 2
    assert "dataset folder" in capsys.readouterr().err


def test_missing_category_is_a_data_error(data, tmp_path, capsys):
    argv = ["labels", "--data", str(data), "--category", "nope", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "nope" in capsys.readouterr().err


def _argv(data, out, category="toy"):
    return ["labels", "--data", str(data), "--category", category,
            "--out", str(out), "--quiet"]  # fmt: skip


def _one_error(capsys, *needles):
    """The last stderr line is the error; any others are one-line warnings."""
    *warned, err = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("csad labels: error: ")
    assert all(w.startswith("csad labels: warning: ") for w in warned)
    assert all(n in err for n in needles), err


def test_user_files_in_the_target_are_never_touched(data, tmp_path, capsys):
    root = tmp_path / "O" / "toy"
    names = ["maps/my_hand_label.png", "background/photo.jpg", "cache/keep.txt",
             "cache/myruns/results.csv", "preview.png"]  # fmt: skip
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    assert main(_argv(data, tmp_path / "O")) == 2
    _one_error(capsys, str(root), "did not write", "--out")
    assert all((root / n).read_text() == n for n in names)
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == sorted(
        Path(n).name for n in names
    )


def test_out_must_be_a_folder_and_not_a_dataset(data, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        assert main(_argv(data, out)) == 2
        _one_error(capsys, f"{afile} is a file, not a folder")
    assert afile.read_text() == "x"
    other = tmp_path / "E2"
    for split in ("train", "validation", "test"):
        (other / "toy" / split).mkdir(parents=True)
    assert main(_argv(data, other)) == 2
    _one_error(capsys, str(other / "toy"), "looks like a dataset category")


def _stand_in_features(monkeypatch):
    from label_gen import cli
    from tests.label_gen.scenes import colour_features

    monkeypatch.setattr(cli, "_feature_extractor", lambda s, w: lambda: colour_features)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("black", "no component was found in any of the 4 training images"),
        ("tiny", "no component was found in any of the 4 training images"),
        ("one", "no training image was labelled (1 training image"),
    ],
)
def test_unusable_labels_exit_non_zero(tmp_path, capsys, monkeypatch, kind, message):
    _stand_in_features(monkeypatch)
    folder = tmp_path / "d" / "toy" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(1 if kind == "one" else 4):
        image = {
            "black": np.zeros((24, 24, 3), np.uint8),
            "tiny": scene(i, 8)[0],
            "one": scene(i, 48)[0],
        }[kind]
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    out = tmp_path / "o"
    for _ in range(2):  # the reused output is refused just the same
        assert main(_argv(tmp_path / "d", out)) == 2
        _one_error(capsys, message, "labels.json is marked unusable")
    meta = json.loads((out / "toy" / "labels.json").read_text())
    assert meta["complete"] is True and meta["usable"] is False
    with pytest.raises(DataError):
        load_pseudo_labels(out, "toy")


def test_warnings_are_one_cli_line_each(tmp_path, capsys, monkeypatch):
    _stand_in_features(monkeypatch)
    folder = tmp_path / "d" / "toy" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(6):  # identical images
        Image.fromarray(scene(0, 48)[0]).save(folder / f"{i:03d}.png")
    assert main(_argv(tmp_path / "d", tmp_path / "o")) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(
        line.startswith("csad labels: warning: toy: ") for line in err
    )
    said = "\n".join(err)
    assert "exact copies" in said and "(near-)identical" in said
    assert "only 3 of 6" in said and "UserWarning" not in said and ".py:" not in said
