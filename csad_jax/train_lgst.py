"""LGST training: config, losses, jitted train step and `fit_lgst`.

Per iteration (method-spec §5.4): with a batch x of training images, its
colour-jittered copy x_aug and penalty images x_pen,

  L_st   = hard-mined mean of (t - s_local)^2 above its 0.999 quantile
           + mean s_local(x_pen)^2                      (penalty, switchable)
  L_ae   = mean (t_a - a)^2                             (global student)
  L_stae = mean (a - s_global)^2                        (no stop-gradient on a)
  total  = w_st L_st + w_ae L_ae + w_stae L_stae

with t, t_a the normalised teacher features of x, x_aug and a the global
student's output on x_aug. Adam with coupled L2 weight decay and a x0.1 step
decay at 95 % of the iterations. Selection never looks at test data: the run
trains for a fixed number of iterations and fits its map quantiles on
validation images only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from csad_jax.data.image_io import normalize_imagenet
from csad_jax.errors import ConfigError
from csad_jax.inference_opt import optimized_copy
from csad_jax.lgst import LGSTModel, LGSTNetworks, MapQuantiles
from csad_jax.models.global_student import GlobalStudent, check_image_size
from csad_jax.models.local_student import LocalStudent
from csad_jax.models.teacher import Buffer, Teacher, TeacherStats, fit_teacher_stats
from csad_jax.penalty import GRAY_WEIGHTS, PenaltySource
from csad_jax.training import (
    Checkpointer,
    Progress,
    TrainState,
    check_finite,
    data_mesh,
    replicate,
    shard_batch,
)

log = logging.getLogger("csad_jax")

STUDENT_STREAM = 0x57D


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LGSTConfig:
    """LGST hyperparameters; defaults are the official (paper) setting.

    The `fast()` preset is the embedded CPU setting (see its docstring).
    """

    backbone: str = "wide_resnet50_2"
    teacher_stages: tuple[str, ...] = ("layer2", "layer3")
    image_size: int = 256
    out_dim: int = 512  # teacher projection / student head channels D
    student_widths: tuple[int, int] = (256, 512)
    global_base_dim: int = 64
    dropout_rate: float = 0.2
    iterations: int = 60_000
    batch_size: int = 2
    penalty: bool = True
    penalty_batch_size: int = 1
    color_jitter: float = 0.2
    learning_rate: float = 2e-4
    weight_decay: float = 1e-4  # coupled L2, as torch.optim.Adam
    lr_decay_at: float = 0.95
    lr_decay: float = 0.1
    hard_quantile: float = 0.999
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # st, ae, stae
    score_variant: str = "upsampled"
    seed: int = 0
    eval_batch_size: int = 8
    # Precompute the teacher features of the (non-augmented) training images
    # once when they fit in this many MB; 0 = run the teacher every step.
    teacher_cache_mb: int = 1024
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3

    @classmethod
    def fast(cls, **overrides) -> LGSTConfig:
        """Embedded CPU preset (not the paper setting).

        EfficientNet-Lite0 teacher (layer1 + layer2, strides 4 and 8), D = 128
        projection channels, a narrow local student (32, 64), a global student
        with base width 32, lr 1e-3 and 400 iterations (x0.1 at 95 %); input
        256 px (64 x 64 grid) and batch 2 as official. Chosen for the 10-minute
        CPU budget and on train/validation signals only: lr 1e-3 over 2e-4 on
        the training-loss curve; 256 px / batch 2 / 400 iterations over 128 px /
        batch 4 (400 or 800 iterations) and 256 px / 250 iterations, and the
        layer1 + layer2 teacher over the official layer2 + layer3 pair, on a
        validation-only proxy (validation/good against the same images with a
        drawn scratch or spot, experiments/eval_lgst.py).
        """
        values = dict(
            backbone="efficientnet_lite0",
            teacher_stages=("layer1", "layer2"),
            out_dim=128,
            student_widths=(32, 64),
            global_base_dim=32,
            iterations=400,
            learning_rate=1e-3,
            log_every=50,
            checkpoint_every=100,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_dict(cls, values: dict) -> LGSTConfig:
        """Inverse of `dataclasses.asdict` (lists back to tuples)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown LGST config keys {unknown}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)

    def validate(self) -> None:
        """Raises ConfigError for values the networks or losses cannot take."""
        check_image_size(self.image_size)
        if self.batch_size < 1 or self.iterations < 1:
            raise ConfigError("LGST batch_size and iterations must be >= 1")
        if not 0.0 < self.hard_quantile < 1.0:
            raise ConfigError(f"hard_quantile {self.hard_quantile} not in (0, 1)")
        if len(self.loss_weights) != 3:
            raise ConfigError("loss_weights must be (st, ae, stae)")


