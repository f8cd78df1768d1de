"""The MVTec LOCO AD folder layout: categories, splits, samples and ground truth.

A category folder holds `train/good`, `validation/good`,
`test/{good,logical_anomalies,structural_anomalies}`, optionally
`ground_truth/<kind>/<image stem>/*.png` (one or more masks per anomalous test
image) and `defects_config.json`. Synthetic data (`csad synth`) may add
`components/` and `synthetic_meta.json`.

Every file list is sorted lexicographically, test images are paired with their
ground-truth folder by file stem, and a sample's split and kind come from the
folder it was listed in, relative to the category folder (never from substrings
of the full path). Names starting with "." (for example `.DS_Store`) are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csad_jax.data.image_io import (
    is_image_file,
    is_mask_file,
    read_image_size,
    read_mask,
)
from csad_jax.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
KINDS = ("good", "logical_anomalies", "structural_anomalies")
ANOMALY_KINDS = KINDS[1:]
SPLIT_KINDS = {"train": ("good",), "validation": ("good",), "test": KINDS}
GROUND_TRUTH = "ground_truth"
DEFECTS_CONFIG = "defects_config.json"
SYNTHETIC_META = "synthetic_meta.json"
# Entries a category folder may hold besides the splits (synthetic data extras).
OTHER_CATEGORY_ENTRIES = (
    GROUND_TRUTH,
    DEFECTS_CONFIG,
    "components",
    SYNTHETIC_META,
)


@dataclass(frozen=True)
class DefectSpec:
    """One `defects_config.json` entry: how sPRO saturates one defect type."""

    defect_name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool


@dataclass(frozen=True)
class Sample:
    """One image of a category, with its split, kind and ground-truth masks."""

    path: Path
    split: str
    kind: str
    stem: str
    mask_paths: tuple[Path, ...] = ()

    @property
    def is_anomalous(self) -> bool:
        """True for logical and structural anomalies (from the folder name)."""
        return self.kind != "good"


@dataclass(frozen=True)
class CategoryData:
    """All samples of one category, listed (not decoded) from its folder."""

    name: str
    path: Path
    defects_config: list[DefectSpec] | None
    _lists: dict[tuple[str, str], tuple[Sample, ...]] = field(repr=False)

    def samples(self, split: str, kind: str | None = None) -> list[Sample]:
        """The samples of a split (all kinds in KINDS order), sorted by stem."""
        kinds = _check_split_kind(split, kind)
        return [s for k in kinds for s in self._lists.get((split, k), ())]

    def require_nonempty(self, split: str, kind: str | None = None) -> list[Sample]:
        """The samples of a split, or a DataError if there are none."""
        found = self.samples(split, kind)
        if not found:
            where = "/".join(k for k in (split, kind) if k)
            raise DataError(
                f"no images in {self.path / where}: the split is missing or empty"
            )
        return found

    def defect_for_value(self, pixel_value: int) -> DefectSpec | None:
        """The defects_config entry for a mask value, or None if not listed."""
        for spec in self.defects_config or ():
            if spec.pixel_value == pixel_value:
                return spec
        return None


@dataclass(frozen=True)
class CategoryScan:
    """A listed category plus everything wrong with its folder structure.

    `problems` (broken structure) and `unexpected` (stray files and folders) make
    `load_category` fail; `empty_splits` are only refused when a split is needed
    (`CategoryData.require_nonempty`). All are lists of one-line texts.
    `incomplete` is non-empty (and also the first problem) when the folder is
    synthetic output whose `csad synth` run did not finish.
    """

    data: CategoryData
    problems: list[str]
    empty_splits: list[str]
    unexpected: list[str]
    incomplete: str = ""


def _check_split_kind(split: str, kind: str | None) -> tuple[str, ...]:
    if split not in SPLIT_KINDS:
        raise ConfigError(
            f"unknown split {split!r}; expected one of {', '.join(SPLITS)}"
        )
    if kind is None:
        return SPLIT_KINDS[split]
    if kind not in SPLIT_KINDS[split]:
        allowed = ", ".join(SPLIT_KINDS[split])
        raise ConfigError(f"split {split!r} has no kind {kind!r}; expected {allowed}")
    return (kind,)


def _entries(folder: Path) -> list[Path]:
    """The non-hidden entries of a folder, sorted by name."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise DataError(f"cannot list folder {folder}: {err.strerror or err}") from None


