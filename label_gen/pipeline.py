"""`generate_pseudo_labels`: proposals -> features -> clusters -> label files.

Stages (each resumable): per-image proposals and per-image component features
are cached under `<out>/<category>/cache/<stage>-<settings hash>/<stem>.npz`
together with the identity of the image they came from; clustering and
filtering are fast and rerun; the label files are written last.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from csad_jax.data.image_io import read_rgb
from csad_jax.errors import DataError
from csad_jax.provenance import package_versions
from label_gen import output
from label_gen.clustering import (
    class_histograms,
    cluster_components,
    filter_label_maps,
    remap_labels,
)
from label_gen.features import FeatureExtractor, component_features
from label_gen.output import CategoryOutput, InputImage
from label_gen.prompts import unmatched_background
from label_gen.refine import Proposals, regions_from_id_map
from label_gen.settings import LabelSettings

PREVIEW_IMAGES = 8
VERSION_PACKAGES = (
    "csad-jax", "numpy", "scipy", "scikit-learn", "scikit-image", "pillow", "jax",
    "flax", "torch", "torchvision", "segment-anything", "groundingdino-py",
    "recognize-anything", "timm",
)  # fmt: skip


@dataclass
class Backend:
    """How proposals and features are made; models are built only when needed."""

    make_proposer: Callable[[], Callable[[np.ndarray], Proposals]]
    make_extractor: Callable[[], FeatureExtractor]
    identity: dict = field(default_factory=dict)  # models/weights, hashed


class _Lazy:
    """Build an object on first use."""

    def __init__(self, factory):
        self._factory, self._obj = factory, None

    def get(self):
        """The object, built on the first call."""
        if self._obj is None:
            self._obj = self._factory()
        return self._obj


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the labels."""
    return package_versions(VERSION_PACKAGES)


def _stage_keys(settings: LabelSettings, identity: dict) -> tuple[str, str]:
    """Cache keys of the proposal and feature stages (only what they depend on)."""
    s = settings.to_dict()
    used = ("grounding", "sam") if settings.backend == "foundation" else ("offline",)
    keys = ("backend", "mode", "use_grounding_filter", "min_component_frac", *used)
    prop = {k: s[k] for k in keys}
    prop["identity"] = identity.get("proposals", {})
    feat = {
        "proposals": prop,
        "features": s["features"],
        "identity": identity.get("features", {}),
    }
    return output.stage_key("proposals", prop), output.stage_key("features", feat)


def _proposal_stage(images, ids, folder: Path, proposer: _Lazy, progress: bool):
    """Compute (or reuse) every image's proposals."""
    for img in tqdm(images, desc="proposals", disable=not progress, leave=False):
        path = folder / f"{img.stem}.npz"
        cached = output.load_npz(path)
        if cached is not None and str(cached.get("source")) == ids[img.stem]:
            continue
        props = proposer.get()(read_rgb(img.path))
        output.save_npz(
            path,
            components=props.components,
            instances=props.instances,
            background=props.background,
            info=np.array(json.dumps(props.info)),
            source=np.array(ids[img.stem]),
        )


def _load_proposals(folder: Path, stem: str) -> Proposals:
    """Read one image's cached proposals."""
    data = output.load_npz(folder / f"{stem}.npz")
    if data is None:
        raise DataError(f"proposal cache {folder / stem}.npz vanished during the run")
    info = json.loads(str(data["info"]))
    return Proposals(data["components"], data["instances"], data["background"], info)


def _feature_stage(images, ids, folders, settings, extractor: _Lazy, progress):
    """Compute (or reuse) every image's component features and areas."""
    prop_dir, feat_dir = folders
    for img in tqdm(images, desc="features", disable=not progress, leave=False):
        path = feat_dir / f"{img.stem}.npz"
        cached = output.load_npz(path)
        if cached is not None and str(cached.get("source")) == ids[img.stem]:
            continue
        props = _load_proposals(prop_dir, img.stem)
        regions = regions_from_id_map(props.components, settings.min_component_frac)
        image = read_rgb(img.path)
        if image.shape[:2] != props.components.shape:
            raise DataError(f"{img.path} changed size during the run")
        feats = (
            component_features(image, regions, extractor.get(), settings.features)
            if regions
            else np.zeros((0, 0), np.float32)
        )
        n_pix = image.shape[0] * image.shape[1]
        output.save_npz(
            path,
            features=feats,
            areas=np.array([r.area / n_pix for r in regions], np.float64),
            source=np.array(ids[img.stem]),
        )


