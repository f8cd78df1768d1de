"""Semi-supervised training of the component segmentor (method-spec §3.3-3.6).

Each iteration takes a labelled batch (LSA + jitter on the host, the backbone
runs on the augmented images), an unlabelled batch (unaugmented, so its
backbone features may be cached) and one random labelled map per sample (the
histogram target). The supervised losses train from the first step; the
histogram and entropy terms join after `sup_only_epochs`. Both forward passes
run BatchNorm in training mode, so the running statistics follow the
unlabelled batch, as in the official code.

The step is one pure jitted function `train_step(state, batch, rng)`; the state
(decoder weights, BatchNorm statistics, Adam state, step) is checkpointed with
Orbax and training resumes automatically from the newest checkpoint in the
work directory. Data parallelism: batches are sharded over all local devices,
everything else is replicated. Model selection never looks at test data: the
model of the last epoch is kept; a held-back slice of labelled training images
is only monitored (mIoU against their pseudo-labels).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from csad_jax import training
from csad_jax.data.image_io import (
    normalize_imagenet,
    read_rgb,
    resize_nearest,
    resize_rgb,
)
from csad_jax.data.pseudo_labels import PseudoLabels, load_pseudo_labels
from csad_jax.errors import CheckpointError, ConfigError, DataError
from csad_jax.inference_opt import optimized_copy
from csad_jax.lsa import LSAConfig, augment_labelled
from csad_jax.models.segmentor import ComponentSegmentor, DecoderConfig
from csad_jax.segmentation_losses import LossWeights, segmentor_loss
from csad_jax.segmentation_metrics import miou

log = logging.getLogger("csad_jax")

RUN_FILE = "segmentor_run.json"


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SegmentorConfig:
    """Everything that controls segmentor training; defaults = official code.

    Attributes:
      preset: "paper" (official settings) or "fast" (CPU-friendly), or custom.
      backbone: backbone name for `load_backbone`.
      stages: (stride-4 stage, stride-16 stage) fed to the decoder.
      image_size: square training/inference resolution.
      decoder: decoder widths and BatchNorm settings.
      epochs: training epochs; one epoch = floor(N_labelled / batch) steps,
        but at least `min_steps_per_epoch`.
      min_steps_per_epoch: lower bound on steps per epoch (1 = official; the
        fast preset raises it so small labelled sets still train enough).
      sup_only_epochs: epochs with the supervised losses only.
      batch_size: labelled and unlabelled images per step (each).
      learning_rate, weight_decay, adam_b1, adam_b2, adam_eps: PyTorch Adam
        with coupled L2 weight decay, no schedule.
      loss_weights: the five loss weights and their convention.
      lsa: LSA and jitter settings.
      holdout_fraction: share of labelled images held back for monitoring
        (at least 1 image when > 0, never below one training batch).
      cache_unlabelled_features: compute the unlabelled images' backbone
        features once (they are never augmented) instead of every step.
      checkpoint_every_epochs: checkpoint period (the last epoch always saves).
      seed: seeds initialisation, sampling and augmentation.
    """

    preset: str = "paper"
    backbone: str = "wide_resnet50_2"
    stages: tuple[str, str] = ("layer1", "layer3")
    image_size: int = 256
    decoder: DecoderConfig = DecoderConfig()
    epochs: int = 120
    min_steps_per_epoch: int = 1
    sup_only_epochs: int = 50
    batch_size: int = 4
    learning_rate: float = 0.01
    weight_decay: float = 1e-5
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    loss_weights: LossWeights = LossWeights()
    lsa: LSAConfig = LSAConfig()
    holdout_fraction: float = 0.1
    cache_unlabelled_features: bool = False
    checkpoint_every_epochs: int = 10
    seed: int = 42

    @classmethod
    def paper(cls, **overrides) -> SegmentorConfig:
        """The official recipe (WideResNet-50-2, full-width decoder, 120 epochs)."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def fast(cls, **overrides) -> SegmentorConfig:
        """CPU preset: EfficientNet-Lite0 at 256 px, half-width decoder.

        40 epochs of at least 6 steps, 17 of them supervised-only (about the
        official 50/120 ratio); keeps the loss recipe, LSA and BatchNorm
        semantics; caches unlabelled features. Chosen on validation/good
        against the generator's true maps (experiments/eval_segmentor.py
        --split validation): 256 px because the stride-4 logit grid limits
        boundary accuracy (breakfast_tray test mIoU 0.964 at 128 px, 0.972 at
        192 px, 0.978 at 256 px); decoder widths 128 / 48 / 128 over 64 / 24 /
        64 (screw_kit 0.962 vs 0.955, connector_pair 0.949 vs 0.950); neither
        80 epochs nor a x0.1 learning-rate step at epoch 30 helped.
        """
        fast = cls(
            preset="fast",
            backbone="efficientnet_lite0",
            image_size=256,
            decoder=DecoderConfig(
                aspp_channels=128, low_channels=48, head_channels=128
            ),
            epochs=40,
            min_steps_per_epoch=6,
            sup_only_epochs=17,
            cache_unlabelled_features=True,
            checkpoint_every_epochs=10,
        )
        return dataclasses.replace(fast, **overrides)

    @property
    def min_labelled(self) -> int:
        """Labelled images training needs: one batch, plus one held back."""
        return self.batch_size + (self.holdout_fraction > 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (nested dataclasses become dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def validate(self) -> None:
        """Raises ConfigError on values training cannot use."""
        if min(self.batch_size, self.epochs, self.min_steps_per_epoch) < 1:
            raise ConfigError(
                "batch_size, epochs and min_steps_per_epoch must be >= 1, got "
                f"{self.batch_size}, {self.epochs}, {self.min_steps_per_epoch}"
            )
        if self.image_size < 32 or self.image_size % 16:
            raise ConfigError(
                f"image_size must be a multiple of 16 and >= 32, got {self.image_size}"
            )
        if not 0 <= self.sup_only_epochs <= self.epochs:
            raise ConfigError(
                f"sup_only_epochs {self.sup_only_epochs} not in [0, {self.epochs}]"
            )
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction {self.holdout_fraction} not in [0,1)")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SegmentorData:
    """Training arrays at model resolution (all uint8/int32/bool, host memory).

    Attributes:
      num_classes: N_cls.
      images: uint8 [N, S, S, 3] labelled training images.
      labels: uint8 [N, S, S] their pseudo-label maps.
      instances: int32 [N, S, S] their component instance ids.
      backgrounds: bool [N, S, S] their image backgrounds.
      unlabelled: uint8 [M, S, S, 3] unlabelled training images.
      holdout_images: uint8 [R, S, S, 3] held-back labelled images.
      holdout_labels: uint8 [R, S, S] their pseudo-labels.
      fingerprint: the pseudo-labels' fingerprint (recorded with the run).
    """

    num_classes: int
    images: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    backgrounds: np.ndarray
    unlabelled: np.ndarray
    holdout_images: np.ndarray
    holdout_labels: np.ndarray
    fingerprint: str = ""


def _holdout_count(n: int, cfg: SegmentorConfig) -> int:
    if cfg.holdout_fraction <= 0:
        return 0
    wanted = max(1, round(cfg.holdout_fraction * n))
    return max(0, min(wanted, n - cfg.batch_size))


def _load_labelled(labels: PseudoLabels, stem: str, path: Path, size: int):
    """Image and maps of one labelled stem at size x size."""
    image = read_rgb(path)
    maps = labels.read_labelled(stem)
    if maps.class_map.shape != image.shape[:2]:
        raise DataError(
            f"pseudo-label map of {stem} is {maps.class_map.shape}, image {path} "
            f"is {image.shape[:2]}: labels do not belong to these images"
        )
    return (
        resize_rgb(image, size),
        resize_nearest(maps.class_map, size),
        resize_nearest(maps.instances, size),
        resize_nearest(maps.background, size),
    )


def prepare_segmentor_data(
    cfg: SegmentorConfig, category_data, labels: PseudoLabels
) -> SegmentorData:
    """Loads train/good images and their pseudo-labels at model resolution.

    Args:
      cfg: configuration (image_size, holdout_fraction, batch_size, seed).
      category_data: `csad_jax.data.loco.CategoryData` of the category.
      labels: the category's validated pseudo-labels.

    Returns:
      the arrays of labelled, unlabelled and held-back images.

    Raises:
      DataError: a stem in labels.json is not a train/good image, or there
        are fewer labelled images than one batch.
    """
    by_stem = {s.stem: s.path for s in category_data.require_nonempty("train", "good")}
    unknown = [s for s in labels.labelled + labels.unlabelled if s not in by_stem]
    if unknown:
        raise DataError(
            f"{labels.directory}/labels.json names {unknown[0]}, which is not in "
            f"{category_data.path}/train/good: labels of another dataset?"
        )
    if len(labels.labelled) < cfg.min_labelled:
        held = " + held-back" if cfg.holdout_fraction > 0 else ""
        raise DataError(
            f"{labels.directory}: {len(labels.labelled)} labelled images, need at "
            f"least {cfg.min_labelled} (batch size {cfg.batch_size}{held})"
        )
    order = np.random.default_rng(cfg.seed).permutation(len(labels.labelled))
    n_hold = _holdout_count(len(order), cfg)
    hold = sorted(order[:n_hold])
    train = sorted(order[n_hold:])
    size = cfg.image_size
    load = [
        _load_labelled(labels, labels.labelled[i], by_stem[labels.labelled[i]], size)
        for i in train + hold
    ]
    imgs, maps, inst, bg = (np.stack(x) for x in zip(*load, strict=True))
    unl_stems = labels.unlabelled or tuple(labels.labelled[i] for i in train)
    if not labels.unlabelled:
        log.warning("no unlabelled images: the labelled ones stand in for them")
    unlabelled = np.stack([resize_rgb(read_rgb(by_stem[s]), size) for s in unl_stems])
    n = len(train)
    return SegmentorData(
        num_classes=labels.num_classes,
        images=imgs[:n],
        labels=maps[:n],
        instances=inst[:n].astype(np.int32),
        backgrounds=bg[:n],
        unlabelled=unlabelled,
        holdout_images=imgs[n:],
        holdout_labels=maps[n:],
        fingerprint=labels.fingerprint,
    )


def _normalise(images_u8: np.ndarray) -> np.ndarray:
    return normalize_imagenet(images_u8.astype(np.float32) / np.float32(255.0))


def _labelled_batch(data, idx, rng, cfg: SegmentorConfig) -> dict[str, np.ndarray]:
    """Augmented labelled batch plus one random labelled map per sample."""
    pairs = [
        augment_labelled(
            data.images[i],
            data.labels[i],
            data.instances[i],
            data.backgrounds[i],
            rng,
            cfg.lsa,
        )
        for i in idx
    ]
    rand = rng.integers(0, len(data.images), len(idx))
    return {
        "images_l": _normalise(np.stack([p[0] for p in pairs])),
        "labels_l": np.stack([p[1] for p in pairs]).astype(np.int32),
        "rand_gt": data.labels[rand].astype(np.int32),
    }


def _epoch_indices(n: int, steps: int, batch: int, rng) -> np.ndarray:
    """[steps, batch] indices from consecutive shuffles (each drops its tail).

    With fewer than `batch` items (possible for unlabelled images), indices are
    drawn with replacement instead.
    """
    per = n // batch
    if per == 0:
        return rng.integers(0, n, (steps, batch))
    perms = [rng.permutation(n)[: per * batch] for _ in range(math.ceil(steps / per))]
    return np.concatenate(perms).reshape(-1, batch)[:steps]


# ---------------------------------------------------------------------------
# Train step
# ---------------------------------------------------------------------------


def make_optimizer(cfg: SegmentorConfig) -> optax.GradientTransformation:
    """PyTorch Adam with coupled L2 (decay added to the gradient first)."""
    return _adam_l2(
        cfg.learning_rate, cfg.weight_decay, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps
    )


@functools.lru_cache(maxsize=8)
def _adam_l2(lr, wd, b1, b2, eps) -> optax.GradientTransformation:
    # Cached so equal settings give the same (static) optimizer object, which
    # lets a resumed or repeated run reuse the compiled train step.
    return optax.chain(
        optax.add_decayed_weights(wd),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale(-lr),
    )


def init_train_state(model: ComponentSegmentor, cfg: SegmentorConfig):
    """Train state of the decoder: params, BatchNorm stats in extra, Adam state."""
    _, params, stats = nnx.split(model.decoder, nnx.Param, nnx.BatchStat)
    return training.TrainState.create(
        params, make_optimizer(cfg), jax.random.key(cfg.seed), {"batch_stats": stats}
    )


def _forward(decoder_def, params, stats, feats, stages, size):
    """Training-mode decoder pass; returns logits and updated BN statistics."""
    decoder = nnx.merge(decoder_def, params, stats, copy=True)
    logits = decoder(feats[stages[0]], feats[stages[1]], size, train=True)
    return logits, nnx.state(decoder, nnx.BatchStat)


_STATIC = ("stages", "weights", "sup_only_steps")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _train_step(
    backbone, decoder, state, batch, rng, *, stages, weights, sup_only_steps
):
    # `backbone` and `decoder` are nnx Modules passed as pytrees: the backbone
    # weights are arguments (not constants) and the decoder only provides its
    # structure; equal structures reuse the compiled step across runs.
    del rng  # deterministic step, see make_train_step
    decoder_def = nnx.graphdef(decoder)
    size = batch["images_l"].shape[1:3]
    feats_l = backbone(batch["images_l"], stages=stages)
    if "images_u" in batch:
        feats_u = backbone(batch["images_u"], stages=stages)
    else:
        feats_u = {s: batch[f"feats_u_{s}"] for s in stages}
    unsup_on = (state.step >= sup_only_steps).astype(jnp.float32)

    def loss_fn(params):
        stats = state.extra["batch_stats"]
        logits_l, stats = _forward(decoder_def, params, stats, feats_l, stages, size)
        logits_u, stats = _forward(decoder_def, params, stats, feats_u, stages, size)
        total, parts = segmentor_loss(
            logits_l, batch["labels_l"], logits_u, batch["rand_gt"], weights, unsup_on
        )
        return total, (parts, stats, logits_l)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (parts, stats, logits_l)), grads = grad_fn(state.params)
    state = state.apply_gradients(grads)
    state = state.replace(extra={**state.extra, "batch_stats": stats})
    pred = jnp.argmax(logits_l, axis=-1)
    accuracy = jnp.mean((pred == batch["labels_l"]).astype(jnp.float32))
    return state, {"loss": total, **parts, "pixel_acc": accuracy}


def make_train_step(
    model: ComponentSegmentor, cfg: SegmentorConfig, steps_per_epoch: int, mesh=None
):
    """The jitted `train_step(state, batch, rng) -> (state, metrics)`.

    The batch holds "images_l" [B, S, S, 3] (normalised, augmented),
    "labels_l" int [B, S, S], "rand_gt" int [B, S, S], and either "images_u"
    [B, S, S, 3] or cached unlabelled features "feats_u_<stage>" [B, h, w, C].
    Labelled then unlabelled images go through the decoder in training mode
    (both update the BatchNorm statistics, as officially). `rng` is accepted
    for the shared step signature; this step draws nothing (augmentation
    happens on the host and the decoder has no dropout).

    Args:
      model: the segmentor; its backbone and decoder structure are bound.
      cfg: configuration (loss weights, supervised-only epochs).
      steps_per_epoch: to turn `sup_only_epochs` into a step count.
      mesh: if given, the backbone weights are replicated on it.
    """
    modules = (_fast_backbone(model), model.decoder)
    if mesh is not None:
        modules = training.replicate(modules, mesh)
    return functools.partial(
        _train_step,
        *modules,
        stages=model.stages,
        weights=cfg.loss_weights,
        sup_only_steps=cfg.sup_only_epochs * steps_per_epoch,
    )


def _fast_backbone(model: ComponentSegmentor):
    """A copy of the frozen backbone with fused depthwise convolutions.

    Same numbers up to float32 summation order, and EfficientNet-Lite runs
    about 4x faster on XLA's CPU backend (`csad_jax.inference_opt`). The
    backbone is never differentiated, so only the speed changes. The copy
    shares the weight arrays.
    """
    return optimized_copy(model.backbone)[0]


@functools.partial(jax.jit, static_argnames="stages")
def _predict(backbone, decoder, params, stats, images, *, stages):
    feats = backbone(images, stages=stages)
    decoder = nnx.merge(nnx.graphdef(decoder), params, stats, copy=True)
    logits = decoder(feats[stages[0]], feats[stages[1]], images.shape[1:3])
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def make_predict(model: ComponentSegmentor):
    """Jitted `predict(state, images) -> label maps` with running BN stats.

    Args:
      model: the segmentor whose decoder structure the state belongs to.

    Returns:
      a function (train state, images [B, S, S, 3] normalised) -> int32
      [B, S, S].
    """
    backbone = _fast_backbone(model)
    return lambda state, images: _predict(
        backbone,
        model.decoder,
        state.params,
        state.extra["batch_stats"],
        images,
        stages=model.stages,
    )


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------


def _batched(arrays: np.ndarray, batch: int):
    for start in range(0, len(arrays), batch):
        yield start, arrays[start : start + batch]


def cache_features(model: ComponentSegmentor, images_u8: np.ndarray, batch: int):
    """Backbone features of unlabelled images, computed once on the host.

    Args:
      model: the segmentor (its backbone and stages are used).
      images_u8: uint8 [M, S, S, 3].
      batch: images per backbone call.

    Returns:
      {stage: float32 [M, h, w, C]} numpy arrays.
    """
    backbone = _fast_backbone(model)
    parts = [
        _backbone_features(backbone, _normalise(chunk), stages=model.stages)
        for _, chunk in _batched(images_u8, batch)
    ]
    return {s: np.concatenate([np.asarray(p[s]) for p in parts]) for s in model.stages}


@functools.partial(jax.jit, static_argnames="stages")
def _backbone_features(backbone, images, *, stages):
    return backbone(images, stages=stages)


def holdout_miou(predict, state, data: SegmentorData, batch: int) -> float:
    """mIoU of the predictions on held-back images against their pseudo-labels."""
    if not len(data.holdout_images):
        return float("nan")
    preds = [
        np.asarray(predict(state, _normalise(chunk)))
        for _, chunk in _batched(data.holdout_images, batch)
    ]
    value, _ = miou(
        np.concatenate(preds), data.holdout_labels, num_classes=data.num_classes + 1
    )
    return value


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _check_run(workdir: Path, record: dict[str, Any]) -> None:
    """Writes the run description, or refuses to resume a different run."""
    path = workdir / RUN_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read {path}: {err}") from err
        if previous != record:
            raise CheckpointError(
                f"{workdir} holds a segmentor run with different "
                f"{', '.join(_changed(previous, record))}; use a new work directory"
            )
        return
    path.write_text(json.dumps(record, indent=1))


@dataclasses.dataclass
class _Loop:
    """What the epoch loop needs, bundled to keep functions short."""

    cfg: SegmentorConfig
    data: SegmentorData
    step_fn: Any
    predict: Any
    mesh: Any
    cached: dict[str, np.ndarray] | None
    steps_per_epoch: int


def _make_batch(loop: _Loop, idx_l, idx_u, rng) -> dict[str, np.ndarray]:
    batch = _labelled_batch(loop.data, idx_l, rng, loop.cfg)
    if loop.cached is None:
        batch["images_u"] = _normalise(loop.data.unlabelled[idx_u])
    else:
        batch.update({f"feats_u_{s}": f[idx_u] for s, f in loop.cached.items()})
    return batch


def _run_epoch(loop: _Loop, state, epoch: int, progress):
    """One epoch of steps; returns the state and the epoch's log record."""
    cfg, data, n = loop.cfg, loop.data, loop.steps_per_epoch
    rng = np.random.default_rng([cfg.seed, epoch])
    idx_l = _epoch_indices(len(data.images), n, cfg.batch_size, rng)
    idx_u = _epoch_indices(len(data.unlabelled), n, cfg.batch_size, rng)
    sums = None
    for i in range(n):
        batch = _make_batch(loop, idx_l[i], idx_u[i], rng)
        if loop.mesh is not None:
            batch = training.shard_batch(batch, loop.mesh)
        state, metrics = loop.step_fn(state, batch, state.rng)
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        step = epoch * n + i + 1
        if i + 1 < n:
            progress.update(step, metrics, cfg.learning_rate)
    means = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}}
    if len(data.holdout_images):
        means["holdout_miou"] = holdout_miou(loop.predict, state, data, cfg.batch_size)
    record = progress.update((epoch + 1) * n, means, cfg.learning_rate)
    return state, record


