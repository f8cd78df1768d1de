"""A synthetic MVTec LOCO-layout dataset with true component maps (`csad synth`).

Three product categories, each a fixed set of component kinds in a fixed layout
(every kind lives in fixed image quadrants, with a fixed count per image):

- breakfast_tray: 2 oranges (top left), 1 nectarine (bottom left), a patch of
  cereal (top right) and 3 banana chips (bottom right) on a blue-grey tray.
- screw_kit: 2 steel bolts (one in each top quadrant), 2 brass hex nuts (bottom
  left) and 2 red rubber washers (bottom right) on a beige mat.
- connector_pair: a charcoal 3-pin plug (top left) and a blue 3-slot socket (top
  right) joined by a red cable hanging in a U, with 2 yellow sleeves on the
  cable legs (bottom quadrants).

Normal images vary in placement (+-5 px at 256 px), rotation, size (+-3 %),
colour, lighting gradient, exposure, sensor noise and surface texture. Logical
anomalies: missing (a kind absent), extra (one instance too many), wrong_count
(one instance too few), swapped_kind (an instance replaced by another kind),
misplaced (an instance moved to a quadrant its kind never occupies) and
wrong_combination (a mismatched pair). Structural anomalies: scratch,
contamination and broken (a chunk broken off a component).

Besides the LOCO layout, each category gets `components/<split>/<kind>/<stem>.png`
(uint8 true component map, 0 = background, 1..K = kind) and `synthetic_meta.json`.
Every image is drawn from its own random stream seeded by (seed, category name,
split, kind, index), so output is byte-identical for a seed and one category does
not depend on which others are generated.

Files are written atomically (a hidden temporary file, then `os.replace`), and
`synthetic_meta.json` says `"complete": false` until the last file is written.
`--overwrite` deletes only the files this generator writes (recognised by their
exact names for the counts recorded in `synthetic_meta.json`) and refuses,
naming them, when anything else is in a category folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import secrets
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image
from scipy import ndimage, signal
from tqdm import tqdm

from csad_jax.data import synthetic_draw as draw
from csad_jax.data.synthetic_draw import Color, Part
from csad_jax.errors import ConfigError, DataError

GENERATOR_VERSION = 1
META_NAME = "synthetic_meta.json"
DEFECTS_NAME = "defects_config.json"
TEMP_SUFFIX = ".csad-tmp"
# Hidden temporary files of `_write_atomic`: ".<name>.<pid>.<8 hex>.csad-tmp".
TEMP_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))
MASK_NAME = re.compile(r"\d{3,}\.png")
LOGICAL_SUBTYPES = (
    "missing",
    "extra",
    "wrong_count",
    "swapped_kind",
    "misplaced",
    "wrong_combination",
)
STRUCTURAL_SUBTYPES = ("scratch", "contamination", "broken")
PIXEL_VALUES = {
    name: 255 - i for i, name in enumerate(LOGICAL_SUBTYPES + STRUCTURAL_SUBTYPES)
}
SUBTYPE_DESCRIPTIONS = {
    "missing": "every instance of one component kind is absent",
    "extra": "one additional instance of a component kind",
    "wrong_count": "one instance fewer of a multi-instance kind (kind still present)",
    "swapped_kind": "one instance replaced by a component of another kind",
    "misplaced": "one instance moved to a quadrant its kind never occupies",
    "wrong_combination": "the members of a matched pair do not match",
    "scratch": "a thin contrasting scratch across one component",
    "contamination": "a foreign blob on a component or on the surface",
    "broken": "a jagged chunk (25-40 %) broken off one component",
}
SCALES = {
    "default": {
        "train": 60,
        "validation": 20,
        "test_good": 30,
        "logical_per_subtype": 8,
        "structural_per_subtype": 10,
    },
    "small": {
        "train": 16,
        "validation": 6,
        "test_good": 8,
        "logical_per_subtype": 2,
        "structural_per_subtype": 2,
    },
}
MIN_SIDE = 64
MAX_SIDE = 2048
# Colours of contamination, chosen far from the part and surface it lands on.
FOREIGN_COLORS: tuple[Color, ...] = (
    (40.0, 32.0, 26.0),
    (70.0, 160.0, 70.0),
    (150.0, 70.0, 180.0),
    (245.0, 245.0, 240.0),
    (20.0, 120.0, 130.0),
)
_IMAGE_KIND_CODES = {
    ("train", "good"): 1,
    ("validation", "good"): 2,
    ("test", "good"): 3,
    ("test", "logical_anomalies"): 4,
    ("test", "structural_anomalies"): 5,
}


# ------------------------------------------------------------- categories


@dataclasses.dataclass(frozen=True)
class KindStyle:
    """How one component kind looks: shape, size at 256 px, colour, texture."""

    shape: str
    size: float
    color: Color
    texture: str
    spin: tuple[float, float] = (0.0, 360.0)  # rotation range, degrees
    aspect: tuple[float, float] = (1.0, 1.0)
    wobble: float = 0.0  # blob outline harmonic amplitude
    flip: bool = False  # randomly rotate by 180 degrees
    params: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class CategorySpec:
    """A product category: component kinds, their layout and anomaly rules."""

    name: str
    description: str
    surface: Color
    kinds: tuple[str, ...]  # label order: kinds[k - 1] has label k
    styles: Mapping[str, KindStyle]
    counts: Mapping[str, int]  # normal number of instances per kind
    homes: Mapping[str, tuple[int, ...]]  # quadrants 0 TL, 1 TR, 2 BL, 3 BR
    slots: Mapping[str, tuple[tuple[float, float, float], ...]]  # fx, fy, angle
    missable: tuple[str, ...]
    extra: tuple[str, ...]
    swappable: tuple[str, ...]
    movable: tuple[str, ...]
    breakable: tuple[str, ...]
    mismatch_kind: str
    mismatch: Callable[[Part, np.random.Generator], Part]
    mismatch_note: str
    layout: Callable[[CategorySpec, np.random.Generator, int, int], list[Part]]

    def kind_name(self, part: Part) -> str:
        """Component kind name of a part (kind >= 1)."""
        return self.kinds[part.kind - 1]


def _jitter_color(color: Color, rng: np.random.Generator) -> Color:
    gain = rng.uniform(0.97, 1.03) * (1.0 + rng.uniform(-0.02, 0.02, size=3))
    return tuple(float(c) for c in np.clip(np.asarray(color) * gain, 0, 255))


def make_part(
    spec: CategorySpec,
    name: str,
    center: tuple[float, float],
    rng: np.random.Generator,
    scale: float,
    angle: float = 0.0,
) -> Part:
    """A new instance of kind `name` at `center` with random normal variation."""
    style = spec.styles[name]
    params: dict = dict(style.params)
    params["aspect"] = rng.uniform(*style.aspect)
    if style.wobble > 0:
        params["harmonics"] = tuple(
            (
                k,
                rng.uniform(0.3, 1.0) * style.wobble / (k - 1),
                rng.uniform(0, 2 * np.pi),
            )
            for k in range(2, 6)
        )
    angle = angle + rng.uniform(*style.spin)
    if style.flip and rng.random() < 0.5:
        angle += 180.0
    return Part(
        kind=spec.kinds.index(name) + 1,
        shape=style.shape,
        center=(float(center[0]), float(center[1])),
        size=style.size * scale * rng.uniform(0.97, 1.03),
        angle=float(angle),
        color=_jitter_color(style.color, rng),
        texture=style.texture,
        params=params,
    )


def _slot_layout(
    spec: CategorySpec, rng: np.random.Generator, height: int, width: int
) -> list[Part]:
    """Parts at the spec's slots (relative positions) with +-5 px jitter."""
    scale = min(height, width) / draw.REFERENCE_SIZE
    parts = []
    for name in spec.kinds:
        for fx, fy, angle in spec.slots.get(name, ()):
            jitter = rng.uniform(-5.0, 5.0, size=2) * scale
            center = (fx * width + jitter[0], fy * height + jitter[1])
            parts.append(make_part(spec, name, center, rng, scale, angle))
    return parts


