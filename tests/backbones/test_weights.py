"""Weight discovery, hashing, corrupt files, the .npz cache, Frozen variables."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import optax
import pytest
from flax import nnx

from csad_jax.backbones import BACKBONES, Frozen, load_backbone
from csad_jax.backbones import weights as W
from csad_jax.errors import ConfigError, WeightsError
from tests.backbones.conftest import lite_pypi_path

_HOME_VARS = ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME")


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """HOME and every cache variable point into an empty temporary folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in (*_HOME_VARS, "CSAD_WRN50_2_WEIGHTS", "CSAD_WRN50_2_RACM_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CSAD_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_missing_wrn_weights_message_lists_every_place(empty_home):
    with pytest.raises(WeightsError) as info:
        load_backbone("wide_resnet50_2")
    message = str(info.value)
    assert "\n" not in message
    home = empty_home / "home"
    for expected in (
        "wide_resnet50_2.tv2_in1k",
        "$CSAD_WRN50_2_WEIGHTS (unset)",
        f"{home}/.cache/torch/hub/checkpoints/wide_resnet50_2-9ba9bcbe.pth",
        f"{home}/.cache/huggingface/hub/models--timm--wide_resnet50_2.tv2_in1k/",
        "model.safetensors",
        f"{empty_home}/cache/wide_resnet50_2.tv2_in1k.npz",
        "IMAGENET1K_V2",
        "efficientnet_lite0 works offline",
    ):
        assert expected in message, expected


def test_missing_racm_weights_names_their_own_places(empty_home):
    with pytest.raises(WeightsError, match="CSAD_WRN50_2_RACM_WEIGHTS") as info:
        load_backbone("wide_resnet50_2", weight_set="wide_resnet50_2.racm_in1k")
    assert "wide_resnet50_racm-8234f177.pth" in str(info.value)
    assert "models--timm--wide_resnet50_2.racm_in1k" in str(info.value)


def test_env_var_to_a_missing_file_is_reported(empty_home, monkeypatch):
    monkeypatch.setenv("CSAD_WRN50_2_WEIGHTS", str(empty_home / "nope.pth"))
    with pytest.raises(WeightsError, match="CSAD_WRN50_2_WEIGHTS points to"):
        load_backbone("wide_resnet50_2")


def test_named_set_refuses_a_file_with_another_hash(empty_home, monkeypatch):
    hub = empty_home / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "wide_resnet50_2-9ba9bcbe.pth").write_bytes(b"not the torchvision file")
    monkeypatch.setenv("TORCH_HOME", str(empty_home / "torch"))
    with pytest.raises(WeightsError, match="is not the pinned 9ba9bcbe"):
        load_backbone("wide_resnet50_2")
    fake = empty_home / "lite.pth"
    fake.write_bytes(b"\0" * 64)
    with pytest.raises(WeightsError, match="efficientnet_lite0.pypi; refusing"):
        load_backbone(
            "efficientnet_lite0", weights=fake, weight_set="efficientnet_lite0.pypi"
        )


def test_hf_cache_file_is_found_and_checked_against_its_blob_name(
    empty_home, monkeypatch
):
    monkeypatch.setenv("HF_HOME", str(empty_home / "hf"))
    repo = empty_home / "hf" / "hub" / "models--timm--wide_resnet50_2.tv2_in1k"
    content = b"safetensors bytes"
    good = hashlib.sha256(content).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / good).write_bytes(content)
    (repo / "snapshots" / "rev1").mkdir(parents=True)
    link = repo / "snapshots" / "rev1" / "model.safetensors"
    link.symlink_to(repo / "blobs" / good)
    ws = W.WEIGHT_SETS["wide_resnet50_2.tv2_in1k"]
    path, _ = W.find_source(ws)
    assert path == link
    W.verify_digest(path, good, ws)  # content address matches: accepted
    (repo / "blobs" / good).rename(repo / "blobs" / ("0" * 64))
    link.unlink()
    link.symlink_to(repo / "blobs" / ("0" * 64))
    with pytest.raises(WeightsError, match="corrupt"):
        W.verify_digest(link, good, ws)


