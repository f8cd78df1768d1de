"""A tiny frozen stand-in backbone and config for LGST tests (no real weights)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from csad_jax.lgst import LGSTNetworks
from csad_jax.models.global_student import GlobalStudent
from csad_jax.models.local_student import LocalStudent
from csad_jax.models.teacher import Teacher
from csad_jax.train_lgst import LGSTConfig


class StandInFrozen(nnx.Variable):
    """Frozen stand-in weights (like csad_jax.backbones.Frozen)."""


class StandInBackbone(nnx.Module):
    """Two strided random convs: layer2 (stride 8, 6 ch), layer3 (stride 16, 10 ch)."""

    channels = {"layer2": 6, "layer3": 10}
    strides = {"layer2": 8, "layer3": 16}

    def __init__(self, seed: int = 0):
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.w2 = StandInFrozen(jax.random.normal(k1, (8, 8, 3, 6)) / 8.0)
        self.w3 = StandInFrozen(jax.random.normal(k2, (2, 2, 6, 10)) / 3.0)

    def __call__(self, images, stages=("layer2", "layer3")):
        dn = ("NHWC", "HWIO", "NHWC")
        conv = jax.lax.conv_general_dilated
        l2 = jnp.tanh(conv(images, self.w2[...], (8, 8), "VALID", dimension_numbers=dn))
        l3 = jnp.tanh(conv(l2, self.w3[...], (2, 2), "VALID", dimension_numbers=dn))
        feats = {"layer2": l2, "layer3": l3}
        return {s: feats[s] for s in stages}


def tiny_config(**overrides) -> LGSTConfig:
    """A 128 px, narrow LGST config that trains in seconds on CPU."""
    values = dict(
        backbone="stand_in",
        image_size=128,
        out_dim=8,
        student_widths=(4, 8),
        global_base_dim=8,
        iterations=4,
        batch_size=2,
        learning_rate=5e-3,
        log_every=2,
        checkpoint_every=2,
        eval_batch_size=4,
    )
    values.update(overrides)
    return LGSTConfig(**values)


def numpy_init(factory, seed: int):
    """Builds a module abstractly and fills it with host-random weights.

    Avoids compiling one random-init program per parameter shape (slow on a
    loaded CPU); the real initialisation is exercised by the training tests.
    """
    model = nnx.eval_shape(factory)
    rng = np.random.default_rng(seed)

    def fill(leaf):
        bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 0.1
        return jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(np.float32))

    nnx.update(model, jax.tree.map(fill, nnx.state(model)))
    return model


def tiny_networks(config: LGSTConfig, seed: int = 0) -> LGSTNetworks:
    """LGST networks for `config` with the stand-in backbone, host-initialised."""
    teacher = Teacher(
        StandInBackbone(seed),
        StandInBackbone.channels,
        out_dim=config.out_dim,
        seed=seed,
    )
    local = numpy_init(
        lambda: LocalStudent(config.out_dim, config.student_widths, rngs=nnx.Rngs(0)),
        seed,
    )
    glob = numpy_init(
        lambda: GlobalStudent(
            config.image_size, config.out_dim, config.global_base_dim, rngs=nnx.Rngs(0)
        ),
        seed + 1,
    )
    return LGSTNetworks(teacher, local, glob)
