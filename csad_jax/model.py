"""The fitted CSAD model: fused inference, calibration state, model directory.

One backbone pass (`layer1..layer3`) feeds both branches (method-spec §8, §10):
the segmentor decodes layer1 + layer3 into a component map whose class and
patch histograms are scored by Mahalanobis distance (patch histogram branch);
the teacher projects layer2 + layer3 (paper preset; layer1 + layer2 in the fast
preset), and the local and global students give
the LGST anomaly maps. Each branch score is z-normalised with trimmed
statistics of its validation scores and the two are summed (spec §6).

Everything fitted lives in one model directory `<run>/model/`:
`model.json` (readable: config, class count, backbone identity and weights
hash, calibration numbers, versions; written last, `"complete": true`) and
`arrays/` (Orbax: decoder weights and BatchNorm statistics, teacher projection,
student weights, teacher statistics, map quantiles, histogram Gaussians,
detector and branch statistics). `load_model(run_dir)` rebuilds the model in a
fresh process; the backbone is reloaded from its documented source and must
hash to the recorded value.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from tqdm.auto import tqdm

from csad_jax import lgst, score_fusion
from csad_jax.backbones import load_backbone
from csad_jax.config import BackboneConfig, CSADConfig
from csad_jax.data.image_io import is_hw_pair
from csad_jax.errors import CheckpointError, ConfigError, CSADError
from csad_jax.inference_opt import optimized_copy
from csad_jax.lgst import LGSTNetworks, MapQuantiles
from csad_jax.models.layers import resize_bilinear
from csad_jax.models.segmentor import ComponentSegmentor, SegmentationDecoder
from csad_jax.models.teacher import Buffer, TeacherStats
from csad_jax.patch_histogram import HistogramGaussian, PatchHistogramScorer
from csad_jax.provenance import package_versions
from csad_jax.score_fusion import TrimmedStats
from csad_jax.train_lgst import build_lgst
from csad_jax.training import Checkpointer

MODEL_DIR = "model"
MODEL_JSON = "model.json"
ARRAYS_DIR = "arrays"
FORMAT_VERSION = 1
BRANCHES = ("patch_histogram", "lgst")
VERSION_PACKAGES = ("csad-jax", "jax", "jaxlib", "flax", "numpy", "orbax-checkpoint")


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------


@struct.dataclass
class FusionStats:
    """Trimmed statistics of the two branch scores on validation images."""

    patch_histogram: TrimmedStats
    lgst: TrimmedStats


@struct.dataclass
class Calibration:
    """Every fitted statistic the fused inference reads (a pytree).

    Attributes:
      teacher_stats: teacher channel mean/std [1, 1, 1, D].
      quantiles: LGST validation map quantiles.
      scorer: patch histogram Gaussians and per-detector statistics.
      fusion: branch statistics (None until calibrated).
    """

    teacher_stats: TeacherStats
    quantiles: MapQuantiles
    scorer: PatchHistogramScorer
    fusion: FusionStats | None = None


class FusedNetworks(nnx.Module):
    """The shared backbone, the segmentation decoder and the LGST networks."""

    def __init__(self, backbone, decoder: SegmentationDecoder, nets: LGSTNetworks):
        self.backbone = backbone
        self.decoder = decoder
        self.lgst = nets


# ---------------------------------------------------------------------------
# Fused forward pass
# ---------------------------------------------------------------------------


def _stages(config: CSADConfig) -> tuple[str, ...]:
    wanted = set(config.segmentor.stages) | set(config.lgst.teacher_stages)
    return tuple(sorted(wanted))


def forward_raw(
    nets: FusedNetworks, calib: Calibration, images: jax.Array, config: CSADConfig
) -> dict[str, jax.Array]:
    """Both branches from one backbone pass, before score normalisation.

    Args:
      nets: the fused networks.
      calib: statistics (only teacher stats, quantiles, Gaussians are read).
      images: [B, S, S, 3] float32, ImageNet-normalised.
      config: the run configuration (stages, score variant).

    Returns:
      {"segmentation": int32 [B, S, S], "distances": [B, G] Mahalanobis
      distance per histogram grid, "lgst": [B] raw LGST score,
      "anomaly_map": [B, S, S] combined normalised LGST map}.
    """
    b, h, w, _ = images.shape
    feats = nets.backbone(images, stages=_stages(config))
    low, high = (feats[s] for s in config.segmentor.stages)
    logits = nets.decoder(low, high, (h, w), train=False)
    segmentation = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    distances = calib.scorer.raw_scores(segmentation)
    teacher = nets.lgst.teacher
    t = calib.teacher_stats.normalize(teacher.head(feats, (h // 4, w // 4)))
    student = nets.lgst.local_student(images)
    a = nets.lgst.global_student(images)
    maps = {
        "map_local": jnp.mean(jnp.square(t - student["local_head"]), axis=-1),
        "map_global": jnp.mean(jnp.square(a - student["global_head"]), axis=-1),
    }
    scored = lgst.normalize_maps(
        maps, calib.quantiles, (h, w), config.lgst.score_variant
    )
    amap = scored["anomaly_map"]
    if amap.shape[1:] != (h, w):
        amap = resize_bilinear(amap[..., None], (h, w))[..., 0]
    return {
        "segmentation": segmentation,
        "distances": jnp.stack([distances[g] for g in calib.scorer.grids], axis=1),
        "lgst": scored["pred_score"],
        "anomaly_map": amap,
    }


def fuse_scores(calib: Calibration, raw: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Branch scores and the fused score from `forward_raw` outputs.

    Returns:
      raw plus "patch_histogram" [B] (sum of z-normalised detector distances)
      and "fused" [B] (sum of z-normalised branch scores).
    """
    scorer = calib.scorer
    ph = score_fusion.fuse(
        {g: raw["distances"][:, j] for j, g in enumerate(scorer.grids)},
        dict(zip(scorer.grids, scorer.stats, strict=True)),
    )
    fused = score_fusion.normalize(ph, calib.fusion.patch_histogram)
    fused = fused + score_fusion.normalize(raw["lgst"], calib.fusion.lgst)
    return {**raw, "patch_histogram": ph, "fused": fused}


