"""`csad predict`: score image files with a fitted run or an exported artifact.

Prints one JSON line per image on stdout (`image`, `fused`, `patch_histogram`,
`lgst`, and `heatmap` when --out is given; a score that is not finite is null,
with a warning) and writes a heatmap PNG per image into --out (see
`heatmap_paths` for the names). Images of any mode are decoded to RGB and
resized to the model input like the training images; an image whose size
differs from the training images is still scored, with a one-line warning.
With --artifact only jax, numpy and the image decoding helpers are used (no
training code).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from csad_jax.data.image_io import read_rgb, resize_rgb
from csad_jax.errors import ConfigError, CSADError
from csad_jax.export import heatmap_png, load_artifact, normalise_images

SCORE_KEYS = ("fused", "patch_histogram", "lgst")


def load_images(paths, size: int, train_size) -> tuple[list[np.ndarray], np.ndarray]:
    """Decodes images (any mode) and resizes them to the model input.

    Args:
      paths: image files.
      size: model input side S.
      train_size: (H, W) of the training images, or None (no size check).

    Returns:
      (the decoded uint8 [H, W, 3] originals, uint8 [N, S, S, 3] resized).
    """
    originals, resized = [], []
    for path in paths:
        image = read_rgb(path)
        if train_size is not None and tuple(image.shape[:2]) != tuple(train_size):
            h, w = train_size
            print(
                f"csad predict: warning: {path} is {image.shape[1]}x{image.shape[0]} "
                f"but the model was fitted on {w}x{h} images; scores may not be "
                "comparable",
                file=sys.stderr,
            )
        originals.append(image)
        resized.append(resize_rgb(image, size))
    return originals, np.stack(resized)


def heatmap_paths(paths, out_dir) -> list[Path]:
    """Where the heatmap of each image goes, one distinct file per input image.

    `<out>/<stem>_heatmap.png` when the stems are unique. When they repeat (LOCO
    names every folder's images 000.png, 001.png, ...), the images' folders below
    their common folder are mirrored: `test/good/000.png` and
    `test/logical_anomalies/000.png` go to `<out>/good/000_heatmap.png` and
    `<out>/logical_anomalies/000_heatmap.png`. Files differing only in their
    extension also keep it (`000_png_heatmap.png`).

    Args:
      paths: the image files, in input order.
      out_dir: the heatmap folder.
    """
    out_dir = Path(out_dir)
    images = [Path(p).resolve() for p in paths]
    unique = set(images)
    if len({p.stem for p in unique}) == len(unique):
        return [out_dir / f"{p.stem}_heatmap.png" for p in images]
    root = Path(os.path.commonpath([p.parent for p in unique]))
    names = {(p.parent, p.stem) for p in unique}
    tag_extension = len(names) < len(unique)
    targets = []
    for p in images:
        tag = f"_{p.suffix.lstrip('.')}" if tag_extension and p.suffix else ""
        targets.append(
            out_dir / p.parent.relative_to(root) / f"{p.stem}{tag}_heatmap.png"
        )
    return targets


def _finite(value, name: str, path) -> float | None:
    """A score as a float, or None (JSON null) with a warning if not finite."""
    value = float(value)
    if np.isfinite(value):
        return value
    print(
        f"csad predict: warning: the {name} score of {path} is {value}; the "
        "model is damaged or the image is far outside its training data",
        file=sys.stderr,
    )
    return None


def predict_paths(predictor, paths, size: int, train_size, out_dir=None):
    """Scores image files; yields one result dict per image.

    Args:
      predictor: images float32 [N, S, S, 3] normalised -> dict of outputs
        (`CSADModel.predict` or `Artifact.predict`).
      paths: image files.
      size: model input side S.
      train_size: training image (H, W) for the size warning, or None.
      out_dir: folder for heatmap PNGs, or None.
    """
    originals, resized = load_images(paths, size, train_size)
    outputs = predictor(normalise_images(resized))
    targets = heatmap_paths(paths, out_dir) if out_dir is not None else None
    for i, path in enumerate(paths):
        result = {"image": str(path)}
        result.update({k: _finite(outputs[k][i], k, path) for k in SCORE_KEYS})
        if targets is not None:
            target = targets[i]
            target.parent.mkdir(parents=True, exist_ok=True)
            heatmap_png(outputs["anomaly_map"][i], originals[i]).save(target)
            result["heatmap"] = str(target)
        yield result


def _run_predictor(args):
    """(predictor, input side, training image size) for --run or --artifact."""
    if args.artifact is not None:
        artifact = load_artifact(args.artifact)
        train = artifact.header.get("train_image_size")
        return artifact.predict, artifact.image_size, train
    from csad_jax.model import load_model

    model = load_model(args.run)
    return model.predict, model.image_size, model.meta.get("train_image_size")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad predict`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="fitted run folder")
    source.add_argument("--artifact", type=Path, help="file written by csad export")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--out", type=Path, help="folder for heatmap PNGs")


def run(args: argparse.Namespace) -> int:
    """Run `csad predict`: one JSON line per image on stdout."""
    if not args.images:
        raise ConfigError("no image given")
    if sys.stderr.isatty():
        source = args.artifact if args.artifact is not None else args.run
        print(f"csad predict: loading {source}", file=sys.stderr, flush=True)
    predictor, size, train = _run_predictor(args)
    try:
        for result in predict_paths(predictor, args.images, size, train, args.out):
            print(json.dumps(result))
    except OSError as err:
        raise CSADError(f"cannot write heatmaps to {args.out}: {err}") from None
    sys.stdout.flush()
    return 0