@pytest.mark.torch
def test_corrupt_or_truncated_pth_gives_one_line_naming_the_file(tmp_path):
    pytest.importorskip("torch")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(lite_pypi_path(0).read_bytes()[: 1 << 20])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    for path in (truncated, garbage):
        with pytest.raises(WeightsError) as info:
            load_backbone("efficientnet_lite0", weights=path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def _write_safetensors(path, tensors: dict[str, tuple[str, tuple, bytes]]):
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        span = [offset, offset + len(raw)]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": span}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def test_safetensors_reader_dtypes_bf16_and_corruption(tmp_path):
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3)
    bf16 = (np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16).astype("<u2")
    path = tmp_path / "ok.safetensors"
    _write_safetensors(
        path,
        {
            "w": ("F32", (2, 3), f32.tobytes()),
            "b": ("BF16", (2,), bf16.tobytes()),
            "n": ("I64", (), np.int64(5).tobytes()),
        },
    )
    out = W.read_safetensors(path)
    np.testing.assert_array_equal(out["w"], f32)
    np.testing.assert_array_equal(out["b"], [1.5, -2.0])
    assert out["n"] == 5 and list(out) == ["w", "b", "n"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:-4])  # truncated tensor data
    with pytest.raises(WeightsError, match="bad.safetensors"):
        W.read_safetensors(bad)
    bad.write_bytes(b"\xff" * 20)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        W.read_safetensors(bad)