def make_inference_fn(nets: FusedNetworks, config: CSADConfig, *, fused: bool = True):
    """A pure `fn(state, calib, images) -> outputs` and the networks' state.

    The graph definition is closed over (never hashed); `state` is the
    networks' full nnx state. With `fused=False` the function returns the
    `forward_raw` outputs only (used for calibration).
    """
    graphdef, state = nnx.split(nets)

    def fn(state, calib: Calibration, images: jax.Array) -> dict[str, jax.Array]:
        merged = nnx.merge(graphdef, state)
        raw = forward_raw(merged, calib, images, config)
        return fuse_scores(calib, raw) if fused else raw

    return fn, state


def batch_buckets(batch_size: int) -> tuple[int, ...]:
    """Compiled batch sizes: 1 (single images) and the configured batch."""
    return tuple(sorted({1, int(batch_size)}))


def run_batched(
    fn, images: np.ndarray, batch_size: int, desc: str | None = None
) -> dict[str, np.ndarray]:
    """Applies a jitted `fn(images)` in padded fixed-size batches.

    Args:
      fn: images [b, S, S, 3] -> dict of [b, ...] arrays, b in `batch_buckets`.
      images: float32 [N, S, S, 3] ImageNet-normalised.
      batch_size: the largest bucket.
      desc: show a progress bar (with ETA) with this label.

    Returns:
      dict of numpy [N, ...] arrays.
    """
    n = images.shape[0]
    buckets = batch_buckets(batch_size)
    parts: dict[str, list[np.ndarray]] = {}
    starts = range(0, n, batch_size)
    bar = tqdm(starts, desc=desc, unit="batch", disable=desc is None, leave=False)
    for start in bar:
        chunk = images[start : start + batch_size]
        size = next(b for b in buckets if b >= len(chunk))
        pad = size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out = jax.device_get(fn(jnp.asarray(chunk)))
        for key, value in out.items():
            parts.setdefault(key, []).append(np.asarray(value)[: size - pad])
    return {k: np.concatenate(v) for k, v in parts.items()}


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class CSADModel:
    """A fitted CSAD model: networks, calibration and its description.

    Args:
      config: the run configuration.
      nets: the fused networks (backbone shared by segmentor and teacher).
      calib: the calibration state (fusion set once calibrated).
      meta: readable description (category, class count, backbone identity,
        training image size, fit timings).
    """

    def __init__(self, config: CSADConfig, nets: FusedNetworks, calib, meta):
        self.config = config
        self.nets = nets
        self.calib = calib
        self.meta = dict(meta)
        # Same weights, depthwise convolutions as shifted slices: XLA's CPU
        # depthwise convolution is several times slower (csad bench).
        self._fast_nets, _ = optimized_copy(nets)
        fn, self._state = make_inference_fn(self._fast_nets, config)
        self._jitted = jax.jit(fn)
        raw_fn, _ = make_inference_fn(self._fast_nets, config, fused=False)
        self._jitted_raw = jax.jit(raw_fn)

    @property
    def image_size(self) -> int:
        """Square model input side."""
        return self.config.image_size

    @property
    def num_classes(self) -> int:
        """N_cls, the component classes (the segmentor predicts N_cls + 1)."""
        return int(self.calib.scorer.num_classes) - 1

    def raw_outputs(
        self, images: np.ndarray, desc: str | None = None
    ) -> dict[str, np.ndarray]:
        """`forward_raw` outputs of ImageNet-normalised images [N, S, S, 3]."""
        self._check(images)
        run = lambda x: self._jitted_raw(self._state, self.calib, x)  # noqa: E731
        return run_batched(run, images, self.config.batch_size, desc)

    def predict(
        self, images: np.ndarray, desc: str | None = None
    ) -> dict[str, np.ndarray]:
        """Fused inference of ImageNet-normalised images.

        Args:
          images: float32 [N, S, S, 3], S = `image_size`, ImageNet-normalised.
          desc: progress-bar label (None: no bar).

        Returns:
          numpy arrays: "fused", "patch_histogram", "lgst" [N]; "distances"
          [N, G]; "anomaly_map" float32 [N, S, S]; "segmentation" int32
          [N, S, S].
        """
        if self.calib.fusion is None:
            raise ConfigError("the model is not calibrated yet")
        self._check(images)
        run = lambda x: self._jitted(self._state, self.calib, x)  # noqa: E731
        return run_batched(run, images, self.config.batch_size, desc)

    def _check(self, images) -> None:
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ConfigError(
                f"model input must be [N, {s}, {s}, 3], got {tuple(images.shape)}"
            )

    def inference_fn(self):
        """(pure fn(state, calib, images), state, calib) for export."""
        fn, state = make_inference_fn(self._fast_nets, self.config)
        return fn, state, self.calib


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------


