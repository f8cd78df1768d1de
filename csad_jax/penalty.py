"""Offline out-of-distribution penalty images for the local student.

The official code draws penalty images from Tiny-ImageNet (Hugging Face
`Maysee/tiny-imagenet`) through Resize 512 -> RandomGrayscale(0.3) ->
CenterCrop 256, i.e. the upsampled centre of a natural photograph. Nothing may be
downloaded here, so the source is:

* the photographs bundled with scikit-image (`skimage.data`: astronaut, chelsea,
  coffee, rocket, camera, ...; only files shipped in the wheel), and
* procedural textures: value noise at random scales, stripes at random angles,
  checkerboards and smooth colour blobs.

Each sample takes one source uniformly at random (photographs and textures with
equal probability), then a random square crop covering 25-100 % of the shorter
side, a random horizontal/vertical flip, grayscale with probability 0.3 (as
official) and a PIL bilinear resize to the training size. Sampling is a pure
function of a NumPy generator, so a step's penalty image is reproducible.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

log = logging.getLogger("csad_jax")

# Photographs shipped inside the scikit-image wheel (no pooch download needed).
PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "moon",
    "brick",
    "grass",
    "gravel",
    "colorwheel",
    "cell",
    "page",
    "text",
)
GRAYSCALE_P = 0.3
# torchvision's rgb_to_grayscale weights (RandomGrayscale, ColorJitter).
GRAY_WEIGHTS = np.array([0.2989, 0.587, 0.114], np.float32)


def load_photographs(names=PHOTO_NAMES) -> list[np.ndarray]:
    """The bundled scikit-image photographs as uint8 [H, W, 3] arrays."""
    import skimage.data

    photos = []
    for name in names:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception as err:  # a trimmed install may lack a file: skip it
            log.warning("penalty photograph %s unavailable (%s)", name, err)
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        photos.append(np.ascontiguousarray(img[..., :3].astype(np.uint8)))
    if not photos:
        log.warning("no scikit-image photographs; penalty uses textures only")
    return photos


def _value_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour noise upsampled from a random coarse grid, [size, size, 3]."""
    cells = int(rng.integers(2, 65))
    coarse = rng.random((cells, cells, 3), dtype=np.float32)
    return _resize(coarse, size)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sinusoidal stripes at a random angle and period in two random colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.02, 0.3)
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * phase)[..., None]
    c0, c1 = rng.random((2, 3), dtype=np.float32)
    return c0 * wave + c1 * (1 - wave)


def _checkerboard(rng: np.random.Generator, size: int) -> np.ndarray:
    """A checkerboard with a random cell count in two random colours."""
    cells = int(rng.integers(2, 33))
    yy, xx = np.mgrid[0:size, 0:size] * cells // size
    mask = ((yy + xx) % 2).astype(np.float32)[..., None]
    c0, c1 = rng.random((2, 3), dtype=np.float32)
    return c0 * mask + c1 * (1 - mask)


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth Gaussian colour blobs on a random background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.broadcast_to(rng.random(3, dtype=np.float32), (size, size, 3)).copy()
    for _ in range(int(rng.integers(3, 16))):
        cy, cx = rng.random(2)
        sigma = rng.uniform(0.03, 0.25)
        w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))[..., None]
        out = out * (1 - w) + rng.random(3, dtype=np.float32) * w
    return out


TEXTURES = (_value_noise, _stripes, _checkerboard, _blobs)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """PIL bilinear resize of a float [h, w, 3] image in [0, 1] to [size, size, 3]."""
    chans = [
        np.asarray(
            Image.fromarray(img[..., c].astype(np.float32), mode="F").resize(
                (size, size), Image.BILINEAR
            )
        )
        for c in range(3)
    ]
    return np.stack(chans, axis=-1)


class PenaltySource:
    """Random out-of-distribution images for the penalty loss.

    Args:
      size: output side (square, the training input size).
      photos: uint8 [H, W, 3] photographs; default: `load_photographs()`.
    """

    def __init__(self, size: int, photos: list[np.ndarray] | None = None):
        self.size = int(size)
        self.photos = load_photographs() if photos is None else list(photos)

    def _photo(self, rng: np.random.Generator) -> np.ndarray:
        img = self.photos[int(rng.integers(len(self.photos)))]
        h, w = img.shape[:2]
        side = int(rng.uniform(0.25, 1.0) * min(h, w))
        side = max(side, 8)
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[y : y + side, x : x + side])
        crop = crop.resize((self.size, self.size), Image.BILINEAR)
        return np.asarray(crop, np.float32) / 255.0

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One penalty image, float32 [size, size, 3] in [0, 1]."""
        if self.photos and rng.random() < 0.5:
            img = self._photo(rng)
        else:
            img = TEXTURES[int(rng.integers(len(TEXTURES)))](rng, self.size)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[::-1]
        if rng.random() < GRAYSCALE_P:
            img = np.repeat((img @ GRAY_WEIGHTS)[..., None], 3, axis=-1)
        return np.clip(np.ascontiguousarray(img, np.float32), 0.0, 1.0)

    def batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` penalty images, float32 [n, size, size, 3] in [0, 1]."""
        return np.stack([self.sample(rng) for _ in range(n)])
