"""Tests for LGST training: losses, optimiser, train step, fit/resume/reload."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from fresh_python import run_script
from lgst_stand_in import StandInBackbone, tiny_config, tiny_networks

from csad_jax.data.image_io import normalize_imagenet
from csad_jax.errors import ConfigError
from csad_jax.models.teacher import TeacherStats
from csad_jax.train_lgst import (
    GRAY_WEIGHTS,
    LGSTConfig,
    batch_indices,
    build_lgst,
    collect_images,
    color_jitter,
    fit_lgst,
    hard_feature_loss,
    host_batch,
    init_train_state,
    lgst_losses,
    load_lgst,
    make_optimizer,
    make_train_step,
    select_nonnegative,
)

SIZE = 128


def _images(n, seed):
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3), dtype=np.float32)


def _stats(d=8):
    return TeacherStats(jnp.zeros((1, 1, 1, d)), jnp.ones((1, 1, 1, d)))


def _params(model):
    return jax.tree.leaves(nnx.state(model.nets, nnx.Param))


# ---------------------------------------------------------------------------
# Losses and augmentation
# ---------------------------------------------------------------------------


def _torch_style_hard_loss(d, q):
    threshold = np.quantile(d.astype(np.float64).ravel(), q, method="linear")
    return d[d >= np.float32(threshold)].mean()


@pytest.mark.parametrize("ties", [False, True])
def test_hard_feature_loss_matches_reference(ties):
    rng = np.random.default_rng(0)
    d = rng.gamma(1.0, 1.0, size=(2, 16, 16, 8)).astype(np.float32)
    if ties:
        d = np.round(d * 4) / 4
    loss = jax.jit(hard_feature_loss, static_argnums=1)(jnp.asarray(d), 0.999)
    np.testing.assert_allclose(loss, _torch_style_hard_loss(d, 0.999), rtol=1e-5)
    loss = hard_feature_loss(jnp.asarray(d), 0.5)
    np.testing.assert_allclose(loss, _torch_style_hard_loss(d, 0.5), rtol=1e-5)


def test_select_nonnegative_is_exact():
    values = np.random.default_rng(1).exponential(size=1001).astype(np.float32)
    values[::7] = 0.0
    ordered = np.sort(values)
    for index in (0, 1, 500, 999, 1000):
        assert select_nonnegative(jnp.asarray(values), index) == ordered[index]


def test_color_jitter_applies_one_transform_per_image():
    x = np.random.default_rng(2).random((24, 6, 6, 3), dtype=np.float32)
    out = np.asarray(color_jitter(jnp.asarray(x), jax.random.key(0), 0.2))
    gray = (x @ GRAY_WEIGHTS)[..., None]
    kinds = []
    for i in range(len(x)):
        # Each kind is clip(base + f * direction); fit f on unclipped pixels.
        candidates = {
            "brightness": (0.0 * x[i], x[i]),
            "contrast": (gray[i].mean() + 0 * x[i], x[i] - gray[i].mean()),
            "saturation": (gray[i] + 0 * x[i], x[i] - gray[i]),
        }
        inside = (out[i] > 0) & (out[i] < 1)
        for kind, (base, direction) in candidates.items():
            f = np.sum(((out[i] - base) * direction)[inside])
            f /= np.sum((direction**2)[inside])
            ref = np.clip(base + f * direction, 0, 1)
            if 0.8 <= f <= 1.2 and np.allclose(ref, out[i], atol=1e-5):
                kinds.append(kind)
                break
        else:
            pytest.fail(f"image {i} is not one colour jitter of the input")
    assert set(kinds) == {"brightness", "contrast", "saturation"}


def test_optimizer_matches_torch_adam_with_coupled_l2():
    torch = pytest.importorskip("torch")
    config = LGSTConfig(iterations=8, learning_rate=0.1, weight_decay=0.05)
    tx, schedule = make_optimizer(config)
    w0 = np.array([1.0, -2.0, 3.0], np.float32)
    target = np.array([0.5, 0.5, -1.0], np.float32)
    params, opt_state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    tw = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.Adam([tw], lr=0.1, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(0.95 * 8), gamma=0.1)
    for step in range(8):
        assert np.isclose(float(schedule(step)), opt.param_groups[0]["lr"])
        grads = jax.grad(lambda w: jnp.sum((w - target) ** 3))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = params + updates
        opt.zero_grad()
        torch.sum((tw - torch.from_numpy(target)) ** 3).backward()
        opt.step()
        sched.step()
    np.testing.assert_allclose(params, tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_losses_match_numpy_reference():
    config = tiny_config()
    nets, stats = tiny_networks(config), _stats()
    x = _images(2, 3)
    pen = _images(1, 4)
    rng = jax.random.key(5)
    batch = {"images": jnp.asarray(x), "penalty": jnp.asarray(pen)}
    losses = nnx.jit(lgst_losses, static_argnums=4)(nets, stats, batch, rng, config)

    @nnx.jit
    def parts(nets, x, pen, rng):
        jitter_key, dropout_key = jax.random.split(rng)
        xa = normalize_imagenet(color_jitter(x, jitter_key, 0.2))
        xn, pn = normalize_imagenet(x), normalize_imagenet(pen)
        return (
            nets.teacher(xn)["proj"],
            nets.teacher(xa)["proj"],
            nets.local_student(xn)["local_head"],
            nets.local_student(pn)["local_head"],
            nets.local_student(xa)["global_head"],
            nets.global_student(xa, dropout_rng=dropout_key),
        )

    t, t_a, s, s_pen, s_ae, a = (np.asarray(v) for v in parts(nets, x, pen, rng))
    hard = _torch_style_hard_loss((t - s) ** 2, 0.999)
    ref = {
        "loss_hard": hard,
        "loss_penalty": np.mean(s_pen**2),
        "loss_st": hard + np.mean(s_pen**2),
        "loss_ae": np.mean((t_a - a) ** 2),
        "loss_stae": np.mean((a - s_ae) ** 2),
    }
    ref["loss"] = ref["loss_st"] + ref["loss_ae"] + ref["loss_stae"]
    for name, value in ref.items():
        np.testing.assert_allclose(losses[name], value, rtol=2e-4, err_msg=name)
    # Precomputed teacher features of the clean images give the same losses.
    cached = {**batch, "teacher": jnp.asarray(t)}  # stats are mean 0, std 1
    losses2 = nnx.jit(lgst_losses, static_argnums=4)(nets, stats, cached, rng, config)
    for name in ref:
        np.testing.assert_allclose(losses2[name], losses[name], rtol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------
# Train step and data
# ---------------------------------------------------------------------------


def test_short_run_reduces_losses():
    config = tiny_config()
    nets = tiny_networks(config)
    tx, _ = make_optimizer(config)
    graphdef, state = init_train_state(nets, config, tx, _stats())
    step_fn = make_train_step(graphdef, config)
    batch = {"images": jnp.asarray(_images(2, 6))}
    history = []
    for step in range(15):
        state, metrics = step_fn(state, batch, jax.random.key(step))
        history.append({k: float(v) for k, v in metrics.items()})
    assert int(state.step) == 15
    for name in ("loss", "loss_hard", "loss_ae"):
        first = np.mean([h[name] for h in history[:3]])
        last = np.mean([h[name] for h in history[-3:]])
        assert last < 0.95 * first, (name, first, last)


def test_batches_cover_each_epoch_and_are_reproducible():
    seen = np.concatenate([batch_indices(s, 5, 2, seed=0) for s in range(5)])
    assert sorted(seen[:5].tolist()) == list(range(5))
    assert sorted(seen[5:].tolist()) == list(range(5))
    np.testing.assert_array_equal(batch_indices(3, 5, 2, 0), batch_indices(3, 5, 2, 0))
    config = tiny_config()
    images = _images(5, 0)
    from csad_jax.penalty import PenaltySource

    source = PenaltySource(SIZE, photos=[])
    a, b = host_batch(2, images, source, config), host_batch(2, images, source, config)
    np.testing.assert_array_equal(a["penalty"], b["penalty"])
    assert a["penalty"].shape == (1, SIZE, SIZE, 3)


def test_collect_images_checks_input():
    batches = [(_images(2, 0), ["a", "b"]), (_images(1, 1), ["c"])]
    assert collect_images(batches, SIZE, "training").shape == (3, SIZE, SIZE, 3)
    uint8 = (np.ones((2, SIZE, SIZE, 3)) * 255).astype(np.uint8)
    assert collect_images(uint8, SIZE, "training").max() == 1.0
    with pytest.raises(ConfigError, match="expected \\[N, 128, 128, 3\\]"):
        collect_images(_images(1, 0)[:, :64], SIZE, "training")
    with pytest.raises(ConfigError, match="not ImageNet-normalised"):
        collect_images(normalize_imagenet(_images(1, 0)), SIZE, "validation")
    with pytest.raises(ConfigError, match="no training images"):
        collect_images([], SIZE, "training")


def test_config_round_trip_and_validation():
    fast = LGSTConfig.fast()
    assert LGSTConfig.from_dict(dataclasses.asdict(fast)) == fast
    assert fast.backbone == "efficientnet_lite0"
    assert LGSTConfig().iterations == 60_000 and LGSTConfig().batch_size == 2
    with pytest.raises(ConfigError, match="unknown LGST config keys"):
        LGSTConfig.from_dict({"lr": 1.0})
    with pytest.raises(ConfigError, match="cannot take 100x100"):
        LGSTConfig(image_size=100).validate()


# ---------------------------------------------------------------------------
# Fit, determinism, resume, reload
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgst")
    train, val = _images(6, 10), _images(3, 11)
    model = fit_lgst(tiny_config(), StandInBackbone(), train, val, root / "a", False)
    return root, train, val, model


def test_fit_is_deterministic_and_resume_is_exact(fitted):
    root, train, val, model = fitted
    again = fit_lgst(tiny_config(), StandInBackbone(), train, val, root / "b", False)
    for x, y in zip(_params(model), _params(again), strict=True):
        np.testing.assert_array_equal(x, y)
    # Interrupted after step 2: drop the final checkpoint and model, resume.
    shutil.copytree(root / "a", root / "c")
    shutil.rmtree(root / "c" / "model")
    shutil.rmtree(root / "c" / "checkpoints" / "4")
    resumed = fit_lgst(tiny_config(), StandInBackbone(), train, val, root / "c", False)
    for x, y in zip(_params(model), _params(resumed), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(
        resumed.quantiles.local_end, model.quantiles.local_end
    )


def test_seed_changes_initialisation():
    a = build_lgst(tiny_config(seed=0), StandInBackbone())
    b = build_lgst(tiny_config(seed=1), StandInBackbone())
    assert not np.allclose(a.teacher.proj_kernel[...], b.teacher.proj_kernel[...])
    assert not np.allclose(
        a.local_student.conv1.kernel[...], b.local_student.conv1.kernel[...]
    )


def test_reloaded_model_scores_identically(fitted):
    root, _, val, model = fitted
    images = normalize_imagenet(jnp.asarray(val))
    before = model.score(images)
    reloaded = load_lgst(root / "a", StandInBackbone())
    after = reloaded.score(images)
    assert before["pred_score"].shape == (3,)
    np.testing.assert_array_equal(before["pred_score"], after["pred_score"])
    np.testing.assert_array_equal(before["anomaly_map"], after["anomaly_map"])
    finished = fit_lgst(tiny_config(), StandInBackbone(), [], [], root / "a", False)
    np.testing.assert_array_equal(
        finished.score(images)["pred_score"], before["pred_score"]
    )


_RELOAD_SCRIPT = """
import sys
import jax.numpy as jnp, numpy as np
from lgst_stand_in import StandInBackbone
from csad_jax.data.image_io import normalize_imagenet
from csad_jax.train_lgst import load_lgst

