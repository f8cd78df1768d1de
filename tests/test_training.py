"""Tests for the shared training utilities (checkpoints, NaN guard, sharding)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from csad_jax.errors import CheckpointError, ConfigError, TrainingError
from csad_jax.training import (
    Checkpointer,
    Progress,
    TrainState,
    check_finite,
    data_mesh,
    replicate,
    shard_batch,
)


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(3, 2, rngs=rngs)
        self.frozen = nnx.Variable(jnp.arange(4.0))


def _state(seed=0):
    model = _Tiny(nnx.Rngs(seed))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    stats = {"mean": jnp.ones((1, 1, 1, 5)), "q": jnp.float32(0.5)}
    return TrainState.create(
        params, optax.adam(1e-3), jax.random.key(seed), extra={"rest": rest, **stats}
    )


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _step(state):
    grads = jax.tree.map(jnp.ones_like, state.params)
    return state.apply_gradients(grads).replace(rng=jax.random.split(state.rng)[0])


def test_save_restore_round_trip(tmp_path):
    state = _step(_state(0))
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state)
    restored = ckpt.restore(_state(1))
    _assert_trees_equal(restored, state)
    assert int(restored.step) == 1
    assert restored.tx is not None


def test_resume_picks_latest_and_keeps_last_n(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    state = _state(0)
    for step in (1, 2, 3):
        state = _step(state)
        ckpt.save(step, state)
    assert ckpt.all_steps() == [2, 3]
    fresh = Checkpointer(tmp_path / "ckpt")
    resumed = fresh.restore_latest(_state(5))
    assert int(resumed.step) == 3
    _assert_trees_equal(resumed, state)


def test_restore_latest_without_checkpoint_returns_input(tmp_path):
    state = _state(0)
    assert Checkpointer(tmp_path / "empty").restore_latest(state) is state


def test_corrupt_checkpoint_gives_checkpoint_error(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(4, _state(0))
    for f in (tmp_path / "ckpt" / "4").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        Checkpointer(tmp_path / "ckpt").restore(_state(0))


def test_incompatible_checkpoint_names_the_entry(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, {"w": jnp.zeros((2, 3))})
    with pytest.raises(CheckpointError, match="'w' has shape"):
        ckpt.restore({"w": jnp.zeros((4, 3))})
    with pytest.raises(CheckpointError, match="no entry 'v'"):
        ckpt.restore({"v": jnp.zeros((2, 3))})


def test_check_finite():
    assert check_finite({"loss": jnp.float32(1.5)}, 3) == {"loss": 1.5}
    with pytest.raises(TrainingError, match="loss_ae is nan at step 7.*learning rate"):
        check_finite({"loss_st": jnp.float32(1.0), "loss_ae": jnp.float32(jnp.nan)}, 7)
    with pytest.raises(TrainingError, match="inf"):
        check_finite({"loss": np.float32(np.inf)}, 1)


def test_sharding_helpers_on_local_devices():
    mesh = data_mesh()
    n = len(jax.local_devices())
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == n
    batch = shard_batch({"x": np.ones((2 * n, 4), np.float32)}, mesh)
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    state = replicate(_state(0), mesh)
    assert state.params["dense"]["kernel"].sharding.is_fully_replicated
    if n > 1:
        with pytest.raises(ConfigError, match="not divisible"):
            shard_batch(np.ones((n + 1, 2)), mesh)
    with pytest.raises(ConfigError, match="not divisible"):
        shard_batch(np.float32(1.0), mesh)


def test_progress_logs_metrics(tmp_path, caplog):
    caplog.set_level("INFO", logger="csad_jax")
    prog = Progress(
        4, batch_size=2, log_every=2, jsonl=tmp_path / "m.jsonl", disable=True
    )
    assert prog.update(1, {"loss": jnp.float32(2.0)}, 1e-3) is None
    record = prog.update(2, {"loss": jnp.float32(1.0)}, 1e-3)
    prog.close()
    assert record["loss"] == 1.0 and record["lr"] == 1e-3 and record["images_per_s"] > 0
    assert "step 2/4 loss 1" in caplog.text
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 1
