"""Acceptance run of the component segmentor on the synthetic categories.

For every category: train the segmentor (fast preset by default) on offline
pseudo-labels, segment `test/good`, and compare with the generator's true
component maps (`components/test/good/<stem>.png`) by mIoU under optimal
one-to-one class matching. The pseudo-labels' own mIoU (their labelled maps vs
the true `components/train/good` maps) is printed alongside. Everything is
compared at the segmentor's resolution (true maps resized NEAREST).

`s4_ceil` is what ideal logits on the decoder's stride-4 grid would score on
the same maps (see `stride4_ceiling`): the architecture's resolution limit.

`--split validation` scores validation/good instead: the split on which
preset settings are compared; test/good is then scored once for the report.

Targets: segmentor mIoU >= 0.75, not below the pseudo-labels' mIoU - 0.02,
training (data loading + compilation included) <= 300 s per category.

    .venv/bin/python -m csad_jax.cli synth --out /tmp/synth
    for c in breakfast_tray connector_pair screw_kit; do
        .venv/bin/csad labels --data /tmp/synth --category $c --out /tmp/labels
    done
    .venv/bin/python experiments/eval_segmentor.py --data /tmp/synth \
        --labels /tmp/labels --workdir /tmp/seg_runs

`--ground-truth-standin` replaces the pseudo-labels by a label set built from
the generator's TRUE component maps (a labelled half of train/good). It only
exercises training; its figures are not an acceptance result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from csad_jax.backbones import load_backbone
from csad_jax.data.image_io import (
    normalize_imagenet,
    read_mask,
    read_rgb,
    resize_nearest,
    resize_rgb,
)
from csad_jax.data.loco import list_categories, load_category
from csad_jax.data.pseudo_labels import (
    LabelledMaps,
    load_pseudo_labels,
    write_pseudo_labels,
)
from csad_jax.errors import CSADError
from csad_jax.models import layers
from csad_jax.models.segmentor import segment
from csad_jax.segmentation_metrics import matched_miou
from csad_jax.train_segmentor import SegmentorConfig, fit_segmentor

STANDIN_BACKEND = "ground-truth stand-in (true component maps, NOT pseudo-labels)"


def _true_map(root: Path, category: str, split: str, stem: str) -> np.ndarray:
    """The generator's true component map uint8 [H, W] of one good image."""
    path = root / category / "components" / split / "good" / f"{stem}.png"
    return read_mask(path)