run, io = sys.argv[1], sys.argv[2]
images = normalize_imagenet(jnp.asarray(np.load(io + "/images.npy")))
scores = load_lgst(run, StandInBackbone()).score(images)
np.save(io + "/score.npy", np.asarray(scores["pred_score"]))
np.save(io + "/map.npy", np.asarray(scores["anomaly_map"]))
"""


def test_model_reloaded_in_a_fresh_process_scores_identically(fitted, tmp_path):
    root, _, val, model = fitted
    before = model.score(normalize_imagenet(jnp.asarray(val)))
    np.save(tmp_path / "images.npy", np.asarray(val))
    out = run_script(_RELOAD_SCRIPT, str(root / "a"), str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert before["pred_score"].shape == (3,)
    score = np.load(tmp_path / "score.npy")
    np.testing.assert_array_equal(score, before["pred_score"])
    np.testing.assert_array_equal(np.load(tmp_path / "map.npy"), before["anomaly_map"])


def test_workdir_with_other_config_is_refused(fitted):
    root, train, val, _ = fitted
    with pytest.raises(ConfigError, match="different config"):
        fit_lgst(tiny_config(iterations=6), StandInBackbone(), train, val, root / "a")


# ---------------------------------------------------------------------------
# Data parallel
# ---------------------------------------------------------------------------

_MULTI_DEVICE_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from lgst_stand_in import tiny_config, tiny_networks
from csad_jax.models.teacher import TeacherStats
from csad_jax.penalty import PenaltySource
from csad_jax.train_lgst import host_batch, init_train_state, make_optimizer
from csad_jax.train_lgst import make_train_step
from csad_jax.training import data_mesh, replicate, shard_batch

assert jax.device_count() == 4, jax.devices()
config = tiny_config(batch_size=4)
nets = tiny_networks(config)
stats = TeacherStats(jnp.zeros((1, 1, 1, 8)), jnp.ones((1, 1, 1, 8)))
tx, _ = make_optimizer(config)
graphdef, state = init_train_state(nets, config, tx, stats)
images = np.random.default_rng(0).random((8, 128, 128, 3), dtype=np.float32)
batch = host_batch(0, images, PenaltySource(128, photos=[]), config)
step = make_train_step(graphdef, config)
rng = jax.random.key(1)
single, m1 = step(state, {k: jnp.asarray(v) for k, v in batch.items()}, rng)
mesh = data_mesh()
sharded_batch = {"images": shard_batch(batch["images"], mesh),
                 "penalty": replicate(batch["penalty"], mesh)}
multi, m4 = step(replicate(state, mesh), sharded_batch, rng)
assert len(multi.params["local_student"]["conv1"]["kernel"].sharding.device_set) == 4
pairs = zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params))
diff = max(float(jnp.max(jnp.abs(a - np.asarray(b)))) for a, b in pairs)
print("MAXDIFF", diff, float(m1["loss"]), float(m4["loss"]))
"""


@pytest.mark.slow
def test_one_step_on_four_devices_matches_single_device():
    out = run_script(_MULTI_DEVICE_SCRIPT, devices=4, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("MAXDIFF"))
    diff, loss1, loss4 = (float(v) for v in line.split()[1:])
    assert diff < 1e-5
    assert abs(loss1 - loss4) < 1e-4 * max(1.0, abs(loss1))