# ---------------------------------------------------------------------------
# Networks and optimiser
# ---------------------------------------------------------------------------


def build_lgst(config: LGSTConfig, backbone, channels=None) -> LGSTNetworks:
    """Teacher (with `backbone`), local and global student for `config`.

    Args:
      backbone: `backbone(images, stages=...) -> dict`; weights must not be
        `nnx.Param` (they would be trained).
      channels: stage -> channels; default `backbone.channels`.
    """
    config.validate()
    channels = backbone.channels if channels is None else channels
    teacher = Teacher(
        backbone,
        channels,
        stages=config.teacher_stages,
        out_dim=config.out_dim,
        seed=config.seed,
    )
    if jax.tree.leaves(nnx.state(teacher, nnx.Param)):
        raise ConfigError("teacher backbone has trainable nnx.Param weights")
    key = jax.random.fold_in(jax.random.key(config.seed), STUDENT_STREAM)
    rngs = nnx.Rngs(params=key)
    local = LocalStudent(config.out_dim, tuple(config.student_widths), rngs=rngs)
    glob = GlobalStudent(
        config.image_size,
        config.out_dim,
        config.global_base_dim,
        config.dropout_rate,
        rngs=rngs,
    )
    return LGSTNetworks(teacher, local, glob)


def make_optimizer(config: LGSTConfig):
    """Adam with coupled L2 (torch `weight_decay`) and the step decay.

    Returns:
      (tx, schedule): the optax transformation and its learning-rate schedule.
    """
    boundary = int(config.lr_decay_at * config.iterations)
    return _optimizer(
        config.learning_rate, config.weight_decay, boundary, config.lr_decay
    )


@functools.cache
def _optimizer(learning_rate: float, weight_decay: float, boundary: int, decay: float):
    # Cached so that equal settings give the same (hashable) tx and the jitted
    # train step is not recompiled for every run.
    schedule = optax.piecewise_constant_schedule(learning_rate, {boundary: decay})
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(),
        optax.scale_by_learning_rate(schedule),
    )
    return tx, schedule


# ---------------------------------------------------------------------------
# Augmentation and losses
# ---------------------------------------------------------------------------


def color_jitter(images: jax.Array, rng: jax.Array, strength: float = 0.2):
    """Per image, ONE of brightness / contrast / saturation jitter (spec §1.4).

    Factors are uniform in [1 - strength, 1 + strength] as torchvision's
    ColorJitter; contrast blends with the mean grey level, saturation with the
    grey image; results are clipped to [0, 1].

    Args:
      images: [B, H, W, 3] in [0, 1].
      rng: PRNG key.

    Returns:
      [B, H, W, 3] in [0, 1].
    """
    b = images.shape[0]
    kind_key, factor_key = jax.random.split(rng)
    kind = jax.random.randint(kind_key, (b, 1, 1, 1), 0, 3)
    f = jax.random.uniform(
        factor_key, (b, 1, 1, 1), minval=1 - strength, maxval=1 + strength
    )
    gray = (images @ GRAY_WEIGHTS)[..., None]
    mean_gray = jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
    brightness = images * f
    contrast = f * images + (1 - f) * mean_gray
    saturation = f * images + (1 - f) * gray
    out = jnp.where(kind == 0, brightness, jnp.where(kind == 1, contrast, saturation))
    return jnp.clip(out, 0.0, 1.0)


