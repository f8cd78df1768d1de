"""`csad info`: summarise a LOCO-layout folder and list every problem in it.

For each category it prints split counts, the image sizes found, anomaly kinds
with their mask files and defect regions, the defects_config.json entries, and
every problem found: structure (missing partners, duplicate stems, stray files
and folders, empty splits), unreadable or truncated files, masks whose size
differs from their image, empty masks and mask values that defects_config.json
does not list. Images are checked from their headers plus Pillow's `verify`
(PNG chunk checksums, which catch truncation); `--decode` also decodes every
image fully. Masks are always decoded, since their values matter for sPRO.
Paths in the problem lists are relative to the category folder.

Exit code: 0 without problems, 1 when problems were found, 2 when the root or
the requested category is unusable.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from csad_jax.data.image_io import check_image_file, read_mask, read_rgb
from csad_jax.data.loco import (
    ANOMALY_KINDS,
    DEFECTS_CONFIG,
    SPLIT_KINDS,
    CategoryData,
    Sample,
    list_categories,
    looks_like_category,
    scan_category,
)
from csad_jax.errors import ConfigError, DataError

WIDTH = 88
COUNT_COLUMNS = (
    ("train", "good", "train"),
    ("validation", "good", "validation"),
    ("test", "good", "test good"),
    ("test", "logical_anomalies", "logical"),
    ("test", "structural_anomalies", "structural"),
)


@dataclass
class CategoryReport:
    """What `csad info` found in one category."""

    name: str
    path: Path
    data: CategoryData
    sizes: Counter = field(default_factory=Counter)  # (h, w) -> images
    mask_files: Counter = field(default_factory=Counter)  # kind -> files
    regions: Counter = field(default_factory=Counter)  # (kind, label) -> regions
    problems: list[str] = field(default_factory=list)
    incomplete: str = ""  # why synthetic output is unfinished, or ""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `csad info` options."""
    parser.add_argument("--data", required=True, help="dataset root (holds categories)")
    parser.add_argument("--category", help="only this category (default: all)")
    parser.add_argument(
        "--decode",
        action="store_true",
        help="fully decode every image (slower; default checks headers and PNG CRCs)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar"
    )


def _check_mask(
    path: Path, sample: Sample, image_hw: tuple[int, int] | None, rep: CategoryReport
) -> None:
    """Decode one mask and record its regions and problems."""
    try:
        mask = read_mask(path)
    except DataError as err:
        rep.problems.append(str(err))
        return
    if image_hw is not None and mask.shape != image_hw:
        rep.problems.append(
            f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but its image "
            f"{sample.path} is {image_hw[0]}x{image_hw[1]}"
        )
    values = [int(v) for v in np.unique(mask) if v != 0]
    if not values:
        rep.problems.append(f"mask {path} has no non-zero (anomalous) pixel")
    for value in values:
        spec = rep.data.defect_for_value(value)
        if rep.data.defects_config is not None and spec is None:
            rep.problems.append(
                f"mask {path} has value {value}, which {DEFECTS_CONFIG} does not list"
            )
        label = spec.defect_name if spec else f"value {value}"
        rep.regions[(sample.kind, label)] += 1


def _check_sample(sample: Sample, decode: bool, rep: CategoryReport) -> None:
    """Check one image (header, CRCs, optionally pixels) and its masks."""
    image_hw = None
    try:
        _, height, width = check_image_file(sample.path)
        if decode:
            read_rgb(sample.path)
        image_hw = (height, width)
        rep.sizes[image_hw] += 1
    except DataError as err:
        rep.problems.append(str(err))
    for mask_path in sample.mask_paths:
        rep.mask_files[sample.kind] += 1
        _check_mask(mask_path, sample, image_hw, rep)


def inspect_category(
    root: str | Path, category: str, decode: bool = False, progress: bool = True
) -> CategoryReport:
    """Scan one category and check every file in it; never stops at a problem."""
    scan = scan_category(root, category)
    rep = CategoryReport(category, scan.data.path, scan.data)
    rep.incomplete = scan.incomplete
    rep.problems.extend(scan.problems + scan.empty_splits + scan.unexpected)
    samples = [s for split in SPLIT_KINDS for s in scan.data.samples(split)]
    bar = tqdm(
        samples,
        desc=f"checking {category}",
        unit="img",
        leave=False,
        disable=None if progress else True,
    )
    for sample in bar:
        _check_sample(sample, decode, rep)
    return rep


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _categories(count: int) -> str:
    return f"{count} category" if count == 1 else f"{count} categories"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of an aligned table: first column left, others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _field(label: str, text: str) -> list[str]:
    """A `label  text` line wrapped with a hanging indent under the text."""
    indent = " " * 24
    first = f"  {label:<22}"
    return textwrap.wrap(
        text, WIDTH, initial_indent=first, subsequent_indent=indent
    ) or [first.rstrip()]


