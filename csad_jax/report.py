"""Evaluation outputs: metrics.json, scores.csv, report.html and TIFF anomaly maps.

`metrics.json` (one per category; every AUROC / AUC-sPRO in [0, 1], a kind
without test images is null):

    {"category": str, "preset": str, "backbone": str,
     "auroc": {"logical": a, "structural": a, "mean": a,
               "mean_over": ["logical", "structural"]},
     "branches": {"patch_histogram": {"logical": a, "structural": a},
                  "lgst": {"logical": a, "structural": a}},
     "spro": {"logical": {"0.01": s, "0.05": s, "0.1": s, "0.3": s, "1.0": s},
              "structural": {...}},
     "counts": {"good": n, "logical": n, "structural": n},
     "timing": {name: seconds}}

`auroc` is the fused score's AUROC; `mean` averages the kinds listed in
`mean_over` (the kinds present). Anomaly maps for the official MVTec LOCO
evaluation script are float32 TIFFs at original image size under
`<out>/anomaly_maps/<category>/test/<kind folder>/<stem>.tiff`.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from csad_jax.errors import CSADError
from csad_jax.metrics import (
    ANOMALY_KINDS,
    KIND_DIRS,
    SPRO_LIMITS,
    branch_aurocs,
    canonical_kind,
)

BRANCHES = ("patch_histogram", "lgst")
SCORE_COLUMNS = (*BRANCHES, "fused")
SPRO_KEYS = tuple(str(float(limit)) for limit in SPRO_LIMITS)
TABLE_SPRO_KEY = "0.05"
TOP_KEYS = (
    "category",
    "preset",
    "backbone",
    "auroc",
    "branches",
    "spro",
    "counts",
    "timing",
)


class ReportError(CSADError):
    """A metrics record or report input is malformed."""


def _atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to path through a temporary file, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------ anomaly maps


def anomaly_map_path(out_dir: str | Path, category: str, kind: str, stem: str) -> Path:
    """`<out>/anomaly_maps/<category>/test/<kind folder>/<stem>.tiff`."""
    folder = KIND_DIRS[canonical_kind(kind)]
    return Path(out_dir) / "anomaly_maps" / category / "test" / folder / f"{stem}.tiff"


def write_anomaly_map(
    out_dir: str | Path, category: str, kind: str, stem: str, amap
) -> Path:
    """Write one anomaly map as a float32 TIFF for the official evaluation script.

    Args:
      out_dir: run output folder; maps go under `anomaly_maps/`.
      category, kind, stem: identify the test image (kind "good",
        "logical[_anomalies]" or "structural[_anomalies]").
      amap: [H, W] real map at the original image size.

    Returns:
      The path written.
    """
    arr = np.asarray(amap, dtype=np.float32)
    if arr.ndim != 2 or not np.all(np.isfinite(arr)):
        raise ReportError(
            f"anomaly map of {stem}: expected a finite [H, W] array, "
            f"got shape {arr.shape}"
        )
    path = anomaly_map_path(out_dir, category, kind, stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)
    return path


# ------------------------------------------------------------ metrics.json


def _kind_counts(kinds: Sequence[str]) -> dict[str, int]:
    canonical = [canonical_kind(k) for k in kinds]
    return {k: canonical.count(k) for k in ("good", *ANOMALY_KINDS)}


def _spro_record(spro: Mapping | None) -> dict:
    """auc_spro_by_kind output -> {"logical": {"0.01": v, ...} | None, ...}."""
    spro = spro or {}
    record = {}
    for kind in ANOMALY_KINDS:
        per_limit = spro.get(kind)
        record[kind] = (
            None
            if per_limit is None
            else {str(float(limit)): v for limit, v in per_limit.items()}
        )
    return record


def _timing_record(timing: Mapping[str, float] | None) -> dict[str, float]:
    """Stage name -> seconds as plain floats; ReportError for a non-number."""
    record = {}
    for name, seconds in (timing or {}).items():
        try:
            record[str(name)] = float(seconds)
        except (TypeError, ValueError):
            raise ReportError(f"timing.{name}: {seconds!r} is not a number") from None
    return record


def build_metrics(
    *,
    category: str,
    preset: str,
    backbone: str,
    scores: Mapping[str, object],
    kinds: Sequence[str],
    spro: Mapping | None = None,
    timing: Mapping[str, float] | None = None,
) -> dict:
    """Compute and validate the metrics.json record of one category.

    Args:
      category, preset, backbone: run identification.
      scores: "fused" and optionally "patch_histogram" / "lgst" -> [N] scores
        (a branch left out is reported as null).
      kinds: N kind names of the test images.
      spro: `metrics.auc_spro_by_kind` output, or None when not computed.
      timing: stage name -> seconds.

    Returns:
      The metrics record (see the module docstring).
    """
    if "fused" not in scores:
        raise ReportError("scores must contain the fused score ('fused')")
    unknown = sorted(set(scores) - set(SCORE_COLUMNS))
    if unknown:
        raise ReportError(f"unknown score names {unknown}; expected {SCORE_COLUMNS}")
    aurocs = branch_aurocs(scores, kinds)
    record = {
        "category": category,
        "preset": preset,
        "backbone": backbone,
        "auroc": aurocs["fused"],
        "branches": {
            b: {k: aurocs[b][k] if b in aurocs else None for k in ANOMALY_KINDS}
            for b in BRANCHES
        },
        "spro": _spro_record(spro),
        "counts": _kind_counts(kinds),
        "timing": _timing_record(timing),
    }
    validate_metrics(record)
    return record


def _check_keys(obj, expected: Sequence[str], where: str) -> None:
    if not isinstance(obj, Mapping):
        raise ReportError(f"{where}: expected an object, got {type(obj).__name__}")
    if set(obj) != set(expected):
        raise ReportError(f"{where}: keys {sorted(obj)} != expected {sorted(expected)}")


def _check_unit(value, where: str) -> None:
    """A value must be null or a finite number in [0, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{where}: expected a number or null, got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ReportError(f"{where}: {value!r} is not in [0, 1]")


def _check_auroc(auroc, counts) -> None:
    _check_keys(auroc, (*ANOMALY_KINDS, "mean", "mean_over"), "auroc")
    for key in (*ANOMALY_KINDS, "mean"):
        _check_unit(auroc[key], f"auroc.{key}")
    present = [k for k in ANOMALY_KINDS if auroc[k] is not None]
    if auroc["mean_over"] != present:
        raise ReportError(
            f"auroc.mean_over {auroc['mean_over']!r} != kinds with an AUROC {present}"
        )
    expected = np.mean([auroc[k] for k in present]) if present else None
    if (expected is None) != (auroc["mean"] is None) or (
        expected is not None and abs(expected - auroc["mean"]) > 1e-9
    ):
        raise ReportError(
            f"auroc.mean {auroc['mean']!r} is not the mean over {present}"
        )
    for kind in ANOMALY_KINDS:
        if (counts[kind] == 0) != (auroc[kind] is None):
            raise ReportError(
                f"auroc.{kind} must be null exactly when counts.{kind} is 0"
            )


def _check_counts_timing(counts, timing) -> None:
    _check_keys(counts, ("good", *ANOMALY_KINDS), "counts")
    for key, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ReportError(f"counts.{key}: expected a count, got {n!r}")
    if not isinstance(timing, Mapping):
        raise ReportError("timing: expected an object")
    for key, sec in timing.items():
        ok = isinstance(sec, int | float) and not isinstance(sec, bool)
        if not (ok and math.isfinite(sec) and sec >= 0):
            raise ReportError(f"timing.{key}: expected seconds >= 0, got {sec!r}")


def validate_metrics(metrics) -> None:
    """Check a metrics record has exactly the documented shape; ReportError if not."""
    _check_keys(metrics, TOP_KEYS, "metrics")
    for key in ("category", "preset", "backbone"):
        if not isinstance(metrics[key], str) or not metrics[key]:
            raise ReportError(f"{key}: expected a non-empty string")
    _check_counts_timing(metrics["counts"], metrics["timing"])
    _check_auroc(metrics["auroc"], metrics["counts"])
    _check_keys(metrics["branches"], BRANCHES, "branches")
    for branch, values in metrics["branches"].items():
        _check_keys(values, ANOMALY_KINDS, f"branches.{branch}")
        for kind, value in values.items():
            _check_unit(value, f"branches.{branch}.{kind}")
    _check_keys(metrics["spro"], ANOMALY_KINDS, "spro")
    for kind, per_limit in metrics["spro"].items():
        if per_limit is not None:
            _check_keys(per_limit, SPRO_KEYS, f"spro.{kind}")
            for limit, value in per_limit.items():
                _check_unit(value, f"spro.{kind}.{limit}")


def write_metrics_json(path: str | Path, metrics: Mapping) -> Path:
    """Validate and write metrics.json (absent values as null)."""
    validate_metrics(metrics)
    return _atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")


def read_metrics_json(path: str | Path) -> dict:
    """Read and validate a metrics.json; ReportError names the file if broken."""
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        validate_metrics(metrics)
    except (OSError, ValueError, ReportError) as err:
        raise ReportError(f"{path}: {err}") from None
    return metrics


# ------------------------------------------------------------ scores.csv


def write_scores_csv(
    path: str | Path,
    images: Sequence[str],
    kinds: Sequence[str],
    scores: Mapping[str, object],
) -> Path:
    """Write scores.csv: image, kind, patch_histogram, lgst, fused.

    Args:
      path: output file.
      images: N image names (relative path or stem). Bytes of a file name
        that are not UTF-8 are written as backslash escapes (`\\udcff` for 0xff),
        so the file stays valid UTF-8.
      kinds: N kinds; written as the dataset folder name (e.g.
        "logical_anomalies").
      scores: column name -> [N] scores; a missing branch gives empty cells.
        Values are written with full precision (they read back exactly).
    """
    n = len(images)
    columns = {}
    for name in SCORE_COLUMNS:
        if name in scores:
            columns[name] = np.asarray(scores[name], dtype=np.float64)
            if columns[name].shape != (n,):
                raise ReportError(
                    f"scores[{name!r}] has shape {columns[name].shape}, expected ({n},)"
                )
    if len(kinds) != n:
        raise ReportError(f"{len(kinds)} kinds for {n} images")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "kind", *SCORE_COLUMNS])
        for i in range(n):
            cells = [
                repr(float(columns[c][i])) if c in columns else ""
                for c in SCORE_COLUMNS
            ]
            writer.writerow([images[i], KIND_DIRS[canonical_kind(kinds[i])], *cells])
    return path


