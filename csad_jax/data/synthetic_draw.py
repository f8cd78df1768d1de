"""Drawing primitives for the synthetic LOCO-layout dataset (`csad synth`).

A scene is a list of `Part`s painted in order onto a textured background. Each
part is one or more coloured `Layer`s of polygons and thick polylines, rasterised
with 4x supersampling (antialiased edges), shaded (dome shading, a highlight and a
surface texture) and alpha-composited. The true component label map is the union
of each part's coverage >= 0.5, later parts overwriting earlier ones. All pixel
work is vectorised numpy or Pillow; randomness comes only from the caller's
`numpy.random.Generator`, so a scene is reproducible from its seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

SUPERSAMPLE = 4
REFERENCE_SIZE = 256.0  # part sizes are given in pixels of a 256 x 256 image

Color = tuple[float, float, float]
Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)

# texture name -> (noise amplitude, noise cell px, highlight, speckle, dome)
TEXTURES: dict[str, tuple[float, float, float, float, float]] = {
    "matte": (0.03, 4.0, 0.10, 0.0, 0.20),
    "peel": (0.07, 1.5, 0.20, 0.0, 0.25),
    "grain": (0.14, 1.2, 0.05, 0.22, 0.15),
    "metal": (0.05, 3.0, 0.40, 0.0, 0.25),
    "rubber": (0.03, 4.0, 0.12, 0.0, 0.25),
    "chip": (0.05, 2.0, 0.08, 0.05, 0.15),
    "tube": (0.03, 4.0, 0.0, 0.0, 0.45),
    "flat": (0.0, 1.0, 0.0, 0.0, 0.0),
}


@dataclasses.dataclass(frozen=True)
class Cut:
    """A jagged straight break; the side beyond the edge line is removed."""

    angle: float  # degrees; the direction pointing into the removed side
    offset: float  # position of the edge line along that direction, px
    jag: tuple[tuple[float, float, float], ...]  # (amplitude px, rad/px, phase)

    def signed_distance(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Distance beyond the jagged edge (> 0 means removed), same shape as xs."""
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        along, across = xs * c + ys * s, -xs * s + ys * c
        edge = np.full_like(along, self.offset)
        for amplitude, frequency, phase in self.jag:
            edge = edge + amplitude * np.sin(frequency * across + phase)
        return along - edge


@dataclasses.dataclass(frozen=True)
class Part:
    """One component instance (kind >= 1), contamination (0) or a scratch (-1).

    kind 0 paints label 0 (background) where it covers; kind -1 leaves labels.
    """

    kind: int
    shape: str
    center: tuple[float, float]  # (x, y) in pixels
    size: float  # pixels; meaning depends on the shape
    angle: float = 0.0  # degrees
    color: Color = (128.0, 128.0, 128.0)
    texture: str = "matte"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    cut: Cut | None = None


# One drawing operation: points [N, 2] (x, y), line width (0 = polygon), filled.
Op = tuple[np.ndarray, float, bool]


@dataclasses.dataclass(frozen=True)
class Layer:
    """Polygons and polylines that share one colour and texture."""

    ops: tuple[Op, ...]
    color: Color
    texture: str


# ---------------------------------------------------------------- geometry


def ellipse(rx: float, ry: float, n: int = 64) -> np.ndarray:
    """Points [n, 2] of an axis-aligned ellipse around the origin."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def rect(w: float, h: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    """Corners [4, 2] of an axis-aligned w x h rectangle centred at (cx, cy)."""
    x = np.array([-0.5, 0.5, 0.5, -0.5]) * w + cx
    y = np.array([-0.5, -0.5, 0.5, 0.5]) * h + cy
    return np.stack([x, y], axis=1)


def regular_polygon(n: int, radius: float) -> np.ndarray:
    """Corners [n, 2] of a regular n-gon with circumradius `radius`."""
    return ellipse(radius, radius, n)


def blob(radius: float, harmonics: Sequence[tuple[int, float, float]]) -> np.ndarray:
    """Points [96, 2] of r(t) = radius * (1 + sum a cos(k t + phase))."""
    t = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
    r = np.ones_like(t)
    for k, amplitude, phase in harmonics:
        r = r + amplitude * np.cos(k * t + phase)
    return np.stack([radius * r * np.cos(t), radius * r * np.sin(t)], axis=1)


def bezier(control: np.ndarray, n: int = 64) -> np.ndarray:
    """Points [n, 2] of the cubic Bezier curve with control points [4, 2]."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = control
    return (
        (1 - t) ** 3 * p0
        + 3 * t * (1 - t) ** 2 * p1
        + 3 * t**2 * (1 - t) * p2
        + t**3 * p3
    )


