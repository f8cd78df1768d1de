"""`csad demo`: synthetic data, fit and evaluation with the fast preset.

For each chosen synthetic category: generate the data if it is absent
(`csad synth`), fit with the `fast` preset (embedded EfficientNet-Lite0,
offline pseudo-labels), evaluate on its test split, print the results table and
write the report. Everything lives under --out (default `csad_demo/`), and a
re-run resumes or reuses what is already there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from csad_jax import report
from csad_jax.config import fast_config, read_config
from csad_jax.data import synthetic
from csad_jax.errors import ConfigError, CSADError
from csad_jax.evaluate import evaluate
from csad_jax.pipeline import CONFIG_JSON, fit, format_summary

DEFAULT_CATEGORY = "breakfast_tray"


def ensure_data(root: Path, category: str, progress: bool) -> None:
    """Generates the synthetic category unless a complete copy exists."""
    meta = root / category / synthetic.META_NAME
    try:
        complete = json.loads(meta.read_text()).get("complete") is True
    except (OSError, ValueError, AttributeError):
        complete = False
    if not complete:
        synthetic.generate(root, [category], overwrite=True, progress=progress)


def _check_previous_demo(run_dir: Path, config) -> None:
    """Refuses (without touching it) a demo run made with other settings."""
    path = run_dir / CONFIG_JSON
    if path.exists() and read_config(path) != config:
        raise ConfigError(
            f"{run_dir} holds a demo run made with other settings (an earlier "
            "version's fast preset?); remove that folder or pass another --out"
        )


def demo_category(out: Path, category: str, progress: bool) -> dict:
    """Data, fit and eval of one category; returns its metrics record."""
    start = time.perf_counter()
    data = out / "data"
    ensure_data(data, category, progress)
    run_dir = out / "runs" / category
    config = fast_config()
    _check_previous_demo(run_dir, config)
    model, summary = fit(data, category, run_dir, config, progress=progress)
    print(format_summary(model, summary))
    record = evaluate(run_dir, data, run_dir / "eval", progress=progress, model=model)
    report.print_metrics_table(record)
    seconds = time.perf_counter() - start
    print(f"{category}: report {run_dir / 'eval' / 'report.html'} ({seconds:.0f} s)")
    sys.stdout.flush()
    return {**record, "demo_seconds": seconds}


def format_overview(records: list[dict]) -> str:
    """One line per category: image AUROC (%) per branch and fused, wall time."""
    head = f"{'category':<16}{'kind':<12}{'patch_hist':>11}{'lgst':>8}{'fused':>8}"
    lines = [head + f"{'seconds':>9}"]
    for rec in records:
        for kind in ("logical", "structural"):
            cells = [rec["branches"][b][kind] for b in report.BRANCHES]
            cells.append(rec["auroc"][kind])
            text = "".join(
                f"{'-' if v is None else f'{100 * v:.1f}':>{w}}"
                for v, w in zip(cells, (11, 8, 8), strict=True)
            )
            secs = f"{rec['demo_seconds']:>9.0f}" if kind == "logical" else ""
            lines.append(f"{rec['category']:<16}{kind:<12}{text}{secs}")
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad demo`."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--category",
        choices=tuple(synthetic.CATEGORIES),
        help=f"synthetic category (default {DEFAULT_CATEGORY})",
    )
    which.add_argument("--all", action="store_true", help="every synthetic category")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("csad_demo"),
        help="output folder: data/ and runs/<category>/ (default ./csad_demo)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run `csad demo`."""
    categories = (
        list(synthetic.CATEGORIES) if args.all else [args.category or DEFAULT_CATEGORY]
    )
    records = []
    try:
        for category in categories:
            records.append(demo_category(args.out, category, not args.quiet))
    except OSError as err:
        raise CSADError(f"cannot write demo outputs to {args.out}: {err}") from None
    print(format_overview(records))
    sys.stdout.flush()
    return 0
