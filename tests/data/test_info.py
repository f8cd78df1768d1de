"""`csad info`: summary output, every problem listed, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import numpy as np
import pytest

from csad_jax.cli import main
from csad_jax.data import synthetic

from .conftest import build_category, random_rgb, rect_mask, write_png


def run_info(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["info", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_clean_tree_exits_zero_with_counts_sizes_and_defects(tmp_path, capsys):
    build_category(tmp_path, "box", size=(12, 16))
    build_category(tmp_path, "juice_bottle", size=(16, 8), counts=(4, 3, 2, 1, 2))
    code, out, err = run_info(capsys, "--data", str(tmp_path))
    assert code == 0, out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("category"))
    assert lines[header].split() == [
        "category",
        "train",
        "validation",
        "test",
        "good",
        "logical",
        "structural",
        "masks",
        "problems",
    ]
    assert lines[header + 1].split() == ["box", "3", "2", "2", "2", "1", "3", "0"]
    assert lines[header + 2].split() == [
        "juice_bottle",
        "4",
        "3",
        "2",
        "1",
        "2",
        "3",
        "0",
    ]
    # Columns are aligned: every table row ends at the same column.
    assert len({len(lines[header + i]) for i in range(3)}) == 1
    assert "12 x 16: 10 images" in out and "16 x 8: 12 images" in out
    assert "2 defects: missing_item, scratch" in out
    assert (
        "logical_anomalies     2 images, 2 mask files; regions: missing_item 2" in out
    )
    assert "regions: scratch 2" in out
    assert out.rstrip().endswith("no problems found")


def test_every_problem_is_listed_and_exit_is_one(tmp_path, capsys):
    folder = build_category(tmp_path, "box", size=(12, 16), counts=(3, 2, 2, 3, 2))
    cut = folder / "train/good/001.png"
    cut.write_bytes(cut.read_bytes()[:60])
    shutil.rmtree(folder / "validation/good")
    shutil.rmtree(folder / "ground_truth/logical_anomalies/002")
    (folder / "test/structural_anomalies/001.png").unlink()
    write_png(
        folder / "ground_truth/logical_anomalies/000/000.png", rect_mask(6, 8, 255)
    )
    write_png(
        folder / "ground_truth/logical_anomalies/001/001.png", rect_mask(12, 16, 9)
    )
    write_png(
        folder / "ground_truth/structural_anomalies/000/001.png",
        np.zeros((12, 16), np.uint8),
    )
    (folder / "test/good/Thumbs.db").write_bytes(b"x")
    (folder / "train/extra").mkdir()
    code, out, _ = run_info(capsys, "--data", str(tmp_path), "--category", "box")
    assert code == 1
    expected = [
        "cannot read image train/good/001.png: file is truncated",
        "split folder validation/good is missing",
        "anomalous test image test/logical_anomalies/002.png has no ground-truth "
        "folder ground_truth/logical_anomalies/002",
        "ground-truth folder ground_truth/structural_anomalies/001 has no image",
        "mask ground_truth/logical_anomalies/000/000.png is 6x8 but its image "
        "test/logical_anomalies/000.png is 12x16",
        "mask ground_truth/logical_anomalies/001/001.png has value 9, which "
        "defects_config.json does not list",
        "mask ground_truth/structural_anomalies/000/001.png has no non-zero",
        "unexpected file test/good/Thumbs.db",
        "unexpected folder train/extra",
    ]
    for text in expected:
        assert text in out, text
    assert f"problems              {len(expected)}" in out
    assert out.rstrip().endswith(f"{len(expected)} problems found in 1 of 1 category")
    assert str(folder) + "/" not in out.split("problems  ")[1]


def _png_with_bad_pixels_but_valid_crcs(path, h=8, w=8):
    """A PNG whose zlib stream is corrupt while every chunk CRC is correct."""
    rows = b"".join(b"\x00" + bytes(random_rgb(1, w, y).tobytes()) for y in range(h))
    data = bytearray(zlib.compress(rows))
    data[4:12] = b"\xff" * 8

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", bytes(data))
        + chunk(b"IEND", b"")
    )


def test_decode_option_finds_damage_that_headers_miss(tmp_path, capsys):
    folder = build_category(tmp_path, "box", size=(8, 8))
    _png_with_bad_pixels_but_valid_crcs(folder / "train/good/002.png")
    assert run_info(capsys, "--data", str(tmp_path))[0] == 0
    code, out, _ = run_info(capsys, "--data", str(tmp_path), "--decode")
    assert code == 1 and "cannot read image train/good/002.png" in out


def test_invalid_defects_config_is_a_problem(tmp_path, capsys):
    folder = build_category(tmp_path, "box")
    (folder / "defects_config.json").write_text("[1, 2")
    code, out, _ = run_info(capsys, "--data", str(tmp_path))
    assert code == 1 and "is not valid JSON" in out and "present but invalid" in out


def test_missing_root_is_fatal(tmp_path, capsys):
    code, out, err = run_info(capsys, "--data", str(tmp_path / "nope"))
    assert code == 2 and out == ""
    assert (
        err.strip() == f"csad info: error: dataset root not found: {tmp_path / 'nope'}"
    )


def test_missing_category_is_fatal_and_lists_categories(tmp_path, capsys):
    build_category(tmp_path, "box")
    build_category(tmp_path, "pushpins")
    code, _, err = run_info(capsys, "--data", str(tmp_path), "--category", "screw")
    assert code == 2 and "categories found: box, pushpins" in err
    assert len(err.strip().splitlines()) == 1


def test_category_folder_given_as_root_gets_a_hint(tmp_path, capsys):
    build_category(tmp_path, "box")
    code, _, err = run_info(capsys, "--data", str(tmp_path / "box"))
    assert code == 2 and "itself looks like a category" in err


@pytest.mark.parametrize("progress", [True, False])
def test_progress_goes_to_stderr_only(tmp_path, capsys, progress):
    build_category(tmp_path, "box")
    argv = ["info", "--data", str(tmp_path)] + ([] if progress else ["--no-progress"])
    assert main(argv) == 0
    assert "checking box" not in capsys.readouterr().out


def _synthetic(root):
    counts = {"train": 1, "validation": 1, "test_good": 1}
    counts.update(logical_per_subtype=1, structural_per_subtype=1)
    synthetic.generate(root, ["screw_kit"], image_size=(64, 64), counts=counts)
    return root / "screw_kit"


def test_synthetic_category_folder_as_root_gets_the_parent_hint(tmp_path, capsys):
    folder = _synthetic(tmp_path)
    assert run_info(capsys, "--data", str(tmp_path))[0] == 0
    code, out, err = run_info(capsys, "--data", str(folder))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "pass its parent" in err
    code, _, err = run_info(capsys, "--data", str(folder), "--category", "components")
    assert code == 2 and "pass its parent" in err


def test_incomplete_synthetic_run_is_reported(tmp_path, capsys):
    folder = _synthetic(tmp_path)
    meta_path = folder / synthetic.META_NAME
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, complete=False)))
    code, out, _ = run_info(capsys, "--data", str(tmp_path))
    assert code == 1
    assert "synthetic data        INCOMPLETE" in out
    assert "incomplete synthetic output (csad synth interrupted): screw_kit" in out


@pytest.mark.parametrize("name", ["", "  "])
def test_empty_category_name_is_an_error(loco_root, capsys, name):
    code, out, err = run_info(capsys, "--data", str(loco_root), "--category", name)
    assert code == 2 and out == "" and "--category must not be empty" in err
