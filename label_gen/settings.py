"""Per-category settings for semantic pseudo-label generation (method-spec §2.1).

One frozen `LabelSettings` decides a category's pseudo-labels completely; it is
written into `labels.json` and hashed into the output fingerprint. The values for
the five MVTec LOCO categories are the official `configs/class_histogram/*.yaml`
ones. Every other category (the synthetic ones included) gets the generic
defaults below, chosen on synthetic train images only, with an automatic
MeanShift bandwidth; no per-category override was needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from csad_jax.errors import ConfigError

BACKENDS = ("offline", "foundation")
MODES = ("coarse", "fine")
OFFICIAL_FEATURE_BACKBONE = "wide_resnet50_2"

# Tags a tagging model (RAM++) proposes that are not components: scene words,
# verbs and adjectives (the paper removes e.g. "attach" and "connect").
STOP_TAGS = (
    "attach", "connect", "white", "black", "table", "floor", "background",
    "tray", "room", "stand", "hold", "lay", "sit", "close-up", "image",
)  # fmt: skip


@dataclass(frozen=True)
class GroundingSettings:
    """Text prompts and Grounding DINO thresholds (method-spec §2.1-2.2)."""

    prompts: tuple[str, ...] = ()
    background: tuple[str, ...] = ()
    stop_tags: tuple[str, ...] = STOP_TAGS
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    combine_masks: bool = False  # official `filter_by_combine` key (all False)


@dataclass(frozen=True)
class SamSettings:
    """SAM automatic-mask-generator settings, hard-coded officially (§2.3 step 1)."""

    points_per_side: int = 32
    points_per_batch: int = 16
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.96
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 1
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 500


@dataclass(frozen=True)
class OfflineSettings:
    """Proposals without foundation weights (colour over-segmentation)."""

    max_side: int = 512  # working resolution (long side); maps are upsampled
    smooth_sigma: float = 1.0  # Gaussian blur before colour analysis (pixels)
    border_frac: float = 0.04  # width of the border band that samples background
    background_quantile: float = 0.99  # of border colour distances, sets threshold
    background_margin: float = 4.0  # extra Lab distance above that quantile
    min_area_frac: float = 0.0008  # smallest component (fraction of the image)
    segment_scale: float = 300.0  # Felzenszwalb scale (higher = larger segments)
    merge_distance: float = 30.0  # colour distance below which neighbours merge
    lightness_weight: float = 0.5  # weight of L* in that distance (shading)
    hole_area_frac: float = 0.0005  # holes smaller than this are filled


@dataclass(frozen=True)
class FeatureSettings:
    """Component crops and rotation-averaged CNN features (§2.5)."""

    backbone: str = OFFICIAL_FEATURE_BACKBONE
    stage: str = "layer4"
    crop_size: int = 65
    rotations: int = 60
    rotation_endpoint: bool = True  # official linspace(0, 360, R) keeps 360
    batch_size: int = 16  # crops per CNN call (small: little padding waste)


@dataclass(frozen=True)
class ClusterSettings:
    """MeanShift, alpha filter, HDBSCAN filtering and class pruning (§2.6-2.7)."""

    bandwidth: float | None = None  # None: automatic (see clustering.py)
    auto_bandwidth_scale: float = 1.75  # automatic bandwidth = scale * estimate
    min_bandwidth_spread: float = 0.05  # automatic bandwidth >= this x RMS spread
    min_bandwidth_norm: float = 1e-3  # ... and >= this x RMS feature norm
    proj_dim: int = 512
    proj_std: float = 0.01
    projection_seed: int = 0
    alpha_ratio: float = 0.5
    hdbscan_ratio: float = 0.1
    good_ratio: float = 0.5
    filter_hist: bool = True
    min_class_area: float = 0.001
    # Not official: when the rule above labels fewer maps than this, the next
    # closest maps to the largest cluster's mean are labelled too (0 = off).
    min_labelled: int = 0


@dataclass(frozen=True)
class LabelSettings:
    """Everything that decides one category's pseudo-labels."""

    category: str
    backend: str = "offline"
    mode: str = "coarse"  # official `no_sam`: True = coarse, False = fine
    use_grounding_filter: bool = True
    min_component_frac: float = 0.001  # components <= 0.1 % of the image dropped
    grounding: GroundingSettings = field(default_factory=GroundingSettings)
    sam: SamSettings = field(default_factory=SamSettings)
    offline: OfflineSettings = field(default_factory=OfflineSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    clustering: ClusterSettings = field(default_factory=ClusterSettings)

    def to_dict(self) -> dict:
        """A JSON-ready copy (tuples become lists)."""
        return dataclasses.asdict(self)


def _phrases(caption: str) -> tuple[str, ...]:
    """Split an official '.'-separated caption into its phrases (kept in order)."""
    return tuple(" ".join(p.split()) for p in caption.split(".") if p.strip())


_LOCO: dict[str, dict] = {
    "breakfast_box": dict(
        mode="coarse", use_grounding_filter=True, box=0.25, text=0.2, bw=3.5,
        filter_hist=True,
        prompts="almond . apple . container . oatmeal . orange . banana . ",
        background="",
    ),
    "juice_bottle": dict(
        mode="fine", use_grounding_filter=False, box=0.3, text=0.3, bw=3.5,
        filter_hist=True,
        prompts=(
            "alcohol. apple juice. beverage. bottle. liquor. glass bottle. juice. "
            "lemonade. liquid. olive oil. orange juice. yellow banana. bottle. "
            "glass bottle. glass jar. jug. juice. liquid. milk beverage. bottle. "
            "cherry. condiment. liquor. glass bottle. honey. juice. liquid. "
            "maple syrup. sauce. syrup. tomato sauce."
        ),
        background="",
    ),
    "pushpins": dict(
        mode="coarse", use_grounding_filter=True, box=0.15, text=0.2, bw=3.5,
        filter_hist=False, prompts="pin . pushpin . drawing pin . ",
        background=" container .",
    ),
    "screw_bag": dict(
        mode="fine", use_grounding_filter=True, box=0.3, text=0.3, bw=3.0,
        filter_hist=True,
        prompts=(
            "metal bolts. metal hex nuts. metal washers. metal screws. zip-lock "
            "bag. screw. ring. metal circle. bag. bolt. container. nut. package. "
            "plastic. screw. tool."
        ),
        background="zip-lock bag",
    ),
    "splicing_connectors": dict(
        mode="coarse", use_grounding_filter=True, box=0.3, text=0.2, bw=4.0,
        filter_hist=False,
        prompts=(
            "attach. cable. connector. hook. electric outlet. plug. pole. socket. "
            "wire."
        ),
        background="",
    ),
}  # fmt: skip

LOCO_CATEGORIES = tuple(_LOCO)


def _loco_settings(category: str, backend: str, backbone: str) -> LabelSettings:
    """The official settings of one MVTec LOCO category."""
    cfg = _LOCO[category]
    grounding = GroundingSettings(
        prompts=_phrases(cfg["prompts"]),
        background=_phrases(cfg["background"]),
        box_threshold=cfg["box"],
        text_threshold=cfg["text"],
    )
    # NOTE: the official bandwidths are calibrated for wide_resnet50_2 layer4
    # features; with any other feature CNN the bandwidth is chosen automatically.
    bandwidth = cfg["bw"] if backbone == OFFICIAL_FEATURE_BACKBONE else None
    clustering = ClusterSettings(bandwidth=bandwidth, filter_hist=cfg["filter_hist"])
    return LabelSettings(
        category=category,
        backend=backend,
        mode=cfg["mode"],
        use_grounding_filter=cfg["use_grounding_filter"],
        grounding=grounding,
        clustering=clustering,
    )


def default_rotations(backend: str) -> int:
    """R: official 60; 8 for the offline backend (speed budget, see docs)."""
    return 60 if backend == "foundation" else 8


def settings_for(
    category: str,
    backend: str = "offline",
    backbone: str | None = None,
    rotations: int | None = None,
) -> LabelSettings:
    """The settings for `category` with `backend` and feature `backbone`.

    Args:
      category: a LOCO category, or any other name (generic settings with an
        automatic MeanShift bandwidth).
      backend: "offline" or "foundation".
      backbone: feature CNN; default wide_resnet50_2 for foundation, else
        efficientnet_lite0.
      rotations: R, the number of crop rotations; default `default_rotations`.

    Returns:
      A frozen LabelSettings.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backbone is None:
        backbone = "efficientnet_lite0"
    if category in _LOCO:
        base = _loco_settings(category, backend, backbone)
    else:
        base = LabelSettings(category=category, backend=backend)
    rot = default_rotations(backend) if rotations is None else int(rotations)
    if rot < 1:
        raise ConfigError(f"rotations must be >= 1, got {rot}")
    features = dataclasses.replace(
        base.features,
        backbone=backbone,
        rotations=rot,
        rotation_endpoint=backend == "foundation",
    )
    return dataclasses.replace(base, features=features)


def with_prompts(
    settings: LabelSettings, prompts: tuple[str, ...], background: tuple[str, ...]
) -> LabelSettings:
    """A copy of `settings` with other text prompts and background phrases."""
    grounding = dataclasses.replace(
        settings.grounding, prompts=tuple(prompts), background=tuple(background)
    )
    return dataclasses.replace(settings, grounding=grounding)