def place(local: np.ndarray, part: Part) -> np.ndarray:
    """Rotate local points [N, 2] by the part's angle and move them to its centre."""
    t = math.radians(part.angle)
    c, s = math.cos(t), math.sin(t)
    u, v = local[:, 0], local[:, 1]
    cx, cy = part.center
    return np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=1)


def darker(color: Color, factor: float) -> Color:
    """The colour scaled by `factor`."""
    return (color[0] * factor, color[1] * factor, color[2] * factor)


# ------------------------------------------------------------------ shapes


def _disc(p: Part) -> list[Layer]:
    pts = place(ellipse(p.size, p.size * p.params.get("aspect", 1.0)), p)
    return [Layer(((pts, 0.0, True),), p.color, p.texture)]


def _blob(p: Part) -> list[Layer]:
    pts = place(blob(p.size, p.params.get("harmonics", ())), p)
    return [Layer(((pts, 0.0, True),), p.color, p.texture)]


def _ring(p: Part) -> list[Layer]:
    outer, inner = (
        place(ellipse(p.size, p.size), p),
        place(ellipse(0.46 * p.size, 0.46 * p.size), p),
    )
    return [Layer(((outer, 0.0, True), (inner, 0.0, False)), p.color, p.texture)]


def _hexnut(p: Part) -> list[Layer]:
    outer = place(regular_polygon(6, p.size), p)
    inner = place(ellipse(0.42 * p.size, 0.42 * p.size), p)
    return [Layer(((outer, 0.0, True), (inner, 0.0, False)), p.color, p.texture)]


def _bolt(p: Part) -> list[Layer]:
    n = p.size
    head = place(rect(0.15 * n, 0.30 * n, -0.425 * n), p)
    shaft = place(rect(0.86 * n, 0.15 * n, 0.07 * n), p)
    threads = []
    for u in np.arange(-0.02, 0.48, 0.045) * n:
        line = place(np.array([[u, -0.07 * n], [u + 0.02 * n, 0.07 * n]]), p)
        threads.append((line, 0.014 * n, True))
    return [
        Layer(((head, 0.0, True), (shaft, 0.0, True)), p.color, p.texture),
        Layer(tuple(threads), darker(p.color, 0.7), "flat"),
    ]


def _plug(p: Part) -> list[Layer]:
    n, pins = p.size, int(p.params.get("pins", 3))
    width = 0.75 * n
    pin_ops = tuple(
        (
            place(
                rect(0.1 * n, 0.3 * n, (k - (pins - 1) / 2) * 0.22 * n, -0.62 * n), p
            ),
            0.0,
            True,
        )
        for k in range(pins)
    )
    body = place(rect(width, n), p)
    grip = place(rect(0.8 * width, 0.06 * n, 0.0, 0.3 * n), p)
    return [
        Layer(pin_ops, (214.0, 174.0, 64.0), "metal"),
        Layer(((body, 0.0, True),), p.color, p.texture),
        Layer(((grip, 0.0, True),), darker(p.color, 1.5), "flat"),
    ]


def _socket(p: Part) -> list[Layer]:
    n, slots = p.size, int(p.params.get("slots", 3))
    body = place(rect((0.225 * slots + 0.225) * n, n), p)
    slot_ops = tuple(
        (
            place(
                rect(0.12 * n, 0.3 * n, (k - (slots - 1) / 2) * 0.225 * n, -0.2 * n), p
            ),
            0.0,
            True,
        )
        for k in range(slots)
    )
    return [
        Layer(((body, 0.0, True),), p.color, p.texture),
        Layer(slot_ops, (26.0, 26.0, 32.0), "flat"),
    ]


def _band(p: Part) -> list[Layer]:
    body = place(rect(0.7 * p.size, p.size), p)
    rims = tuple(
        (place(rect(0.06 * p.size, p.size, u * p.size), p), 0.0, True)
        for u in (-0.2, 0.2)
    )
    return [
        Layer(((body, 0.0, True),), p.color, p.texture),
        Layer(rims, darker(p.color, 0.8), "flat"),
    ]