@dataclass
class ClusterResult:
    """Per-component final classes and the per-image bookkeeping."""

    classes: list[np.ndarray]  # per image: class 0..N_cls per component
    num_classes: int
    labelled: list[int]
    class_area_mean: list[float]
    stats: dict


def with_minimum(
    labelled: list[int], ranking, has_class: np.ndarray, minimum: int
) -> list[int]:
    """Labelled image indices, topped up to `minimum` from `ranking` if short.

    Args:
      labelled: indices chosen by the official rule (ascending).
      ranking: [N] all image indices, closest to the largest cluster's mean first.
      has_class: [N] bool, the image has at least one kept class pixel.
      minimum: wanted count (0 = official rule unchanged).

    Returns:
      ascending indices: `labelled` plus the closest other images with a class,
      until there are `minimum` (or no more such images).
    """
    if len(labelled) >= minimum:
        return labelled
    chosen = set(labelled)
    extra = [int(i) for i in ranking if has_class[i] and int(i) not in chosen]
    return sorted(chosen.union(extra[: minimum - len(labelled)]))


def _cluster_stage(feat_dir: Path, images, settings: LabelSettings) -> ClusterResult:
    """MeanShift, alpha filter, HDBSCAN map filtering, class pruning."""
    per_image = [output.load_npz(feat_dir / f"{img.stem}.npz") for img in images]
    if any(d is None for d in per_image):
        raise DataError(f"feature cache in {feat_dir} vanished during the run")
    counts = [len(d["areas"]) for d in per_image]
    with_feats = [d["features"] for d in per_image if len(d["areas"])]
    feats = np.concatenate(with_feats) if with_feats else np.zeros((0, 1), np.float32)
    index = np.repeat(np.arange(len(images)), counts)
    areas = np.concatenate([d["areas"] for d in per_image])
    n = len(images)
    clusters = cluster_components(feats, n, settings.clustering)
    hist = class_histograms(index, clusters.labels, areas, n)
    mf = filter_label_maps(hist, settings.clustering)
    final = remap_labels(clusters.labels, mf.kept_labels)
    class_hist = hist[:, mf.kept_labels] if len(mf.kept_labels) else np.zeros((n, 0))
    has_class = class_hist.sum(axis=1) > 0
    # NOTE: images without any kept class pixel (no proposals, no detections,
    # everything background) are never labelled, whatever HDBSCAN says.
    labelled = [int(i) for i in mf.labelled if has_class[i]]
    by_rule = len(labelled)
    minimum = settings.clustering.min_labelled
    labelled = with_minimum(labelled, mf.ranking, has_class, minimum)
    mean = (
        class_hist[mf.largest_cluster].mean(axis=0) if len(mf.largest_cluster) else []
    )
    stats = {
        "components": int(len(feats)),
        "components_per_image": counts,
        "meanshift_clusters": clusters.raw_count,
        "bandwidth": clusters.bandwidth,
        "bandwidth_estimate": clusters.estimate,
        "bandwidth_floored": clusters.floored,
        "alpha_min_members": int(settings.clustering.alpha_ratio * n),
        "largest_hdbscan_cluster": int(len(mf.largest_cluster)),
        "hdbscan_clusters": int(mf.hdbscan_labels.max(initial=-1) + 1),
        "labelled_by_rule": by_rule,
    }
    return ClusterResult(
        np.split(final, np.cumsum(counts)[:-1]),
        len(mf.kept_labels),
        labelled,
        [float(v) for v in mean],
        stats,
    )


def _paint(props: Proposals, classes: np.ndarray, min_frac: float) -> np.ndarray:
    """Class map: each component's pixels painted with its class (0 = none)."""
    out = np.zeros(props.components.shape, np.uint8)
    regions = regions_from_id_map(props.components, min_frac)
    for region, cls in zip(regions, classes, strict=True):
        if cls > 0:
            out[region.box][region.mask] = cls
    return out


