"""Shared training utilities: train state, checkpoints, NaN guard, data parallel.

Used by the LGST and segmentor trainers. The train state is a plain pytree
(`TrainState`) so that a train step can be one pure jitted function:

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState.create(params, tx, rng, extra={"rest": rest})
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=3)
    state = ckpt.restore_latest(state)          # automatic resume (or unchanged)
    mesh = data_mesh()
    state = replicate(state, mesh)
    for step in range(int(state.step), total):
        state, metrics = train_step(state, shard_batch(batch, mesh), rng)
        progress.update(step + 1, metrics, lr)  # bar + periodic log line
        if ckpt.should_save(step + 1): check_finite(metrics, step + 1); ckpt.save(..)

Checkpoints store every leaf under its dotted pytree path as a host array, so a
restore can name exactly which entry is missing or has the wrong shape.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from csad_jax.errors import CheckpointError, ConfigError, TrainingError, first_line

log = logging.getLogger("csad_jax")

DATA_AXIS = "data"


# ---------------------------------------------------------------------------
# Train state
# ---------------------------------------------------------------------------


class TrainState(struct.PyTreeNode):
    """Everything a train step reads and writes, as one pytree.

    Attributes:
      step: int32 scalar, number of optimizer updates applied so far.
      params: trainable weights (an `nnx.State` of `nnx.Param`, or any pytree).
      opt_state: optax state of `tx` for `params`.
      rng: typed PRNG key (`jax.random.key`), advanced by the trainer.
      extra: any other saved pytree: non-trainable model state (batch stats,
        frozen projections) and fitted statistics.
      tx: the optax transformation (static, not saved).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    extra: Any = None
    tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)

    @classmethod
    def create(cls, params, tx, rng, extra=None) -> TrainState:
        """A state at step 0 with freshly initialised optimizer state."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=rng,
            extra=extra,
            tx=tx,
        )

    def apply_gradients(self, grads) -> TrainState:
        """One optimizer update of `params`; increments `step`."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def _path_key(path) -> str:
    """Dotted name of a pytree path, e.g. 'params.conv1.kernel'."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts) or "root"


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def flatten_for_checkpoint(tree) -> dict[str, np.ndarray]:
    """Flat {dotted path: host array} view of a pytree (typed keys as key data)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if _is_key(leaf):
            leaf = jax.random.key_data(leaf)
        flat[_path_key(path)] = np.asarray(jax.device_get(leaf))
    return flat


def unflatten_like(flat: Mapping[str, np.ndarray], like, origin: str = "checkpoint"):
    """Rebuild `like`'s structure from a flat dict; CheckpointError on mismatch."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, ref in leaves_with_path:
        name = _path_key(path)
        if name not in flat:
            raise CheckpointError(f"{origin} has no entry '{name}' (incompatible)")
        value = np.asarray(flat[name])
        ref_data = jax.random.key_data(ref) if _is_key(ref) else ref
        if tuple(value.shape) != tuple(np.shape(ref_data)):
            raise CheckpointError(
                f"{origin}: '{name}' has shape {value.shape}, model expects "
                f"{tuple(np.shape(ref_data))} (incompatible configuration)"
            )
        if _is_key(ref):
            leaves.append(
                jax.random.wrap_key_data(value, impl=jax.random.key_impl(ref))
            )
        else:
            leaves.append(jnp.asarray(value, dtype=np.asarray(ref_data).dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


class Checkpointer:
    """Orbax checkpoints of a pytree in `directory`, keeping the last N steps.

    Args:
      directory: folder holding one sub-folder per saved step.
      max_to_keep: number of most recent checkpoints kept on disk.
      save_every: `should_save(step)` is true every this many steps.
      advice: what the error for a corrupt checkpoint tells the user to do.
    """

    def __init__(
        self,
        directory,
        max_to_keep: int = 3,
        save_every: int = 1000,
        advice: str = "delete it to resume from an earlier one",
    ):
        self.directory = Path(directory).absolute()
        self.save_every = max(1, int(save_every))
        self.advice = advice
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as err:  # any orbax failure is user-facing
            raise CheckpointError(
                f"cannot open checkpoint folder {self.directory}: {first_line(err)}"
            ) from err

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None if there is none."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def should_save(self, step: int, total: int | None = None) -> bool:
        """True every `save_every` steps and at the final step `total`."""
        return step % self.save_every == 0 or (total is not None and step == total)

    def save(self, step: int, tree) -> None:
        """Writes `tree` (any pytree; typed keys allowed) as checkpoint `step`."""
        flat = flatten_for_checkpoint(tree)
        self._manager.save(int(step), args=ocp.args.StandardSave(flat), force=True)
        self._manager.wait_until_finished()

    def restore(self, like, step: int | None = None):
        """Checkpoint `step` (default: latest) in the structure of `like`.

        Raises:
          CheckpointError: no checkpoint, or it is corrupt or incompatible.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        origin = f"checkpoint {self.directory}/{step}"
        _mute_aborted_reads()
        try:
            flat = self._manager.restore(step, args=ocp.args.StandardRestore())
        except Exception as err:  # corrupt files raise many types
            raise CheckpointError(
                f"{origin} is corrupt or unreadable ({first_line(err)}); {self.advice}"
            ) from err
        if not isinstance(flat, Mapping):
            raise CheckpointError(f"{origin} is not a csad-jax checkpoint")
        return unflatten_like(flat, like, origin)

    def restore_latest(self, like):
        """Resumes from the latest checkpoint if any; else returns `like`."""
        step = self.latest_step()
        if step is None:
            return like
        log.info("resuming from %s/%d", self.directory, step)
        return self.restore(like, step)

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.close()