def select_nonnegative(values: jax.Array, index: int) -> jax.Array:
    """The `index`-th smallest of non-negative float32 values (exact).

    Bisection on the IEEE bit patterns (monotone for values >= 0): 32 counting
    passes instead of a full sort.
    """
    bits = jax.lax.bitcast_convert_type(
        values.reshape(-1).astype(jnp.float32), jnp.int32
    )

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid) >= index + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    start = (jnp.int32(0), jnp.int32(0x7F800000))
    lo, _ = jax.lax.fori_loop(0, 32, body, start)
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def hard_feature_loss(d: jax.Array, quantile: float = 0.999) -> jax.Array:
    """Mean of d over elements >= its linear-interpolation quantile.

    Matches `torch.quantile(d, q)` over all elements followed by
    `d[d >= q].mean()`; the threshold carries no gradient.

    Args:
      d: non-negative squared differences, any shape (e.g. [B, h, w, D]).
      quantile: q in (0, 1).
    """
    n = d.size
    pos = quantile * (n - 1)
    lo = int(np.floor(pos))
    frac = pos - lo
    flat = jax.lax.stop_gradient(d)
    v_lo = select_nonnegative(flat, lo)
    v_hi = select_nonnegative(flat, min(lo + 1, n - 1))
    threshold = v_lo + frac * (v_hi - v_lo)
    mask = d >= threshold
    return jnp.sum(jnp.where(mask, d, 0.0)) / jnp.sum(mask)


def lgst_losses(nets, stats, batch, rng, config: LGSTConfig) -> dict[str, jax.Array]:
    """The three LGST losses and their weighted total (spec §5.4).

    Args:
      nets: LGSTNetworks (students trainable).
      stats: TeacherStats.
      batch: {"images": [B, H, W, 3] in [0, 1], optional "penalty": [P, H, W, 3]
        in [0, 1], optional "teacher": [B, H/4, W/4, D] precomputed unnormalised
        teacher features of "images"}.
      rng: PRNG key for colour jitter and dropout.

    Returns:
      {"loss", "loss_st", "loss_hard", "loss_penalty", "loss_ae", "loss_stae"}.
    """
    x = batch["images"]
    b = x.shape[0]
    jitter_key, dropout_key = jax.random.split(rng)
    x_n = normalize_imagenet(x)
    xa_n = normalize_imagenet(color_jitter(x, jitter_key, config.color_jitter))
    if "teacher" in batch:
        t = stats.normalize(batch["teacher"])
        t_a = stats.normalize(nets.teacher(xa_n)["proj"])
    else:
        t_all = stats.normalize(nets.teacher(jnp.concatenate([x_n, xa_n]))["proj"])
        t, t_a = t_all[:b], t_all[b:]
    inputs = [x_n, xa_n]
    if "penalty" in batch:
        inputs.append(normalize_imagenet(batch["penalty"]))
    s = nets.local_student(jnp.concatenate(inputs))
    a = nets.global_student(xa_n, dropout_rng=dropout_key)
    loss_hard = hard_feature_loss(
        jnp.square(t - s["local_head"][:b]), config.hard_quantile
    )
    loss_pen = jnp.float32(0.0)
    if "penalty" in batch:
        loss_pen = jnp.mean(jnp.square(s["local_head"][2 * b :]))
    loss_st = loss_hard + loss_pen
    loss_ae = jnp.mean(jnp.square(t_a - a))
    loss_stae = jnp.mean(jnp.square(a - s["global_head"][b : 2 * b]))
    w_st, w_ae, w_stae = config.loss_weights
    total = w_st * loss_st + w_ae * loss_ae + w_stae * loss_stae
    return {
        "loss": total,
        "loss_st": loss_st,
        "loss_hard": loss_hard,
        "loss_penalty": loss_pen,
        "loss_ae": loss_ae,
        "loss_stae": loss_stae,
    }


# ---------------------------------------------------------------------------
# Train state and step
# ---------------------------------------------------------------------------


def split_networks(nets: LGSTNetworks):
    """(graphdef, params, buffers, backbone): trainable, saved-fixed, the rest."""
    return nnx.split(nets, nnx.Param, Buffer, ...)