def _standin_maps(true: np.ndarray) -> LabelledMaps:
    """Instances: connected components per class; background: outside the
    dilated convex hull of all components (roughly the product area)."""
    instances = np.zeros(true.shape, np.int32)
    next_id = 1
    for cls in range(1, int(true.max()) + 1):
        comp, n = ndimage.label(true == cls, structure=np.ones((3, 3)))
        instances[comp > 0] = comp[comp > 0] + next_id - 1
        next_id += n
    hull = convex_hull_image(true > 0) if true.any() else np.ones(true.shape, bool)
    hull = ndimage.binary_dilation(hull, iterations=max(true.shape) // 32)
    return LabelledMaps(true.astype(np.uint8), instances, ~hull)


def build_ground_truth_standin(
    data_root: Path, category: str, out: Path, fraction: float, seed: int
) -> Path:
    """Writes a label set from TRUE component maps (a stand-in, not labels)."""
    cat = load_category(data_root, category)
    stems = [s.stem for s in cat.samples("train", "good")]
    order = np.random.default_rng(seed).permutation(len(stems))
    labelled = sorted(stems[i] for i in order[: round(fraction * len(stems))])
    maps = {
        s: _standin_maps(_true_map(data_root, category, "train", s)) for s in labelled
    }
    num = max(int(m.class_map.max()) for m in maps.values())
    unlabelled = sorted(set(stems) - set(labelled))
    write_pseudo_labels(
        out,
        category,
        maps,
        unlabelled,
        num,
        backend=STANDIN_BACKEND,
        settings={"labelled_fraction": fraction, "seed": seed},
    )
    return out


def stride4_ceiling(trues: list[np.ndarray], stride: int = 4) -> float:
    """mIoU of ideal logits on the decoder's grid: the true maps one-hot,
    averaged over stride x stride cells, bilinearly upsampled (as the decoder's
    logits are) and arg-maxed. What a perfect stride-4 decoder gets from
    box-averaged logits; learned logits can do slightly better."""
    k = max(int(t.max()) for t in trues) + 1
    preds = []
    for t in trues:
        h, w = t.shape
        hot = np.eye(k, dtype=np.float32)[t][: h - h % stride, : w - w % stride]
        cells = hot.reshape(h // stride, stride, w // stride, stride, k).mean((1, 3))
        up = layers.resize_bilinear(jnp.asarray(cells[None]), (h, w))
        preds.append(np.asarray(jnp.argmax(up[0], axis=-1)))
    return matched_miou(preds, trues)[0]


def _segment_split(
    model, cat, split: str, size: int, batch: int
) -> tuple[list, list[str]]:
    samples = cat.samples(split, "good")
    preds = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        images = np.stack([resize_rgb(read_rgb(s.path), size) for s in chunk])
        x = normalize_imagenet(images.astype(np.float32) / 255.0)
        preds += list(np.asarray(segment(model, x)[1]))
    return preds, [s.stem for s in samples]


def evaluate_category(args, cfg: SegmentorConfig, category: str) -> dict:
    """Trains one category and returns its table row."""
    labels_root = args.labels
    if args.ground_truth_standin:
        labels_root = build_ground_truth_standin(
            args.data, category, args.workdir / "standin_labels", 0.5, cfg.seed
        )
    cat = load_category(args.data, category)
    labels = load_pseudo_labels(labels_root, category)
    size = cfg.image_size
    start = time.perf_counter()
    model = fit_segmentor(
        cfg,
        load_backbone(cfg.backbone),
        cat,
        labels_root,
        args.workdir / category,
        show_progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    preds, stems = _segment_split(model, cat, args.split, size, 8)
    trues = [
        resize_nearest(_true_map(args.data, category, args.split, s), size)
        for s in stems
    ]
    seg_miou, _, per_class = matched_miou(preds, trues)
    pl_maps = [resize_nearest(labels.class_map(s), size) for s in labels.labelled]
    pl_trues = [
        resize_nearest(_true_map(args.data, category, "train", s), size)
        for s in labels.labelled
    ]
    pl_miou, _, _ = matched_miou(pl_maps, pl_trues)
    ceiling = stride4_ceiling(trues)
    fg = [v for k, v in per_class.items() if k]
    return {
        "category": category,
        "classes": labels.num_classes,
        "labelled": len(labels.labelled),
        "seconds": seconds,
        "miou": seg_miou,
        "fg_miou": float(np.mean(fg)) if fg else float("nan"),
        "pl_miou": pl_miou,
        "ceiling": ceiling,
        "per_class": " ".join(f"{k}:{v:.2f}" for k, v in per_class.items()),
    }


def _print_table(rows: list[dict], standin: bool) -> bool:
    print()
    if standin:
        print("LABELS: GROUND-TRUTH STAND-IN, not pseudo-labels; not an acceptance run")
    print(
        "category          N_cls  lab   train_s  mIoU  fg_mIoU  PL_mIoU  s4_ceil  "
        "pass per-class IoU (true id: IoU)"
    )
    ok_all = True
    for r in rows:
        ok = (
            r["miou"] >= 0.75
            and r["miou"] >= r["pl_miou"] - 0.02
            and r["seconds"] <= 300
        )
        ok_all &= ok
        print(
            f"{r['category']:<17} {r['classes']:>5} {r['labelled']:>4} "
            f"{r['seconds']:>8.0f} {r['miou']:>5.3f} {r['fg_miou']:>8.3f} "
            f"{r['pl_miou']:>8.3f} {r['ceiling']:>8.3f}  {'yes' if ok else 'NO':<4} "
            f"{r['per_class']}"
        )
    print("mIoU includes background; matched one-to-one (segmentation_metrics).")
    print(
        "s4_ceil: the same true maps through ideal box-averaged logits on the "
        "decoder's stride-4 grid (stride4_ceiling)."
    )
    return ok_all


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic root")
    parser.add_argument("--labels", type=Path, help="pseudo-label output root")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--categories", help="comma-separated (default: all)")
    parser.add_argument("--preset", choices=("fast", "paper"), default="fast")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument(
        "--widths", help="override decoder widths ASPP,LOW,HEAD (trials only)"
    )
    parser.add_argument("--image-size", type=int, help="override (trials only)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a top-level SegmentorConfig field (JSON value), e.g. "
        "lr_decay_epoch=30",
    )
    parser.add_argument(
        "--split",
        choices=("validation", "test"),
        default="test",
        help="good images scored against their true maps; choose settings on "
        "validation, report test once",
    )
    parser.add_argument("--ground-truth-standin", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.ground_truth_standin and args.labels is None:
        parser.error("give --labels, or --ground-truth-standin for a trial run")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("csad_jax").setLevel(logging.INFO)
    cfg = getattr(SegmentorConfig, args.preset)()
    if args.epochs:
        sup = round(args.epochs * cfg.sup_only_epochs / cfg.epochs)
        cfg = dataclasses.replace(cfg, epochs=args.epochs, sup_only_epochs=sup)
    for item in args.set:
        key, _, value = item.partition("=")
        cfg = dataclasses.replace(cfg, **{key: json.loads(value)})
    if args.image_size:
        cfg = dataclasses.replace(cfg, image_size=args.image_size)
    if args.widths:
        a, low, head = (int(v) for v in args.widths.split(","))
        cfg = dataclasses.replace(
            cfg,
            decoder=dataclasses.replace(
                cfg.decoder, aspp_channels=a, low_channels=low, head_channels=head
            ),
        )
    try:
        cats = list_categories(args.data)
        if args.categories:
            cats = args.categories.split(",")
        rows = [evaluate_category(args, cfg, c) for c in cats]
    except CSADError as err:
        print(f"eval_segmentor: error: {err}", file=sys.stderr)
        return 2
    return 0 if _print_table(rows, args.ground_truth_standin) else 1


if __name__ == "__main__":
    sys.exit(main())
