"""Reader of the semantic pseudo-labels written by `label_gen`.

Layout (see docs/architecture.md), per category folder `<out>/<category>/`:
`labels.json` (written last, `"complete": true`), `maps/<stem>.png` (uint8
class map, 0 = background, 1..N_cls), `instances/<stem>.png` (component
instance ids, 0 = none), `background/<stem>.png` (0/255 image background).
Maps, instances and backgrounds are required for every labelled stem.

The reader refuses incomplete or inconsistent output with a one-line
`DataError` naming the file, and checks every decoded map (mode, shape, class
range) when it is read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from csad_jax.errors import DataError

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format", "complete", "category", "num_classes", "labelled")


@dataclasses.dataclass(frozen=True)
class LabelledMaps:
    """The three label images of one labelled training image.

    Attributes:
      class_map: uint8 [H, W], 0 = background, 1..N_cls.
      instances: int32 [H, W] component instance ids, 0 = none.
      background: bool [H, W], True on the image background.
    """

    class_map: np.ndarray
    instances: np.ndarray
    background: np.ndarray


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    """A validated pseudo-label folder of one category.

    Attributes:
      directory: the `<out>/<category>` folder.
      category: category name.
      num_classes: N_cls (the segmentor has K = N_cls + 1 outputs).
      labelled: stems with maps (sorted as written).
      unlabelled: training stems without maps.
      class_area_mean: mean area fraction per class, as written.
      meta: the whole parsed labels.json (backend, settings, versions, ...).
    """

    directory: Path
    category: str
    num_classes: int
    labelled: tuple[str, ...]
    unlabelled: tuple[str, ...]
    class_area_mean: tuple[float, ...]
    meta: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        """The generator's fingerprint string ('' if it wrote none)."""
        return str(self.meta.get("fingerprint", ""))

    def path(self, kind: str, stem: str) -> Path:
        """`<dir>/<kind>/<stem>.png` for kind in maps, instances, background."""
        return self.directory / kind / f"{stem}.png"

    def class_map(self, stem: str) -> np.ndarray:
        """uint8 [H, W] class map of a labelled stem, values in 0..N_cls."""
        path = self._labelled_path("maps", stem)
        values = _read_png(path, ("L", "P"))
        if values.size and int(values.max()) > self.num_classes:
            raise DataError(
                f"{path} has class id {int(values.max())} > num_classes "
                f"{self.num_classes} in labels.json"
            )
        return values.astype(np.uint8)

    def instance_map(self, stem: str) -> np.ndarray:
        """int32 [H, W] component instance ids of a labelled stem (0 = none)."""
        path = self._labelled_path("instances", stem)
        modes = ("L", "P", "I;16", "I;16B", "I;16L", "I;16N", "I")
        values = _read_png(path, modes)
        if values.size and values.min() < 0:
            raise DataError(f"{path} has negative instance ids")
        return values.astype(np.int32)

    def background(self, stem: str) -> np.ndarray:
        """bool [H, W] image background of a labelled stem (any non-zero)."""
        path = self._labelled_path("background", stem)
        return _read_png(path, ("L", "P", "1")) > 0

    def read_labelled(self, stem: str) -> LabelledMaps:
        """All three maps of a labelled stem, checked to share one shape."""
        maps = LabelledMaps(
            self.class_map(stem), self.instance_map(stem), self.background(stem)
        )
        shapes = {maps.class_map.shape, maps.instances.shape, maps.background.shape}
        if len(shapes) != 1:
            raise DataError(
                f"pseudo-labels of {self.category}/{stem} have different sizes "
                f"{sorted(shapes)} (maps, instances, background)"
            )
        return maps

    def _labelled_path(self, kind: str, stem: str) -> Path:
        if stem not in self._labelled_set:
            raise DataError(f"{stem} is not a labelled stem of {self.directory}")
        return self.path(kind, stem)

    @property
    def _labelled_set(self) -> frozenset[str]:
        return frozenset(self.labelled)