def train_segmentor(
    cfg: SegmentorConfig,
    model: ComponentSegmentor,
    data: SegmentorData,
    workdir: str | Path,
    *,
    mesh=None,
    show_progress: bool = True,
) -> tuple[ComponentSegmentor, list[dict[str, float]]]:
    """Trains `model.decoder` in place for `cfg.epochs`, resuming if possible.

    Args:
      cfg: configuration.
      model: a freshly built segmentor (its decoder gets the trained weights).
      data: arrays from `prepare_segmentor_data`.
      workdir: run folder (checkpoints, run description, JSONL log).
      mesh: data-parallel mesh (default: all local devices).
      show_progress: show the tqdm bar (the per-epoch log lines are logged
        either way).

    Returns:
      (the trained model, one record per epoch trained in this call).
    """
    cfg.validate()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    n = max(len(data.images) // cfg.batch_size, cfg.min_steps_per_epoch)
    if len(data.images) < cfg.batch_size or not len(data.unlabelled):
        raise DataError(
            f"need >= {cfg.batch_size} labelled and >= 1 unlabelled images, got "
            f"{len(data.images)} and {len(data.unlabelled)}"
        )
    _check_run(workdir, _run_record(cfg, data))
    mesh = training.data_mesh() if mesh is None else mesh
    state = init_train_state(model, cfg)
    ckpt = training.Checkpointer(
        workdir / "checkpoints",
        max_to_keep=2,
        save_every=cfg.checkpoint_every_epochs * n,
    )
    state = training.replicate(ckpt.restore_latest(state), mesh)
    cached = None
    if cfg.cache_unlabelled_features and int(state.step) < cfg.epochs * n:
        cached = cache_features(model, data.unlabelled, cfg.batch_size)
    loop = _Loop(
        cfg,
        data,
        make_train_step(model, cfg, n, mesh),
        make_predict(model),
        mesh,
        cached,
        n,
    )
    progress = training.Progress(
        cfg.epochs * n,
        start=int(state.step),
        batch_size=2 * cfg.batch_size,
        log_every=n,
        desc="segmentor",
        jsonl=workdir / "segmentor_log.jsonl",
        disable=not show_progress,
    )
    history = []
    try:
        for epoch in range(int(state.step) // n, cfg.epochs):
            state, record = _run_epoch(loop, state, epoch, progress)
            history.append(record)
            if ckpt.should_save((epoch + 1) * n, cfg.epochs * n):
                ckpt.save((epoch + 1) * n, state)
    finally:
        progress.close()
        ckpt.close()
    _load_into(model, state)
    return model, history


def _run_record(cfg: SegmentorConfig, data: SegmentorData) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "num_classes": data.num_classes,
        "labelled": len(data.images),
        "unlabelled": len(data.unlabelled),
        "holdout": len(data.holdout_images),
        "pseudo_label_fingerprint": data.fingerprint,
    }


def _load_into(model: ComponentSegmentor, state) -> None:
    """Copies trained params and statistics (as host-backed arrays) into model."""
    host = jax.device_get({"p": state.params, "s": state.extra["batch_stats"]})
    nnx.update(model.decoder, jax.tree.map(jnp.asarray, host["p"]))
    nnx.update(model.decoder, jax.tree.map(jnp.asarray, host["s"]))


def fit_segmentor(
    cfg: SegmentorConfig,
    backbone,
    category_data,
    labels_dir: str | Path,
    workdir: str | Path,
    *,
    show_progress: bool = True,
) -> ComponentSegmentor:
    """Trains (or resumes, or reloads a finished run of) a category's segmentor.

    Args:
      cfg: configuration (e.g. `SegmentorConfig.fast()`).
      backbone: the frozen backbone named by `cfg.backbone`.
      category_data: `csad_jax.data.loco.CategoryData`; only train/good is read.
      labels_dir: pseudo-label output root (`<out>` or `<out>/<category>`).
      workdir: run folder for checkpoints and logs.
      show_progress: show the progress bar.

    Returns:
      the trained `ComponentSegmentor` (K = N_cls + 1 outputs).
    """
    labels = load_pseudo_labels(labels_dir, category_data.name)
    data = prepare_segmentor_data(cfg, category_data, labels)
    model = ComponentSegmentor(
        backbone,
        labels.num_classes,
        cfg.decoder,
        stages=cfg.stages,
        rngs=nnx.Rngs(cfg.seed),
    )
    model, _ = train_segmentor(cfg, model, data, workdir, show_progress=show_progress)
    return model
