"""LGST branch: networks, anomaly maps, map quantiles and image scores.

Local map M_local = channel-mean (t - s_local)^2 (teacher vs the local student's
local head) and global map M_global = channel-mean (a - s_global)^2 (global
student vs the local student's global head), both on the feature grid (input/4).
Each is normalised with quantiles of the validation maps,
0.1 * (M - q0.9) / (q0.995 - q0.9), and summed; the image score is the maximum
(method-spec §5.6-5.7, §8).

Two scoring variants: "upsampled" bilinearly resizes the normalised maps to the
input size before the max (official training/validation code), "fused" takes
the max of the grid map (official exported model).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from csad_jax.errors import ConfigError
from csad_jax.models.global_student import GlobalStudent
from csad_jax.models.layers import resize_bilinear
from csad_jax.models.local_student import LocalStudent
from csad_jax.models.teacher import Teacher, TeacherStats

log = logging.getLogger("csad_jax")

Q_START, Q_END = 0.9, 0.995
MAP_SCALE = 0.1  # hard-coded in the official map normalisation
MIN_DENOMINATOR = 1e-6
VARIANTS = ("upsampled", "fused")


class LGSTNetworks(nnx.Module):
    """Teacher, local student and global student of the LGST branch."""

    def __init__(
        self,
        teacher: Teacher,
        local_student: LocalStudent,
        global_student: GlobalStudent,
    ):
        self.teacher = teacher
        self.local_student = local_student
        self.global_student = global_student


@struct.dataclass
class MapQuantiles:
    """Quantiles of the validation maps used to normalise the anomaly maps.

    Attributes:
      local_start, local_end: q0.9 and q0.995 of M_local (float32 scalars).
      global_start, global_end: q0.9 and q0.995 of M_global.
    """

    local_start: jax.Array
    local_end: jax.Array
    global_start: jax.Array
    global_end: jax.Array


def raw_maps(
    nets: LGSTNetworks, teacher_stats: TeacherStats, images: jax.Array
) -> dict[str, jax.Array]:
    """Unnormalised local and global anomaly maps (eval mode, no dropout).

    Args:
      nets: the LGST networks.
      teacher_stats: teacher channel statistics.
      images: [B, H, W, 3] ImageNet-normalised.

    Returns:
      {"map_local": [B, H/4, W/4], "map_global": [B, H/4, W/4]}.
    """
    t = teacher_stats.normalize(nets.teacher(images)["proj"])
    student = nets.local_student(images)
    a = nets.global_student(images)
    return {
        "map_local": jnp.mean(jnp.square(t - student["local_head"]), axis=-1),
        "map_global": jnp.mean(jnp.square(a - student["global_head"]), axis=-1),
    }


def exact_quantiles(values: np.ndarray, qs) -> np.ndarray:
    """Linear-interpolation quantiles of all values, in float64 (no subsampling)."""
    return np.quantile(np.asarray(values, np.float64).ravel(), qs, method="linear")


def fit_map_quantiles(
    maps_local: Iterable[np.ndarray], maps_global: Iterable[np.ndarray]
) -> MapQuantiles:
    """q0.9 and q0.995 over all pixels of all validation maps (spec §5.6).

    Args:
      maps_local, maps_global: arrays (or lists of batches) of grid maps [N, h, w].

    Returns:
      MapQuantiles; a warning is logged for a denominator <= 1e-6, whose map
      is then left unnormalised at scoring time (as official).
    """
    out = {}
    for name, maps in (("local", maps_local), ("global", maps_global)):
        values = np.concatenate([np.ravel(np.asarray(m)) for m in _as_list(maps)])
        if values.size == 0:
            raise ConfigError("map quantiles need at least one validation image")
        start, end = exact_quantiles(values, (Q_START, Q_END))
        if end - start <= MIN_DENOMINATOR:
            log.warning(
                "%s map quantiles %.3g..%.3g too close: map left unnormalised",
                name,
                start,
                end,
            )
        out[f"{name}_start"] = jnp.float32(start)
        out[f"{name}_end"] = jnp.float32(end)
    return MapQuantiles(**out)


def _as_list(maps) -> list:
    return [maps] if isinstance(maps, np.ndarray | jax.Array) else list(maps)


def _normalize(m: jax.Array, start: jax.Array, end: jax.Array) -> jax.Array:
    denom = end - start
    safe = jnp.where(denom > MIN_DENOMINATOR, denom, 1.0)
    return jnp.where(denom > MIN_DENOMINATOR, MAP_SCALE * (m - start) / safe, m)


def normalize_maps(
    maps: dict[str, jax.Array],
    quantiles: MapQuantiles,
    image_size: tuple[int, int],
    variant: str = "upsampled",
) -> dict[str, jax.Array]:
    """Normalised maps, combined anomaly map and image score.

    Args:
      maps: {"map_local", "map_global"}: [B, h, w] raw grid maps.
      quantiles: validation map quantiles.
      image_size: (H, W) of the input images (used by "upsampled").
      variant: "upsampled" (resize to H x W, then max) or "fused" (grid max).

    Returns:
      {"map_local", "map_global", "anomaly_map"}: [B, H, W] ("upsampled") or
      [B, h, w] ("fused"); "pred_score": [B].
    """
    if variant not in VARIANTS:
        raise ConfigError(f"LGST score variant {variant!r} not in {VARIANTS}")
    q = quantiles
    out = {
        "map_local": _normalize(maps["map_local"], q.local_start, q.local_end),
        "map_global": _normalize(maps["map_global"], q.global_start, q.global_end),
    }
    if variant == "upsampled":
        for key in out:
            out[key] = resize_bilinear(out[key][..., None], tuple(image_size))[..., 0]
    out["anomaly_map"] = out["map_local"] + out["map_global"]
    out["pred_score"] = jnp.max(out["anomaly_map"], axis=(1, 2))
    return out


def lgst_score(
    nets: LGSTNetworks,
    teacher_stats: TeacherStats,
    quantiles: MapQuantiles,
    images: jax.Array,
    variant: str = "upsampled",
) -> dict[str, jax.Array]:
    """Anomaly maps and image scores of the LGST branch (usable under nnx.jit).

    Args:
      images: [B, H, W, 3] ImageNet-normalised.

    Returns:
      see `normalize_maps`.
    """
    maps = raw_maps(nets, teacher_stats, images)
    return normalize_maps(maps, quantiles, images.shape[1:3], variant)


class LGSTModel:
    """A fitted LGST branch: networks, teacher statistics and map quantiles.

    Args:
      nets: the trained networks.
      teacher_stats: teacher channel statistics.
      quantiles: validation map quantiles (None until fitted).
      variant: default scoring variant ("upsampled" or "fused").
    """

    def __init__(self, nets, teacher_stats, quantiles=None, variant="upsampled"):
        if variant not in VARIANTS:
            raise ConfigError(f"LGST score variant {variant!r} not in {VARIANTS}")
        self.nets = nets
        self.teacher_stats = teacher_stats
        self.quantiles = quantiles
        self.variant = variant
        self._graphdef, self._state = nnx.split(nets)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _raw(self, state, stats, images):
        return raw_maps(nnx.merge(self._graphdef, state), stats, images)

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _score(self, state, stats, quantiles, variant, images):
        nets = nnx.merge(self._graphdef, state)
        return lgst_score(nets, stats, quantiles, images, variant)

    def maps(self, images) -> dict[str, jax.Array]:
        """Raw grid maps (see `raw_maps`) of ImageNet-normalised images."""
        return self._raw(self._state, self.teacher_stats, jnp.asarray(images))

    def fit_quantiles(self, image_batches: Iterable) -> MapQuantiles:
        """Fits and stores map quantiles on batches of validation images."""
        local, glob = [], []
        for images in image_batches:
            maps = self.maps(images)
            local.append(np.asarray(maps["map_local"]))
            glob.append(np.asarray(maps["map_global"]))
        self.quantiles = fit_map_quantiles(local, glob)
        return self.quantiles

    def score(self, images, variant: str | None = None) -> dict[str, jax.Array]:
        """Jitted `lgst_score` of ImageNet-normalised images [B, H, W, 3]."""
        if self.quantiles is None:
            raise ConfigError("LGST map quantiles are not fitted yet")
        variant = variant or self.variant
        if variant not in VARIANTS:
            raise ConfigError(f"LGST score variant {variant!r} not in {VARIANTS}")
        return self._score(
            self._state,
            self.teacher_stats,
            self.quantiles,
            variant,
            jnp.asarray(images),
        )