def init_train_state(nets, config, tx, teacher_stats) -> tuple:
    """(graphdef, TrainState); backbone weights ride in `extra` but are not saved."""
    graphdef, params, buffers, backbone = split_networks(nets)
    extra = {"buffers": buffers, "teacher_stats": teacher_stats, "backbone": backbone}
    state = TrainState.create(params, tx, jax.random.key(config.seed), extra=extra)
    return graphdef, state


def checkpoint_view(state: TrainState) -> TrainState:
    """The state without backbone weights (what checkpoints hold)."""
    extra = {k: v for k, v in state.extra.items() if k != "backbone"}
    return state.replace(extra=extra)


def _build_train_step(graphdef, config: LGSTConfig):
    def train_step(state: TrainState, batch, rng):
        extra = state.extra

        def loss_fn(params):
            nets = nnx.merge(graphdef, params, extra["buffers"], extra["backbone"])
            losses = lgst_losses(nets, extra["teacher_stats"], batch, rng, config)
            return losses["loss"], losses

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.apply_gradients(grads), metrics

    return jax.jit(train_step)


# (graphdef, loss config, jitted step) of recent runs. Graph definitions may
# hold unhashable static data (e.g. a backbone's channel dict), so the lookup
# compares by equality instead of hashing.
_STEP_CACHE: list = []


def make_train_step(graphdef, config: LGSTConfig):
    """A pure jitted `train_step(state, batch, rng) -> (state, metrics)`.

    Only the loss settings of `config` enter the step, so the compiled step is
    reused by runs that differ in anything else (e.g. the seed).
    """
    loss_config = LGSTConfig(
        color_jitter=config.color_jitter,
        hard_quantile=config.hard_quantile,
        loss_weights=tuple(config.loss_weights),
    )
    for cached_graphdef, cached_config, step in _STEP_CACHE:
        if cached_config == loss_config and cached_graphdef == graphdef:
            return step
    step = _build_train_step(graphdef, loss_config)
    _STEP_CACHE[:] = [*_STEP_CACHE[-3:], (graphdef, loss_config, step)]
    return step


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def collect_images(images, size: int, what: str) -> np.ndarray:
    """All images in memory as float32 [N, size, size, 3] in [0, 1].

    Args:
      images: an array [N, size, size, 3] (uint8, or float in [0, 1]) or an
        iterable of such batches or of (batch, samples) pairs, as yielded by
        `csad_jax.data.batching.iterate_batches`.
      size: expected side (config.image_size).
      what: name used in error messages.
    """
    if isinstance(images, np.ndarray | jax.Array):
        parts = [images]
    else:
        parts = [b[0] if isinstance(b, tuple) else b for b in images]
    if not parts:
        raise ConfigError(f"no {what} images given")
    arr = np.concatenate([np.asarray(p) for p in parts])
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
        raise ConfigError(
            f"{what} images have shape {arr.shape}; expected [N, {size}, {size}, 3]"
            " (resize to config.image_size)"
        )
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ConfigError(f"{what} images must be in [0, 1], not ImageNet-normalised")
    return arr.astype(np.float32)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of a step's batch: consecutive slices of per-epoch permutations.

    A pure function of (step, seed), so a resumed run sees the same batches as
    an uninterrupted one.
    """
    indices, pos = [], step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = perm[offset : offset + batch_size - len(indices)]
        indices.extend(take.tolist())
        pos += len(take)
    return np.asarray(indices)


def host_batch(
    step: int, images: np.ndarray, penalty, config: LGSTConfig, teacher=None
) -> dict:
    """The step's batch (images, penalty images, cached teacher features)."""
    idx = batch_indices(step, len(images), config.batch_size, config.seed)
    batch = {"images": images[idx]}
    if teacher is not None:
        batch["teacher"] = teacher[idx]
    if penalty is not None:
        rng = np.random.default_rng([config.seed, step, 1])
        batch["penalty"] = penalty.batch(rng, config.penalty_batch_size)
    return batch