def _read_png(path: Path, modes: tuple[str, ...]) -> np.ndarray:
    """Decodes a single-channel PNG of one of `modes`; DataError otherwise."""
    if not path.is_file():
        raise DataError(f"missing pseudo-label file {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            values = np.array(img)
    except Exception as err:  # PIL raises many types for corrupt files
        raise DataError(f"cannot decode pseudo-label file {path}: {err}") from err
    if mode not in modes or values.ndim != 2:
        raise DataError(
            f"{path} must be a single-channel PNG ({', '.join(modes)}), got mode {mode}"
        )
    if mode == "1":
        values = values.astype(np.uint8)
    return values


def _category_dir(labels_dir: Path, category: str) -> Path:
    """`labels_dir/category`, or `labels_dir` itself if it is that folder."""
    nested = labels_dir / category
    if (nested / "labels.json").exists() or not (labels_dir / "labels.json").exists():
        return nested
    return labels_dir


def _stem_list(meta: dict, key: str, source: Path) -> tuple[str, ...]:
    value = meta.get(key, [])
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise DataError(f"{source}: '{key}' must be a list of image stems")
    if len(set(value)) != len(value):
        raise DataError(f"{source}: '{key}' lists a stem twice")
    return tuple(value)


def _check_meta(meta: Any, source: Path, category: str) -> None:
    """Validates the header fields of labels.json."""
    if not isinstance(meta, dict):
        raise DataError(f"{source} is not a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise DataError(f"{source} lacks {', '.join(missing)}: incomplete output")
    if meta["format"] != FORMAT_VERSION:
        raise DataError(
            f"{source} has format {meta['format']!r}; this reader supports "
            f"{FORMAT_VERSION}"
        )
    if meta["complete"] is not True:
        raise DataError(
            f"{source} is marked incomplete: pseudo-label generation did not "
            "finish; run it again"
        )
    if meta["category"] != category:
        raise DataError(
            f"{source} is for category {meta['category']!r}, not {category!r}"
        )
    n = meta["num_classes"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DataError(f"{source}: num_classes must be a positive int, got {n!r}")


def _area_means(meta: dict, source: Path) -> tuple[float, ...]:
    value = meta.get("class_area_mean", [])
    ok = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in value
    )
    if not ok:
        raise DataError(f"{source}: class_area_mean must be a list of numbers")
    return tuple(float(v) for v in value)


def load_pseudo_labels(labels_dir: str | Path, category: str) -> PseudoLabels:
    """Opens and validates the pseudo-labels of `category`.

    Args:
      labels_dir: the generator's output root `<out>` (or `<out>/<category>`).
      category: category name.

    Returns:
      a `PseudoLabels` whose labelled stems all have their three files.

    Raises:
      DataError: labels.json missing, unparsable, incomplete or inconsistent,
        or a labelled stem lacks a map, instance map or background file.
    """
    directory = _category_dir(Path(labels_dir), category)
    source = directory / "labels.json"
    if not source.is_file():
        raise DataError(
            f"no {source}: pseudo-labels for {category} are missing or their "
            "generation did not finish"
        )
    try:
        meta = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot parse {source}: {err}") from err
    _check_meta(meta, source, category)
    labelled = _stem_list(meta, "labelled", source)
    unlabelled = _stem_list(meta, "unlabelled", source)
    if not labelled:
        raise DataError(f"{source} lists no labelled images")
    overlap = sorted(set(labelled) & set(unlabelled))
    if overlap:
        raise DataError(f"{source}: {overlap[0]} is both labelled and unlabelled")
    for kind in ("maps", "instances", "background"):
        absent = [s for s in labelled if not (directory / kind / f"{s}.png").is_file()]
        if absent:
            raise DataError(
                f"{directory / kind} lacks {len(absent)} labelled file(s), e.g. "
                f"{absent[0]}.png: incomplete pseudo-label output"
            )
    return PseudoLabels(
        directory=directory,
        category=category,
        num_classes=int(meta["num_classes"]),
        labelled=labelled,
        unlabelled=unlabelled,
        class_area_mean=_area_means(meta, source),
        meta=meta,
    )


def write_pseudo_labels(
    labels_dir: str | Path,
    category: str,
    labelled: dict[str, LabelledMaps],
    unlabelled: list[str],
    num_classes: int,
    *,
    backend: str,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Writes pseudo-labels in the reader's format; labels.json goes last.

    Used by tests and by stand-in label sets built from known maps; `label_gen`
    writes the same layout (plus a preview sheet).

    Args:
      labels_dir: output root `<out>`.
      category: category name (the sub-folder).
      labelled: stem -> its three maps (class ids must be <= num_classes).
      unlabelled: training stems without maps.
      num_classes: N_cls.
      backend: name of what produced the maps (recorded in labels.json).
      settings: any JSON-serialisable settings to record.

    Returns:
      the category folder.
    """
    directory = Path(labels_dir) / category
    for kind in ("maps", "instances", "background"):
        (directory / kind).mkdir(parents=True, exist_ok=True)
    areas = np.zeros(num_classes, np.float64)
    for stem, maps in sorted(labelled.items()):
        Image.fromarray(maps.class_map.astype(np.uint8)).save(
            directory / "maps" / f"{stem}.png"
        )
        Image.fromarray(maps.instances.astype(np.uint16)).save(
            directory / "instances" / f"{stem}.png"
        )
        Image.fromarray(np.where(maps.background, 255, 0).astype(np.uint8)).save(
            directory / "background" / f"{stem}.png"
        )
        counts = np.bincount(maps.class_map.ravel(), minlength=num_classes + 1)
        areas += counts[1 : num_classes + 1] / maps.class_map.size
    meta = {
        "format": FORMAT_VERSION,
        "complete": True,
        "category": category,
        "num_classes": int(num_classes),
        "labelled": sorted(labelled),
        "unlabelled": sorted(unlabelled),
        "class_area_mean": (areas / max(len(labelled), 1)).tolist(),
        "backend": backend,
        "settings": settings or {},
        "versions": {},
        "fingerprint": "",
    }
    (directory / "labels.json").write_text(json.dumps(meta, indent=1))
    return directory
