"""Acceptance: the patch histogram branch alone on TRUE synthetic component maps.

For each synthetic category (written by `csad synth`), fits the branch on
components/train/good, calibrates the trimmed z-normalisation on
components/validation/good and scores components/test/*; maps are resized to
256 x 256 with NEAREST first, as the official pipeline works at 256. K =
num_component_kinds + 1. Prints image AUROC (x100) of good vs each anomaly
subtype, and overall logical and structural AUROC, per category; the branch
must reach >= 95 on the count, missing, extra and misplaced subtypes. No choice
is made on test data: every setting is fixed by the command line.

Run: .venv/bin/python experiments/eval_patch_histogram.py --root DATA
     (add --generate to write DATA with `csad synth` defaults first)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from csad_jax.data.image_io import resize_nearest
from csad_jax.patch_histogram import PatchHistogramScorer
from csad_jax.score_fusion import EXPORT_STD_FLOOR, TRAINING_STD_FLOOR

MAP_SIZE = 256
TARGET = 95.0
TARGET_SUBTYPES = ("wrong_count", "missing", "extra", "misplaced")
TEST_KINDS = ("good", "logical_anomalies", "structural_anomalies")


def read_maps(folder: Path) -> tuple[list[str], np.ndarray]:
    """Sorted stems and [N, 256, 256] uint8 label maps of one folder."""
    paths = sorted(folder.glob("*.png"))
    maps = [resize_nearest(np.asarray(Image.open(p)), MAP_SIZE) for p in paths]
    stacked = np.stack(maps) if maps else np.zeros((0, MAP_SIZE, MAP_SIZE), np.uint8)
    return [p.stem for p in paths], stacked


def load_test(folder: Path, meta: dict) -> tuple[np.ndarray, list[str], list[str]]:
    """Test maps with their group (good/logical/structural) and subtype."""
    all_maps, groups, subtypes = [], [], []
    for kind in TEST_KINDS:
        stems, maps = read_maps(folder / "components" / "test" / kind)
        all_maps.append(maps)
        for stem in stems:
            groups.append(kind)
            subtypes.append(meta["anomalies"].get(f"test/{kind}/{stem}", kind))
    return np.concatenate(all_maps), groups, subtypes


def auroc(scores: np.ndarray, labels: list[str], positive: str, key) -> float:
    """AUROC x100 of good (label 0) vs the images whose key equals positive."""
    pick = [i for i, g in enumerate(labels) if g == "good" or key[i] == positive]
    truth = [int(key[i] == positive) for i in pick]
    if sum(truth) == 0 or sum(truth) == len(truth):
        return float("nan")
    return 100.0 * roc_auc_score(truth, scores[pick])


def evaluate_category(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """Fit, calibrate and score one category; AUROC per subtype and group."""
    meta = json.loads((folder / "synthetic_meta.json").read_text())
    num_classes = int(meta["num_component_kinds"]) + 1
    _, train = read_maps(folder / "components" / "train" / "good")
    _, val = read_maps(folder / "components" / "validation" / "good")
    test, groups, subtypes = load_test(folder, meta)
    scorer = PatchHistogramScorer.fit(
        train,
        num_classes,
        grids=args.grids,
        background=args.background,
        method=args.method,
        unseen_std=args.unseen_std,
    ).calibrate(val, std_floor=args.std_floor)
    columns = {"branch": np.asarray(scorer.score(test))}
    if args.per_detector:
        raw = scorer.raw_scores(test)
        columns.update({f"grid {g}": np.asarray(raw[g]) for g in args.grids})
    results = {}
    for name, scores in columns.items():
        for subtype in sorted(set(subtypes) - {"good"}):
            results[(name, subtype)] = auroc(scores, groups, subtype, subtypes)
        for group in ("logical_anomalies", "structural_anomalies"):
            results[(name, group)] = auroc(scores, groups, group, groups)
    return results


def print_table(results: dict[str, dict], name: str, mark: bool = True) -> bool:
    """Markdown table of one score column; returns True if targets are met.

    With mark, cells below the target on a target subtype get "FAIL".
    """
    cats = sorted(results)
    rows = sorted({s for r in results.values() for (n, s) in r if n == name})
    rows = [r for r in rows if not r.endswith("_anomalies")]
    rows += ["logical_anomalies", "structural_anomalies"]
    print(f"\nimage AUROC x100, {name} score, good vs row")
    print("| subtype | " + " | ".join(cats) + " | mean |")
    print("|---|" + "---:|" * (len(cats) + 1))
    passed = True
    for row in rows:
        values = [results[c][(name, row)] for c in cats]
        cells = []
        for v in values:
            miss = row in TARGET_SUBTYPES and not v >= TARGET
            passed &= not miss
            cells.append(f"{v:.1f}" + (" FAIL" if miss and mark else ""))
        mean = np.nanmean(values)
        print(f"| {row} | " + " | ".join(cells) + f" | {mean:.1f} |")
    return passed


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (all fixed before looking at test data)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="synthetic root")
    parser.add_argument("--generate", action="store_true", help="write it first")
    parser.add_argument("--grids", default="1,2", help="grid sides (official 1,2)")
    parser.add_argument("--background", default="zero", choices=("zero", "fraction"))
    parser.add_argument("--method", default="pinv", choices=("pinv", "ledoit_wolf"))
    parser.add_argument("--unseen-std", type=float, default=None)
    parser.add_argument(
        "--std-rule", default="training", choices=("training", "export")
    )
    parser.add_argument("--per-detector", action="store_true")
    args = parser.parse_args(argv)
    args.grids = tuple(int(g) for g in args.grids.split(","))
    floors = {"training": TRAINING_STD_FLOOR, "export": EXPORT_STD_FLOOR}
    args.std_floor = floors[args.std_rule]
    return args


def main(argv=None) -> int:
    """Evaluate every category under --root; exit 1 if a target is missed."""
    args = parse_args(argv)
    if args.generate:
        from csad_jax.data.synthetic import generate

        generate(args.root, overwrite=True)
    folders = sorted(p.parent for p in args.root.glob("*/synthetic_meta.json"))
    if not folders:
        print(f"no synthetic categories under {args.root}", file=sys.stderr)
        return 2
    results = {f.name: evaluate_category(f, args) for f in folders}
    names = ["branch"] + (
        [f"grid {g}" for g in args.grids] if args.per_detector else []
    )
    passed = [print_table(results, n, mark=n == "branch") for n in names][0]
    verdict = "met" if passed else "NOT met"
    print(f"\ntarget AUROC >= {TARGET} on {', '.join(TARGET_SUBTYPES)}: {verdict}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