def calibrate(
    model: CSADModel, val_images: np.ndarray, progress: bool = True
) -> CSADModel:
    """Fits detector and branch statistics on validation images (spec §4.4, §6).

    Args:
      model: a model whose scorer has Gaussians (stats may be None).
      val_images: float32 [N, S, S, 3] ImageNet-normalised validation/good.
      progress: show a progress bar.

    Returns:
      the model with per-detector stats and branch `FusionStats` set.
    """
    fusion_cfg = model.config.fusion
    raw = model.raw_outputs(val_images, desc="calibration" if progress else None)
    scorer = model.calib.scorer.calibrate(
        raw["segmentation"],
        low=fusion_cfg.low,
        high=fusion_cfg.high,
        std_floor=fusion_cfg.detector_std_floor,
        batch_size=model.config.histogram.batch_size,
    )
    ph = np.asarray(scorer.score(raw["segmentation"]))

    def fit(values):
        return score_fusion.fit_trimmed_stats(
            values, fusion_cfg.low, fusion_cfg.high,
            std_floor=fusion_cfg.branch_std_floor,
        )  # fmt: skip

    fusion = FusionStats(patch_histogram=fit(ph), lgst=fit(raw["lgst"]))
    calib = model.calib.replace(scorer=scorer, fusion=fusion)
    meta = {**model.meta, "validation_images": int(len(val_images))}
    return CSADModel(model.config, model.nets, calib, meta)


# ---------------------------------------------------------------------------
# Backbone identity
# ---------------------------------------------------------------------------


def build_backbone(cfg: BackboneConfig):
    """The frozen backbone named by the config (random init for tests)."""
    if cfg.random_init:
        return load_backbone(cfg.name, random_init=True, rngs=nnx.Rngs(cfg.seed))
    return load_backbone(cfg.name, weights=cfg.weights)


