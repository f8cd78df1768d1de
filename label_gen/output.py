"""Pseudo-label files: atomic writes, fingerprint, stage caches, preview sheet.

Layout (docs/architecture.md, "Pseudo-labels"): `<out>/<category>/` holds
`maps/`, `instances/`, `background/` (PNG per training image), `preview.png`,
`cache/` and `labels.json`, which is written last. Every file is written to a
temporary name in its folder and moved into place with `os.replace`. Output
made with other settings or inputs, or left half-written, is removed before it
is regenerated, but only files label_gen itself wrote (see `CategoryOutput`);
a folder holding anything else is refused, never cleaned.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
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
MARKER = ".csad-labels.json"  # ownership marker, written before any output
WRITER = "csad labels"
LOCO_SPLITS = ("train", "validation", "test")
STAGE_DIR = re.compile(r"(proposals|features)-[0-9a-f]{16}")
NPZ_TMP = re.compile(r"\..+\.npz\..+\.tmp")


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


def file_mode() -> int:
    """Permission bits of a new file under the current umask (0o666 & ~umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, then os.replace it.

    The file gets the permissions of a normally created file (mkstemp alone
    would leave it 0600). OS errors become a one-line DataError.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as err:
        raise DataError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), file_mode())
            handle.write(data)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {err.strerror or err}") from None
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
    """The output folder of one category, its state and what label_gen owns in it.

    label_gen deletes only files it wrote: a marker file (`.csad-labels.json`,
    written before anything else) lists the stems whose `maps/`, `instances/`
    and `background/` PNGs it wrote. A folder that holds other files but no
    marker (nor a labels.json of label_gen's) is refused, never cleaned.
    """

    def __init__(self, out_root: Path, category: str):
        if not category or Path(category).name != category or category in (".", ".."):
            raise ConfigError(f"invalid category name {category!r}")
        self.root = Path(out_root) / category
        self.cache = self.root / "cache"

    def labels_path(self) -> Path:
        """Path of labels.json."""
        return self.root / "labels.json"

    def marker_path(self) -> Path:
        """Path of the ownership marker."""
        return self.root / MARKER

    def read_labels(self) -> dict | None:
        """The parsed labels.json, or None if missing or unreadable."""
        try:
            meta = json.loads(self.labels_path().read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def check_target(self) -> None:
        """Refuse a file path, a dataset category folder or symlinked sub-folders."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            raise ConfigError(
                f"--out: {existing} is a file, not a folder; give a folder path"
            )
        for split in LOCO_SPLITS:
            if (self.root / split).is_dir():
                raise ConfigError(
                    f"{self.root} looks like a dataset category (it has {split}/): "
                    "refusing to write pseudo-labels into it; choose another --out"
                )
        for name in (*OUTPUT_DIRS, "cache"):
            path = self.root / name
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise ConfigError(
                    f"{path} is not a plain folder; move it away or choose "
                    "another --out"
                )

    def owned_stems(self) -> set[str] | None:
        """Stems whose label files label_gen wrote here; None if not its folder."""
        try:
            marker = json.loads(self.marker_path().read_text())
        except (OSError, ValueError):
            marker = None
        if isinstance(marker, dict) and marker.get("written_by") == WRITER:
            return {str(s) for s in marker.get("stems", [])}
        meta = self.read_labels()
        fp = meta.get("fingerprint") if meta else None
        if isinstance(fp, str) and len(fp) == 64:  # older label_gen output
            return {str(s) for k in ("labelled", "unlabelled") for s in meta.get(k, [])}
        if not self.root.exists() or not any(self.root.iterdir()):
            return set()
        return None

    def claim(self, stems: Sequence[str]) -> set[str]:
        """Check the folder is label_gen's (or new) and record `stems` in the marker.

        Returns:
          every stem whose files label_gen may have written here (old and new).
        """
        owned = self.owned_stems()
        if owned is None:
            raise ConfigError(
                f"{self.root} holds files that csad labels did not write (no "
                f"{MARKER} or labels.json of its own): choose a new or empty "
                "--out folder, or move those files away"
            )
        owned |= set(stems)
        self.write_marker(owned)
        return owned

    def write_marker(self, stems) -> None:
        """Write the ownership marker listing `stems`."""
        write_json(self.marker_path(), {"written_by": WRITER, "stems": sorted(stems)})

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

    def clear_outputs(self, owned: set[str]) -> None:
        """Remove label_gen's own results (labels.json first, so none look complete).

        Args:
          owned: stems whose PNGs label_gen wrote (from `claim`); other files in
            the sub-folders are left alone.
        """
        for name in OUTPUT_FILES:
            _unlink_own(self.root, name)
        for folder in OUTPUT_DIRS:
            for stem in owned:
                _unlink_own(self.root / folder, f"{stem}.png")
            _rmdir_if_empty(self.root / folder)

    def stage_dir(self, key: str) -> Path:
        """The cache folder of one stage (created)."""
        path = self.cache / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prune_cache(self, keep: Sequence[str]) -> None:
        """Delete label_gen's cache files of other settings and temporary files.

        Only `cache/<stage>-<16 hex>/` folders are touched, and inside them only
        `*.npz` files and their temporary files; anything else stays.
        """
        if not self.cache.is_dir():
            return
        for child in self.cache.iterdir():
            if not STAGE_DIR.fullmatch(child.name) or child.is_symlink():
                continue
            if not child.is_dir():
                continue
            for item in child.iterdir():
                stale = child.name not in keep and item.name.endswith(".npz")
                if stale or NPZ_TMP.fullmatch(item.name):
                    if item.is_file() and not item.is_symlink():
                        item.unlink(missing_ok=True)
            if child.name not in keep:
                _rmdir_if_empty(child)


def _unlink_own(folder: Path, name: str) -> None:
    """Delete `folder/name` and its left-over temporary files, if plain files."""
    path = folder / name
    if path.is_file() and not path.is_symlink():
        path.unlink(missing_ok=True)
    if folder.is_dir():
        for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)


def _rmdir_if_empty(path: Path) -> None:
    """Remove an empty folder (a folder with anything left in it stays)."""
    try:
        path.rmdir()
    except OSError:
        return


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