# ------------------------------------------------------------ metrics table


def _mean_present(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def metrics_rows(metrics: Mapping) -> list[tuple[str, list[float | None]]]:
    """Rows (label, [patch_histogram, lgst, fused, sPRO@0.05]) for display.

    The last row averages the kinds present; it is labelled "mean" when both
    kinds are present and "mean (<kind> only)" otherwise.
    """
    rows = []
    for kind in ANOMALY_KINDS:
        spro = metrics["spro"][kind]
        rows.append(
            (
                kind,
                [
                    *(metrics["branches"][b][kind] for b in BRANCHES),
                    metrics["auroc"][kind],
                    None if spro is None else spro[TABLE_SPRO_KEY],
                ],
            )
        )
    present = metrics["auroc"]["mean_over"]
    label = (
        "mean"
        if len(present) == len(ANOMALY_KINDS)
        else (f"mean ({', '.join(present) or 'none'} only)")
    )
    means = [
        _mean_present([r[1][c] for r in rows if r[0] in present]) for c in range(4)
    ]
    rows.append((label, means))
    return rows


TABLE_HEADER = ("kind", *BRANCHES, "fused", f"sPRO@{TABLE_SPRO_KEY}")


def format_metrics_table(metrics: Mapping) -> str:
    """Aligned text table: kind x {patch_histogram, lgst, fused} AUROC, sPRO@0.05.

    Values are percentages with two decimals; "-" marks an absent value.
    """
    rows = [
        (label, [("-" if v is None else f"{100 * v:.2f}") for v in values])
        for label, values in metrics_rows(metrics)
    ]
    first = max(len(TABLE_HEADER[0]), *(len(label) for label, _ in rows))
    widths = [max(len(h), 6) for h in TABLE_HEADER[1:]]

    def line(label, cells):
        return "  ".join(
            [
                label.ljust(first),
                *(c.rjust(w) for c, w in zip(cells, widths, strict=True)),
            ]
        )

    title = (
        f"{metrics['category']}  preset={metrics['preset']}  "
        f"backbone={metrics['backbone']}  (AUROC / AUC-sPRO in %)"
    )
    body = [line(TABLE_HEADER[0], TABLE_HEADER[1:]), *(line(*r) for r in rows)]
    return "\n".join([title, *body])


def print_metrics_table(metrics: Mapping, file=None) -> None:
    """Print `format_metrics_table` (to stdout by default)."""
    print(format_metrics_table(metrics), file=file or sys.stdout)


# ------------------------------------------------------------ report.html


@dataclasses.dataclass(frozen=True)
class ItemVisual:
    """What report.html shows for one test image."""

    image: np.ndarray  # uint8 [H, W, 3]
    segmentation: np.ndarray | None = None  # int [h, w], 0 = background
    heatmap: np.ndarray | None = None  # float [h, w] anomaly map


def _new_figure(width: float, height: float) -> Figure:
    """A figure drawn by the Agg canvas, without pyplot's global state."""
    fig = Figure(figsize=(width, height), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure_png(fig: Figure) -> str:
    """The figure as an <img> tag holding a base64 PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _roc_figure(scores: Mapping[str, np.ndarray], kinds: np.ndarray) -> str:
    """ROC curves of every score column, one panel per anomaly kind present."""
    present = [k for k in ANOMALY_KINDS if np.any(kinds == k)]
    fig = _new_figure(4.5 * max(len(present), 1), 4.2)
    for i, kind in enumerate(present):
        ax = fig.add_subplot(1, len(present), i + 1)
        keep = (kinds == "good") | (kinds == kind)
        for name, values in scores.items():
            fpr, tpr, _ = roc_curve(kinds[keep] == kind, values[keep])
            auc = roc_auc_score(kinds[keep] == kind, values[keep])
            ax.plot(fpr, tpr, label=f"{name} ({100 * auc:.1f})")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5, linestyle="--")
        ax.set(title=f"good vs {kind}", xlabel="FPR", ylabel="TPR")
        ax.legend(loc="lower right", fontsize="small")
    return _figure_png(fig)


def _distribution_figure(scores: Mapping[str, np.ndarray], kinds: np.ndarray) -> str:
    """Histograms of each score column, one colour per kind."""
    fig = _new_figure(4.5 * len(scores), 3.6)
    for i, (name, values) in enumerate(scores.items()):
        ax = fig.add_subplot(1, len(scores), i + 1)
        bins = np.histogram_bin_edges(values, bins=30)
        for kind in ("good", *ANOMALY_KINDS):
            if np.any(kinds == kind):
                ax.hist(values[kinds == kind], bins=bins, alpha=0.5, label=kind)
        ax.set(title=name, xlabel="score", ylabel="images")
        ax.legend(fontsize="small")
    return _figure_png(fig)


def _item_figure(visual: ItemVisual, title: str) -> str:
    """Image, segmentation overlay and heatmap overlay of one test image."""
    image = np.asarray(visual.image)
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    fig = _new_figure(12, 12 * height / (3 * width) + 0.6)
    panels = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    for ax, name in zip(panels, ("image", "segmentation", "anomaly map"), strict=True):
        ax.imshow(image, extent=extent)
        ax.set_title(name, fontsize="small")
        ax.axis("off")
    if visual.segmentation is not None:
        seg = np.ma.masked_equal(np.asarray(visual.segmentation), 0)
        panels[1].imshow(
            seg, cmap="tab20", alpha=0.6, extent=extent, interpolation="nearest"
        )
    if visual.heatmap is not None:
        heat = panels[2].imshow(
            np.asarray(visual.heatmap), cmap="jet", alpha=0.5, extent=extent
        )
        fig.colorbar(heat, ax=panels[2], fraction=0.046)
    fig.suptitle(title, fontsize="small")
    return _figure_png(fig)


def failure_cases(fused, kinds, num: int) -> tuple[list[int], list[int]]:
    """Indices of the `num` highest-scored good and lowest-scored anomalous images.

    Args:
      fused: [N] fused scores.
      kinds: N kind names.
      num: how many of each.

    Returns:
      (good indices by decreasing score, anomalous indices by increasing score).
    """
    fused = np.asarray(fused, dtype=np.float64)
    good = np.array([canonical_kind(k) == "good" for k in kinds])
    order = np.argsort(fused, kind="stable")
    worst_good = [int(i) for i in order[::-1] if good[i]][:num]
    worst_anomalous = [int(i) for i in order if not good[i]][:num]
    return worst_good, worst_anomalous


def _cell(value: float | None) -> str:
    return "&ndash;" if value is None else f"{100 * value:.2f}"


def _metrics_table_html(metrics: Mapping) -> str:
    """The terminal table's rows plus every sPRO limit, as HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)
    rows = [
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_cell(v)}</td>" for v in values)
        + "</tr>"
        for label, values in metrics_rows(metrics)
    ]
    spro_head = "".join(f"<th>sPRO@{k}</th>" for k in SPRO_KEYS)
    spro_rows = []
    for kind, per_limit in metrics["spro"].items():
        cells = (
            [None] * len(SPRO_KEYS)
            if per_limit is None
            else [per_limit[k] for k in SPRO_KEYS]
        )
        spro_rows.append(
            f"<tr><td>{kind}</td>"
            + "".join(f"<td>{_cell(v)}</td>" for v in cells)
            + "</tr>"
        )
    return (
        f'<table class="metrics"><tr>{head}</tr>{"".join(rows)}</table>'
        f'<table class="metrics"><tr><th>kind</th>{spro_head}</tr>'
        f"{''.join(spro_rows)}</table>"
    )


def _failure_html(indices, title, fused, kinds, stems, visuals) -> str:
    parts = [f"<h3>{html.escape(title)}</h3>"]
    if not indices:
        parts.append("<p>none</p>")
    for rank, i in enumerate(indices, start=1):
        caption = f"#{rank} {stems[i]} ({kinds[i]}), fused score {fused[i]:.4g}"
        parts.append(f"<p>{html.escape(caption)}</p>")
        if visuals is not None:
            parts.append(_item_figure(visuals(i), caption))
    return "\n".join(parts)


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
    "table.metrics{border-collapse:collapse;margin:0.8em 0}"
    "table.metrics td,table.metrics th{border:1px solid #bbb;padding:3px 9px;"
    "text-align:right}table.side{display:inline-table;margin-right:2em;"
    "vertical-align:top}img{max-width:100%}"
)


