"""ComponentSegmentor: shapes of both presets, BatchNorm and decoder vs PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from segmentor_stand_in import TinyBackbone as StandInBackbone

from csad_jax.errors import ConfigError
from csad_jax.models.segmentor import (
    ComponentSegmentor,
    DecoderConfig,
    TorchBatchNorm,
    segment,
)
from csad_jax.train_segmentor import SegmentorConfig


def _images(b=2, s=64, seed=0):
    return np.random.default_rng(seed).normal(size=(b, s, s, 3)).astype(np.float32)


def _numpy_initialised(build, seed=0):
    """`build()` made abstractly, then filled from NumPy (PyTorch-like bounds).

    Avoids compiling one PRNG kernel per weight shape, which dominates the
    runtime of small tests on a busy CPU.
    """
    model = nnx.eval_shape(build)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = [getattr(k, "key", None) for k in path if hasattr(k, "key")][-1]
        if name == "kernel":
            bound = 1.0 / np.sqrt(np.prod(x.shape[:-1]))
            value = rng.uniform(-bound, bound, x.shape)
        elif name == "var":
            value = np.ones(x.shape)
        elif name == "mean":
            value = np.zeros(x.shape)
        elif name == "scale":
            value = rng.uniform(0.5, 1.5, x.shape)
        elif name in ("w1", "w3"):  # stand-in backbone projections
            value = rng.normal(size=x.shape) / np.sqrt(x.shape[0])
        else:
            value = rng.uniform(-0.1, 0.1, x.shape)
        return jnp.asarray(value, x.dtype)

    nnx.update(model, jax.tree_util.tree_map_with_path(fill, nnx.state(model)))
    return model


@pytest.fixture(scope="module")
def small_model():
    """One real (filled) model shared by the tests that compute values."""
    cfg = DecoderConfig(16, 8, 12, aspp_rates=(1, 2, 3))
    return _numpy_initialised(
        lambda: ComponentSegmentor(StandInBackbone(6, 10), 3, cfg, rngs=nnx.Rngs(2))
    )


@pytest.mark.parametrize(
    "preset,channels,size",
    [("fast", (24, 112), 64), ("paper", (256, 1024), 256)],
)
def test_preset_shapes(preset, channels, size):
    cfg = getattr(SegmentorConfig, preset)()
    model = nnx.eval_shape(
        lambda: ComponentSegmentor(
            StandInBackbone(*channels), 3, cfg.decoder, rngs=nnx.Rngs(0)
        )
    )
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    for train in (False, True):
        out = nnx.eval_shape(lambda m, x, t=train: m(x, train=t), model, x)
        assert out.shape == (2, size, size, 4)
    low = jax.ShapeDtypeStruct((2, size // 4, size // 4, channels[0]), jnp.float32)
    high = jax.ShapeDtypeStruct((2, size // 16, size // 16, channels[1]), jnp.float32)
    feats = {"layer1": low, "layer3": high}
    out = nnx.eval_shape(lambda m, f: m.decode(f, (size, size)), model, feats)
    assert out.shape == (2, size, size, 4)


def test_paper_decoder_parameter_count():
    k = 6
    model = nnx.eval_shape(
        lambda: ComponentSegmentor(
            StandInBackbone(256, 1024), k - 1, DecoderConfig(), rngs=nnx.Rngs(0)
        )
    )
    bn = 2 * 256
    want = (
        256 * 48
        + 2 * 48  # reduce
        + 2 * (1024 * 256 + bn)  # ASPP 1x1 and image pool
        + 3 * (9 * 1024 * 256 + bn)  # ASPP dilated 3x3
        + 1280 * 256
        + bn  # fc1
        + 9 * 304 * 256
        + bn  # fc2 conv1
        + 9 * 256 * 256
        + bn  # fc2 conv2
        + 256 * k
        + k  # classifier with bias
    )
    params = nnx.state(model, nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(params)) == want
    # the frozen backbone is not trainable: every Param lives in the decoder
    assert set(params.keys()) == {"decoder"}
    stats = nnx.state(model, nnx.BatchStat)
    assert sum(x.size for x in jax.tree.leaves(stats)) == 2 * (48 + 8 * 256)


def test_decode_segment_and_call_agree(small_model):
    x = _images()
    logits, labels = segment(small_model, x)
    decode = nnx.jit(lambda m, x: m.decode(m.features(x), (64, 64)))
    np.testing.assert_allclose(decode(small_model, x), logits, atol=1e-5)
    assert logits.shape == (2, 64, 64, 4)
    assert labels.shape == (2, 64, 64) and labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, np.argmax(np.asarray(logits), -1))


def test_constructor_checks():
    with pytest.raises(ConfigError, match="num_classes"):
        ComponentSegmentor(StandInBackbone(8, 12), 0, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="stages"):
        ComponentSegmentor(
            StandInBackbone(8, 12), 2, stages=("layer1", "layer2"), rngs=nnx.Rngs(0)
        )


# ---------------------------------------------------------------------------
# PyTorch parity (BatchNorm semantics, whole decoder)
# ---------------------------------------------------------------------------

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def test_batchnorm_matches_torch_momentum_and_unbiased_var():
    cfg = DecoderConfig()
    ours = TorchBatchNorm(5, cfg)
    ref = tnn.BatchNorm2d(5, eps=1e-5, momentum=0.999)
    rng = np.random.default_rng(0)
    for _ in range(2):  # two updates, so the running average is exercised
        x = rng.normal(2.0, 3.0, size=(4, 1, 1, 5)).astype(np.float32)
        ref.train()
        want = _nhwc(ref(_nchw(x)))
        got = ours(jnp.asarray(x), train=True)
        np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(ours.mean[...], ref.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.var[...], ref.running_var.numpy(), rtol=1e-5)
    ref.eval()
    x = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(ours(x, train=False), _nhwc(ref(_nchw(x))), atol=1e-5)


def _cbr(cin, cout, k, pad=0, dil=1):
    return tnn.Sequential(
        tnn.Conv2d(cin, cout, k, padding=pad, dilation=dil, bias=False),
        tnn.BatchNorm2d(cout, momentum=0.999),
        tnn.ReLU(),
    )


class TorchDecoder(tnn.Module):
    """method-spec §3.2 written out in PyTorch (reference for the test)."""

    def __init__(self, low_in, high_in, k, a, low, head, rates):
        super().__init__()
        self.reduce = _cbr(low_in, low, 1)
        self.c0 = _cbr(high_in, a, 1)
        self.atrous = tnn.ModuleList([_cbr(high_in, a, 3, r, r) for r in rates])
        self.pool = _cbr(high_in, a, 1)
        self.fc1 = _cbr(a * (2 + len(rates)), a, 1)
        self.fc2a = _cbr(a + low, head, 3, 1)
        self.fc2b = _cbr(head, head, 3, 1)
        self.cls = tnn.Conv2d(head, k, 1)

    def forward(self, low, high, size):
        low = self.reduce(low)
        high = F.interpolate(high, (size[0] // 16, size[1] // 16), mode="bilinear")
        h = high.shape[2:]
        pooled = self.pool(high.mean((2, 3), keepdim=True))
        branches = [self.c0(high)] + [m(high) for m in self.atrous]
        branches.append(F.interpolate(pooled, h, mode="bilinear"))
        x = self.fc1(torch.cat(branches, 1))
        x = F.interpolate(x, low.shape[2:], mode="bilinear")
        x = self.fc2b(self.fc2a(torch.cat([x, low], 1)))
        return F.interpolate(self.cls(x), size, mode="bilinear")


def _copy_cbr(src, dst):
    conv, bn = dst[0], dst[1]
    kernel = np.asarray(src.conv.kernel[...]).transpose(3, 2, 0, 1)
    conv.weight.data = torch.from_numpy(kernel.copy())
    bn.weight.data = torch.from_numpy(np.asarray(src.bn.scale[...]).copy())
    bn.bias.data = torch.from_numpy(np.asarray(src.bn.bias[...]).copy())


def _copy_decoder(dec, ref):
    pairs = [(dec.reduce, ref.reduce), (dec.aspp.c0, ref.c0), (dec.aspp.pool, ref.pool)]
    pairs += list(zip(dec.aspp.atrous, ref.atrous, strict=True))
    pairs += [(dec.fc1, ref.fc1), (dec.fc2_conv1, ref.fc2a), (dec.fc2_conv2, ref.fc2b)]
    for src, dst in pairs:
        _copy_cbr(src, dst)
    kernel = np.asarray(dec.classifier.kernel[...]).transpose(3, 2, 0, 1)
    ref.cls.weight.data = torch.from_numpy(kernel.copy())
    ref.cls.bias.data = torch.from_numpy(np.asarray(dec.classifier.bias[...]).copy())


def test_decoder_matches_torch_reference_train_and_eval(small_model):
    k, size = 4, (64, 64)
    model = nnx.clone(small_model)
    ref = TorchDecoder(6, 10, k, 16, 8, 12, (1, 2, 3))
    _copy_decoder(model.decoder, ref)
    ref = ref.double()
    decode = nnx.jit(
        lambda m, f, train: m.decode(f, size, train=train), static_argnums=2
    )
    rng = np.random.default_rng(3)
    with jax.default_matmul_precision("highest"):
        for train in (True, True, False):  # two BN updates, then running stats
            feats = {
                "layer1": rng.normal(size=(3, 16, 16, 6)).astype(np.float32),
                "layer3": np.abs(rng.normal(size=(3, 4, 4, 10))).astype(np.float32),
            }
            ref.train(train)
            want = ref(*(_nchw(feats[s]).double() for s in feats), size)
            got = decode(model, feats, train)
            np.testing.assert_allclose(got, _nhwc(want), atol=1e-5)
    # running statistics after two training batches agree too
    np.testing.assert_allclose(
        model.decoder.aspp.pool.bn.var[...], ref.pool[1].running_var.numpy(), rtol=1e-4
    )