def _recolor(color: Color) -> Callable[[Part, np.random.Generator], Part]:
    def mismatch(part: Part, rng: np.random.Generator) -> Part:
        return dataclasses.replace(part, color=_jitter_color(color, rng))

    return mismatch


def _socket_mismatch(part: Part, rng: np.random.Generator) -> Part:
    slots = 2 if rng.random() < 0.5 else 4
    return dataclasses.replace(part, params={**part.params, "slots": slots})


def _attach_point(part: Part, offset: float) -> np.ndarray:
    """Image point [2] at local (0, offset * size) of a rotated part."""
    return draw.place(np.array([[0.0, offset * part.size]]), part)[0]


def _connector_layout(
    spec: CategorySpec, rng: np.random.Generator, height: int, width: int
) -> list[Part]:
    """Plug and socket from the slots, a U-shaped cable and sleeves along it."""
    scale = min(height, width) / draw.REFERENCE_SIZE
    plug, socket = _slot_layout(spec, rng, height, width)
    p0, p3 = _attach_point(plug, 0.4), _attach_point(socket, 0.4)
    drop = rng.uniform(0.47, 0.53) * height
    p1 = p0 + np.array([rng.uniform(-0.04, 0.04) * width, drop])
    p2 = p3 + np.array([rng.uniform(-0.04, 0.04) * width, drop])
    path = draw.bezier(np.stack([p0, p1, p2, p3]), 96)
    cable_style = spec.styles["cable"]
    cable = Part(
        kind=spec.kinds.index("cable") + 1,
        shape="polyline",
        center=tuple(float(v) for v in path[48]),
        size=cable_style.size * scale * rng.uniform(0.97, 1.03),
        color=_jitter_color(cable_style.color, rng),
        texture=cable_style.texture,
        params={"path": path},
    )
    sleeves = []
    for t in (0.28, 0.72):
        i = int(round((t + rng.uniform(-0.03, 0.03)) * (len(path) - 1)))
        tangent = path[i + 1] - path[i - 1]
        angle = float(np.degrees(np.arctan2(tangent[1], tangent[0])))
        sleeves.append(make_part(spec, "sleeve", tuple(path[i]), rng, scale, angle))
    return [cable, *sleeves, plug, socket]


BREAKFAST_TRAY = CategorySpec(
    name="breakfast_tray",
    description=(
        "2 oranges (top left), 1 nectarine (bottom left), a cereal patch (top "
        "right) and 3 banana chips (bottom right) on a blue-grey tray"
    ),
    surface=(150.0, 166.0, 184.0),
    kinds=("orange", "nectarine", "cereal", "banana_chip"),
    styles={
        "orange": KindStyle("disc", 21.0, (236, 132, 30), "peel", aspect=(0.93, 1.0)),
        "nectarine": KindStyle("disc", 24.0, (170, 36, 50), "peel", aspect=(0.9, 0.97)),
        "cereal": KindStyle("blob", 32.0, (172, 118, 56), "grain", wobble=0.08),
        "banana_chip": KindStyle(
            "disc", 13.0, (238, 214, 122), "chip", aspect=(0.92, 1.0)
        ),
    },
    counts={"orange": 2, "nectarine": 1, "cereal": 1, "banana_chip": 3},
    homes={"orange": (0,), "nectarine": (2,), "cereal": (1,), "banana_chip": (3,)},
    slots={
        "orange": ((0.17, 0.17, 0.0), (0.34, 0.34, 0.0)),
        "nectarine": ((0.25, 0.73, 0.0),),
        "cereal": ((0.74, 0.26, 0.0),),
        "banana_chip": ((0.64, 0.66, 0.0), (0.84, 0.66, 0.0), (0.74, 0.84, 0.0)),
    },
    missable=("orange", "nectarine", "cereal", "banana_chip"),
    extra=("orange", "nectarine", "banana_chip"),
    swappable=("orange", "nectarine", "banana_chip"),
    movable=("orange", "nectarine", "banana_chip"),
    breakable=("orange", "nectarine", "banana_chip"),
    mismatch_kind="orange",
    mismatch=_recolor((118, 168, 44)),
    mismatch_note="one of the two oranges is green (unripe)",
    layout=_slot_layout,
)

