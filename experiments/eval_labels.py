"""Acceptance check of the offline pseudo-labels on the synthetic categories.

For every synthetic category, offline labels (`csad labels --backend offline`)
are compared with the generator's true component maps
(`components/train/good/<stem>.png`): mean IoU after optimal one-to-one class
matching (Hungarian; background included, as
`csad_jax.segmentation_metrics.matched_miou` defines it), the number of classes
found against `num_component_kinds`, labelled/unlabelled counts and seconds per
image. Targets: mIoU >= 0.70 on every category (on the labelled images), class
count right on >= 2 of 3 categories, <= 2 s per image. The speed target is
checked on CPU seconds per image (all threads of this process), which bounds
the wall time of an otherwise idle machine from above; wall seconds are printed
too but depend on what else the shared CPU is doing (load average printed).

    .venv/bin/python experiments/eval_labels.py --out /tmp/labels_eval
    .venv/bin/python experiments/eval_labels.py --data ROOT --out DIR

Without --data a default-scale synthetic dataset (--seed, default 0; 256x256,
60 train images per category) is generated under `<out>/synthetic-seed<N>`
first. The offline defaults were chosen on seed-0 train images; seed 1 gives
unseen images of the same categories. Labels are
always regenerated from scratch (their cache is removed) so the timing is real.
Timings on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from csad_jax.data.image_io import read_mask
from label_gen.cli import category_images, offline_backend
from label_gen.pipeline import generate_pseudo_labels
from label_gen.settings import settings_for

TARGET_MIOU = 0.70
TARGET_SECONDS = 2.0


def _matched_miou_fallback(pred_maps, true_maps) -> float:
    """Hungarian-matched mIoU (background 0 matched to 0, included)."""
    n_pred = max(int(m.max()) for m in pred_maps) + 1
    n_true = max(int(m.max()) for m in true_maps) + 1
    conf = np.zeros((n_true, n_pred), np.int64)
    for p, t in zip(pred_maps, true_maps, strict=True):
        np.add.at(conf, (t.ravel(), p.ravel()), 1)
    inter = conf.astype(np.float64)
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    rows, cols = linear_sum_assignment(-iou[1:, 1:])
    per_class = {0: iou[0, 0]}
    per_class.update({t: 0.0 for t in range(1, n_true)})
    for r, c in zip(rows, cols, strict=True):
        per_class[r + 1] = iou[r + 1, c + 1]
    present = [t for t in range(n_true) if conf[t].sum() > 0]
    return float(np.mean([per_class[t] for t in present]))


def matched_miou(pred_maps, true_maps) -> float:
    """csad_jax.segmentation_metrics.matched_miou if present, else a local one."""
    try:
        from csad_jax.segmentation_metrics import matched_miou as shared
    except ImportError:
        return _matched_miou_fallback(pred_maps, true_maps)
    return shared(pred_maps, true_maps)[0]


def evaluate_category(data: Path, out: Path, category: str) -> dict:
    """Generate offline labels from scratch and score them against the truth."""
    shutil.rmtree(out / category, ignore_errors=True)
    images = category_images(data, category)
    settings = settings_for(category, "offline", "efficientnet_lite0")
    start, cpu = time.perf_counter(), time.process_time()
    meta = generate_pseudo_labels(
        images, out, settings, offline_backend(settings), progress=False
    )
    seconds = (time.perf_counter() - start) / len(images)
    cpu_seconds = (time.process_time() - cpu) / len(images)
    truth_dir = data / category / "components" / "train" / "good"
    kinds = json.loads((data / category / "synthetic_meta.json").read_text())
    preds, truths = {}, {}
    for img in images:
        preds[img.stem] = read_mask(out / category / "maps" / f"{img.stem}.png")
        truths[img.stem] = read_mask(truth_dir / f"{img.stem}.png")
    labelled = meta["labelled"] or [img.stem for img in images]
    return {
        "category": category,
        "miou": matched_miou(
            [preds[s] for s in labelled], [truths[s] for s in labelled]
        ),
        "miou_all": matched_miou(list(preds.values()), list(truths.values())),
        "classes": meta["num_classes"],
        "kinds": int(kinds["num_component_kinds"]),
        "labelled": len(meta["labelled"]),
        "unlabelled": len(meta["unlabelled"]),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def _table(rows: list[dict]) -> str:
    """The per-category result table."""
    head = (
        f"{'category':<16}{'mIoU':>7}{'mIoU all':>10}{'classes':>9}{'true':>6}"
        f"{'labelled':>10}{'unlab.':>8}{'s/image':>9}{'cpu s/im':>10}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['category']:<16}{r['miou']:>7.3f}{r['miou_all']:>10.3f}"
            f"{r['classes']:>9d}{r['kinds']:>6d}{r['labelled']:>10d}"
            f"{r['unlabelled']:>8d}{r['seconds']:>9.2f}{r['cpu_seconds']:>10.2f}"
        )
    return "\n".join(lines)


def _verdict(rows: list[dict]) -> list[str]:
    """Which acceptance targets fail (empty when all pass)."""
    fails = [f"{r['category']}: mIoU {r['miou']:.3f} < {TARGET_MIOU}"
             for r in rows if r["miou"] < TARGET_MIOU]  # fmt: skip
    right = sum(r["classes"] == r["kinds"] for r in rows)
    if right < min(2, len(rows)):
        fails.append(f"class count right on only {right} of {len(rows)} categories")
    fails += [f"{r['category']}: {r['cpu_seconds']:.2f} CPU s/image > {TARGET_SECONDS}"
              for r in rows if r["cpu_seconds"] > TARGET_SECONDS]  # fmt: skip
    return fails


def main(argv=None) -> int:
    """Run the acceptance check and print the table; exit 1 if a target fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="synthetic dataset root")
    parser.add_argument("--out", type=Path, required=True, help="work folder")
    parser.add_argument("--categories", help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=0, help="seed of generated data")
    args = parser.parse_args(argv)
    data = args.data
    if data is None:
        from csad_jax.data.synthetic import generate

        data = args.out / f"synthetic-seed{args.seed}"
        if not data.exists():
            generate(data, seed=args.seed, image_size=(256, 256))
    from csad_jax.data.synthetic import CATEGORIES

    names = args.categories.split(",") if args.categories else list(CATEGORIES)
    rows = []
    for name in names:
        rows.append(evaluate_category(data, args.out / "labels", name))
        print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print(_table(rows))
    print(f"load average during the run: {os.getloadavg()}")
    fails = _verdict(rows)
    print("PASS" if not fails else "FAIL: " + "; ".join(fails))
    return 0 if not fails else 1


if __name__ == "__main__":
    sys.exit(main())
