"""Decoding, resizing and ImageNet normalisation of LOCO-style images and masks.

Every image becomes RGB uint8 `[H, W, 3]` whatever its stored mode or bit depth:

- grayscale (`1`, `L`) is repeated over the three channels;
- palette (`P`, `PA`) goes through its palette;
- an alpha channel (`RGBA`, `LA`, `PA`) is dropped, not composited: the colour
  values stored under transparent pixels are kept as they are (LOCO images have
  no alpha, and compositing onto an arbitrary background would invent colours);
- 16-bit samples are scaled to 8 bits by keeping the high byte (`v >> 8`, i.e.
  floor(v / 256)), which is what Pillow itself does when it decodes 16-bit
  colour PNGs, so a 16-bit grey and a 16-bit colour PNG decode alike.

JPEG EXIF orientation is ignored (as Pillow's plain `open` does), so the pixel
grid is the stored one and matches masks stored at the same size.

Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` is never enabled here: a truncated
file must fail with a `DataError`, not decode with its missing part silently filled in.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from csad_jax.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared case-insensitively
MASK_SUFFIXES = (".png",)  # masks must be lossless
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def is_image_file(path: str | Path) -> bool:
    """Whether `path` has an image suffix (.png/.jpg/.jpeg, any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_mask_file(path: str | Path) -> bool:
    """Whether `path` has a mask suffix (.png, any case)."""
    return Path(path).suffix.lower() in MASK_SUFFIXES


def is_positive_int(value: object) -> bool:
    """Whether `value` is a Python or numpy integer (not a bool) above zero."""
    return (
        isinstance(value, int | np.integer)
        and not isinstance(value, bool | np.bool_)
        and value > 0
    )


def is_hw_pair(value: object) -> bool:
    """Whether `value` is an (H, W) list or tuple of two positive integers."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(is_positive_int(v) for v in value)
    )


def as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """Normalise a size argument (an int side or an (h, w) pair) to (h, w).

    Python and numpy integers are accepted; floats, bools and strings are not.
    """
    error = ConfigError(
        f"size must be a positive integer or (height, width) integers, got {size!r}"
    )
    if isinstance(size, int | np.integer):
        pair: tuple = (size, size)
    elif isinstance(size, str | bytes):
        raise error
    else:
        try:
            pair = tuple(size)
        except TypeError:
            raise error from None
    if not is_hw_pair(pair):
        raise error
    return int(pair[0]), int(pair[1])


def _reason(err: Exception) -> str:
    """A short one-line description of why Pillow could not read a file."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, Image.UnidentifiedImageError):
        return "not a readable image (unknown or corrupt format)"
    text = " ".join(str(err).split()) or type(err).__name__
    if "truncated" in text.lower():
        return f"file is truncated ({text})"
    return text


def _decode(path: str | Path, what: str) -> Image.Image:
    """Open and fully decode one file; any failure becomes a DataError."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
        if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
            width, height = img.size
            print(
                f"csad: warning: {what} {path} is {width}x{height} "
                f"({width * height / 1e6:.0f} MP, over Pillow's decompression-bomb "
                f"limit); decoding it needs about {width * height * 4 / 1e9:.1f} GB",
                file=sys.stderr,
            )
        return img
    # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError,
    # struct.error, zlib.error or DecompressionBombError for broken files; all of
    # them mean "this file cannot be used", so all become one DataError here.
    except Exception as err:
        raise DataError(f"cannot read {what} {path}: {_reason(err)}") from None


def read_image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """The (height, width) of an image or mask, read from its header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as err:  # see _decode
        raise DataError(f"cannot read {what} {path}: {_reason(err)}") from None
    return height, width


def check_image_file(path: str | Path, what: str = "image") -> tuple[str, int, int]:
    """Read the header and verify a file without decoding its pixels.

    For PNG, Pillow's `verify` walks every chunk and checks its CRC, which finds
    truncated and damaged files; for JPEG it checks little more than the header.

    Returns:
      (mode, height, width) from the header.
    """
    try:
        with Image.open(path) as img:
            mode, (width, height) = img.mode, img.size
            img.verify()
    except Exception as err:  # see _decode
        raise DataError(f"cannot read {what} {path}: {_reason(err)}") from None
    return mode, height, width


def _sixteen_to_eight(values: np.ndarray, path: str | Path) -> np.ndarray:
    """Scale 16-bit samples to uint8 by keeping the high byte."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(f"image {path} has sample values outside 0..65535")
    return (values.astype(np.uint32) >> 8).astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file of any mode and bit depth to RGB.

    Args:
      path: a .png/.jpg/.jpeg file.

    Returns:
      uint8 [H, W, 3] at the stored resolution.
    """
    img = _decode(path, "image")
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = _sixteen_to_eight(np.asarray(img), path)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise DataError(f"image {path} has floating-point pixels (mode F)")
    if img.mode in ("P", "PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")  # applies a palette and its transparency
    if img.mode == "RGBA":
        rgb = np.array(img)[:, :, :3]  # alpha dropped, see the module docstring
    else:
        rgb = np.array(img.convert("RGB"))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"image {path} did not decode to RGB (mode {img.mode})")
    return np.ascontiguousarray(rgb)