def _what(path: Path) -> str:
    return "folder" if path.is_dir() else "file"


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset root not found: {root}")
    if not root.is_dir():
        raise DataError(f"dataset root is not a folder: {root}")
    return root


def _has_split_folders(folder: Path) -> bool:
    """Whether a folder has any LOCO split/kind folder (e.g. `train/good`)."""
    return any(
        (folder / split / kind).is_dir()
        for split, kinds in SPLIT_KINDS.items()
        for kind in kinds
    )


def looks_like_category(folder: str | Path) -> bool:
    """Whether a folder has the LOCO split structure and is no category's part.

    A category needs at least one split/kind folder (`train/good`,
    `validation/good` or `test/<kind>`). A split, `ground_truth` or `components`
    folder inside a category (synthetic component maps mirror the splits) is not
    a category itself.
    """
    folder = Path(folder)
    if folder.name in (*SPLITS, *OTHER_CATEGORY_ENTRIES) and _has_split_folders(
        folder.parent
    ):
        return False
    return _has_split_folders(folder)


def list_categories(root: str | Path) -> list[str]:
    """The category folder names under a LOCO root, sorted."""
    root = _check_root(root)
    return [p.name for p in _entries(root) if p.is_dir() and looks_like_category(p)]


def _category_folder(root: str | Path, category: str) -> Path:
    """The folder of `category`, or a DataError saying what was found instead."""
    root = _check_root(root)
    if not category or category in (".", "..") or "/" in category or "\\" in category:
        raise DataError(f"invalid category name {category!r}")
    folder = root / category
    hint = ""
    if looks_like_category(root):
        hint = f" ({root} itself looks like a category: pass its parent as root)"
    if not folder.is_dir():
        found = ", ".join(list_categories(root)) or "none"
        raise DataError(
            f"category {category!r} not found in {root}; "
            f"categories found: {found}{hint}"
        )
    if not looks_like_category(folder):
        raise DataError(
            f"{folder} is not a LOCO category folder (no train/good, "
            f"validation/good or test/<kind> folder){hint}"
        )
    return folder


def _synthetic_state(folder: Path, problems: list[str]) -> str:
    """Check `synthetic_meta.json`; the incomplete-run message, or ""."""
    path = folder / SYNTHETIC_META
    if not path.exists():
        return ""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not valid JSON"
        problems.append(f"cannot read {path}: {reason or err}")
        return ""
    if not isinstance(meta, dict):
        problems.append(f"{path} must hold a JSON object")
        return ""
    if meta.get("complete") is not False:
        return ""
    return (
        f"synthetic dataset {folder} is incomplete ({SYNTHETIC_META} says "
        '"complete": false: the csad synth run was interrupted); regenerate it with '
        f"`csad synth --out {folder.parent} --categories {folder.name} --overwrite`"
    )


def _list_images(
    folder: Path, problems: list[str], unexpected: list[str]
) -> dict[str, Path]:
    """Images of one split/kind folder by stem; odd entries are recorded."""
    images: dict[str, Path] = {}
    if not folder.is_dir():
        if folder.exists():
            problems.append(f"expected a folder, found a file: {folder}")
        return images
    for entry in _entries(folder):
        if entry.is_dir() or not is_image_file(entry):
            unexpected.append(f"unexpected {_what(entry)} {entry}")
        elif entry.stem in images:
            problems.append(
                f"duplicate image stem {entry.stem!r}: {images[entry.stem]} and {entry}"
            )
        else:
            images[entry.stem] = entry
    return images