SCREW_KIT = CategorySpec(
    name="screw_kit",
    description=(
        "2 steel bolts (one per top quadrant), 2 brass hex nuts (bottom left) and "
        "2 red rubber washers (bottom right) on a beige mat"
    ),
    surface=(214.0, 208.0, 196.0),
    kinds=("bolt", "nut", "washer"),
    styles={
        "bolt": KindStyle(
            "bolt", 76.0, (110, 120, 136), "metal", (-12.0, 12.0), flip=True
        ),
        "nut": KindStyle("hexnut", 16.0, (208, 164, 52), "metal"),
        "washer": KindStyle("ring", 17.0, (176, 38, 34), "rubber"),
    },
    counts={"bolt": 2, "nut": 2, "washer": 2},
    homes={"bolt": (0, 1), "nut": (2,), "washer": (3,)},
    slots={
        "bolt": ((0.25, 0.25, 20.0), (0.75, 0.25, -20.0)),
        "nut": ((0.17, 0.68, 0.0), (0.34, 0.84, 0.0)),
        "washer": ((0.66, 0.84, 0.0), (0.84, 0.68, 0.0)),
    },
    missable=("bolt", "nut", "washer"),
    extra=("bolt", "nut", "washer"),
    swappable=("bolt", "nut", "washer"),
    movable=("bolt", "nut", "washer"),
    breakable=("bolt", "nut", "washer"),
    mismatch_kind="washer",
    mismatch=_recolor((44, 96, 196)),
    mismatch_note="the two washers differ: one is blue",
    layout=_slot_layout,
)

CONNECTOR_PAIR = CategorySpec(
    name="connector_pair",
    description=(
        "a charcoal 3-pin plug (top left) and a blue 3-slot socket (top right) "
        "joined by a red U-shaped cable carrying 2 yellow sleeves (bottom "
        "quadrants) on a light grey surface"
    ),
    surface=(222.0, 222.0, 218.0),
    kinds=("plug", "socket", "cable", "sleeve"),
    styles={
        "plug": KindStyle(
            "plug", 40.0, (52, 54, 60), "matte", (-5.0, 5.0), params=(("pins", 3),)
        ),
        "socket": KindStyle(
            "socket", 40.0, (46, 92, 196), "matte", (-5.0, 5.0), params=(("slots", 3),)
        ),
        "cable": KindStyle("polyline", 9.0, (192, 40, 36), "tube"),
        "sleeve": KindStyle("band", 25.0, (242, 178, 30), "matte", (0.0, 0.0)),
    },
    counts={"plug": 1, "socket": 1, "cable": 1, "sleeve": 2},
    homes={"plug": (0,), "socket": (1,), "cable": (0, 1, 2, 3), "sleeve": (2, 3)},
    slots={"plug": ((0.22, 0.27, 0.0),), "socket": ((0.78, 0.27, 0.0),)},
    missable=("plug", "socket", "sleeve"),
    extra=("sleeve", "plug", "socket"),
    swappable=("plug", "socket"),
    movable=("sleeve", "plug", "socket"),
    breakable=("plug", "socket", "sleeve"),
    mismatch_kind="socket",
    mismatch=_socket_mismatch,
    mismatch_note="the socket has 2 or 4 slots but the plug has 3 pins",
    layout=_connector_layout,
)

CATEGORIES: dict[str, CategorySpec] = {
    spec.name: spec for spec in (BREAKFAST_TRAY, SCREW_KIT, CONNECTOR_PAIR)
}


# ---------------------------------------------------------------- anomalies


def _shuffled(items: Sequence, rng: np.random.Generator) -> list:
    return [items[i] for i in rng.permutation(len(items))]


class _Scene:
    """The parts of one image and helpers to find free space among them."""

    def __init__(self, spec: CategorySpec, parts: list[Part], height: int, width: int):
        self.spec, self.parts = spec, list(parts)
        self.height, self.width = height, width
        self.scale = min(height, width) / draw.REFERENCE_SIZE
        self.margin = max(1, round(3 * self.scale))

    def footprint(self, part: Part) -> np.ndarray:
        """bool [H, W] where the part covers at least half a pixel."""
        return draw.footprint(part, self.height, self.width)

    def indices(self, names: Iterable[str]) -> list[int]:
        """Indices of component parts whose kind is in `names`."""
        names = set(names)
        return [
            i
            for i, p in enumerate(self.parts)
            if p.kind >= 1 and self.spec.kind_name(p) in names
        ]

    def occupied(self, skip: Iterable[int] = ()) -> np.ndarray:
        """bool [H, W]: footprints of all parts but `skip`, grown by the margin."""
        skip = set(skip)
        occupied = np.zeros((self.height, self.width), dtype=bool)
        for i, part in enumerate(self.parts):
            if i not in skip:
                occupied |= self.footprint(part)
        return ndimage.binary_dilation(occupied, iterations=self.margin)

    def quadrant(self, q: int) -> draw.Box:
        """Box of quadrant q (0 TL, 1 TR, 2 BL, 3 BR) inset by the margin."""
        hh, hw, m = self.height // 2, self.width // 2, self.margin
        y0, x0 = (0 if q < 2 else hh), (0 if q % 2 == 0 else hw)
        y1, x1 = (hh if q < 2 else self.height), (hw if q % 2 == 0 else self.width)
        return (y0 + m, x0 + m, y1 - m, x1 - m)

    def whole(self) -> draw.Box:
        """The whole image inset by the margin."""
        m = self.margin
        return (m, m, self.height - m, self.width - m)

    def around(self, part: Part, slack: float) -> draw.Box:
        """The part's bounding box grown by `slack` pixels."""
        ys, xs = np.nonzero(self.footprint(part))
        pad = int(round(slack))
        return (ys.min() - pad, xs.min() - pad, ys.max() + 1 + pad, xs.max() + 1 + pad)

    def place(
        self,
        part: Part,
        regions: Sequence[draw.Box],
        rng: np.random.Generator,
        skip: Iterable[int] = (),
    ) -> Part | None:
        """The part moved by whole pixels to a free spot inside the first region
        that has one (uniformly among free spots), or None."""
        fp = self.footprint(part)
        ys, xs = np.nonzero(fp)
        if ys.size == 0:
            return None
        fy, fx = ys.min(), xs.min()
        crop = fp[fy : ys.max() + 1, fx : xs.max() + 1].astype(np.float32)
        occupied = self.occupied(skip).astype(np.float32)
        overlap = signal.fftconvolve(occupied, crop[::-1, ::-1], mode="valid")
        free = overlap < 0.5  # free[i, j]: crop's top-left corner at (i, j)
        for y0, x0, y1, x1 in regions:
            allowed = np.zeros_like(free)
            y0, x0 = max(y0, 0), max(x0, 0)
            allowed[y0 : y1 - crop.shape[0] + 1, x0 : x1 - crop.shape[1] + 1] = True
            spots = np.argwhere(free & allowed)
            if len(spots):
                i, j = spots[rng.integers(len(spots))]
                cx, cy = part.center
                return dataclasses.replace(part, center=(cx + j - fx, cy + i - fy))
        return None

    def new_part(self, name: str, rng: np.random.Generator) -> Part:
        """A fresh instance of `name` at the image centre, oriented like its slots."""
        slots = self.spec.slots.get(name, ())
        angle = slots[rng.integers(len(slots))][2] if slots else rng.uniform(0, 360)
        center = (self.width / 2, self.height / 2)
        return make_part(self.spec, name, center, rng, self.scale, angle)