def _mask_from_sixteen(values: np.ndarray, path: str | Path) -> np.ndarray:
    """Map a 16-bit mask to uint8 without merging or erasing any label value."""
    values = values.astype(np.int64)
    if values.size == 0 or (values.min() >= 0 and values.max() <= 255):
        return values.astype(np.uint8)  # 8-bit values stored in 16 bits
    if values.min() >= 0 and values.max() <= 65535 and not np.any(values % 257):
        return (values // 257).astype(np.uint8)  # 8-bit values scaled by 257
    raise DataError(
        f"16-bit mask {path} has values above 255 that are not multiples of 257; "
        "cannot map them to 8-bit defect values"
    )


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a ground-truth mask, keeping its values (0 = defect-free).

    Single-channel masks are returned as stored; a palette mask gives its palette
    indices (as numpy sees the file); a grey RGB(A) mask gives its single grey
    value; 16-bit masks are mapped to 8 bits without changing which pixels are
    non-zero (see `_mask_from_sixteen`).

    Args:
      path: a .png mask file.

    Returns:
      uint8 [H, W]; any non-zero value marks an anomalous pixel.
    """
    img = _decode(path, "mask")
    if img.mode in _SIXTEEN_BIT_MODES:
        return _mask_from_sixteen(np.asarray(img), path)
    if img.mode in ("L", "P"):
        return np.array(img)
    if img.mode in ("1", "LA"):
        return np.array(img.convert("L"))  # "1" becomes 0/255; LA drops alpha
    if img.mode == "PA":
        return np.array(img.getchannel(0))  # palette indices, alpha dropped
    if img.mode in ("RGB", "RGBA"):
        rgb = np.array(img)[:, :, :3]
        if np.any(rgb[:, :, 0] != rgb[:, :, 1]) or np.any(rgb[:, :, 0] != rgb[:, :, 2]):
            raise DataError(f"mask {path} has coloured pixels; masks must be grey")
        return np.ascontiguousarray(rgb[:, :, 0])
    raise DataError(f"mask {path} has unsupported image mode {img.mode}")


def resize_rgb(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize like torchvision `Resize` on a PIL image: antialiased bilinear.

    Args:
      image: uint8 [H, W, 3].
      size: output (h, w), or one int for a square.

    Returns:
      uint8 [h, w, 3].
    """
    h, w = as_hw(size)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"resize_rgb expects uint8 [H, W, 3], got {image.dtype} {image.shape}"
        )
    if image.shape[:2] == (h, w):
        return image.copy()
    resized = Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)
    return np.array(resized)


_NEAREST_DTYPES = (np.uint8, np.uint16, np.int32, np.float32)


def _resize_nearest_2d(plane: np.ndarray, h: int, w: int) -> np.ndarray:
    """PIL NEAREST resize of one [H, W] plane of a dtype Pillow stores natively."""
    return np.array(Image.fromarray(plane).resize((w, h), Image.Resampling.NEAREST))


def resize_nearest(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a label map or mask with PIL NEAREST (as the official code does).

    Args:
      labels: [H, W] or [H, W, C] of bool, integers (within int32) or float32.
      size: output (h, w), or one int for a square.

    Returns:
      [h, w] or [h, w, C], same dtype as `labels`, values taken unchanged.
    """
    h, w = as_hw(size)
    if labels.ndim not in (2, 3):
        raise DataError(
            f"resize_nearest expects [H, W] or [H, W, C], got {labels.shape}"
        )
    work = labels
    if labels.dtype == np.bool_:
        work = labels.astype(np.uint8)
    elif labels.dtype not in _NEAREST_DTYPES:
        if not np.issubdtype(labels.dtype, np.integer) or (
            labels.size and (labels.min() < -(2**31) or labels.max() >= 2**31)
        ):
            raise DataError(f"resize_nearest cannot resize {labels.dtype} labels")
        work = labels.astype(np.int32)
    if work.ndim == 2:
        out = _resize_nearest_2d(np.ascontiguousarray(work), h, w)
    else:
        planes = [
            _resize_nearest_2d(np.ascontiguousarray(p), h, w)
            for p in np.moveaxis(work, 2, 0)
        ]
        out = np.stack(planes, axis=2)
    return out.astype(labels.dtype)


def normalize_imagenet(x):
    """Apply ImageNet mean/std normalisation, channel-last, numpy or jax.

    Args:
      x: float array [..., 3] in [0, 1] (numpy or jax; also inside `jax.jit`).

    Returns:
      (x - mean) / std, same shape, dtype and array type as `x`.
    """
    dtype = np.dtype(x.dtype)
    if "float" not in dtype.name:
        raise DataError(
            f"normalize_imagenet expects float images in [0, 1], got {dtype.name}"
        )
    if x.ndim < 1 or x.shape[-1] != 3:
        raise DataError(f"normalize_imagenet expects [..., 3], got shape {x.shape}")
    mean = np.asarray(IMAGENET_MEAN, dtype=dtype)
    std = np.asarray(IMAGENET_STD, dtype=dtype)
    return (x - mean) / std