def _list_gt_folder(
    folder: Path, problems: list[str], unexpected: list[str]
) -> tuple[Path, ...]:
    masks = []
    for entry in _entries(folder):
        if entry.is_dir() or not is_mask_file(entry):
            unexpected.append(
                f"unexpected {_what(entry)} {entry} (ground truth must be PNG)"
            )
        else:
            masks.append(entry)
    if not masks:
        problems.append(f"ground-truth folder {folder} contains no mask PNG")
    return tuple(masks)


def _scan_ground_truth(
    folder: Path, problems: list[str], unexpected: list[str]
) -> dict[str, dict[str, tuple[Path, ...]]]:
    """Mask files per anomaly kind and image stem under `ground_truth/`."""
    gt: dict[str, dict[str, tuple[Path, ...]]] = {kind: {} for kind in ANOMALY_KINDS}
    gt_root = folder / GROUND_TRUTH
    if not gt_root.is_dir():
        return gt
    for kind_dir in _entries(gt_root):
        if kind_dir.name not in ANOMALY_KINDS or not kind_dir.is_dir():
            unexpected.append(f"unexpected {_what(kind_dir)} {kind_dir}")
            continue
        for image_dir in _entries(kind_dir):
            if not image_dir.is_dir():
                unexpected.append(
                    f"unexpected file {image_dir} (expected one folder per image)"
                )
                continue
            gt[kind_dir.name][image_dir.name] = _list_gt_folder(
                image_dir, problems, unexpected
            )
    return gt


def _pair_ground_truth(
    folder: Path,
    images: dict[str, Path],
    kind: str,
    gt: dict[str, tuple[Path, ...]],
    problems: list[str],
) -> list[Sample]:
    """Anomalous test samples paired with their masks by stem, both ways checked."""
    gt_dir = folder / GROUND_TRUTH / kind
    for stem in sorted(set(gt) - set(images)):
        problems.append(
            f"ground-truth folder {gt_dir / stem} has no image test/{kind}/{stem}.* "
            f"in {folder}"
        )
    samples = []
    for stem in sorted(images):
        if stem not in gt:
            problems.append(
                f"anomalous test image {images[stem]} has no ground-truth folder "
                f"{gt_dir / stem}"
            )
        samples.append(Sample(images[stem], "test", kind, stem, gt.get(stem, ())))
    return samples


def _check_category_entries(
    folder: Path, problems: list[str], unexpected: list[str]
) -> None:
    for entry in _entries(folder):
        if entry.name in SPLITS:
            if not entry.is_dir():
                problems.append(f"expected a folder, found a file: {entry}")
                continue
            for sub in _entries(entry):
                if sub.name not in SPLIT_KINDS[entry.name]:
                    unexpected.append(f"unexpected {_what(sub)} {sub}")
        elif entry.name == GROUND_TRUTH and not entry.is_dir():
            problems.append(f"expected a folder, found a file: {entry}")
        elif entry.name not in OTHER_CATEGORY_ENTRIES:
            unexpected.append(f"unexpected {_what(entry)} {entry}")


def scan_category(root: str | Path, category: str) -> CategoryScan:
    """List a category and collect every structural problem instead of stopping.

    Reads folder listings and `defects_config.json` only; no image is opened.
    Raises DataError only when the root or the category folder itself is unusable.
    """
    folder = _category_folder(root, category)
    problems: list[str] = []
    unexpected: list[str] = []
    empty: list[str] = []
    incomplete = _synthetic_state(folder, problems)
    if incomplete:
        problems.append(incomplete)
    _check_category_entries(folder, problems, unexpected)
    gt = _scan_ground_truth(folder, problems, unexpected)
    lists: dict[tuple[str, str], tuple[Sample, ...]] = {}
    for split, kinds in SPLIT_KINDS.items():
        for kind in kinds:
            sub = folder / split / kind
            images = _list_images(sub, problems, unexpected)
            if not images:
                state = "empty" if sub.is_dir() else "missing"
                empty.append(f"split folder {sub} is {state}")
            if kind in ANOMALY_KINDS:
                found = _pair_ground_truth(folder, images, kind, gt[kind], problems)
            else:
                found = [Sample(images[s], split, kind, s) for s in sorted(images)]
            lists[(split, kind)] = tuple(found)
    defects = read_defects_config(folder / DEFECTS_CONFIG, problems)
    data = CategoryData(category, folder, defects, lists)
    return CategoryScan(data, problems, empty, unexpected, incomplete)


