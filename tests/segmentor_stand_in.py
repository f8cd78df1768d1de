"""Stand-ins for segmentor tests: a tiny frozen backbone, toy data, GT labels."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import ndimage

from csad_jax.data.image_io import read_mask
from csad_jax.data.pseudo_labels import LabelledMaps, write_pseudo_labels
from csad_jax.models.segmentor import DecoderConfig
from csad_jax.train_segmentor import SegmentorConfig, SegmentorData


class Fixed(nnx.Variable):
    """Stand-in for csad_jax.backbones.Frozen (not an nnx.Param)."""


class TinyBackbone(nnx.Module):
    """Frozen random strided projections: layer1 (stride 4), layer3 (stride 16)."""

    def __init__(self, c1: int = 8, c3: int = 12, seed: int = 0):
        self.channels = {"layer1": c1, "layer3": c3}
        rng = np.random.default_rng(seed)
        self.w1 = Fixed(jnp.asarray(rng.normal(size=(48, c1)) * 0.2, jnp.float32))
        w3 = rng.normal(size=(16 * c1, c3)) / np.sqrt(16 * c1)
        self.w3 = Fixed(jnp.asarray(w3, jnp.float32))

    def __call__(self, images, stages=("layer1", "layer3")):
        def patches(x, p):
            b, h, w, c = x.shape
            x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
            return x.reshape(b, h // p, w // p, p * p * c)

        l1 = jax.nn.relu(patches(images, 4) @ self.w1[...])
        l3 = jax.nn.relu(patches(l1, 4) @ self.w3[...])
        return {s: {"layer1": l1, "layer3": l3}[s] for s in stages}


def tiny_config(**overrides) -> SegmentorConfig:
    """A 64 px, narrow-decoder configuration for tests."""
    values = dict(
        preset="test",
        image_size=64,
        decoder=DecoderConfig(8, 8, 8),
        epochs=4,
        sup_only_epochs=2,
        checkpoint_every_epochs=2,
    )
    values.update(overrides)
    return SegmentorConfig(**values)


COLORS = np.array([[90, 90, 100], [220, 40, 40], [40, 200, 60]], np.uint8)


def _toy_sample(rng, size):
    img = np.empty((size, size, 3), np.uint8)
    img[:] = COLORS[0]
    lab = np.zeros((size, size), np.uint8)
    inst = np.zeros((size, size), np.int32)
    bg = np.ones((size, size), bool)
    bg[size // 8 : -size // 8, size // 8 : -size // 8] = False
    img[bg] = 20
    spots = [(1, 0.3, 0.3), (2, 0.7, 0.65), (1, 0.3, 0.7)]
    for k, (cls, cy, cx) in enumerate(spots, start=1):
        r = size // 10
        y = int(cy * size) + int(rng.integers(-2, 3))
        x = int(cx * size) + int(rng.integers(-2, 3))
        box = (slice(y - r, y + r), slice(x - r // 2, x + r // 2))
        img[box], lab[box], inst[box] = COLORS[cls], cls, k
    noise = rng.integers(-8, 9, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8), lab, inst, bg


def toy_data(n_lab=8, n_unl=8, n_hold=2, size=64, seed=0) -> SegmentorData:
    """In-memory training arrays with two classes of coloured boxes."""
    rng = np.random.default_rng(seed)
    samples = [_toy_sample(rng, size) for _ in range(n_lab + n_hold)]
    unl = np.stack([_toy_sample(rng, size)[0] for _ in range(n_unl)])
    img, lab, inst, bg = (np.stack(x) for x in zip(*samples, strict=True))
    return SegmentorData(
        2,
        img[:n_lab],
        lab[:n_lab],
        inst[:n_lab],
        bg[:n_lab],
        unl,
        img[n_lab:],
        lab[n_lab:],
        "toy",
    )


def write_true_map_labels(data_root, category, out, labelled_stems, all_stems):
    """Stand-in label set from the generator's TRUE component maps (tests only)."""
    maps = {}
    for stem in labelled_stems:
        true = read_mask(
            data_root / category / "components" / "train" / "good" / f"{stem}.png"
        )
        inst, _ = ndimage.label(true > 0)
        maps[stem] = LabelledMaps(
            true, inst.astype(np.int32), np.zeros_like(true, bool)
        )
    num = max(int(m.class_map.max()) for m in maps.values())
    rest = sorted(set(all_stems) - set(labelled_stems))
    write_pseudo_labels(out, category, maps, rest, num, backend="test stand-in")
    return out