def test_safetensors_reader_agrees_with_the_safetensors_package(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {
        "conv1.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "bn1.running_var": rng.uniform(size=4).astype(np.float16),
        "bn1.num_batches_tracked": np.array(3, np.int64),
    }
    path = tmp_path / "model.safetensors"
    st_numpy.save_file(tensors, str(path))
    ours = W.read_safetensors(path)
    for name, value in tensors.items():
        assert ours[name].dtype == value.dtype
        np.testing.assert_array_equal(ours[name], value)


_NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.modules["torch"] = None  # any `import torch` now fails
    import numpy as np
    from csad_jax.backbones import load_backbone
    from csad_jax.errors import WeightsError
    model = load_backbone("efficientnet_lite0")
    print("checksum", float(np.abs(np.asarray(model.conv_stem.kernel[...])).sum()))
    print("torch-imported", any(m == "torch" or m.startswith("torch.")
                               for m in sys.modules if sys.modules[m] is not None))
    os.environ["CSAD_JAX_CACHE"] = sys.argv[1]
    try:
        load_backbone("efficientnet_lite0")
    except WeightsError as err:
        print("error", err)
    """
)


@pytest.mark.torch
def test_cache_round_trip_needs_no_torch(tmp_path, isolated_weight_cache):
    pytest.importorskip("torch")
    model = load_backbone("efficientnet_lite0")  # converts with torch, writes cache
    cached = isolated_weight_cache / "efficientnet_lite0.pypi.npz"
    params, meta = W.read_converted(cached)
    assert meta["source_sha256"] == W.WEIGHT_SETS["efficientnet_lite0.pypi"].sha256
    assert meta["backbone"] == "efficientnet_lite0" and len(params) == 296 - 49
    empty = tmp_path / "empty_cache"
    out = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_SCRIPT, str(empty)],
        capture_output=True,
        text=True,
        env={**os.environ, "CSAD_JAX_CACHE": str(isolated_weight_cache)},
        check=True,
    ).stdout.splitlines()
    want = float(np.abs(np.asarray(model.conv_stem.kernel[...])).sum())
    assert out[0] == f"checksum {want}"
    assert out[1] == "torch-imported False"
    assert out[2].startswith("error converting ") and "needs PyTorch" in out[2]
    assert "pip install 'csad-jax[labels]'" in out[2]


@pytest.mark.torch
def test_custom_file_is_cached_by_its_hash_and_npz_is_checked(
    tmp_path, isolated_weight_cache
):
    pytest.importorskip("torch")
    custom = tmp_path / "my_lite0.pth"
    shutil.copy(lite_pypi_path(0), custom)
    params, meta = W.load_params("efficientnet_lite0", path=custom)
    digest = W.WEIGHT_SETS["efficientnet_lite0.pypi"].sha256
    npz = isolated_weight_cache / f"efficientnet_lite0-{digest[:16]}.npz"
    assert npz.is_file() and meta["weight_set"] is None
    again, _ = W.load_params("efficientnet_lite0", path=npz)
    assert set(again) == set(params)
    with pytest.raises(WeightsError, match="holds efficientnet_lite0"):
        W.load_params("efficientnet_lite1", path=npz)
    with pytest.raises(WeightsError, match="not from weight set"):
        W.load_params(
            "efficientnet_lite0", path=npz, weight_set="efficientnet_lite0.pypi"
        )
    npz.write_bytes(b"broken")
    with pytest.raises(WeightsError, match="not a readable csad_jax"):
        W.load_params("efficientnet_lite0", path=npz)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown backbone"):
        load_backbone("resnet18")
    with pytest.raises(ConfigError, match="unknown weight set"):
        load_backbone("wide_resnet50_2", weight_set="efficientnet_lite0.pypi")
    assert set(BACKBONES) == {
        "wide_resnet50_2",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    }


class _Probe(nnx.Module):
    """A trainable head on a frozen backbone, as the segmentor will use it."""

    def __init__(self):
        self.backbone = load_backbone("efficientnet_lite0", random_init=True)
        self.head = nnx.Linear(24, 2, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.head(self.backbone(x, stages=("layer1",))["layer1"]).mean()


def test_frozen_variables_are_not_params_and_are_never_updated():
    model = _Probe()
    assert not nnx.state(model.backbone, nnx.Param)
    frozen = nnx.state(model.backbone, Frozen)
    assert len(nnx.to_flat_state(frozen)) == 296 - 49  # no BN counters
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    before = np.asarray(model.backbone.conv_stem.kernel[...]).copy()
    head_before = np.asarray(model.head.kernel[...]).copy()

    @nnx.jit
    def train_step(model, optimizer, x):
        grads = nnx.grad(lambda m: m(x), argnums=nnx.DiffState(0, nnx.Param))(model)
        optimizer.update(model, grads)

    train_step(model, optimizer, np.ones((1, 32, 32, 3), np.float32))
    np.testing.assert_array_equal(model.backbone.conv_stem.kernel[...], before)
    assert not np.array_equal(model.head.kernel[...], head_before)


@pytest.fixture(scope="module")
def torch_wrn_state():
    """A random torchvision wide_resnet50_2 and its state dict (numpy)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    model = torchvision.models.wide_resnet50_2().eval()
    return model, {k: v.numpy() for k, v in model.state_dict().items()}


def _torch_layer3(model, images):
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        x = model.layer3(model.layer2(model.layer1(x)))
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
@pytest.mark.torch
def test_wrn_from_hf_cache_safetensors_without_torch_reader(
    empty_home, monkeypatch, torch_wrn_state
):
    st_numpy = pytest.importorskip("safetensors.numpy")
    model, state = torch_wrn_state
    repo = empty_home / "hf" / "hub" / "models--timm--wide_resnet50_2.tv2_in1k"
    (repo / "blobs").mkdir(parents=True)
    tmp = repo / "blobs" / "incoming"
    st_numpy.save_file(state, str(tmp))
    blob = repo / "blobs" / W.sha256_file(tmp)
    tmp.rename(blob)
    (repo / "snapshots" / "r").mkdir(parents=True)
    (repo / "snapshots" / "r" / "model.safetensors").symlink_to(blob)
    monkeypatch.setenv("HF_HOME", str(empty_home / "hf"))
    ours = load_backbone("wide_resnet50_2")
    assert (empty_home / "cache" / "wide_resnet50_2.tv2_in1k.npz").is_file()
    images = np.random.default_rng(0).normal(size=(1, 96, 128, 3)).astype("f4")
    expected = _torch_layer3(model, images)
    got = np.asarray(ours(images, stages=("layer3",))["layer3"])
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


@pytest.mark.slow
@pytest.mark.torch
def test_official_export_layout_pth_loads_a_layer3_model(tmp_path, torch_wrn_state):
    torch = pytest.importorskip("torch")
    model, state = torch_wrn_state
    export = {
        f"encoder.{k}": torch.from_numpy(v)
        for k, v in state.items()
        if not k.startswith(("layer4.", "fc."))
    }
    export["teacher.proj.weight"] = torch.zeros(512, 1536, 1, 1)
    export["local_st.conv1.weight"] = torch.zeros(256, 3, 4, 4)
    path = tmp_path / "official.pth"
    torch.save(export, path)
    ours = load_backbone("wide_resnet50_2", weights=path)
    assert ours.stages == ("layer1", "layer2", "layer3")
    images = np.random.default_rng(1).normal(size=(1, 96, 128, 3)).astype("f4")
    expected = _torch_layer3(model, images)
    got = np.asarray(ours(images, stages=("layer3",))["layer3"])
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