def _chunks(images: np.ndarray, size: int):
    for start in range(0, len(images), size):
        yield normalize_imagenet(jnp.asarray(images[start : start + size]))


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------


def _teacher_pass(nets: LGSTNetworks, images: np.ndarray, config, resume: bool):
    """Teacher statistics (unless resuming) and, if small, cached features.

    Returns:
      (TeacherStats or None, features float32 [N, h, w, D] or None).
    """
    graphdef, state = nnx.split(nets.teacher)
    proj = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)["proj"])
    grid = config.image_size // 4
    cache_mb = len(images) * grid * grid * config.out_dim * 4 / 2**20
    if cache_mb > config.teacher_cache_mb:
        if resume:
            return None, None
        chunks = _chunks(images, config.batch_size)
        return fit_teacher_stats(lambda x: proj(state, x), chunks), None
    features = np.concatenate(
        [np.asarray(proj(state, x)) for x in _chunks(images, config.batch_size)]
    )
    starts = range(0, len(features), config.batch_size)
    batches = (features[i : i + config.batch_size] for i in starts)
    stats = None if resume else fit_teacher_stats(jnp.asarray, batches)
    return stats, features


def _start_state(config, nets, images, ckpt: Checkpointer):
    """(graphdef, TrainState, cached teacher features): fresh or resumed."""
    tx, _ = make_optimizer(config)
    resume = ckpt.latest_step() is not None
    stats, features = _teacher_pass(nets, images, config, resume)
    if resume:  # placeholder statistics, overwritten by the checkpoint
        d = config.out_dim
        stats = TeacherStats(jnp.zeros((1, 1, 1, d)), jnp.ones((1, 1, 1, d)))
    graphdef, state = init_train_state(nets, config, tx, stats)
    if resume:
        restored = ckpt.restore(checkpoint_view(state))
        backbone = state.extra["backbone"]
        state = restored.replace(extra={**restored.extra, "backbone": backbone})
    return graphdef, state, features


def train_networks(config, nets, images, workdir: Path, progress: bool = True):
    """Trains the students for `config.iterations`, resuming from checkpoints.

    Args:
      config: LGSTConfig.
      nets: LGSTNetworks (initial weights; not modified).
      images: float32 [N, S, S, 3] training images in [0, 1].
      workdir: run folder (checkpoints/, metrics.jsonl).
      progress: show a progress bar.

    Returns:
      (graphdef, final TrainState): students in `params`, projection and
      teacher statistics in `extra`.
    """
    _, schedule = make_optimizer(config)
    ckpt = Checkpointer(
        workdir / "checkpoints", config.keep_checkpoints, config.checkpoint_every
    )
    # The frozen teacher backbone with fused depthwise convolutions: the same
    # numbers up to float32 summation order, ~4x faster EfficientNet-Lite on
    # XLA's CPU backend (csad_jax.inference_opt). The state is unchanged.
    nets, _ = optimized_copy(nets)
    graphdef, state, features = _start_state(config, nets, images, ckpt)
    mesh = data_mesh()
    state = replicate(state, mesh)
    step_fn = make_train_step(graphdef, config)
    penalty = PenaltySource(config.image_size) if config.penalty else None
    bar = Progress(
        config.iterations,
        start=int(state.step),
        batch_size=config.batch_size,
        log_every=config.log_every,
        desc="LGST",
        jsonl=workdir / "metrics.jsonl",
        disable=not progress,
    )
    for step in range(int(state.step), config.iterations):
        batch = host_batch(step, images, penalty, config, features)
        batch = {
            k: replicate(v, mesh) if k == "penalty" else shard_batch(v, mesh)
            for k, v in batch.items()
        }
        state, metrics = step_fn(state, batch, jax.random.fold_in(state.rng, step))
        bar.update(step + 1, metrics, float(schedule(step)))
        if ckpt.should_save(step + 1, config.iterations):
            check_finite(metrics, step + 1)
            ckpt.save(step + 1, checkpoint_view(state))
    bar.close()
    ckpt.close()
    return graphdef, state