def _instance_png(instances: np.ndarray) -> np.ndarray:
    """Instance ids as uint8 when they fit, else uint16."""
    return instances.astype(np.uint8 if instances.max(initial=0) < 256 else np.uint16)


def _write_stage(out: CategoryOutput, images, prop_dir, result, settings, progress):
    """Write maps/, instances/, background/ and return preview tiles."""
    labelled = set(result.labelled)
    tiles = []
    for i, img in enumerate(
        tqdm(images, desc="write", disable=not progress, leave=False)
    ):
        props = _load_proposals(prop_dir, img.stem)
        cmap = _paint(props, result.classes[i], settings.min_component_frac)
        output.write_png(out.root / "maps" / f"{img.stem}.png", cmap)
        output.write_png(
            out.root / "instances" / f"{img.stem}.png", _instance_png(props.instances)
        )
        background = props.background.astype(np.uint8) * 255
        output.write_png(out.root / "background" / f"{img.stem}.png", background)
        if len(tiles) < PREVIEW_IMAGES:
            tiles.append((read_rgb(img.path), cmap, i in labelled))
    return tiles


def _collect_warnings(prop_dir: Path, images, settings: LabelSettings) -> list[str]:
    """Run-level warnings (background phrases that never matched)."""
    if settings.backend != "foundation":
        return []
    hits = []
    for img in images:
        hits.extend(_load_proposals(prop_dir, img.stem).info.get("background_hits", []))
    return unmatched_background(settings.grounding.background, hits)


def few_labelled_threshold(n_images: int) -> int:
    """Fewer labelled images than this draws a warning: max(4, 10 %), <= N."""
    return min(n_images, max(4, math.ceil(0.1 * n_images)))


def _input_notes(ids: dict[str, str]) -> list[str]:
    """A warning when training images are byte-identical copies of each other."""
    digests = [identity.rsplit(":", 1)[-1] for identity in ids.values()]
    copies = len(digests) - len(set(digests))
    if not copies:
        return []
    return [
        f"{copies} of {len(digests)} training images are exact copies of another "
        "one; copies add nothing to the clustering"
    ]


def _cluster_notes(result: ClusterResult, n_images: int) -> list[str]:
    """Warnings about the bandwidth floor and few labelled images."""
    notes, stats = [], result.stats
    if stats["bandwidth_floored"]:
        notes.append(
            f"automatic MeanShift bandwidth {stats['bandwidth_estimate']:.3g} was "
            f"raised to its floor {stats['bandwidth']:.3g} (a fraction of the feature "
            "spread): "
            "the training images look (near-)identical, so component classes "
            "cannot be told apart by their variation; check the images or give "
            "--bandwidth"
        )
    k = len(result.labelled)
    if k > stats.get("labelled_by_rule", k):
        notes.append(
            f"the official rule labelled only {stats['labelled_by_rule']} training "
            f"images; the next closest to the largest cluster's mean were added up "
            f"to {k} (min_labelled, docs/fidelity.md)"
        )
    if result.num_classes and 0 < k < few_labelled_threshold(n_images):
        notes.append(
            f"only {k} of {n_images} training images are labelled (official rule: "
            "half of the largest HDBSCAN cluster of class histograms, here "
            f"{stats['largest_hdbscan_cluster']} images); the segmentor sees few "
            "labelled maps: more training images help"
        )
    return notes


def _images(n: int) -> str:
    """'1 training image' / 'n training images'."""
    return f"{n} training image{'' if n == 1 else 's'}"


def unusable_reason(result: ClusterResult, n_images: int) -> str | None:
    """Why these labels cannot train a segmentor (None if they can)."""
    stats = result.stats
    if stats["components"] == 0:
        return (
            f"no component was found in any of the {_images(n_images)} "
            "(blank, uniform or tiny images?); check the images"
        )
    if result.num_classes == 0:
        return (
            f"no component class survived filtering ({stats['components']} "
            f"components in {stats['meanshift_clusters']} MeanShift clusters, none "
            f"with >= {stats['alpha_min_members']} members and enough area); check "
            "the images / try --bandwidth"
        )
    if not result.labelled:
        return (
            f"no training image was labelled ({_images(n_images)}; the map filter "
            "labels half of the largest HDBSCAN cluster of "
            f"{stats['largest_hdbscan_cluster']}); give more training images"
        )
    return None