def _kind_text(rep: CategoryReport, kind: str) -> str:
    images = len(rep.data.samples("test", kind))
    labels = sorted((lab, n) for (k, lab), n in rep.regions.items() if k == kind)
    text = f"{_plural(images, 'image')}, {_plural(rep.mask_files[kind], 'mask file')}"
    if labels:
        text += "; regions: " + ", ".join(f"{lab} {n}" for lab, n in labels)
    return text


def _details(rep: CategoryReport) -> list[str]:
    """The per-category block below the summary table."""
    lines = [f"{rep.name}  ({rep.path})"]
    if rep.incomplete:
        lines += _field(
            "synthetic data",
            "INCOMPLETE: the csad synth run that wrote this folder was interrupted; "
            "regenerate it with csad synth --overwrite",
        )
    sizes = sorted(rep.sizes.items(), key=lambda item: (-item[1], item[0]))
    size_text = ", ".join(f"{h} x {w}: {_plural(n, 'image')}" for (h, w), n in sizes)
    size_text = size_text or "none readable"
    lines += _field("image sizes (H x W)", size_text)
    for kind in ANOMALY_KINDS:
        lines += _field(kind, _kind_text(rep, kind))
    defects = rep.data.defects_config
    if defects is None:
        present = (rep.path / DEFECTS_CONFIG).exists()
        config = "present but invalid" if present else "absent"
    else:
        names = ", ".join(d.defect_name for d in defects)
        config = f"present, {_plural(len(defects), 'defect')}: {names}".rstrip(": ")
    lines += _field(DEFECTS_CONFIG, config)
    lines += _field("problems", str(len(rep.problems)) if rep.problems else "none")
    prefix = f"{rep.path}{os.sep}"  # paths are shown relative to the category
    lines += [f"    - {p.replace(prefix, '')}" for p in rep.problems]
    return lines


def format_report(root: str | Path, reports: list[CategoryReport]) -> str:
    """The whole `csad info` text for a list of category reports."""
    header = ["category", *(c[2] for c in COUNT_COLUMNS), "masks", "problems"]
    rows = [
        [
            r.name,
            *(str(len(r.data.samples(s, k))) for s, k, _ in COUNT_COLUMNS),
            str(sum(r.mask_files.values())),
            str(len(r.problems)),
        ]
        for r in reports
    ]
    lines = [f"LOCO layout at {root}: {_categories(len(reports))}", ""]
    lines += _table(header, rows)
    for rep in reports:
        lines += ["", *_details(rep)]
    total = sum(len(r.problems) for r in reports)
    bad = sum(1 for r in reports if r.problems)
    lines.append("")
    unfinished = [r.name for r in reports if r.incomplete]
    if unfinished:
        lines.append(
            f"incomplete synthetic output (csad synth interrupted): "
            f"{', '.join(unfinished)}"
        )
    if total:
        lines.append(
            f"{_plural(total, 'problem')} found in {bad} of {_categories(len(reports))}"
        )
    else:
        lines.append("no problems found")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Print the summary; 0 if clean, 1 if problems were found."""
    if args.category is not None and not args.category.strip():
        raise ConfigError("--category must not be empty (omit it for all categories)")
    if args.category is not None:
        categories = [args.category]
    else:
        categories = list_categories(args.data)
    if not categories:
        hint = ""
        if looks_like_category(args.data):
            hint = f"; {args.data} itself looks like a category: pass its parent"
        raise DataError(
            "no LOCO categories (folders with train/good, validation/good or "
            f"test/<kind>) in "
            f"{args.data}{hint}"
        )
    reports = [
        inspect_category(args.data, c, args.decode, not args.no_progress)
        for c in categories
    ]
    sys.stdout.write(format_report(args.data, reports))
    return 1 if any(r.problems for r in reports) else 0
