"""Tests for the LGST local student and global student."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lgst_stand_in import numpy_init

from csad_jax.errors import ConfigError
from csad_jax.models.global_student import GlobalStudent, decoder_sizes
from csad_jax.models.local_student import LocalStudent, conv_fast_weight_grad

forward = nnx.jit(lambda module, x: module(x))


@pytest.fixture(scope="module")
def local_student():
    return numpy_init(lambda: LocalStudent(8, (8, 12), rngs=nnx.Rngs(0)), 3)


@pytest.fixture(scope="module")
def global_student():
    return numpy_init(lambda: GlobalStudent(128, 6, 8, rngs=nnx.Rngs(0)), 4)


def _param_count(module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("size", [64, 96])
def test_local_student_shapes(local_student, size):
    out = forward(local_student, jnp.zeros((2, size, size, 3)))
    assert set(out) == {"local_head", "global_head"}
    for value in out.values():
        assert value.shape == (2, size // 4, size // 4, 8)


def test_official_parameter_counts():
    local = nnx.eval_shape(lambda: LocalStudent(rngs=nnx.Rngs(0)))
    # conv1..conv5 + two 1x1 heads of the official LocalStudent(512).
    expected = 3 * 256 * 16 + 256 + 256 * 512 * 16 + 512
    expected += (512 * 512 + 512) + (512 * 512 * 9 + 512) + (512 * 512 * 16 + 512)
    expected += 2 * (512 * 512 + 512)
    assert _param_count(local) == expected == 9_452_800
    glob = nnx.eval_shape(lambda: GlobalStudent(rngs=nnx.Rngs(0)))
    encoder = (3 * 32 + 32 * 32 + 32 * 64 + 64 * 64 * 2) * 16 + 32 * 2 + 64 * 3
    bottleneck = 64 * 64 * 64 + 64
    decoder = 6 * (64 * 64 * 16 + 64) + (64 * 64 * 9 + 64) + (64 * 512 * 9 + 512)
    assert _param_count(glob) == encoder + bottleneck + decoder


def test_local_student_receptive_field_is_33(local_student):
    images = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))

    def pixel(x):
        return jnp.sum(local_student(x)["local_head"][0, 8, 8])

    grad = np.abs(np.asarray(jax.jit(jax.grad(pixel))(images))[0]).sum(-1)
    rows, cols = np.nonzero(grad)
    assert rows.max() - rows.min() + 1 == 33
    assert cols.max() - cols.min() + 1 == 33
    window = grad[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert np.all(window > 0)


def test_local_student_rejects_bad_size(local_student):
    with pytest.raises(ConfigError, match="divisible by 4"):
        local_student(jnp.zeros((1, 66, 66, 3)))


def test_global_student_decoder_sizes():
    assert decoder_sizes(256) == (3, 8, 15, 32, 63, 127, 64)
    assert decoder_sizes(128) == (1, 4, 7, 16, 31, 63, 32)
    for bad in (64, 100, 200, 255):
        with pytest.raises(ConfigError, match="multiples of 64 and at least 128"):
            decoder_sizes(bad)


def test_global_student_shapes_and_size_check(global_student):
    assert forward(global_student, jnp.zeros((2, 128, 128, 3))).shape == (2, 32, 32, 6)
    with pytest.raises(ConfigError, match="built for 128x128"):
        global_student(jnp.zeros((1, 256, 256, 3)))


def test_global_student_dropout_only_in_training(global_student):
    x = jax.random.normal(jax.random.key(0), (2, 128, 128, 3))
    run = nnx.jit(lambda m, x, key: m(x, dropout_rng=key))
    eval1, eval2 = forward(global_student, x), forward(global_student, x)
    np.testing.assert_array_equal(eval1, eval2)
    train1 = run(global_student, x, jax.random.key(1))
    train2 = run(global_student, x, jax.random.key(2))
    assert not np.allclose(train1, eval1)
    assert not np.allclose(train1, train2)


# ---------------------------------------------------------------------------
# Parity with PyTorch modules written from method-spec §5.2-5.3.
# ---------------------------------------------------------------------------


def _copy_conv(conv, tconv):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        tconv.weight.copy_(
            torch.from_numpy(np.array(conv.kernel[...]).transpose(3, 2, 0, 1).copy())
        )
        tconv.bias.copy_(torch.from_numpy(np.array(conv.bias[...])))


def _to_torch(x):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _from_torch(x):
    return x.detach().numpy().transpose(0, 2, 3, 1)


def test_local_student_matches_torch_reference(local_student):
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional
    w1, w2, d = 8, 12, 8
    ours = local_student
    convs = [
        nn.Conv2d(3, w1, 4, padding=3),
        nn.Conv2d(w1, w2, 4, padding=3),
        nn.Conv2d(w2, w2, 1),
        nn.Conv2d(w2, w2, 3, padding=1),
        nn.Conv2d(w2, w2, 4),
        nn.Conv2d(w2, d, 1),
        nn.Conv2d(w2, d, 1),
    ]
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "local_head", "global_head"]
    for name, tconv in zip(names, convs, strict=True):
        _copy_conv(getattr(ours, name), tconv)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    t = _to_torch(x)
    t = F.avg_pool2d(F.relu(convs[0](t)), 2, 2, 1)
    t = F.avg_pool2d(F.relu(convs[1](t)), 2, 2, 1)
    t = F.relu(convs[4](F.relu(convs[3](F.relu(convs[2](t))))))
    t = F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)
    out = forward(ours, jnp.asarray(x))
    np.testing.assert_allclose(out["local_head"], _from_torch(convs[5](t)), atol=1e-5)
    np.testing.assert_allclose(out["global_head"], _from_torch(convs[6](t)), atol=1e-5)


def _load_conv(conv, tconv):
    """Sets an (abstract) nnx.Conv's weights from a torch conv."""
    kernel = tconv.weight.detach().numpy().transpose(2, 3, 1, 0)
    conv.kernel = nnx.Param(jnp.asarray(kernel))
    conv.bias = nnx.Param(jnp.asarray(tconv.bias.detach().numpy()))


