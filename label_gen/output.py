"""Pseudo-label files: atomic writes, fingerprint, stage caches, preview sheet.

Layout (docs/architecture.md, "Pseudo-labels"): `<out>/<category>/` holds
`maps/`, `instances/`, `background/` (PNG per training image), `preview.png`,
`cache/` and `labels.json`, which is written last. Every file is written to a
temporary name in its folder and moved into place with `os.replace`. Output
made with other settings or inputs, or left half-written, is removed before it
is regenerated; nothing outside `<out>/<category>/` is ever deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from csad_jax.errors import ConfigError, DataError

FORMAT = 1
OUTPUT_DIRS = ("maps", "instances", "background")
OUTPUT_FILES = ("labels.json", "preview.png")


@dataclass(frozen=True)
class InputImage:
    """One training image: its stem and path."""

    stem: str
    path: Path


def file_digest(path: Path) -> str:
    """sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_identities(images: Sequence[InputImage]) -> dict[str, str]:
    """stem -> "name:size:sha256" of every input file."""
    out = {}
    for img in images:
        try:
            size = img.path.stat().st_size
        except OSError as err:
            raise DataError(f"cannot read image {img.path}: {err.strerror}") from None
        out[img.stem] = f"{img.path.name}:{size}:{file_digest(img.path)}"
    return out


def fingerprint(settings: dict, identities: dict[str, str]) -> str:
    """sha256 of the settings and the sorted input identities."""
    blob = json.dumps(
        {"format": FORMAT, "settings": settings, "inputs": sorted(identities.items())},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def stage_key(name: str, settings: dict) -> str:
    """Cache folder name of one stage: name + hash of the settings it depends on."""
    blob = json.dumps({"format": FORMAT, "settings": settings}, sort_keys=True)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, then os.replace it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8/uint16 [H, W] or uint8 [H, W, 3] array as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, array: np.ndarray) -> None:
    """Atomically write an array as PNG."""
    atomic_write_bytes(path, png_bytes(array))


def write_json(path: Path, obj) -> None:
    """Atomically write JSON (indented, sorted keys)."""
    atomic_write_bytes(
        path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
    )


def save_npz(path: Path, **arrays) -> None:
    """Atomically write a compressed .npz."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: Path) -> dict | None:
    """A cached .npz as a dict, or None if missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError):
        return None
    except Exception:  # noqa: BLE001 - zipfile.BadZipFile and friends: a bad cache
        return None


class CategoryOutput:
    """The output folder of one category and its state."""

    def __init__(self, out_root: Path, category: str):
        if not category or Path(category).name != category or category in (".", ".."):
            raise ConfigError(f"invalid category name {category!r}")
        self.root = Path(out_root) / category
        self.cache = self.root / "cache"

    def labels_path(self) -> Path:
        """Path of labels.json."""
        return self.root / "labels.json"

    def read_labels(self) -> dict | None:
        """The parsed labels.json, or None if missing or unreadable."""
        try:
            return json.loads(self.labels_path().read_text())
        except (OSError, ValueError):
            return None

    def is_current(self, fp: str, stems: Sequence[str]) -> bool:
        """Whether complete output with fingerprint `fp` is already in place."""
        meta = self.read_labels()
        if (
            not meta
            or meta.get("complete") is not True
            or meta.get("fingerprint") != fp
        ):
            return False
        return all(
            (self.root / d / f"{s}.png").is_file() for d in OUTPUT_DIRS for s in stems
        )

    def clear_outputs(self) -> None:
        """Remove stale results (labels.json first, so nothing looks complete)."""
        self.labels_path().unlink(missing_ok=True)
        for name in OUTPUT_FILES:
            (self.root / name).unlink(missing_ok=True)
        for name in OUTPUT_DIRS:
            _remove_dir(self.root / name, self.root)

    def stage_dir(self, key: str) -> Path:
        """The cache folder of one stage (created)."""
        path = self.cache / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prune_cache(self, keep: Sequence[str]) -> None:
        """Delete cache folders of other settings and left-over temporary files."""
        if not self.cache.is_dir():
            return
        for child in self.cache.iterdir():
            if child.name not in keep:
                _remove_dir(child, self.root) if child.is_dir() else child.unlink()
        for key in keep:
            for tmp in (self.cache / key).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _remove_dir(path: Path, root: Path) -> None:
    """rmtree `path`, only if it is a real folder inside `root`."""
    if path.is_symlink():
        path.unlink()
        return
    if not path.is_dir():
        return
    resolved, base = path.resolve(), root.resolve()
    if base not in resolved.parents:
        raise ConfigError(f"refusing to delete {path}: outside {root}")
    shutil.rmtree(resolved)


def palette(n: int) -> np.ndarray:
    """Distinct colours for classes 0..n (0 = black), any n.

    Returns:
      uint8 [n + 1, 3].
    """
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    sat = 0.55 + 0.45 * ((np.arange(n) // 7) % 2)
    rgb = [_hsv_to_rgb(h, s, 0.95) for h, s in zip(hues, sat, strict=True)]
    return np.array([(0, 0, 0), *rgb], dtype=np.uint8).reshape(n + 1, 3)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """One HSV colour (all in [0, 1]) as 8-bit RGB."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _frame(tile: np.ndarray, colour, width: int = 4) -> np.ndarray:
    """A copy of uint8 [h, w, 3] `tile` with a coloured border."""
    out = tile.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = (colour,) * 4
    return out


def preview_sheet(
    tiles: Sequence[tuple[np.ndarray, np.ndarray, bool]], num_classes: int, side=192
) -> np.ndarray:
    """A sheet of (image, coloured class map) pairs, unlabelled ones framed red.

    Args:
      tiles: (uint8 [H, W, 3] image, uint8 [H, W] class map, labelled) triples.
      num_classes: N_cls (for the palette).
      side: tile size in pixels.

    Returns:
      uint8 [rows * side, 4 * side, 3] (two pairs per row).
    """
    colours = palette(max(num_classes, 1))
    rows = max(1, (len(tiles) + 1) // 2)
    sheet = np.full((rows * side, 4 * side, 3), 40, np.uint8)
    for i, (image, cmap, labelled) in enumerate(tiles):
        small = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
        lab = np.asarray(Image.fromarray(cmap).resize((side, side), Image.NEAREST))
        colour = colours[np.minimum(lab, len(colours) - 1)]
        overlay = np.where(lab[..., None] > 0, colour, small // 3).astype(np.uint8)
        if not labelled:
            overlay = _frame(overlay, (255, 0, 0))
        r, c = divmod(i, 2)
        sheet[r * side : (r + 1) * side, 2 * c * side : (2 * c + 1) * side] = small
        sheet[r * side : (r + 1) * side, (2 * c + 1) * side : (2 * c + 2) * side] = (
            overlay
        )
    return sheet