Regions = list[np.ndarray] | None  # bool [H, W] per defect region; None = failed


def _missing(scene: _Scene, rng: np.random.Generator) -> Regions:
    """Remove every instance of one kind; the regions are where they belong."""
    for name in _shuffled(scene.spec.missable, rng):
        idx = scene.indices([name])
        if idx:
            regions = [scene.footprint(scene.parts[i]) for i in idx]
            scene.parts = [p for i, p in enumerate(scene.parts) if i not in idx]
            return regions
    return None


def _extra(scene: _Scene, rng: np.random.Generator) -> Regions:
    """Add one instance of a kind, in its own quadrants when there is room."""
    for name in _shuffled(scene.spec.extra, rng):
        homes = [scene.quadrant(q) for q in _shuffled(scene.spec.homes[name], rng)]
        part = scene.place(scene.new_part(name, rng), [*homes, scene.whole()], rng)
        if part is not None:
            scene.parts.append(part)
            return [scene.footprint(part)]
    return None


def _wrong_count(scene: _Scene, rng: np.random.Generator) -> Regions:
    """Remove one instance of a kind that normally has two or more."""
    names = [n for n in scene.spec.kinds if scene.spec.counts[n] >= 2]
    for name in _shuffled(names, rng):
        idx = scene.indices([name])
        if len(idx) >= 2:
            i = idx[rng.integers(len(idx))]
            region = scene.footprint(scene.parts.pop(i))
            return [region]
    return None


def _swapped_kind(scene: _Scene, rng: np.random.Generator) -> Regions:
    """Replace one instance by another kind, at the same spot or in its quadrant."""
    spec = scene.spec
    for i in _shuffled(scene.indices(spec.swappable), rng):
        old = scene.parts[i]
        # The newcomer may overlap what the old part overlapped (a cable end).
        old_fp = scene.footprint(old)
        under = [
            j for j, p in enumerate(scene.parts) if (scene.footprint(p) & old_fp).any()
        ]
        homes = [scene.quadrant(q) for q in spec.homes[spec.kind_name(old)]]
        for other in _shuffled(
            [n for n in spec.swappable if n != spec.kind_name(old)], rng
        ):
            new = make_part(spec, other, old.center, rng, scene.scale, old.angle)
            near = scene.around(new, 6 * scene.scale)
            new = scene.place(new, [near, *homes], rng, skip=under)
            if new is not None:
                scene.parts[i] = new
                return [scene.footprint(old) | scene.footprint(new)]
    return None


def _misplaced(scene: _Scene, rng: np.random.Generator) -> Regions:
    """Move one instance into a quadrant its kind never occupies."""
    spec = scene.spec
    for i in _shuffled(scene.indices(spec.movable), rng):
        old = scene.parts[i]
        foreign = [q for q in range(4) if q not in spec.homes[spec.kind_name(old)]]
        regions = [scene.quadrant(q) for q in _shuffled(foreign, rng)]
        new = scene.place(old, regions, rng, skip=[i])
        if new is not None:
            scene.parts[i] = new
            return [scene.footprint(new), scene.footprint(old)]
    return None


def _wrong_combination(scene: _Scene, rng: np.random.Generator) -> Regions:
    """Make one member of the category's matched pair not match."""
    idx = scene.indices([scene.spec.mismatch_kind])
    if not idx:
        return None
    i = idx[rng.integers(len(idx))]
    old = scene.parts[i]
    scene.parts[i] = scene.spec.mismatch(old, rng)
    return [scene.footprint(old) | scene.footprint(scene.parts[i])]


def _inner_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random (x, y) pixel centre well inside a bool [H, W] mask."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= 0.4 * dist.max())
    k = rng.integers(len(ys))
    return np.array([xs[k] + 0.5, ys[k] + 0.5])


def _luminance(color: Color) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


def _pick_by_area(scene: _Scene, rng: np.random.Generator) -> int:
    """Index of a breakable part, drawn with probability ~ area squared."""
    idx = scene.indices(scene.spec.breakable)
    areas = np.array([scene.footprint(scene.parts[i]).sum() for i in idx], float)
    return idx[rng.choice(len(idx), p=areas**2 / (areas**2).sum())]