def load_category(root: str | Path, category: str) -> CategoryData:
    """List a category's samples; DataError on any structural problem.

    Empty or missing splits are allowed here and refused where a split is needed
    (`CategoryData.require_nonempty`). Images are not opened. Synthetic output of
    an interrupted `csad synth` run is refused.
    """
    scan = scan_category(root, category)
    if scan.incomplete:
        raise DataError(scan.incomplete)
    issues = scan.problems + scan.unexpected
    if issues:
        more = ""
        if len(issues) > 1:
            more = (
                f" (and {len(issues) - 1} more; "
                f"`csad info --data {root} --category {category}` lists all)"
            )
        raise DataError(issues[0] + more)
    return scan.data


def _parse_defect(entry: object, index: int, path: Path) -> DefectSpec:
    """Validate one defects_config entry; ValueError names what is wrong."""
    where = f"{path} entry {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not an object")
    missing = [k for k in DefectSpec.__dataclass_fields__ if k not in entry]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    name, value = entry["defect_name"], entry["pixel_value"]
    threshold, relative = entry["saturation_threshold"], entry["relative_saturation"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: defect_name must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise ValueError(
            f"{where}: pixel_value must be an integer 1..255, got {value!r}"
        )
    if not isinstance(relative, bool):
        raise ValueError(f"{where}: relative_saturation must be true or false")
    number = isinstance(threshold, int | float) and not isinstance(threshold, bool)
    if (
        not number
        or not math.isfinite(threshold)
        or threshold <= 0
        or (relative and threshold > 1)
    ):
        limit = "in (0, 1]" if relative else "a positive pixel count"
        raise ValueError(
            f"{where}: saturation_threshold must be {limit}, got {threshold!r}"
        )
    return DefectSpec(name, value, float(threshold), relative)


def read_defects_config(
    path: str | Path, problems: list[str] | None = None
) -> list[DefectSpec] | None:
    """Parse `defects_config.json` (a JSON list of defect entries).

    Returns:
      list[DefectSpec], or None when the file is absent or (with `problems`
      given) invalid. Without `problems`, an invalid file raises DataError.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ValueError(f"{path} must hold a JSON list of defect entries")
        specs = [_parse_defect(e, i, path) for i, e in enumerate(entries)]
        values = [s.pixel_value for s in specs]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ValueError(f"{path} lists pixel_value {dup[0]} more than once")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        if isinstance(err, json.JSONDecodeError):
            text = f"{path} is not valid JSON ({err.msg} at line {err.lineno})"
        elif isinstance(err, UnicodeDecodeError):
            text = f"{path} is not UTF-8 text (byte {err.start}); it must be JSON"
        elif isinstance(err, OSError):
            text = f"cannot read {path}: {err.strerror or err}"
        else:
            text = str(err)
        if problems is None:
            raise DataError(text) from None
        problems.append(text)
        return None
    return specs


def read_gt_regions(sample: Sample) -> list[tuple[int, np.ndarray]]:
    """The ground-truth regions of a sample, as sPRO counts them.

    Each mask file and each distinct non-zero value inside it is one region (a
    LOCO mask file normally holds exactly one value, naming its defect type in
    defects_config.json). Masks must have their image's size.

    Args:
      sample: a Sample; good samples have no regions.

    Returns:
      list of (pixel value, bool [H, W] region), in mask-file then value order.
    """
    if not sample.mask_paths:
        return []
    height, width = read_image_size(sample.path)
    regions = []
    for mask_path in sample.mask_paths:
        mask = read_mask(mask_path)
        if mask.shape != (height, width):
            raise DataError(
                f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image "
                f"{sample.path} is {height}x{width}"
            )
        values = [int(v) for v in np.unique(mask) if v != 0]
        if not values:
            raise DataError(f"mask {mask_path} has no non-zero (anomalous) pixel")
        regions.extend((v, mask == v) for v in values)
    return regions
