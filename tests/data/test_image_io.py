"""Decoding of every image mode, mask values, resizing and normalisation."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageFile

from csad_jax.data.image_io import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    as_hw,
    check_image_file,
    is_image_file,
    read_image_size,
    read_mask,
    read_rgb,
    resize_nearest,
    resize_rgb,
)
from csad_jax.data.image_io import normalize_imagenet as normalize
from csad_jax.errors import ConfigError, DataError

from .conftest import random_rgb, write_png


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def write_png16_color(path: Path, values: np.ndarray) -> Path:
    """Write a 16-bit RGB (3 channels) or RGBA (4) PNG; Pillow cannot save these."""
    h, w, c = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )
    return path


def truncate(path: Path) -> Path:
    """Cut a file to half its length."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_loading_never_enables_truncated_images():
    # Importing the data layer must not switch Pillow to "fill truncated files".
    import csad_jax.data.batching  # noqa: F401
    import csad_jax.data.info  # noqa: F401
    import csad_jax.data.loco  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_rgb_png_roundtrip_and_upper_case_suffix(tmp_path):
    image = random_rgb(7, 11, seed=1)
    path = write_png(tmp_path / "a.png", image)
    upper = tmp_path / "B.PNG"
    path.rename(upper)
    out = read_rgb(upper)
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3)
    np.testing.assert_array_equal(out, image)
    assert is_image_file(upper) and is_image_file("x.JPEG") and is_image_file("x.jpg")
    assert not is_image_file("x.bmp") and not is_image_file("x.png.txt")


def test_grayscale_and_bilevel_are_repeated_over_channels(tmp_path):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    out = read_rgb(write_png(tmp_path / "g.png", gray))
    assert out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    Image.fromarray(gray > 100).save(tmp_path / "b.png")  # mode "1"
    bilevel = read_rgb(tmp_path / "b.png")
    np.testing.assert_array_equal(bilevel[:, :, 1], np.where(gray > 100, 255, 0))


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 255, 256, 32768], [65535, 257 * 100, 1000, 65280]])
    path = write_png(tmp_path / "g16.png", values.astype(np.uint16))
    assert Image.open(path).mode.startswith("I")
    out = read_rgb(path)
    expected = np.array([[0, 0, 1, 128], [255, 100, 3, 255]], np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], expected)


def test_sixteen_bit_colour_and_alpha_use_the_same_scaling(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (4, 5, 4)).astype(np.uint16)
    rgb = read_rgb(write_png16_color(tmp_path / "c16.png", values[:, :, :3]))
    rgba = read_rgb(write_png16_color(tmp_path / "a16.png", values))
    expected = (values[:, :, :3] >> 8).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)
    np.testing.assert_array_equal(rgba, expected)


def test_rgba_drops_alpha_and_keeps_colours_under_transparency(tmp_path):
    image = random_rgb(6, 4, seed=2)
    alpha = np.zeros((6, 4, 1), np.uint8)
    alpha[:3] = 255
    out = read_rgb(write_png(tmp_path / "a.png", np.concatenate([image, alpha], 2)))
    np.testing.assert_array_equal(out, image)
    la = np.stack([image[:, :, 0], alpha[:, :, 0]], axis=2)
    Image.fromarray(la).save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "la.png")[:, :, 2], la[:, :, 0])