def _score_arrays(scores: Mapping[str, object], n: int) -> dict[str, np.ndarray]:
    """The score columns present, in SCORE_COLUMNS order, as float64 [N]."""
    arrays = {}
    for name in SCORE_COLUMNS:
        if name in scores:
            arrays[name] = np.asarray(scores[name], dtype=np.float64)
            if arrays[name].shape != (n,) or not np.all(np.isfinite(arrays[name])):
                raise ReportError(f"scores[{name!r}] must be {n} finite values")
    if "fused" not in arrays:
        raise ReportError("scores must contain the fused score ('fused')")
    return arrays


def _counts_timing_html(counts: Mapping[str, int], timing: Mapping[str, float]):
    """Test images per kind and seconds per stage, as two small tables."""

    def table(header: str, rows: list[tuple[str, str]]) -> str:
        cells = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        return (
            f'<table class="metrics side"><tr><th colspan=2>{header}</th></tr>'
            f"{cells}</table>"
        )

    images = table("test images", [(k, str(n)) for k, n in counts.items()])
    seconds = table("seconds", [(k, f"{t:.1f}") for k, t in timing.items()])
    return f"<h2>Data and timing</h2>{images}{seconds}"


def write_report_html(
    path: str | Path,
    *,
    metrics: Mapping,
    scores: Mapping[str, object],
    kinds: Sequence[str],
    stems: Sequence[str],
    visuals: Callable[[int], ItemVisual] | None = None,
    num_failures: int = 4,
) -> Path:
    """Write a self-contained report.html (figures embedded as base64 PNG).

    Contents: the metrics tables, ROC curves per anomaly kind (fused and each
    branch), score histograms per kind, and the failure cases: the good images
    with the highest fused scores and the anomalous images with the lowest,
    each as image + segmentation overlay + heatmap.

    Args:
      path: output file.
      metrics: a validated metrics record (`build_metrics`).
      scores: "fused" and optionally the branches -> [N] scores.
      kinds, stems: N kind names and image names.
      visuals: index -> ItemVisual, called only for the failure cases; None
        lists them without pictures.
      num_failures: how many failure cases of each group.
    """
    validate_metrics(metrics)
    arrays = _score_arrays(scores, len(stems))
    kinds_arr = np.asarray([canonical_kind(k) for k in kinds], dtype=object)
    if len(kinds_arr) != len(stems):
        raise ReportError(f"{len(kinds_arr)} kinds for {len(stems)} images")
    good, anomalous = failure_cases(arrays["fused"], kinds_arr, num_failures)
    title = (
        f"CSAD evaluation: {metrics['category']} (preset {metrics['preset']}, "
        f"backbone {metrics['backbone']})"
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Metrics (%)</h2>",
        _metrics_table_html(metrics),
        _counts_timing_html(metrics["counts"], metrics["timing"]),
        "<h2>ROC curves</h2>",
        _roc_figure(arrays, kinds_arr),
        "<h2>Score distributions</h2>",
        _distribution_figure(arrays, kinds_arr),
        "<h2>Failure cases</h2>",
        _failure_html(
            good,
            "Good images with the highest scores",
            arrays["fused"],
            kinds_arr,
            stems,
            visuals,
        ),
        _failure_html(
            anomalous,
            "Anomalous images with the lowest scores",
            arrays["fused"],
            kinds_arr,
            stems,
            visuals,
        ),
    ]
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    return _atomic_write_text(path, page)