def _mute_aborted_reads() -> None:
    """From now on, drops the errors of the reads a failed restore leaves running.

    When one array of a checkpoint is unreadable, Orbax closes its event loop
    while TensorStore still reads the other arrays; each of those reads then
    reports "RuntimeError: Event loop is closed" through `sys.unraisablehook`,
    from a C++ thread, before or after the restore raises. Only that error is
    dropped (the one-line CheckpointError says what happened); every other
    unraisable error is reported as before.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_csad_mutes_aborted_reads", False):
        return

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._csad_mutes_aborted_reads = True
    sys.unraisablehook = hook


# ---------------------------------------------------------------------------
# NaN guard
# ---------------------------------------------------------------------------


def check_finite(metrics: Mapping[str, Any], step: int) -> dict[str, float]:
    """Raises TrainingError if any metric is NaN/Inf; returns host floats.

    Args:
      metrics: name -> scalar (jax or numpy).
      step: the step the metrics belong to (named in the message).
    """
    values = {k: float(np.asarray(jax.device_get(v))) for k, v in metrics.items()}
    for name, value in values.items():
        if not np.isfinite(value):
            raise TrainingError(
                f"{name} is {value} at step {step}: training diverged "
                "(try a lower learning rate)"
            )
    return values


# ---------------------------------------------------------------------------
# Data parallel
# ---------------------------------------------------------------------------


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis "data" over all local devices (or `devices`)."""
    devices = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    """Places every array leaf of `tree` fully replicated on `mesh`."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def shard_batch(batch, mesh: Mesh):
    """Splits every leaf of `batch` along axis 0 over the "data" mesh axis.

    Raises:
      ConfigError: a leaf's batch size is not divisible by the device count.
    """
    n = mesh.shape[DATA_AXIS]
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

    def put(x):
        if np.ndim(x) == 0 or np.shape(x)[0] % n:
            raise ConfigError(
                f"batch size {np.shape(x)[:1]} is not divisible by the {n} "
                "devices; choose a batch size that is a multiple of the device count"
            )
        return jax.device_put(x, sharding)

    return jax.tree.map(put, batch)


# ---------------------------------------------------------------------------
# Progress and logging
# ---------------------------------------------------------------------------


class Progress:
    """A tqdm bar with ETA plus a log line of metrics, lr and images/s.

    Args:
      total: final step.
      start: step training resumes from.
      batch_size: images per step (for images/s).
      log_every: steps between log lines (metrics are fetched from the device
        only then, so the bar does not force a sync every step).
      desc: bar label.
      jsonl: optional file receiving one JSON object per log line.
      disable: hide the bar (log lines are still written).
    """

    def __init__(
        self,
        total: int,
        *,
        start: int = 0,
        batch_size: int = 1,
        log_every: int = 100,
        desc: str = "train",
        jsonl=None,
        disable: bool = False,
    ):
        self.total, self.batch_size = total, batch_size
        self.log_every = max(1, int(log_every))
        self.desc = desc
        self.jsonl = Path(jsonl) if jsonl else None
        self._bar = tqdm(total=total, initial=start, desc=desc, disable=disable)
        self._last_step, self._last_time = start, time.perf_counter()

    def update(self, step: int, metrics: Mapping[str, Any], lr: float) -> dict | None:
        """Advances the bar to `step`; logs and returns host metrics when due."""
        self._bar.update(step - self._bar.n)
        if step % self.log_every and step != self.total:
            return None
        values = check_finite(metrics, step)
        now = time.perf_counter()
        ips = (
            (step - self._last_step)
            * self.batch_size
            / max(now - self._last_time, 1e-9)
        )
        self._last_step, self._last_time = step, now
        record = {"step": step, **values, "lr": float(lr), "images_per_s": ips}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
        text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        log.info(
            "%s step %d/%d %s lr %.3g %.1f img/s",
            self.desc,
            step,
            self.total,
            text,
            lr,
            ips,
        )
        if self.jsonl is not None:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    def close(self) -> None:
        """Closes the bar."""
        self._bar.close()