def _labels_meta(images, result: ClusterResult, settings, notes, extra) -> dict:
    """The labels.json content ("usable" false with a reason when unusable)."""
    labelled = {images[i].stem for i in result.labelled}
    reason = unusable_reason(result, len(images))
    return {
        "format": output.FORMAT,
        "complete": True,
        "usable": reason is None,
        "unusable_reason": reason,
        "category": settings.category,
        "num_classes": result.num_classes,
        "labelled": sorted(labelled),
        "unlabelled": sorted(img.stem for img in images if img.stem not in labelled),
        "class_area_mean": result.class_area_mean,
        "backend": settings.backend,
        "versions": versions(),
        "stats": result.stats,
        "warnings": notes,
        **extra,
    }


def _run_stages(out, images, ids, settings, backend, progress) -> tuple:
    """Proposals, features, clustering, label images; (result, notes)."""
    prop_key, feat_key = _stage_keys(settings, backend.identity)
    out.prune_cache([prop_key, feat_key])
    prop_dir, feat_dir = out.stage_dir(prop_key), out.stage_dir(feat_key)
    _proposal_stage(images, ids, prop_dir, _Lazy(backend.make_proposer), progress)
    extractor = _Lazy(backend.make_extractor)
    _feature_stage(images, ids, (prop_dir, feat_dir), settings, extractor, progress)
    result = _cluster_stage(feat_dir, images, settings)
    if result.num_classes > 255:
        raise DataError(f"{result.num_classes} classes do not fit a uint8 class map")
    tiles = _write_stage(out, images, prop_dir, result, settings, progress)
    sheet = output.preview_sheet(tiles, result.num_classes)
    output.write_png(out.root / "preview.png", sheet)
    notes = _collect_warnings(prop_dir, images, settings)
    notes += _input_notes(ids) + _cluster_notes(result, len(images))
    return result, notes


def _warn(category: str, notes) -> None:
    """Emit each note as a UserWarning."""
    for note in notes:
        warnings.warn(f"{category}: {note}", stacklevel=3)


def generate_pseudo_labels(
    images: Sequence[InputImage],
    out_root: str | Path,
    settings: LabelSettings,
    backend: Backend,
    progress: bool = True,
) -> dict:
    """Generate (or resume, or reuse) one category's semantic pseudo-labels.

    Output that cannot train a segmentor (no class, no labelled image) is
    still written completely, with "usable": false and an "unusable_reason"
    (the reader refuses it); callers check "usable".

    Args:
      images: the category's normal training images (train/good only).
      out_root: output root; files go to `<out_root>/<category>/`.
      settings: the category's LabelSettings.
      backend: proposal and feature models (built only if something is missing).
      progress: show a progress bar per stage.

    Returns:
      The labels.json content.

    Raises:
      ConfigError: the category folder is a file path, a dataset category, or
        holds files label_gen did not write.
    """
    images = sorted(images, key=lambda img: img.stem)
    if not images:
        raise DataError(f"no training images for category {settings.category}")
    out = CategoryOutput(Path(out_root), settings.category)
    out.check_target()
    ids = output.input_identities(images)
    meta_settings = {"label_settings": settings.to_dict(), "models": backend.identity}
    fp = output.fingerprint(meta_settings, ids)
    stems = [img.stem for img in images]
    if out.is_current(fp, stems):
        meta = out.read_labels()
        _warn(settings.category, meta.get("warnings", []))
        return meta
    out.clear_outputs(out.claim(stems))
    result, notes = _run_stages(out, images, ids, settings, backend, progress)
    _warn(settings.category, notes)
    extra = {"settings": meta_settings, "fingerprint": fp, "inputs": ids}
    out.write_marker(stems)  # files of other stems were removed by clear_outputs
    output.write_json(
        out.labels_path(), _labels_meta(images, result, settings, notes, extra)
    )
    return out.read_labels()
