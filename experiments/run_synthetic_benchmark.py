"""Fast-preset benchmark on the synthetic categories: fit, eval, AUROC table.

For every synthetic category (or --categories): generate the data if absent,
`csad fit --preset fast` (offline pseudo-labels, EfficientNet-Lite0), `csad
eval`, then print one table of image AUROC (%) per branch and fused, with the
date, the command and the wall time of every stage (fit stages as recorded in
each run's stages.json, so a resumed run reports the time of the run that
fitted it). Results also go to `<out>/benchmark.json`.

Acceptance (issue 8): fused image AUROC >= 90 for logical and structural on
every category, and on average the fused score >= the better single branch.

Command:
    .venv/bin/python experiments/run_synthetic_benchmark.py --out bench_synth

Expected wall time on an idle 2-core CPU: about 7-8 minutes per category
(most of it LGST training); much longer while the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

from csad_jax import report
from csad_jax.config import fast_config
from csad_jax.data import synthetic
from csad_jax.demo import ensure_data
from csad_jax.errors import CSADError
from csad_jax.evaluate import evaluate, fit_timing
from csad_jax.pipeline import fit

KINDS = ("logical", "structural")
COLUMNS = (*report.BRANCHES, "fused")


def run_category(out: Path, category: str, progress: bool) -> dict:
    """Data, fit and eval of one category; returns AUROCs and timings."""
    start = time.perf_counter()
    data = out / "data"
    ensure_data(data, category, progress)
    run_dir = out / "runs" / category
    model, _ = fit(data, category, run_dir, fast_config(), progress=progress)
    record = evaluate(run_dir, data, run_dir / "eval", progress=progress, model=model)
    return {
        "category": category,
        "auroc": {
            col: {
                kind: (record["auroc"] if col == "fused" else record["branches"][col])[
                    kind
                ]
                for kind in KINDS
            }
            for col in COLUMNS
        },
        "timing": {**fit_timing(run_dir), "eval": record["timing"]["eval"]},
        "wall_seconds_this_call": time.perf_counter() - start,
    }


def _pct(value) -> str:
    return "   -" if value is None else f"{100 * value:5.1f}"


def format_table(rows: list[dict]) -> str:
    """AUROC (%) per category and kind, means, and per-stage seconds."""
    lines = [f"{'category':<16}{'kind':<12}" + "".join(f"{c:>17}" for c in COLUMNS)]
    for row in rows:
        for kind in KINDS:
            cells = "".join(f"{_pct(row['auroc'][c][kind]):>17}" for c in COLUMNS)
            lines.append(f"{row['category']:<16}{kind:<12}{cells}")
    means = {c: _mean(rows, c) for c in COLUMNS}
    lines.append(
        f"{'mean':<16}{'both':<12}" + "".join(f"{_pct(means[c]):>17}" for c in COLUMNS)
    )
    lines.append("")
    lines.append("seconds per stage (fit as recorded when fitted; eval this call):")
    for row in rows:
        parts = ", ".join(f"{k} {v:.0f}" for k, v in row["timing"].items())
        total = sum(row["timing"].values())
        lines.append(f"  {row['category']}: {parts}; total {total:.0f}")
    return "\n".join(lines)


def _mean(rows: list[dict], column: str) -> float | None:
    values = [r["auroc"][column][k] for r in rows for k in KINDS]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def acceptance(rows: list[dict]) -> list[str]:
    """The acceptance checks of issue 8 as PASS/FAIL lines."""
    lines = []
    for row in rows:
        for kind in KINDS:
            value = row["auroc"]["fused"][kind]
            ok = value is not None and value >= 0.90
            lines.append(
                f"{'PASS' if ok else 'FAIL'} {row['category']} {kind} fused "
                f"{_pct(value).strip()} >= 90"
            )
    fused = _mean(rows, "fused")
    best = max(_mean(rows, b) or 0.0 for b in report.BRANCHES)
    ok = fused is not None and fused >= best
    lines.append(
        f"{'PASS' if ok else 'FAIL'} mean fused {_pct(fused).strip()} >= best "
        f"single branch {_pct(best).strip()}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_synth"))
    parser.add_argument(
        "--categories",
        default=",".join(synthetic.CATEGORIES),
        help="comma-separated synthetic categories (default: all)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    categories = [c for c in args.categories.split(",") if c]
    started = datetime.datetime.now().isoformat(timespec="seconds")
    rows, failed = [], []
    for category in categories:
        try:
            rows.append(run_category(args.out, category, not args.quiet))
        except CSADError as err:
            print(f"benchmark: {category}: error: {err}", file=sys.stderr)
            failed.append(f"FAIL {category} could not be fitted: {err}")
    text = "\n".join(
        [
            f"date: {started}",
            "command: " + " ".join([Path(sys.executable).name, *sys.argv]),
            "preset: fast (EfficientNet-Lite0, offline pseudo-labels); image AUROC %",
            format_table(rows),
            "",
            *acceptance(rows),
            *failed,
        ]
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(
        json.dumps({"date": started, "rows": rows, "failed": failed}, indent=2) + "\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
