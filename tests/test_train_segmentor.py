"""Segmentor training: loss goes down, phases, resume, NaN guard, data errors."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from fresh_python import run_script
from segmentor_stand_in import (
    TinyBackbone,
    tiny_config,
    toy_data,
    write_true_map_labels,
)

from csad_jax.data.loco import load_category
from csad_jax.data.pseudo_labels import load_pseudo_labels
from csad_jax.data.synthetic import generate
from csad_jax.errors import CheckpointError, DataError, TrainingError
from csad_jax.models.segmentor import ComponentSegmentor, segment
from csad_jax.train_segmentor import (
    _epoch_indices,
    _holdout_count,
    _labelled_batch,
    _normalise,
    fit_segmentor,
    init_train_state,
    make_optimizer,
    make_train_step,
    prepare_segmentor_data,
    train_segmentor,
)

CATEGORY = "screw_kit"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A tiny generated category (64 px) with true-map stand-in labels."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, [CATEGORY], image_size=(64, 64), scale="small")
    stems = [s.stem for s in load_category(root, CATEGORY).samples("train", "good")]
    labels = write_true_map_labels(root, CATEGORY, root / "labels", stems[:9], stems)
    return root, labels


def _model(cfg, num_classes, seed=0):
    return ComponentSegmentor(
        TinyBackbone(), num_classes, cfg.decoder, rngs=nnx.Rngs(seed)
    )


def _sup(rec, w):
    return w.ce * rec["ce"] + w.focal * rec["focal"] + w.dice * rec["dice"]


def test_training_reduces_loss_then_resumes_and_reloads(generated, tmp_path):
    root, labels_dir = generated
    cfg = tiny_config(epochs=6, sup_only_epochs=3, checkpoint_every_epochs=3)
    cat = load_category(root, CATEGORY)
    data = prepare_segmentor_data(cfg, cat, load_pseudo_labels(labels_dir, CATEGORY))
    assert len(data.holdout_images) == 1 and len(data.images) == 8
    model, history = train_segmentor(
        cfg, _model(cfg, data.num_classes), data, tmp_path, show_progress=False
    )
    w = cfg.loss_weights
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert _sup(history[-1], w) < 0.7 * _sup(history[0], w)
    # epochs 1-3 train the supervised losses only, then all five join
    for rec in history:
        full = _sup(rec, w) + w.hist * rec["hist"]
        full += w.entropy * (rec["entropy_u"] + rec["entropy_l"])
        want = _sup(rec, w) if rec["epoch"] <= 3 else full
        assert rec["loss"] == pytest.approx(want, rel=1e-4)
    assert 0.0 <= history[-1]["holdout_miou"] <= 1.0
    # resume from the epoch-3 checkpoint reproduces the uninterrupted run
    shutil.rmtree(tmp_path / "checkpoints" / "12")
    resumed, rest = train_segmentor(
        cfg, _model(cfg, data.num_classes), data, tmp_path, show_progress=False
    )
    assert [r["epoch"] for r in rest] == [4, 5, 6]
    for a, b in zip(
        jax.tree.leaves(nnx.state(model.decoder)),
        jax.tree.leaves(nnx.state(resumed.decoder)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a finished run reloads through the high-level entry point
    again = fit_segmentor(
        cfg, TinyBackbone(), cat, labels_dir, tmp_path, show_progress=False
    )
    x = jnp.zeros((1, 64, 64, 3))
    np.testing.assert_allclose(segment(again, x)[0], segment(model, x)[0], atol=1e-6)


def test_run_description_guards_resume(tmp_path):
    cfg = tiny_config()
    data = toy_data()
    record = tmp_path / "segmentor_run.json"
    record.write_text(json.dumps({"config": {"epochs": 99}}))
    with pytest.raises(CheckpointError, match="config.epochs"):
        train_segmentor(cfg, _model(cfg, 2), data, tmp_path, show_progress=False)


def test_nan_guard_stops_before_saving(tmp_path, monkeypatch):
    import csad_jax.train_segmentor as ts

    def diverging(model, cfg, steps, mesh=None):
        def step(state, batch, rng):
            return state.replace(step=state.step + 1), {"loss": jnp.float32(jnp.nan)}

        return step

    monkeypatch.setattr(ts, "make_train_step", diverging)
    data = dataclasses.replace(
        toy_data(), holdout_images=np.zeros((0, 64, 64, 3), np.uint8)
    )
    cfg = tiny_config(checkpoint_every_epochs=1)
    with pytest.raises(TrainingError, match="loss is nan at step 2"):
        train_segmentor(cfg, _model(cfg, 2), data, tmp_path, show_progress=False)
    assert not any((tmp_path / "checkpoints").glob("[0-9]*"))


def test_prepare_data_refuses_foreign_or_mismatched_labels(generated, tmp_path):
    root, labels_dir = generated
    cat = load_category(root, CATEGORY)
    cfg = tiny_config()
    meta_path = labels_dir / CATEGORY / "labels.json"
    meta = json.loads(meta_path.read_text())
    foreign = tmp_path / "foreign" / CATEGORY
    shutil.copytree(labels_dir / CATEGORY, foreign)
    (foreign / "labels.json").write_text(
        json.dumps({**meta, "unlabelled": meta["unlabelled"] + ["zzz"]})
    )
    with pytest.raises(DataError, match="zzz, which is not in"):
        prepare_segmentor_data(cfg, cat, load_pseudo_labels(foreign.parent, CATEGORY))
    few = {**meta, "labelled": meta["labelled"][:4]}
    (foreign / "labels.json").write_text(json.dumps(few))
    with pytest.raises(DataError, match="4 labelled images, need at least 5"):
        prepare_segmentor_data(cfg, cat, load_pseudo_labels(foreign.parent, CATEGORY))
    (foreign / "labels.json").write_text(json.dumps(meta))
    small = cfg.image_size // 2
    stem = meta["labelled"][0]
    from PIL import Image

    for kind in ("maps", "instances", "background"):
        Image.fromarray(np.zeros((small, small), np.uint8)).save(
            foreign / kind / f"{stem}.png"
        )
    with pytest.raises(DataError, match="do not belong to these images"):
        prepare_segmentor_data(cfg, cat, load_pseudo_labels(foreign.parent, CATEGORY))


def test_epoch_indices_and_holdout_sizes():
    rng = np.random.default_rng(0)
    idx = _epoch_indices(10, 5, 4, rng)
    assert idx.shape == (5, 4)
    for i in range(0, 4, 2):  # each shuffle contributes two batches of 4
        assert len(set(idx[i : i + 2].ravel())) == 8
    few = _epoch_indices(3, 2, 4, rng)
    assert few.shape == (2, 4) and few.max() < 3
    cfg = tiny_config()
    assert _holdout_count(30, cfg) == 3
    assert _holdout_count(5, cfg) == 1
    assert _holdout_count(4, cfg) == 0
    assert _holdout_count(30, dataclasses.replace(cfg, holdout_fraction=0.0)) == 0


def test_optimizer_is_torch_adam_with_coupled_l2():
    torch = pytest.importorskip("torch")
    cfg = tiny_config(learning_rate=0.01, weight_decay=0.1)
    p0 = np.array([0.5, -1.0, 2.0], np.float32)
    grads = [np.array([0.1, 0.2, -0.3], np.float32), np.array([-1.0, 0.5, 0.0])]
    tx = make_optimizer(cfg)
    params = jnp.asarray(p0)
    opt_state = tx.init(params)
    ref = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([ref], lr=0.01, weight_decay=0.1)
    for g in grads:
        updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, params)
        params = params + updates
        ref.grad = torch.from_numpy(g.astype(np.float32))
        opt.step()
    np.testing.assert_allclose(params, ref.detach().numpy(), rtol=1e-6)


def test_step_updates_batchnorm_with_labelled_then_unlabelled():
    # the same configuration and shapes as the test above: its compiled step
    # is reused (the toy maps use classes 0-2 of K = 4)
    cfg = tiny_config(epochs=6, sup_only_epochs=3)
    data = toy_data()
    model = _model(cfg, 3)
    batch = _labelled_batch(data, [0, 1, 2, 3], np.random.default_rng(0), cfg)
    batch["images_u"] = _normalise(data.unlabelled[:4])
    state0 = init_train_state(model, cfg)
    state, metrics = make_train_step(model, cfg, 2)(state0, batch, state0.rng)
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
    # PyTorch momentum 0.999: running = 0.001 running + 0.999 batch, applied
    # for the labelled pass and then for the unlabelled pass
    conv = model.decoder.reduce.conv
    m_l, m_u = (
        np.asarray(conv(model.features(jnp.asarray(batch[k]))["layer1"])).mean(
            (0, 1, 2)
        )
        for k in ("images_l", "images_u")
    )
    got = state.extra["batch_stats"]["reduce"]["bn"]["mean"]
    want = 0.001 * (0.999 * m_l) + 0.999 * m_u
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
    changed = jax.tree.map(
        lambda a, b: bool(np.any(a != b)), state.params, state0.params
    )
    assert all(jax.tree.leaves(changed))  # every decoder weight was updated


_DATA_PARALLEL_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from segmentor_stand_in import TinyBackbone, tiny_config, toy_data
from csad_jax import training
from csad_jax.models.segmentor import ComponentSegmentor
from csad_jax.train_segmentor import (
    _labelled_batch, _normalise, init_train_state, make_train_step)

assert jax.device_count() == 4, jax.devices()
cfg = tiny_config()
data = toy_data()
model = ComponentSegmentor(TinyBackbone(), 2, cfg.decoder, rngs=nnx.Rngs(0))
batch = _labelled_batch(data, [0, 1, 2, 3], np.random.default_rng(0), cfg)
batch["images_u"] = _normalise(data.unlabelled[:4])
state0 = init_train_state(model, cfg)
out = {}
for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
    mesh = training.data_mesh(devices)
    step = make_train_step(model, cfg, 2, mesh)
    sharded = training.shard_batch(batch, mesh)
    assert len(sharded["images_l"].sharding.device_set) == len(devices)
    state, metrics = step(training.replicate(state0, mesh), sharded, state0.rng)
    out[name] = jax.device_get((state.params, state.extra, metrics))
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == len(devices)
    assert leaf.sharding.is_fully_replicated
diffs = [float(np.max(np.abs(a - b))) for a, b in zip(
    jax.tree.leaves(out["one"]), jax.tree.leaves(out["four"]), strict=True)]
assert max(diffs) < 1e-5, max(diffs)
print("DATA_PARALLEL_OK", max(diffs))
"""


@pytest.mark.slow
def test_data_parallel_step_matches_single_device():
    """One step sharded over 4 host devices equals the single-device step."""
    done = run_script(_DATA_PARALLEL_SCRIPT, devices=4)
    assert "DATA_PARALLEL_OK" in done.stdout, done.stderr[-3000:]