def test_palette_images_go_through_their_palette(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = [10, 20, 30, 200, 100, 0, 0, 0, 255]
    img = Image.frombytes("P", (3, 2), indices.tobytes())
    img.putpalette(palette + [0] * (768 - len(palette)))
    img.info["transparency"] = 1
    img.save(tmp_path / "p.png", transparency=1)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_rgb(tmp_path / "p.png")
    lut = np.array(palette, np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(out, lut[indices])


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_decodes_to_rgb(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(random_rgb(9, 13, seed=3)).save(path, format="JPEG")
    out = read_rgb(path)
    assert out.shape == (9, 13, 3) and out.dtype == np.uint8
    Image.fromarray(random_rgb(9, 13, seed=3)).convert("CMYK").save(
        tmp_path / "cmyk.jpg", format="JPEG"
    )
    assert read_rgb(tmp_path / "cmyk.jpg").shape == (9, 13, 3)


def test_truncated_png_is_a_one_line_data_error_naming_the_file(tmp_path):
    path = truncate(write_png(tmp_path / "cut.png", random_rgb(40, 40, seed=4)))
    with pytest.raises(DataError) as info:
        read_rgb(path)
    message = str(info.value)
    assert str(path) in message and "truncated" in message and "\n" not in message
    with pytest.raises(DataError, match="cut.png"):
        check_image_file(path)
    with pytest.raises(DataError, match="cut.png"):
        read_mask(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"not an image at all", "not a readable image"), (None, "file not found")],
)
def test_unreadable_files_are_data_errors(tmp_path, content, reason):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    for reader in (read_rgb, read_mask, read_image_size, check_image_file):
        with pytest.raises(DataError) as info:
            reader(path)
        assert reason in str(info.value) and str(path) in str(info.value)


def test_huge_images_warn_in_one_line_and_bombs_are_refused(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    big = write_png(tmp_path / "big.png", random_rgb(12, 12, seed=5))  # 144 px
    assert read_rgb(big).shape == (12, 12, 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "big.png is 12x12" in err[0] and "warning" in err[0]
    bomb = write_png(tmp_path / "bomb.png", random_rgb(15, 15, seed=6))  # > 2x
    with pytest.raises(DataError, match="bomb.png") as info:
        read_rgb(bomb)
    assert "\n" not in str(info.value)


def test_check_image_file_reads_header(tmp_path):
    path = write_png(tmp_path / "i.png", random_rgb(5, 9, seed=5))
    assert check_image_file(path) == ("RGB", 5, 9)
    assert read_image_size(path) == (5, 9)


def test_mask_keeps_values_below_255(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 2:5] = 240
    mask[4, 6] = 7
    np.testing.assert_array_equal(read_mask(write_png(tmp_path / "m.png", mask)), mask)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ([0, 240, 255], [0, 240, 255]),  # 8-bit values held in 16 bits
        ([0, 240 * 257, 65535], [0, 240, 255]),  # 8-bit values scaled by 257
    ],
)
def test_sixteen_bit_masks(tmp_path, stored, expected):
    path = write_png(tmp_path / "m.png", np.array([stored], np.uint16))
    np.testing.assert_array_equal(read_mask(path), np.array([expected], np.uint8))


def test_sixteen_bit_mask_that_cannot_map_to_eight_bit_is_refused(tmp_path):
    path = write_png(tmp_path / "m.png", np.array([[0, 300, 5]], np.uint16))
    with pytest.raises(DataError, match="m.png"):
        read_mask(path)


def test_grey_rgb_mask_is_accepted_and_coloured_mask_refused(tmp_path):
    grey = np.repeat(np.array([[0, 200]], np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(
        read_mask(write_png(tmp_path / "g.png", grey)), [[0, 200]]
    )
    colour = grey.copy()
    colour[0, 1, 0] = 10
    with pytest.raises(DataError, match="coloured"):
        read_mask(write_png(tmp_path / "c.png", colour))


def test_bilevel_mask_becomes_255(tmp_path):
    Image.fromarray(np.array([[False, True]])).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), [[0, 255]])


def test_resize_rgb_is_pil_bilinear_with_h_w_order():
    image = random_rgb(30, 50, seed=6)
    out = resize_rgb(image, (12, 20))
    assert out.shape == (12, 20, 3) and out.dtype == np.uint8
    ref = np.array(Image.fromarray(image).resize((20, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(resize_rgb(image, (30, 50)), image)
    assert resize_rgb(image, 8).shape == (8, 8, 3)
    with pytest.raises(DataError):
        resize_rgb(image.astype(np.float32), 8)


@pytest.mark.torch
@pytest.mark.parametrize("size", [(16, 16), (40, 24), (64, 96)])
def test_resize_rgb_matches_torchvision_resize_on_pil(size):
    transforms = pytest.importorskip("torchvision.transforms")
    image = random_rgb(48, 60, seed=7)
    ref = transforms.Resize(size)(Image.fromarray(image))
    np.testing.assert_array_equal(resize_rgb(image, size), np.array(ref))


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.uint16, np.int32, np.int64])
def test_resize_nearest_keeps_dtype_and_values(dtype):
    labels = np.random.default_rng(8).integers(
        0, 2 if dtype == np.bool_ else 9, (9, 14)
    )
    labels = labels.astype(dtype)
    out = resize_nearest(labels, (5, 7))
    assert out.shape == (5, 7) and out.dtype == labels.dtype
    ref = Image.fromarray(labels.astype(np.uint8)).resize(
        (7, 5), Image.Resampling.NEAREST
    )
    np.testing.assert_array_equal(out.astype(np.uint8), np.array(ref))
    stacked = resize_nearest(np.stack([labels, labels], axis=2), (5, 7))
    np.testing.assert_array_equal(stacked[:, :, 1], out)


def test_resize_nearest_refuses_values_it_cannot_hold():
    with pytest.raises(DataError):
        resize_nearest(np.array([[2**40]], np.int64), 2)
    with pytest.raises(DataError):
        resize_nearest(np.zeros((2, 2, 2, 2), np.uint8), 2)


def test_normalize_imagenet_numpy_and_jax():
    x = np.random.default_rng(9).random((2, 3, 4, 3), dtype=np.float32)
    expected = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(
        IMAGENET_STD, np.float32
    )
    out = normalize(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    jout = jax.jit(normalize)(jnp.asarray(x))
    assert isinstance(jout, jax.Array) and jout.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(jout), expected, rtol=1e-6, atol=1e-6)
    assert normalize(x.astype(np.float64)).dtype == np.float64
    np.testing.assert_allclose(normalize(np.ones(3))[0], (1 - 0.485) / 0.229)


def test_normalize_imagenet_refuses_integer_or_channel_first_input():
    with pytest.raises(DataError, match="uint8"):
        normalize(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DataError, match="shape"):
        normalize(np.zeros((3, 4, 4), np.float32))


def test_as_hw():
    assert as_hw(5) == (5, 5)
    assert as_hw((3, 4)) == (3, 4)
    assert as_hw(np.int64(5)) == (5, 5) and as_hw(np.array([3, 4])) == (3, 4)
    assert all(type(v) is int for v in as_hw((np.int32(3), np.uint8(4))))
    for bad in (0, (3,), (3, -1), (2.5, 3), True, "256", "34", 5.0, None, np.int8(-2)):
        with pytest.raises(ConfigError):
            as_hw(bad)