def _principal_axis(mask: np.ndarray) -> tuple[float, float]:
    """Angle (radians) and full length along the major axis of a bool mask."""
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    values, vectors = np.linalg.eigh(cov)
    major = vectors[:, -1]
    return float(np.arctan2(major[1], major[0])), float(np.sqrt(12.0 * values[-1]))


def _scratch(scene: _Scene, rng: np.random.Generator) -> Regions:
    """A thin, slightly bent contrasting line across one component."""
    i = _pick_by_area(scene, rng)
    target, fp, s = scene.parts[i], scene.footprint(scene.parts[i]), scene.scale
    center = _inner_point(fp, rng)
    axis, extent = _principal_axis(fp)
    theta = axis + np.radians(rng.uniform(-30.0, 30.0))
    length = max(24.0 * s, rng.uniform(0.8, 1.1) * extent)
    d = np.array([np.cos(theta), np.sin(theta)])
    n = np.array([-d[1], d[0]]) * rng.uniform(-0.15, 0.15) * length
    p0 = center - d * length / 2
    control = np.stack([p0, p0 + d * length / 3 + n, p0 + d * 2 * length / 3 + n])
    path = draw.bezier(np.concatenate([control, [center + d * length / 2]]), 32)
    dark = _luminance(target.color) > 100
    color = (30.0, 28.0, 26.0) if dark else (238.0, 236.0, 230.0)
    width = max(rng.uniform(2.2, 3.2) * s, 0.8)
    params = {"path": path, "clip": target}
    line = Part(-1, "polyline", tuple(center), width, 0.0, color, "flat", params)
    region = scene.footprint(dataclasses.replace(line, size=width + 2.0 * s))
    scene.parts.append(line)
    return [region]


def _foreign_color(avoid: Sequence[Color], rng: np.random.Generator) -> Color:
    """A contamination colour far (> 90 RGB units) from every colour in `avoid`."""
    colors = np.asarray(FOREIGN_COLORS)
    dist = np.min(
        [np.linalg.norm(colors - np.asarray(c), axis=1) for c in avoid], axis=0
    )
    far = np.flatnonzero(dist > 90.0)
    pick = far[rng.integers(len(far))] if len(far) else int(np.argmax(dist))
    return _jitter_color(FOREIGN_COLORS[pick], rng)


def _contamination(scene: _Scene, rng: np.random.Generator) -> Regions:
    """A foreign irregular blob, on a component (65 %) or on the free surface."""
    s, spec = scene.scale, scene.spec
    radius = rng.uniform(6.5, 10.0) * s
    if rng.random() < 0.65:
        target = scene.parts[_shuffled(scene.indices(spec.kinds), rng)[0]]
        center = _inner_point(scene.footprint(target), rng)
        avoid = [target.color, spec.surface]
    else:
        grow = int(np.ceil(radius)) + scene.margin
        free = ~ndimage.binary_dilation(scene.occupied(), iterations=grow)
        y0, x0, y1, x1 = scene.whole()
        inner = np.zeros_like(free)
        inner[y0 + grow : y1 - grow, x0 + grow : x1 - grow] = True
        if not (free & inner).any():
            return None
        center, avoid = _inner_point(free & inner, rng), [spec.surface]
    harmonics = tuple(
        (k, rng.uniform(0.05, 0.2) / (k - 1), rng.uniform(0, 2 * np.pi))
        for k in range(2, 6)
    )
    color = _foreign_color(avoid, rng)
    params = {"harmonics": harmonics}
    blob = Part(0, "blob", tuple(center), radius, 0.0, color, "matte", params)
    scene.parts.append(blob)
    return [scene.footprint(blob)]


def _broken(scene: _Scene, rng: np.random.Generator) -> Regions:
    """Break a jagged chunk of 25-40 % off one component."""
    s, first = scene.scale, _pick_by_area(scene, rng)
    rest = [
        i for i in _shuffled(scene.indices(scene.spec.breakable), rng) if i != first
    ]
    for i in [first, *rest]:
        part = scene.parts[i]
        fp = scene.footprint(part)
        ys, xs = np.nonzero(fp)
        theta = rng.uniform(0.0, 360.0)
        t = np.radians(theta)
        along = (xs + 0.5) * np.cos(t) + (ys + 0.5) * np.sin(t)
        offset = float(np.quantile(along, 1.0 - rng.uniform(0.25, 0.4)))
        jag = tuple(
            (
                rng.uniform(0.8, 2.0) * s,
                rng.uniform(0.25, 0.6) / s,
                rng.uniform(0, 2 * np.pi),
            )
            for _ in range(2)
        )
        broken = dataclasses.replace(part, cut=draw.Cut(theta, offset, jag))
        region = fp & ~scene.footprint(broken)
        if region.sum() >= 0.15 * fp.sum():
            scene.parts[i] = broken
            return [region]
    return None


ANOMALIES: dict[str, Callable[[_Scene, np.random.Generator], Regions]] = {
    "missing": _missing,
    "extra": _extra,
    "wrong_count": _wrong_count,
    "swapped_kind": _swapped_kind,
    "misplaced": _misplaced,
    "wrong_combination": _wrong_combination,
    "scratch": _scratch,
    "contamination": _contamination,
    "broken": _broken,
}
_ATTEMPTS = 8


# ---------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class SynthImage:
    """One generated image with its true component map and defect regions."""

    image: np.ndarray  # uint8 [H, W, 3]
    labels: np.ndarray  # uint8 [H, W], 0 = background, 1..K = component kind
    regions: tuple[np.ndarray, ...]  # bool [H, W] per defect region
    subtype: str  # "good" or an anomaly subtype


def image_rng(
    seed: int, category: str, split: str, image_kind: str, index: int
) -> np.random.Generator:
    """The random stream of one image, independent of every other image."""
    key = [seed, zlib.crc32(category.encode()), _IMAGE_KIND_CODES[(split, image_kind)]]
    return np.random.default_rng([*key, index])


