"""`csad eval`: score the test split once and write the evaluation outputs.

The only place that reads test data. The fused model scores every test image
in one pass; image AUROC (good vs logical, good vs structural) is computed for
the fused score and each branch, AUC-sPRO from the LGST anomaly maps resized to
the original image size, and `csad_jax.report` writes metrics.json, scores.csv,
report.html and the TIFF anomaly maps of the official evaluation script.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from csad_jax import metrics, report
from csad_jax.data.batching import iterate_batches
from csad_jax.data.image_io import (
    normalize_imagenet,
    read_image_size,
    read_rgb,
    resize_rgb,
)
from csad_jax.data.loco import load_category
from csad_jax.errors import CSADError, DataError
from csad_jax.model import CSADModel, load_model

log = logging.getLogger("csad_jax")


class ResizedMaps(Sequence):
    """Anomaly maps at model size, resized to their image's size on access."""

    def __init__(self, maps: np.ndarray, sizes: Sequence[tuple[int, int]]):
        self._maps, self._sizes = maps, list(sizes)

    def __len__(self) -> int:
        return len(self._sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return metrics.resize_anomaly_map(self._maps[i], self._sizes[i])


def score_samples(model: CSADModel, samples, progress: bool = True) -> dict:
    """Fused inference over samples, batch by batch.

    Returns:
      numpy arrays: "fused", "patch_histogram", "lgst" [N]; "anomaly_map"
      float32 [N, S, S]; "segmentation" uint8/int32 [N, S, S].
    """
    parts: dict[str, list[np.ndarray]] = {}
    batches = iterate_batches(
        samples,
        model.image_size,
        model.config.batch_size,
        desc="score test",
        progress=progress,
    )
    for images, _ in batches:
        out = model.predict(normalize_imagenet(images))
        for key in ("fused", "patch_histogram", "lgst", "anomaly_map"):
            parts.setdefault(key, []).append(out[key])
        seg = out["segmentation"]
        parts.setdefault("segmentation", []).append(
            seg.astype(np.uint8) if seg.max(initial=0) < 256 else seg
        )
    return {k: np.concatenate(v) for k, v in parts.items()}


def _regions(samples, defects):
    """Ground-truth regions per sample, or None when sPRO cannot be computed."""
    if defects is None:
        log.warning("no defects_config.json: AUC-sPRO is not computed")
        return None
    return [metrics.read_defect_regions(s, defects) for s in samples]


def write_maps(out_dir: Path, category: str, samples, maps: ResizedMaps) -> None:
    """TIFF anomaly maps at original size for the official evaluation script."""
    for i, sample in enumerate(samples):
        report.write_anomaly_map(out_dir, category, sample.kind, sample.stem, maps[i])


def _visuals(samples, scored: dict, size: int):
    def visual(i: int) -> report.ItemVisual:
        image = resize_rgb(read_rgb(samples[i].path), size)
        return report.ItemVisual(
            image=image,
            segmentation=scored["segmentation"][i],
            heatmap=scored["anomaly_map"][i],
        )

    return visual


def fit_timing(run_dir: Path) -> dict[str, float]:
    """Seconds per fit stage from the run's stages.json (empty if unknown)."""
    try:
        stages = json.loads((Path(run_dir) / "stages.json").read_text())["stages"]
        return {f"fit_{k}": float(v["seconds"]) for k, v in stages.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


OUTPUTS = ("metrics.json", "scores.csv", "report.html", "anomaly_maps")


def check_output_folder(out_dir: Path) -> None:
    """DataError unless `out_dir` may receive the evaluation outputs.

    A new or unrelated folder may; so may an earlier evaluation's (its
    metrics.json is a valid csad record), whose outputs are replaced. A folder
    holding a report.html, scores.csv, anomaly_maps or metrics.json of
    something else is refused, so nothing of the user's is overwritten.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file, not a folder")
    present = [name for name in OUTPUTS if (out_dir / name).exists()]
    maps = out_dir / "anomaly_maps"
    if maps.is_dir() and all(
        p.is_dir() or p.suffix == ".tiff" for p in maps.rglob("*")
    ):
        present.remove("anomaly_maps")  # TIFF maps of an interrupted evaluation
    if not present:
        return
    try:
        report.read_metrics_json(out_dir / "metrics.json")
    except report.ReportError:
        raise DataError(
            f"{out_dir} already holds {', '.join(present)} not written by csad "
            "eval; use another --out"
        ) from None


def evaluate(
    run_dir: str | Path,
    data_root: str | Path,
    out_dir: str | Path | None = None,
    *,
    write_tiff: bool = True,
    progress: bool = True,
    model: CSADModel | None = None,
) -> dict:
    """Scores the test split of a fitted run and writes the evaluation outputs.

    Args:
      run_dir: run directory written by `csad fit`.
      data_root: LOCO-layout root holding the run's category.
      out_dir: output folder (default `<run_dir>/eval`).
      write_tiff: write the per-image TIFF anomaly maps.
      progress: progress bars on stderr.
      model: the loaded model (default: `load_model(run_dir)`).

    Returns:
      the metrics record (also written as metrics.json).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "eval"
    check_output_folder(out_dir)
    model = load_model(run_dir) if model is None else model
    category = str(model.meta["category"])
    data = load_category(data_root, category)
    samples = data.require_nonempty("test")
    if not any(s.kind == "good" for s in samples):
        raise DataError(f"no images in {data.path / 'test' / 'good'}: AUROC needs them")
    scored = score_samples(model, samples, progress)
    kinds = [s.kind for s in samples]
    sizes = [read_image_size(s.path) for s in samples]
    maps = ResizedMaps(scored["anomaly_map"], sizes)
    regions = _regions(samples, data.defects_config)
    spro = None if regions is None else metrics.auc_spro_by_kind(maps, regions, kinds)
    if write_tiff:
        write_maps(out_dir, category, samples, maps)
    scores = {k: scored[k] for k in report.SCORE_COLUMNS}
    timing = {**fit_timing(run_dir), "eval": time.perf_counter() - start}
    record = report.build_metrics(
        category=category,
        preset=model.config.preset,
        backbone=model.config.backbone.name,
        scores=scores,
        kinds=kinds,
        spro=spro,
        timing=timing,
    )
    names = [f"{s.kind}/{s.path.name}" for s in samples]
    report.write_metrics_json(out_dir / "metrics.json", record)
    report.write_scores_csv(out_dir / "scores.csv", names, kinds, scores)
    report.write_report_html(
        out_dir / "report.html",
        metrics=record,
        scores=scores,
        kinds=kinds,
        stems=names,
        visuals=_visuals(samples, scored, model.image_size),
    )
    return record


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad eval`."""
    parser.add_argument("--run", required=True, type=Path, help="fitted run folder")
    parser.add_argument("--data", required=True, type=Path, help="dataset root")
    parser.add_argument("--out", type=Path, help="output folder (default RUN/eval)")
    parser.add_argument(
        "--no-maps", action="store_true", help="skip the per-image TIFF anomaly maps"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run `csad eval`: print the final table."""
    out = args.out or args.run / "eval"
    try:
        record = evaluate(
            args.run,
            args.data,
            out,
            write_tiff=not args.no_maps,
            progress=not args.quiet,
        )
    except OSError as err:
        raise CSADError(f"cannot write evaluation outputs to {out}: {err}") from None
    report.print_metrics_table(record)
    print(f"wrote metrics.json, scores.csv and report.html to {out}")
    sys.stdout.flush()
    return 0
