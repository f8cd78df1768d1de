"""`csad export`: the fused inference as a self-contained `jax.export` artifact.

The artifact is one `.npz` file holding

- `header`: UTF-8 JSON (input size and layout, normalisation, batch sizes,
  outputs, category, versions);
- `exported_b<B>`: the serialised `jax.export.Exported` of the fused inference
  for a fixed batch size B (1 and the run's batch size; other batches are
  padded), calling convention `fn(weights, images) -> outputs`;
- `w00000`, `w00001`, ...: the weights and calibration, as the flat list of
  arrays `weights` (builtin containers only, so loading needs no flax).

Loading and predicting (`load_artifact`, `Artifact.predict`) use only jax,
numpy and `csad_jax.data.image_io`; this module imports the training code only
inside `export_run`.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from csad_jax.data.image_io import IMAGENET_MEAN, IMAGENET_STD, is_hw_pair
from csad_jax.errors import CheckpointError, ConfigError, CSADError, first_line

FORMAT = "csad-jax-export"
# Lowering platforms `jax.export` accepts.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
FORMAT_VERSION = 1
OUTPUTS = ("fused", "patch_histogram", "lgst", "anomaly_map", "segmentation")
# Heatmap display range of the combined LGST map: 0.1 per map is the level of
# its validation 99.5 % quantile, so 0.2 = both maps at that level.
HEATMAP_RANGE = (0.0, 0.2)
_STOPS = np.array(
    [[0, 0, 64], [0, 96, 255], [0, 224, 160], [255, 224, 0], [255, 32, 0]], np.float32
)


# ---------------------------------------------------------------------------
# Loading and running (no training code)
# ---------------------------------------------------------------------------


class Artifact:
    """A loaded export: header, per-batch-size Exported, flat weights."""

    def __init__(self, header: dict, exported: dict, weights: list[np.ndarray]):
        self.header = header
        self.exported = exported
        self.weights = [jnp.asarray(w) for w in weights]

    @property
    def image_size(self) -> int:
        """Square input side S."""
        return int(self.header["input"]["shape"][1])

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Runs the exported inference on ImageNet-normalised images.

        Args:
          images: float32 [N, S, S, 3], ImageNet-normalised.

        Returns:
          numpy arrays named as in OUTPUTS ([N] scores, [N, S, S] maps).
        """
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ConfigError(f"artifact input must be [N, {s}, {s}, 3]")
        sizes = sorted(self.exported)
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), sizes[-1]):
            chunk = np.asarray(images[start : start + sizes[-1]], np.float32)
            size = next(b for b in sizes if b >= len(chunk))
            pad = size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out = self.exported[size].call(self.weights, jnp.asarray(chunk))
            for key in OUTPUTS:
                parts.setdefault(key, []).append(np.asarray(out[key])[: size - pad])
        return {k: np.concatenate(v) for k, v in parts.items()}


def _check_header(header) -> None:
    """ValueError unless `header` has the fields `Artifact` relies on."""
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise ValueError("not a csad-jax export (format 1)")
    sizes, count = header.get("batch_sizes"), header.get("num_weights")
    if not sizes or not all(isinstance(b, int) and b > 0 for b in sizes):
        raise ValueError(f"bad batch_sizes {sizes!r}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"bad num_weights {count!r}")
    shape = header.get("input", {}).get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and isinstance(shape[1], int)):
        raise ValueError(f"bad input shape {shape!r}")
    train = header.get("train_image_size")
    if train is not None and not is_hw_pair(train):
        raise ValueError(f"bad train_image_size {train!r}")


def _check_signature(exported: dict, weights: list[np.ndarray], size: int) -> None:
    """ValueError unless every Exported takes exactly these weights and images."""
    for batch, exp in exported.items():
        avals = exp.in_avals
        want = [(tuple(w.shape), np.dtype(w.dtype)) for w in weights]
        want.append(((batch, size, size, 3), np.dtype(np.float32)))
        got = [(tuple(a.shape), np.dtype(a.dtype)) for a in avals]
        if got != want:
            raise ValueError(
                f"the batch-{batch} function does not take the stored weights and "
                f"[{batch}, {size}, {size}, 3] images"
            )