def synthesize(
    spec: CategorySpec,
    seed: int,
    split: str,
    image_kind: str,
    index: int,
    subtype: str,
    size: tuple[int, int],
) -> SynthImage:
    """Draw one image of a category.

    Args:
        subtype: "good" or a key of ANOMALIES.
        size: (height, width) in pixels.

    Returns:
        The image uint8 [H, W, 3], its component map uint8 [H, W] and regions.
    """
    height, width = size
    rng = image_rng(seed, spec.name, split, image_kind, index)
    for _ in range(_ATTEMPTS):
        scene = _Scene(spec, spec.layout(spec, rng, height, width), height, width)
        regions = [] if subtype == "good" else ANOMALIES[subtype](scene, rng)
        if regions is not None and all(r.any() for r in regions):
            break
    else:
        raise ConfigError(
            f"could not place a {subtype!r} anomaly in {spec.name} at "
            f"{width}x{height}; try a larger --size"
        )
    image, labels = draw.render_scene(scene.parts, spec.surface, rng, height, width)
    return SynthImage(image, labels, tuple(regions), subtype)


# ------------------------------------------------------------------ files


def image_plan(counts: Mapping[str, int]) -> list[tuple[str, str, int, str]]:
    """(split, image kind, index, subtype) of every image, in writing order."""
    rows = [("train", "good", i, "good") for i in range(counts["train"])]
    rows += [("validation", "good", i, "good") for i in range(counts["validation"])]
    rows += [("test", "good", i, "good") for i in range(counts["test_good"])]
    groups = (
        ("logical_anomalies", LOGICAL_SUBTYPES, counts["logical_per_subtype"]),
        ("structural_anomalies", STRUCTURAL_SUBTYPES, counts["structural_per_subtype"]),
    )
    for image_kind, subtypes, per_subtype in groups:
        for k, subtype in enumerate(subtypes):
            for j in range(per_subtype):
                rows.append(("test", image_kind, k * per_subtype + j, subtype))
    return rows


def _stem_width(
    rows: Sequence[tuple[str, str, int, str]],
) -> dict[tuple[str, str], int]:
    """Zero-padding per (split, kind): 3 digits as in MVTec LOCO, more if needed."""
    largest: dict[tuple[str, str], int] = {}
    for split, kind, index, _ in rows:
        largest[(split, kind)] = max(largest.get((split, kind), 0), index)
    return {key: max(3, len(str(n))) for key, n in largest.items()}