def _polyline(p: Part) -> list[Layer]:
    return [Layer(((np.asarray(p.params["path"]), p.size, True),), p.color, p.texture)]


SHAPES = {
    "disc": _disc,
    "blob": _blob,
    "ring": _ring,
    "hexnut": _hexnut,
    "bolt": _bolt,
    "plug": _plug,
    "socket": _socket,
    "band": _band,
    "polyline": _polyline,
}


def part_layers(part: Part) -> list[Layer]:
    """The coloured layers of a part, in image coordinates."""
    return SHAPES[part.shape](part)


# ---------------------------------------------------------- rasterisation


def layers_box(layers: Sequence[Layer], height: int, width: int) -> Box | None:
    """Integer bounding box of all layers, clipped to the image (None if outside)."""
    pts = np.concatenate([op[0] for layer in layers for op in layer.ops])
    pad = 2.0 + max(op[1] for layer in layers for op in layer.ops)
    x0, y0 = np.floor(pts.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0) + pad).astype(int)
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
    return (y0, x0, y1, x1) if y1 > y0 and x1 > x0 else None


def _draw_op(draw: ImageDraw.ImageDraw, op: Op, origin: np.ndarray) -> None:
    pts, line_width, filled = op
    xy = (pts - origin) * SUPERSAMPLE
    fill = 255 if filled else 0
    flat = [float(v) for v in xy.ravel()]
    if line_width <= 0:
        draw.polygon(flat, fill=fill)
        return
    w = max(1, round(line_width * SUPERSAMPLE))
    draw.line(flat, fill=fill, width=w, joint="curve")
    r = w / 2.0
    for x, y in (xy[0], xy[-1]):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def coverage(ops: Sequence[Op], box: Box, cut: Cut | None = None) -> np.ndarray:
    """Antialiased coverage float32 [h, w] in [0, 1] of `ops` inside `box`."""
    y0, x0, y1, x1 = box
    h, w = y1 - y0, x1 - x0
    canvas = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    origin = np.array([x0, y0], dtype=np.float64)
    for op in ops:
        _draw_op(draw, op, origin)
    fine = np.asarray(canvas, dtype=np.float32)
    if cut is not None:
        ys = y0 + (np.arange(h * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
        xs = x0 + (np.arange(w * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
        fine = fine * (cut.signed_distance(xs[None, :], ys[:, None]) <= 0)
    return fine.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3)) / 255.0


def layer_alphas(part: Part, box: Box) -> list[np.ndarray]:
    """Coverage [h, w] of each layer of `part` in `box`, after its cut and clip."""
    alphas = [coverage(layer.ops, box, part.cut) for layer in part_layers(part)]
    clip = part.params.get("clip")
    if clip is not None:
        clip_alpha = np.max(layer_alphas(clip, box), axis=0)
        alphas = [a * clip_alpha for a in alphas]
    return alphas


def footprint(part: Part, height: int, width: int) -> np.ndarray:
    """Where the part covers >= half a pixel: bool [height, width]."""
    mask = np.zeros((height, width), dtype=bool)
    box = layers_box(part_layers(part), height, width)
    if box is not None:
        y0, x0, y1, x1 = box
        mask[y0:y1, x0:x1] = np.max(layer_alphas(part, box), axis=0) >= 0.5
    return mask


# ---------------------------------------------------------------- shading


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, cell: float
) -> np.ndarray:
    """Unit-variance value noise float32 [height, width] with feature size `cell` px."""
    cell = max(float(cell), 1.0)
    gh, gw = int(height / cell) + 3, int(width / cell) + 3
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    if cell > 1.0:
        size = (int(np.ceil(gw * cell)), int(np.ceil(gh * cell)))
        grid = np.asarray(Image.fromarray(grid, mode="F").resize(size, Image.BICUBIC))
    field = grid[:height, :width]
    return (field - field.mean()) / (field.std() + 1e-6)


def _dome(alpha: np.ndarray) -> np.ndarray:
    """0 at the outline rising to 1 in the middle: float32 [h, w]."""
    inside = np.pad(alpha >= 0.5, 1)
    dist = ndimage.distance_transform_edt(inside)[1:-1, 1:-1]
    return np.sqrt(np.clip(dist / max(0.5 * dist.max(), 1.0), 0.0, 1.0))


def shade(
    alpha: np.ndarray,
    layer: Layer,
    part: Part,
    box: Box,
    light: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Shaded colour float32 [h, w, 3] (0..255) of one layer inside `box`."""
    amplitude, cell, highlight, speckle, dome = TEXTURES[layer.texture]
    h, w = alpha.shape
    scale = max(part.size / 20.0, 0.25)
    factor = 1.0 - dome + dome * _dome(alpha)
    if amplitude > 0:
        factor = factor * (1.0 + amplitude * smooth_noise(rng, h, w, cell * scale))
    if speckle > 0:
        grains = smooth_noise(rng, h, w, 1.0 + 0.5 * scale) > 1.2
        factor = factor * np.where(grains, 1.0 - 2.0 * speckle, 1.0)
    rgb = factor[..., None] * np.asarray(layer.color, dtype=np.float32)
    if highlight > 0:
        y0, x0 = box[0], box[1]
        hx = part.center[0] - x0 + light[0] * 0.3 * part.size
        hy = part.center[1] - y0 + light[1] * 0.3 * part.size
        yy, xx = np.mgrid[0:h, 0:w] + 0.5
        spot = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (0.18 * part.size**2))
        rgb = rgb + (255.0 - rgb) * (highlight * spot)[..., None]
    return rgb


def _crack_shadow(part: Part, box: Box) -> np.ndarray:
    """Darkening float32 [h, w] along the broken edge of a cut part."""
    y0, x0, y1, x1 = box
    ys = (np.arange(y0, y1) + 0.5)[:, None]
    xs = (np.arange(x0, x1) + 0.5)[None, :]
    dist = np.abs(part.cut.signed_distance(xs, ys))
    width = 0.5 + part.size / 25.0
    return 1.0 - 0.45 * np.exp(-((dist / width) ** 2))


def paint_part(
    image: np.ndarray,
    labels: np.ndarray,
    part: Part,
    light: tuple[float, float],
    rng: np.random.Generator,
) -> None:
    """Composite one part into image float32 [H, W, 3] and labels uint8 [H, W]."""
    height, width = labels.shape
    layers = part_layers(part)
    box = layers_box(layers, height, width)
    if box is None:
        return
    y0, x0, y1, x1 = box
    crop = image[y0:y1, x0:x1]
    alphas = layer_alphas(part, box)
    for layer, alpha in zip(layers, alphas, strict=True):
        rgb = shade(alpha, layer, part, box, light, rng)
        if part.cut is not None:
            rgb = rgb * _crack_shadow(part, box)[..., None]
        crop[...] = crop * (1.0 - alpha[..., None]) + rgb * alpha[..., None]
    if part.kind >= 0:
        labels[y0:y1, x0:x1][np.max(alphas, axis=0) >= 0.5] = part.kind


# ------------------------------------------------------------------ scene


def background(
    rng: np.random.Generator, height: int, width: int, color: Color
) -> np.ndarray:
    """A mildly mottled surface float32 [height, width, 3] (0..255)."""
    s = min(height, width) / REFERENCE_SIZE
    factor = 1.0 + 0.012 * smooth_noise(rng, height, width, 32.0 * s)
    return factor[..., None] * np.asarray(color, dtype=np.float32)


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting gradient, exposure, tint and sensor noise; returns uint8 [H, W, 3]."""
    height, width = image.shape[:2]
    theta = rng.uniform(0.0, 2.0 * np.pi)
    slope = rng.uniform(0.04, 0.09)
    ys = (np.arange(height, dtype=np.float32) + 0.5 - height / 2)[:, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5 - width / 2)[None, :]
    ramp = (xs * np.cos(theta) + ys * np.sin(theta)) / (0.5 * max(height, width))
    gain = rng.uniform(0.96, 1.04) * (1.0 + slope * ramp)
    tint = (1.0 + rng.uniform(-0.015, 0.015, size=3)).astype(np.float32)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * 1.8
    out = image * gain[..., None].astype(np.float32) * tint + noise
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_scene(
    parts: Sequence[Part],
    surface: Color,
    rng: np.random.Generator,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint parts in order on a surface.

    Returns:
        image uint8 [height, width, 3] and labels uint8 [height, width]
        (0 = background, k = component kind k).
    """
    image = background(rng, height, width, surface)
    labels = np.zeros((height, width), dtype=np.uint8)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    light = (math.cos(theta), math.sin(theta))
    for part in parts:
        paint_part(image, labels, part, light, rng)
    return finish(image, rng), labels