# ---------------------------------------------------------------------------
# Fit, save, load
# ---------------------------------------------------------------------------


def _write_config(workdir: Path, config: LGSTConfig) -> None:
    """Writes config.json, refusing a workdir made with a different config."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    values = dataclasses.asdict(config)
    if path.exists():
        old = read_config(workdir)
        diff = sorted(k for k, v in dataclasses.asdict(old).items() if values[k] != v)
        if diff:
            raise ConfigError(
                f"{workdir} holds an LGST run with a different config ({diff}); "
                "use a new workdir"
            )
        return
    path.write_text(json.dumps(values, indent=2) + "\n")


def read_config(workdir) -> LGSTConfig:
    """The LGSTConfig stored in `workdir/config.json`."""
    path = Path(workdir) / "config.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read LGST config {path}: {err}") from err
    return LGSTConfig.from_dict(values)


def _to_default_device(tree):
    """Copies (possibly mesh-replicated) arrays to the default device."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(jax.device_get(x))), tree)


def _model_tree(nets, teacher_stats, quantiles) -> dict:
    _, params, buffers, _ = split_networks(nets)
    return {
        "params": params,
        "buffers": buffers,
        "teacher_stats": teacher_stats,
        "quantiles": quantiles,
    }


def save_lgst(model: LGSTModel, workdir, step: int) -> None:
    """Saves weights, projection, teacher stats and quantiles to workdir/model."""
    tree = _model_tree(model.nets, model.teacher_stats, model.quantiles)
    ckpt = Checkpointer(Path(workdir) / "model", max_to_keep=1)
    ckpt.save(step, tree)
    ckpt.close()


def load_lgst(workdir, backbone) -> LGSTModel:
    """Rebuilds a fitted LGSTModel from `workdir` (config.json + model/)."""
    config = read_config(workdir)
    nets = build_lgst(config, backbone)
    d = config.out_dim
    like = _model_tree(
        nets,
        TeacherStats(jnp.zeros((1, 1, 1, d)), jnp.ones((1, 1, 1, d))),
        MapQuantiles(*(jnp.float32(0.0) for _ in range(4))),
    )
    model_dir = Path(workdir) / "model"
    advice = f"delete {model_dir}: fitting then resumes from the last LGST checkpoint"
    tree = Checkpointer(model_dir, advice=advice).restore(like)
    nnx.update(nets, tree["params"], tree["buffers"])
    return LGSTModel(
        nets, tree["teacher_stats"], tree["quantiles"], config.score_variant
    )


def fit_lgst(
    config: LGSTConfig, backbone, train_images, val_images, workdir, progress=True
) -> LGSTModel:
    """Trains the LGST branch and fits its map quantiles on validation images.

    Resumes from the latest checkpoint in `workdir`; returns the saved model
    directly if the run already finished.

    Args:
      config: LGSTConfig (e.g. `LGSTConfig.fast()`).
      backbone: frozen backbone for the teacher (`load_backbone(config.backbone)`).
      train_images: train/good images in [0, 1] at config.image_size (array or
        iterable of batches, see `collect_images`).
      val_images: validation/good images, same format.
      workdir: run folder (config.json, checkpoints/, model/, metrics.jsonl).
      progress: show a progress bar.
    """
    workdir = Path(workdir)
    _write_config(workdir, config)
    if Checkpointer(workdir / "model").latest_step() is not None:
        log.info("LGST run in %s already finished; loading it", workdir)
        return load_lgst(workdir, backbone)
    train = collect_images(train_images, config.image_size, "training")
    val = collect_images(val_images, config.image_size, "validation")
    nets = build_lgst(config, backbone)
    _, state = train_networks(config, nets, train, workdir, progress)
    params, buffers, stats = _to_default_device(
        (state.params, state.extra["buffers"], state.extra["teacher_stats"])
    )
    nnx.update(nets, params, buffers)
    model = LGSTModel(nets, stats, variant=config.score_variant)
    model.fit_quantiles(_chunks(val, config.eval_batch_size))
    save_lgst(model, workdir, config.iterations)
    return model