def test_global_student_matches_torch_reference_at_256():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional
    torch.manual_seed(0)
    channels = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 64)]
    enc = [nn.Conv2d(i, o, 4, 2, 1) for i, o in channels]
    bottleneck = nn.Conv2d(64, 64, 8)
    dec = [nn.Conv2d(64, 64, 4, 1, 2) for _ in range(6)]
    deconv7, deconv8 = nn.Conv2d(64, 64, 3, 1, 1), nn.Conv2d(64, 16, 3, 1, 1)
    # Built abstractly and filled from torch: avoids compiling 16 random inits.
    ours = nnx.eval_shape(lambda: GlobalStudent(256, 16, 64, rngs=nnx.Rngs(0)))
    for conv, tconv in zip(ours.encoder, enc, strict=True):
        _load_conv(conv, tconv)
    for conv, tconv in zip(ours.decoder, dec, strict=True):
        _load_conv(conv, tconv)
    _load_conv(ours.bottleneck, bottleneck)
    _load_conv(ours.deconv7, deconv7)
    _load_conv(ours.deconv8, deconv8)
    x = np.random.default_rng(1).normal(size=(1, 256, 256, 3)).astype(np.float32)
    with torch.no_grad():
        t = _to_torch(x)
        for conv in enc:
            t = F.relu(conv(t))
        t = bottleneck(t)
        for conv, size in zip(dec, (3, 8, 15, 32, 63, 127), strict=True):
            t = F.relu(conv(F.interpolate(t, size=size, mode="bilinear")))
        t = F.interpolate(t, size=64, mode="bilinear")
        t = deconv8(F.relu(deconv7(t)))
    out = forward(ours, jnp.asarray(x))
    np.testing.assert_allclose(out, _from_torch(t), atol=1e-5)


@pytest.mark.parametrize(
    "kernel,stride,padding", [(4, 1, 3), (3, 1, 1), (1, 1, 0), (4, 2, 1)]
)
def test_fast_conv_matches_lax_conv_and_gradients(kernel, stride, padding):
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 5))
    g = jax.random.normal(jax.random.key(2), (2, 16, 16, 5))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    pads = ((padding, padding), (padding, padding))

    def loss(conv, x, w):
        y = conv(x, w, (stride, stride), pads, dimension_numbers=dn)
        return jnp.sum(y * g[:, : y.shape[1], : y.shape[2]])

    ref = jax.jit(
        jax.grad(functools.partial(loss, jax.lax.conv_general_dilated), (0, 1))
    )
    fast = jax.jit(jax.grad(functools.partial(loss, conv_fast_weight_grad), (0, 1)))
    for r, f in zip(ref(x, w), fast(x, w), strict=True):
        np.testing.assert_allclose(f, r, rtol=1e-4, atol=1e-4)
