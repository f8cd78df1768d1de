"""`csad labels`: end to end on a tiny LOCO-layout folder, and one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from csad_jax.cli import main
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
        (["--backend", "foundation"], "no SAM checkpoint given"),
        (["--sam-checkpoint", "/nonexistent/sam.pth"], "SAM checkpoint file not found"),
        (["--bandwidth", "-1"], "--bandwidth must be > 0"),
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