def load_artifact(path: str | Path) -> Artifact:
    """Reads an artifact written by `export_run`.

    Raises CheckpointError if it is unusable or was not lowered for this
    machine's platform.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the artifact file (.npz)")
    if not path.is_file():
        raise CheckpointError(f"export artifact {path} not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a csad-jax export artifact (not an .npz archive; "
            "write one with csad export)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode("utf-8"))
            _check_header(header)
            exported = {
                b: _deserialize(data[f"exported_b{b}"], b)
                for b in header["batch_sizes"]
            }
            weights = [data[f"w{i:05d}"] for i in range(header["num_weights"])]
        _check_signature(exported, weights, int(header["input"]["shape"][1]))
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        zipfile.BadZipFile,
    ) as err:
        raise CheckpointError(
            f"{path} is not a usable export artifact ({err})"
        ) from None
    here = jax.export.default_export_platform()
    platforms = header.get("platforms", [])
    if here not in platforms:
        raise CheckpointError(
            f"{path} was exported for {', '.join(platforms)} but this machine runs "
            f"{here}; export it again with --platforms {','.join([*platforms, here])}"
        )
    return Artifact(header, exported, weights)


def _deserialize(blob: np.ndarray, batch: int) -> jax.export.Exported:
    """One serialised Exported; ValueError if the bytes are damaged."""
    try:
        return jax.export.deserialize(bytearray(blob))
    except Exception as err:  # flatbuffer and StableHLO errors have many types
        raise ValueError(
            f"the batch-{batch} function is damaged ({first_line(err)})"
        ) from None


def heatmap_png(amap: np.ndarray, image: np.ndarray) -> Image.Image:
    """The anomaly map as a colour heatmap blended over its image.

    Args:
      amap: [h, w] combined LGST map (any size; resized to the image).
      image: uint8 [H, W, 3] original image.

    Returns:
      an RGB PIL image [H, W].
    """
    h, w = image.shape[:2]
    lo, hi = HEATMAP_RANGE
    resized = Image.fromarray(np.asarray(amap, np.float32)).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    t = np.clip((np.asarray(resized) - lo) / (hi - lo), 0.0, 1.0)
    pos = t * (len(_STOPS) - 1)
    i = np.minimum(pos.astype(int), len(_STOPS) - 2)
    frac = (pos - i)[..., None]
    colour = _STOPS[i] * (1 - frac) + _STOPS[i + 1] * frac
    blended = 0.5 * image.astype(np.float32) + 0.5 * colour
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def normalise_images(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> float32 ImageNet-normalised (the artifact input)."""
    x = images_u8.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
        IMAGENET_STD, np.float32
    )


# ---------------------------------------------------------------------------
# Exporting (imports the model code)
# ---------------------------------------------------------------------------


def _header(model, batch_sizes, num_weights: int, platforms) -> dict:
    from csad_jax.model import versions

    s = model.image_size
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "category": model.meta.get("category"),
        "preset": model.config.preset,
        "backbone": model.meta.get("backbone"),
        "num_classes": model.num_classes,
        "train_image_size": model.meta.get("train_image_size"),
        "input": {
            "shape": [None, s, s, 3],
            "dtype": "float32",
            "layout": "NHWC",
            "resize": f"PIL antialiased bilinear of the RGB image to {s}x{s}",
            "normalization": {
                "scale": "1/255",
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
            },
        },
        "batch_sizes": list(batch_sizes),
        "calling_convention": "exported_b<B>.call(weights, images[B, S, S, 3])",
        "outputs": {
            "fused": "[B] fused anomaly score",
            "patch_histogram": "[B] patch histogram branch score",
            "lgst": "[B] LGST branch score",
            "anomaly_map": "[B, S, S] combined normalised LGST map",
            "segmentation": "[B, S, S] int32 component classes (0 = background)",
        },
        "heatmap_range": list(HEATMAP_RANGE),
        "num_weights": num_weights,
        "platforms": list(platforms),
        "versions": versions(),
    }