def _temp_path(path: Path) -> Path:
    """A fresh hidden temporary name next to `path` (see TEMP_NAME)."""
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}.{token}{TEMP_SUFFIX}")


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through a temporary file in its folder and `os.replace`.

    An interrupted run leaves either the old file, the new file or a hidden
    temporary file (which readers ignore), never a truncated file under `path`.
    The file gets the usual permissions (0666 minus the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _save_png(path: Path, array: np.ndarray) -> None:
    # Fast zlib level: noisy photographs barely compress further at level 6.
    image = Image.fromarray(array)
    _write_atomic(path, lambda f: image.save(f, format="PNG", compress_level=1))


def _write_json(path: Path, data: object) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    _write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _write_sample(
    folder: Path, split: str, kind: str, stem: str, item: SynthImage
) -> None:
    _save_png(folder / split / kind / f"{stem}.png", item.image)
    _save_png(folder / "components" / split / kind / f"{stem}.png", item.labels)
    value = PIXEL_VALUES.get(item.subtype, 0)
    for r, region in enumerate(item.regions):
        mask = np.where(region, value, 0).astype(np.uint8)
        _save_png(folder / "ground_truth" / kind / stem / f"{r:03d}.png", mask)


def defects_config() -> list[dict]:
    """`defects_config.json` entries in the official format, one per subtype."""
    return [
        {
            "defect_name": name,
            "pixel_value": value,
            "saturation_threshold": 1.0,
            "relative_saturation": True,
        }
        for name, value in PIXEL_VALUES.items()
    ]


def _meta(
    spec: CategorySpec,
    seed: int,
    size: tuple[int, int],
    counts: Mapping[str, int],
    anomalies: Mapping[str, str] | None,
) -> dict:
    """Contents of `synthetic_meta.json` (complete once `anomalies` is given)."""
    quadrants = ("top_left", "top_right", "bottom_left", "bottom_right")
    groups = {n: "logical_anomalies" for n in LOGICAL_SUBTYPES}
    groups.update({n: "structural_anomalies" for n in STRUCTURAL_SUBTYPES})
    return {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "complete": anomalies is not None,
        "category": spec.name,
        "description": spec.description,
        "seed": seed,
        "image_size": {"height": size[0], "width": size[1]},
        "num_component_kinds": len(spec.kinds),
        "component_kinds": list(spec.kinds),
        "normal_counts": dict(spec.counts),
        "kind_quadrants": {
            k: [quadrants[q] for q in spec.homes[k]] for k in spec.kinds
        },
        "counts": dict(counts),
        "subtypes": {
            name: {
                "group": groups[name],
                "pixel_value": PIXEL_VALUES[name],
                "description": SUBTYPE_DESCRIPTIONS[name],
            }
            for name in PIXEL_VALUES
        },
        "wrong_combination_rule": spec.mismatch_note,
        "anomalies": dict(anomalies or {}),
    }


# ------------------------------------------------- what csad synth owns


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Relative (POSIX) paths that csad synth writes for one set of counts."""

    files: frozenset[str]
    folders: frozenset[str]
    mask_folders: frozenset[str]  # ground_truth/<kind>/<stem>: NNN.png inside

    def owns_file(self, rel: str) -> bool:
        """Whether a file at `rel` is one csad synth writes (or its temp file)."""
        folder, _, name = rel.rpartition("/")
        if TEMP_NAME.fullmatch(name):
            return True
        if folder in self.mask_folders:
            return MASK_NAME.fullmatch(name) is not None
        return rel in self.files


def _layout(counts: Mapping[str, int]) -> _Layout:
    """Every file and folder name `_generate_category` may write for `counts`."""
    rows = image_plan(counts)
    widths = _stem_width(rows)
    files = {META_NAME, DEFECTS_NAME}
    masks = set()
    for split, kind, index, subtype in rows:
        stem = f"{index:0{widths[(split, kind)]}d}"
        files.update(
            {f"{split}/{kind}/{stem}.png", f"components/{split}/{kind}/{stem}.png"}
        )
        if subtype != "good":
            masks.add(f"ground_truth/{kind}/{stem}")
    leaves = {str(PurePosixPath(f).parent) for f in files} | masks
    leaves |= {f"{split}/{kind}" for split, kind in _IMAGE_KIND_CODES}
    folders = {str(p) for leaf in leaves for p in PurePosixPath(leaf).parents}
    folders = (folders | leaves) - {"."}
    return _Layout(frozenset(files), frozenset(folders), frozenset(masks))


def _read_own_meta(folder: Path) -> dict | None:
    """Our `synthetic_meta.json` with valid counts, or None if it is not ours."""
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != __name__:
        return None
    counts = meta.get("counts")
    if not isinstance(counts, dict) or set(counts) != set(SCALES["default"]):
        return None
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for v in counts.values()
    ):
        return None
    return meta


def _raise_walk_error(err: OSError) -> None:
    raise err


def _foreign_entries(folder: Path, layout: _Layout | None) -> tuple[list[str], int]:
    """Entries under `folder` that csad synth did not write, and its file count.

    Symbolic links to folders and folders outside the layout count as foreign
    and are not entered. With no layout (no meta file) only temp files are ours.
    """
    foreign: list[str] = []
    owned = 0
    for top, dirs, names in os.walk(folder, onerror=_raise_walk_error):
        base = Path(top).relative_to(folder).as_posix()
        prefix = "" if base == "." else base + "/"
        keep = []
        for name in sorted(dirs):
            rel = prefix + name
            ours = layout is not None and rel in layout.folders
            if ours and not (Path(top) / name).is_symlink():
                keep.append(name)
            else:
                foreign.append(rel + "/")
        dirs[:] = keep
        for name in sorted(names):
            rel = prefix + name
            if layout is not None and layout.owns_file(rel):
                owned += 1
            elif layout is None and TEMP_NAME.fullmatch(name):
                owned += 1
            else:
                foreign.append(rel)
    return foreign, owned


def _refuse_foreign(folder: Path, foreign: list[str], why: str) -> None:
    shown = ", ".join(foreign[:4])
    more = f" and {len(foreign) - 4} more" if len(foreign) > 4 else ""
    raise DataError(
        f"refusing to overwrite {folder}: {why}: {shown}{more} (move them elsewhere "
        "or choose another --out)"
    )


def _check_target(folder: Path, overwrite: bool) -> _Layout | None:
    """Refuse unsafe targets; the layout of our previous output to remove, if any.

    A folder may be replaced only with `overwrite`, only if our
    `synthetic_meta.json` is in it and only if every entry in it is one that
    csad synth writes; anything else is named in the error and left alone.
    """
    if folder.is_symlink():
        raise DataError(
            f"{folder} is a symbolic link; csad synth writes only into real folders "
            "(remove the link or choose another --out)"
        )
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} exists and is not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    if not overwrite:
        raise DataError(
            f"{folder} is not empty; pass --overwrite to replace a dataset that "
            "csad synth wrote there"
        )
    meta = _read_own_meta(folder)
    layout = None if meta is None else _layout(meta["counts"])
    foreign, _ = _foreign_entries(folder, layout)
    if foreign and meta is None:
        _refuse_foreign(
            folder, foreign, f"it has no valid {META_NAME} written by csad synth"
        )
    if foreign:
        _refuse_foreign(folder, foreign, "it holds entries csad synth did not write")
    return layout


def _remove_own_output(folder: Path, layout: _Layout | None) -> None:
    """Delete what `_check_target` recognised as ours; the meta file goes last.

    The meta is first marked incomplete, so an interrupted removal still leaves
    a folder that `--overwrite` recognises and loaders refuse.
    """
    meta_path = folder / META_NAME
    meta = _read_own_meta(folder) if layout is not None else None
    if meta is not None:
        _write_json(meta_path, {**meta, "complete": False})
    foreign, _ = _foreign_entries(folder, layout)
    if foreign:  # something appeared since the check: leave everything
        _refuse_foreign(folder, foreign, "entries appeared while overwriting")
    for top, dirs, names in os.walk(folder, topdown=False, onerror=_raise_walk_error):
        for name in names:
            path = Path(top) / name
            if path != meta_path:
                path.unlink()
        for name in dirs:
            (Path(top) / name).rmdir()  # empty by now; fails rather than loses data
    meta_path.unlink(missing_ok=True)


def _generate_category(
    spec: CategorySpec,
    folder: Path,
    seed: int,
    size: tuple[int, int],
    counts: Mapping[str, int],
    progress: bool,
    previous: _Layout | None,
) -> dict:
    """Write one category folder; returns its summary row."""
    if folder.is_dir():
        _remove_own_output(folder, previous)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / META_NAME, _meta(spec, seed, size, counts, None))
    for split, kind in _IMAGE_KIND_CODES:
        (folder / split / kind).mkdir(parents=True, exist_ok=True)
    rows = image_plan(counts)
    widths = _stem_width(rows)
    anomalies: dict[str, str] = {}
    start = time.perf_counter()
    bar = tqdm(rows, desc=f"synth {spec.name}", unit="img", disable=not progress)
    for split, kind, index, subtype in bar:
        item = synthesize(spec, seed, split, kind, index, subtype, size)
        stem = f"{index:0{widths[(split, kind)]}d}"
        _write_sample(folder, split, kind, stem, item)
        if split == "test":
            anomalies[f"test/{kind}/{stem}"] = subtype
    _write_json(folder / DEFECTS_NAME, defects_config())
    _write_json(folder / META_NAME, _meta(spec, seed, size, counts, anomalies))
    summary = {"category": spec.name, "kinds": len(spec.kinds), "images": len(rows)}
    summary.update(counts)
    summary["seconds"] = time.perf_counter() - start
    return summary


# ---------------------------------------------------------- public entry


def _resolve_categories(categories: Iterable[str] | None) -> list[CategorySpec]:
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    names = list(CATEGORIES) if categories is None else list(categories)
    if not names:
        raise ConfigError(
            f"no synthetic category given; choose from {', '.join(CATEGORIES)}"
        )
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ConfigError(
            f"unknown synthetic categories {unknown}; choose from "
            f"{', '.join(CATEGORIES)}"
        )
    return [CATEGORIES[n] for n in dict.fromkeys(names)]


def _resolve_counts(scale: str, counts: Mapping[str, int] | None) -> dict[str, int]:
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    merged = dict(SCALES[scale])
    for key, value in (counts or {}).items():
        if key not in merged:
            raise ConfigError(f"unknown count {key!r}; known: {', '.join(merged)}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | np.integer)
            or value < 0
        ):
            raise ConfigError(
                f"count {key!r} must be a non-negative integer, got {value!r}"
            )
        merged[key] = int(value)
    return merged


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or not all(
        isinstance(v, int | np.integer) for v in image_size
    ):
        raise ConfigError(
            f"image size must be (height, width) integers, got {image_size!r}"
        )
    height, width = int(image_size[0]), int(image_size[1])
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise ConfigError(
            f"image size {width}x{height} (WxH): each side must be in "
            f"{MIN_SIDE}..{MAX_SIDE}"
        )
    if max(height, width) > 2 * min(height, width):
        raise ConfigError(f"image size {width}x{height} (WxH): aspect ratio above 2:1")
    return height, width


def generate(
    out_root: str | Path,
    categories: Iterable[str] | None = None,
    seed: int = 0,
    image_size: Sequence[int] = (256, 256),
    counts: Mapping[str, int] | None = None,
    scale: str = "default",
    overwrite: bool = False,
    progress: bool = False,
) -> list[dict]:
    """Write synthetic categories under `out_root` in the MVTec LOCO layout.

    Args:
        out_root: dataset root; each category goes to `out_root/<category>`.
        categories: names from CATEGORIES, or one comma-separated string
            (default: all).
        seed: non-negative integer; equal seeds give byte-identical files.
        image_size: (height, width) in pixels.
        counts: overrides of the `scale` preset (keys as in SCALES["default"]).
        scale: "default" or "small" preset of image counts.
        overwrite: replace category folders that csad synth wrote before.
        progress: show a progress bar on stderr.

    Returns:
        One summary dict per category (counts and seconds taken).
    """
    specs = _resolve_categories(categories)
    size = _check_size(image_size)
    merged = _resolve_counts(scale, counts)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    root = Path(out_root)
    try:
        _check_root(root)
        # Check every target before writing anything.
        previous = [_check_target(root / spec.name, overwrite) for spec in specs]
        return [
            _generate_category(
                spec, root / spec.name, int(seed), size, merged, progress, prev
            )
            for spec, prev in zip(specs, previous, strict=True)
        ]
    except OSError as err:
        where = err.filename if err.filename is not None else root
        raise DataError(
            f"cannot write synthetic data at {where}: {err.strerror or err}"
        ) from None


def _check_root(root: Path) -> None:
    """Refuse an output root that is, or lies below, a file."""
    for folder in (root, *root.parents):
        if folder.is_dir():
            return
        if folder.exists() or folder.is_symlink():
            what = "is" if folder == root else f"lies below {folder}, which is"
            raise DataError(f"cannot write to {root}: it {what} not a folder")


# -------------------------------------------------------------------- CLI


def parse_size(text: str) -> tuple[int, int]:
    """Parse "WIDTHxHEIGHT" (or one number for a square) into (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT such as 320x256")
    width, height = values
    return height, width


def format_summary(summaries: Sequence[dict], root: str | Path) -> str:
    """A plain-text table of what `generate` wrote."""
    header = ("category", "kinds", "train", "val", "good", "logical", "struct", "sec")
    keys = ("kinds", "train", "validation", "test_good")
    lines = [f"{header[0]:<16}" + "".join(f"{h:>9}" for h in header[1:])]
    for row in summaries:
        logical = row["logical_per_subtype"] * len(LOGICAL_SUBTYPES)
        structural = row["structural_per_subtype"] * len(STRUCTURAL_SUBTYPES)
        cells = [row[k] for k in keys] + [logical, structural]
        line = f"{row['category']:<16}" + "".join(f"{c:>9d}" for c in cells)
        lines.append(line + f"{row['seconds']:>9.1f}")
    return f"wrote {len(summaries)} synthetic categories to {root}\n" + "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad synth`."""
    parser.add_argument("--out", required=True, type=Path, help="dataset root folder")
    parser.add_argument(
        "--categories",
        help=f"comma-separated subset of {','.join(CATEGORIES)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size",
        default="256x256",
        help="image size as WIDTHxHEIGHT, e.g. 320x256; one number means square "
        f"(default 256x256; sides {MIN_SIDE}..{MAX_SIDE}, aspect ratio at most 2:1)",
    )
    parser.add_argument(
        "--scale",
        choices=tuple(SCALES),
        default="default",
        help="image counts per category: default = "
        + ", ".join(f"{k} {v}" for k, v in SCALES["default"].items())
        + "; small = about a quarter of that",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace category folders previously written by csad synth (only "
        "files it wrote are deleted; refuses if a folder holds anything else)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run `csad synth`: generate the dataset and print a summary table."""
    categories = None
    if args.categories is not None:
        categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    summaries = generate(
        args.out,
        categories,
        seed=args.seed,
        image_size=parse_size(args.size),
        scale=args.scale,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(format_summary(summaries, args.out))
    sys.stdout.flush()
    return 0