def weights_hash(module) -> str:
    """SHA-256 over every variable of a module (path names and bytes)."""
    digest = hashlib.sha256()
    flat = nnx.to_flat_state(nnx.state(module))
    for path, variable in sorted(flat, key=lambda kv: tuple(map(str, kv[0]))):
        value = np.ascontiguousarray(np.asarray(jax.device_get(variable[...])))
        digest.update(".".join(map(str, path)).encode())
        digest.update(str(value.dtype).encode() + str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def backbone_identity(cfg: BackboneConfig, backbone) -> dict[str, Any]:
    """What model.json records about the backbone."""
    return {
        "name": cfg.name,
        "weights": cfg.weights,
        "random_init": cfg.random_init,
        "sha256": weights_hash(backbone),
    }


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the scores."""
    return package_versions(VERSION_PACKAGES)


# ---------------------------------------------------------------------------
# Model directory
# ---------------------------------------------------------------------------


def _array_tree(model: CSADModel) -> dict[str, Any]:
    """Everything fitted as one pytree (the backbone is not saved)."""
    _, dec_params, dec_stats = nnx.split(model.nets.decoder, nnx.Param, nnx.BatchStat)
    _, lg_params, lg_buffers, _ = nnx.split(model.nets.lgst, nnx.Param, Buffer, ...)
    return {
        "decoder": {"params": dec_params, "batch_stats": dec_stats},
        "lgst": {"params": lg_params, "buffers": lg_buffers},
        "calibration": model.calib,
    }


def _calibration_record(calib: Calibration) -> dict[str, Any]:
    """The calibration numbers in readable form (for model.json)."""

    def stats(s: TrimmedStats) -> dict[str, float]:
        return {"mean": float(s.mean), "std": float(s.std)}

    q = calib.quantiles
    return {
        "map_quantiles": {
            k: float(getattr(q, k))
            for k in ("local_start", "local_end", "global_start", "global_end")
        },
        "detectors": {
            str(g): stats(s)
            for g, s in zip(calib.scorer.grids, calib.scorer.stats, strict=True)
        },
        "branches": {b: stats(getattr(calib.fusion, b)) for b in BRANCHES},
    }


def save_model(model: CSADModel, run_dir: str | Path) -> Path:
    """Writes `<run_dir>/model/` (arrays first, model.json last).

    Returns:
      the model directory.
    """
    if model.calib.fusion is None:
        raise ConfigError("refusing to save an uncalibrated model")
    directory = Path(run_dir) / MODEL_DIR
    check_replaceable(directory)
    (directory / MODEL_JSON).unlink(missing_ok=True)
    shutil.rmtree(directory / ARRAYS_DIR, ignore_errors=True)  # of an earlier save
    ckpt = Checkpointer(directory / ARRAYS_DIR, max_to_keep=1)
    ckpt.save(0, _array_tree(model))
    ckpt.close()
    record = {
        "format": FORMAT_VERSION,
        "complete": True,
        **model.meta,
        "num_classes": model.num_classes,
        "config": model.config.to_dict(),
        "calibration": _calibration_record(model.calib),
        "versions": versions(),
        "saved": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    tmp = directory / (MODEL_JSON + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(directory / MODEL_JSON)
    return directory


def check_replaceable(directory: Path) -> None:
    """CheckpointError unless `directory` is absent or holds only a csad model.

    A model folder may be replaced when it contains nothing but what
    `save_model` writes (model.json, its .tmp, arrays/) and its model.json, if
    any, is a csad-jax record; anything else may be the user's and is kept.
    """
    if not directory.exists():
        return
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is a file; move it away or use another --out"
        )
    written = {MODEL_JSON, MODEL_JSON + ".tmp", ARRAYS_DIR}
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in written)
    if (directory / MODEL_JSON).is_file():
        try:
            record = json.loads((directory / MODEL_JSON).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not (
            isinstance(record, dict)
            and record.get("format") == FORMAT_VERSION
            and {"config", "num_classes", "calibration"} <= set(record)
        ):
            foreign.append(MODEL_JSON)
    if foreign:
        raise CheckpointError(
            f"{directory} holds files csad did not write ({', '.join(foreign)}); "
            "move them away or use another --out"
        )


def model_directory(run_dir: str | Path) -> Path:
    """`<run_dir>/model`, or run_dir itself if it is a model directory."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL_JSON).exists():
        return run_dir
    return run_dir / MODEL_DIR


def read_model_json(run_dir: str | Path) -> dict[str, Any]:
    """The model.json of a run; CheckpointError when missing or broken."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    path = model_directory(run_dir) / MODEL_JSON
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} holds no fitted model ({path} missing): run `csad fit` "
            "to completion first"
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a csad-jax model (format 1)")
    if record.get("complete") is not True:
        raise CheckpointError(f"{path} is incomplete: saving did not finish")
    return record


def like_calibration(config: CSADConfig, num_classes: int) -> Calibration:
    """A calibration pytree for N_cls classes (values are placeholders)."""
    d, k = config.lgst.out_dim, num_classes + 1
    hist = config.histogram
    zero = TrimmedStats(mean=jnp.float32(0.0), std=jnp.float32(1.0))
    gaussians = tuple(
        HistogramGaussian(
            mean=jnp.zeros((g * g * k,), jnp.float32),
            precision=jnp.zeros((g * g * k,) * 2, jnp.float32),
        )
        for g in hist.grids
    )
    scorer = PatchHistogramScorer(
        k, tuple(hist.grids), hist.background, gaussians,
        tuple(zero for _ in hist.grids),
    )  # fmt: skip
    return Calibration(
        teacher_stats=TeacherStats(jnp.zeros((1, 1, 1, d)), jnp.ones((1, 1, 1, d))),
        quantiles=MapQuantiles(*(jnp.float32(0.0) for _ in range(4))),
        scorer=scorer,
        fusion=FusionStats(zero, zero),
    )


def build_networks(config: CSADConfig, backbone, num_classes: int) -> FusedNetworks:
    """Untrained fused networks for N_cls = `num_classes` around `backbone`."""
    segmentor = ComponentSegmentor(
        backbone,
        num_classes,
        config.segmentor.decoder,
        stages=config.segmentor.stages,
        rngs=nnx.Rngs(0),
    )
    return FusedNetworks(backbone, segmentor.decoder, build_lgst(config.lgst, backbone))


def load_model(run_dir: str | Path, backbone=None) -> CSADModel:
    """Restores a fitted model from `<run_dir>/model/` (or the model dir).

    Args:
      run_dir: a run directory written by `csad fit`.
      backbone: an already loaded backbone to reuse (must hash as recorded);
        None loads it as the config says.

    Raises:
      CheckpointError: the directory is missing, incomplete or corrupt, or the
        backbone weights differ from those the model was fitted with.
    """
    record = read_model_json(run_dir)
    directory = model_directory(run_dir)
    try:
        config = CSADConfig.from_dict(record["config"]).validate()
        num_classes = int(record["num_classes"])
        expected = record["backbone"]["sha256"]
        train_size = record.get("train_image_size")
        if train_size is not None and not is_hw_pair(train_size):
            raise ValueError(f"train_image_size {train_size!r} is not [H, W]")
    except (KeyError, TypeError, ValueError, CSADError) as err:
        raise CheckpointError(f"{directory / MODEL_JSON} is corrupt ({err})") from None
    backbone = build_backbone(config.backbone) if backbone is None else backbone
    if weights_hash(backbone) != expected:
        raise CheckpointError(
            f"backbone {config.backbone.name} weights differ from those the model in "
            f"{directory} was fitted with (sha256 {expected[:12]}...)"
        )
    nets = build_networks(config, backbone, num_classes)
    like = _array_tree(_Shell(nets, config, num_classes))
    advice = (
        f"delete {directory} and rerun csad fit with the same --out: it "
        "recalibrates from the fitted stages"
    )
    tree = Checkpointer(directory / ARRAYS_DIR, advice=advice).restore(like)
    nnx.update(nets.decoder, tree["decoder"]["params"], tree["decoder"]["batch_stats"])
    nnx.update(nets.lgst, tree["lgst"]["params"], tree["lgst"]["buffers"])
    meta = {k: v for k, v in record.items() if k not in _RECORD_ONLY}
    return CSADModel(config, nets, tree["calibration"], meta)


_RECORD_ONLY = ("format", "complete", "num_classes", "config", "calibration",
                "versions", "saved")  # fmt: skip


class _Shell:
    """Just enough of a CSADModel for `_array_tree` (restore template)."""

    def __init__(self, nets: FusedNetworks, config: CSADConfig, num_classes: int):
        self.nets = nets
        self.calib = like_calibration(config, num_classes)