def export_run(
    run_dir: str | Path, out: str | Path, platforms: tuple[str, ...] | None = None
) -> Path:
    """Serialises the fused inference of a fitted run to one artifact file.

    Args:
      run_dir: a fitted run directory.
      out: the artifact file to write (.npz added if missing).
      platforms: lowering platforms (default: the current backend).

    Returns:
      the written path.
    """
    from csad_jax.model import load_model

    return export_model(load_model(run_dir), out, platforms)


def export_platforms(platforms: tuple[str, ...] | None) -> tuple[str, ...]:
    """The lowering platforms, default the current one; ConfigError if unknown."""
    platforms = tuple(platforms or (jax.export.default_export_platform(),))
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown:
        raise ConfigError(
            f"unknown export platform {', '.join(unknown)}; choose from "
            f"{', '.join(PLATFORMS)}"
        )
    return platforms


def artifact_path(out: str | Path) -> Path:
    """The file `csad export --out OUT` writes: OUT, with `.npz` added if missing.

    Raises ConfigError when OUT is an existing folder (name a file inside it).
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(
            f"{out} is a folder; give the artifact file, e.g. {out}/model.npz"
        )
    if out.suffix.lower() != ".npz":
        out = out.with_name(out.name + ".npz")
    if out.exists() and not _is_artifact(out):
        raise ConfigError(
            f"{out} exists and is not a csad-jax export; refusing to replace it"
        )
    return out


def _is_artifact(path: Path) -> bool:
    """Whether `path` is a file `csad export` wrote (it may then be replaced)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode("utf-8"))
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        return False
    return isinstance(header, dict) and header.get("format") == FORMAT


def export_model(model, out: str | Path, platforms: tuple[str, ...] | None = None):
    """`export_run` for an already loaded `csad_jax.model.CSADModel`."""
    from csad_jax.model import batch_buckets

    fn, state, calib = model.inference_fn()
    leaves, treedef = jax.tree.flatten((state, calib))
    weights = [np.asarray(jax.device_get(x)) for x in leaves]

    def exported_fn(flat, images):
        state, calib = jax.tree.unflatten(treedef, flat)
        out = fn(state, calib, images)
        return {k: out[k] for k in OUTPUTS}

    platforms = export_platforms(platforms)
    batch_sizes = batch_buckets(model.config.batch_size)
    s = model.image_size
    specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]
    blobs = {}
    for b in batch_sizes:
        image_spec = jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32)
        exp = jax.export.export(jax.jit(exported_fn), platforms=platforms)(
            specs, image_spec
        )
        blobs[f"exported_b{b}"] = np.frombuffer(exp.serialize(), np.uint8)
    header = _header(model, batch_sizes, len(weights), platforms)
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
    arrays.update(blobs)
    arrays.update({f"w{i:05d}": w for i, w in enumerate(weights)})
    out = artifact_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    tmp.replace(out)
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad export`."""
    parser.add_argument("--run", required=True, type=Path, help="fitted run folder")
    parser.add_argument("--out", required=True, type=Path, help="artifact file (.npz)")
    parser.add_argument(
        "--platforms",
        help="comma-separated lowering platforms, e.g. cpu,cuda (default: current)",
    )


def run(args: argparse.Namespace) -> int:
    """Run `csad export`."""
    platforms = None
    if args.platforms:
        platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    platforms = export_platforms(platforms)
    artifact_path(args.out)
    if sys.stderr.isatty():
        print(
            f"csad export: loading {args.run}, lowering for {', '.join(platforms)}",
            file=sys.stderr,
            flush=True,
        )
    try:
        path = export_run(args.run, args.out, platforms)
    except OSError as err:
        raise CSADError(f"cannot write {args.out}: {err}") from None
    size_mb = path.stat().st_size / 1e6
    print(f"exported {args.run} to {path} ({size_mb:.1f} MB)")
    sys.stdout.flush()
    return 0
