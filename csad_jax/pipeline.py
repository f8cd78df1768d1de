"""`csad fit`: pseudo-labels -> segmentor -> patch histogram -> LGST -> calibration.

Stages run in order; each records its completion in `<run>/stages.json`, and
the trainers checkpoint inside their stage folder, so re-running the same
command resumes where the last run stopped. Run directory layout:

    config.json        the full configuration (refuses a different one later)
    stages.json        category, data root, per-stage completion and seconds
    data_view/<cat>/   symlinks to train/ and validation/ ONLY (see below)
    labels/<cat>/      generated pseudo-labels (unless --labels is given)
    segmentor/         segmentor checkpoints and log
    patch_histogram/   fitted histogram Gaussians
    lgst/              LGST checkpoints, log and fitted branch
    model/             the final model directory (`csad_jax.model`)

Test data is never read here: the category is listed through `data_view/`,
a folder holding links to the category's `train` and `validation` folders
only, so no code of the fit (nor the pseudo-label subprocess) can list or open
the test split, which may be absent or unreadable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from csad_jax import model as model_lib
from csad_jax.config import PRESETS, CSADConfig, preset_config, read_config
from csad_jax.config import write_config as write_config_json
from csad_jax.data.batching import iterate_batches
from csad_jax.data.image_io import normalize_imagenet, read_image_size
from csad_jax.data.loco import CategoryData, list_categories, load_category
from csad_jax.data.pseudo_labels import load_pseudo_labels
from csad_jax.errors import CheckpointError, ConfigError, CSADError, DataError
from csad_jax.patch_histogram import PatchHistogramScorer
from csad_jax.train_lgst import fit_lgst
from csad_jax.train_segmentor import fit_segmentor
from csad_jax.training import Checkpointer

log = logging.getLogger("csad_jax")

STAGES = ("labels", "segmentor", "patch_histogram", "lgst", "calibration")
FIT_SPLITS = ("train", "validation")
STAGES_JSON = "stages.json"
CONFIG_JSON = "config.json"


# ---------------------------------------------------------------------------
# Run directory bookkeeping
# ---------------------------------------------------------------------------


class RunRecord:
    """`stages.json`: what a run is about and which stages are complete."""

    def __init__(self, run_dir: Path, category: str, data_root: Path):
        self.path = run_dir / STAGES_JSON
        self.data = {"category": category, "data": str(data_root), "stages": {}}
        if self.path.exists():
            self._load(category)

    def _load(self, category: str) -> None:
        try:
            stored = json.loads(self.path.read_text())
            stages = dict(stored["stages"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.path} is corrupt ({err})") from None
        if stored.get("category") != category:
            raise ConfigError(
                f"{self.path.parent} holds a run for category "
                f"{stored.get('category')!r}, not {category!r}; use another --out"
            )
        self.data["stages"] = stages

    def done(self, stage: str) -> bool:
        """Whether `stage` completed in an earlier run."""
        return bool(self.data["stages"].get(stage, {}).get("done"))

    def info(self, stage: str) -> dict[str, Any]:
        """The stored record of a stage (empty if never run)."""
        return dict(self.data["stages"].get(stage, {}))

    def complete(self, stage: str, seconds: float, **info) -> None:
        """Marks `stage` complete (atomically rewrites stages.json)."""
        self.data["stages"][stage] = {"done": True, "seconds": seconds, **info}
        tmp = self.path.with_name(STAGES_JSON + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)

    def seconds(self) -> dict[str, float]:
        """Stage name -> seconds of the run that completed it."""
        return {
            s: float(self.data["stages"][s]["seconds"])
            for s in STAGES
            if s in self.data["stages"]
        }


def check_config(run_dir: Path, config: CSADConfig) -> None:
    """Writes config.json, or refuses a run directory made with another one."""
    path = run_dir / CONFIG_JSON
    if not path.exists():
        write_config_json(path, config)
        return
    stored = read_config(path)
    if stored != config:
        ours, theirs = config.to_dict(), stored.to_dict()
        diff = sorted(k for k in ours if ours[k] != theirs.get(k))
        raise ConfigError(
            f"{run_dir} holds a run with a different configuration ({', '.join(diff)}"
            "); resume it without --preset/--backbone/--config, or use another --out"
        )


# ---------------------------------------------------------------------------
# Train/validation-only view of the category
# ---------------------------------------------------------------------------


def category_folder(data_root: Path, category: str) -> Path:
    """The category folder, or a DataError naming the categories found."""
    if not data_root.is_dir():
        raise DataError(f"dataset root not found: {data_root}")
    folder = data_root / category
    if not category or "/" in category or not folder.is_dir():
        found = ", ".join(list_categories(data_root)) or "none"
        raise DataError(
            f"category {category!r} not found in {data_root}; categories found: {found}"
        )
    return folder


def fit_view(data_root: Path, category: str, run_dir: Path) -> Path:
    """A dataset root whose category holds links to train/ and validation/ only.

    Returns:
      the view root (`<run_dir>/data_view`), to be passed to `load_category`.
    """
    source = category_folder(data_root, category).resolve()
    view = run_dir / "data_view" / category
    view.mkdir(parents=True, exist_ok=True)
    for split in FIT_SPLITS:
        link = view / split
        if link.is_symlink() or link.exists():
            link.unlink()
        if (source / split).exists():
            link.symlink_to(source / split, target_is_directory=True)
    return view.parent


def load_fit_category(data_root: Path, category: str, run_dir: Path) -> CategoryData:
    """The category through its train/validation view; refuses empty splits."""
    view_root = fit_view(data_root, category, run_dir)
    data = load_category(view_root, category)
    for split in FIT_SPLITS:
        if not data.samples(split, "good"):
            where = data_root / category / split / "good"
            raise DataError(f"no images in {where}: the split is missing or empty")
    return data


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class FitContext:
    """What every stage reads; images are loaded on first use."""

    config: CSADConfig
    run_dir: Path
    data: CategoryData
    view_root: Path
    record: RunRecord
    progress: bool
    backbone: Any = None
    _images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def images(self, split: str) -> np.ndarray:
        """uint8 [N, S, S, 3] images of `split`/good at model size."""
        if split not in self._images:
            size = self.config.image_size
            batches = iterate_batches(
                self.data.samples(split, "good"),
                size,
                self.config.batch_size,
                desc=f"load {split}",
                progress=self.progress,
            )
            parts = [np.rint(b * 255.0).astype(np.uint8) for b, _ in batches]
            self._images[split] = np.concatenate(parts)
        return self._images[split]

    def normalised(self, split: str) -> np.ndarray:
        """float32 [N, S, S, 3] ImageNet-normalised images of `split`/good."""
        return normalize_imagenet(self.images(split).astype(np.float32) / 255.0)


def label_command(ctx: FitContext, out: Path) -> list[str]:
    """The `csad labels` subprocess command line for this run."""
    cfg = ctx.config.labels
    cmd = [sys.executable, "-m", "csad_jax.cli", "labels"]
    cmd += ["--data", str(ctx.view_root), "--category", ctx.data.name]
    cmd += ["--out", str(out), "--backend", cfg.backend]
    if cfg.feature_weights:
        cmd += ["--feature-weights", str(cfg.feature_weights)]
    if cfg.rotations is not None:
        cmd += ["--rotations", str(cfg.rotations)]
    if cfg.bandwidth is not None:
        cmd += ["--bandwidth", str(cfg.bandwidth)]
    cmd += ["--min-labelled", str(ctx.config.segmentor.min_labelled)]
    if not ctx.progress:
        cmd.append("--quiet")
    return cmd


def stage_labels(ctx: FitContext, labels_dir: Path | None) -> Path:
    """Pseudo-labels: validate --labels, or generate them in a subprocess.

    label_gen may import torch, which csad_jax never does, so generation runs
    as `csad labels` in its own process (reading the train/validation view).
    """
    if labels_dir is None:
        labels_dir = ctx.run_dir / "labels"
        if not ctx.record.done("labels"):
            cmd = label_command(ctx, labels_dir)
            log.info("generating pseudo-labels: %s", " ".join(cmd))
            done = subprocess.run(cmd, check=False)
            if done.returncode != 0:
                raise DataError(
                    f"pseudo-label generation for {ctx.data.name} failed (exit "
                    f"{done.returncode}, message above); or pass --labels DIR"
                )
    labels = load_pseudo_labels(labels_dir, ctx.data.name)
    return labels.directory


def stage_segmentor(ctx: FitContext, labels_dir: Path):
    """Trains (or resumes, or reloads) the component segmentor."""
    return fit_segmentor(
        ctx.config.segmentor,
        ctx.backbone,
        ctx.data,
        labels_dir,
        ctx.run_dir / "segmentor",
        show_progress=ctx.progress,
    )


def segment_images(segmentor, images_u8: np.ndarray, batch_size: int, desc):
    """Label maps int32 [N, S, S] of uint8 images [N, S, S, 3]."""
    graphdef, state = nnx.split(segmentor)

    @jax.jit
    def run(state, images):
        logits = nnx.merge(graphdef, state)(images, train=False)
        return {"maps": jnp.argmax(logits, axis=-1).astype(jnp.int32)}

    images = normalize_imagenet(images_u8.astype(np.float32) / 255.0)
    out = model_lib.run_batched(lambda x: run(state, x), images, batch_size, desc)
    return out["maps"]


def stage_patch_histogram(ctx: FitContext, segmentor) -> PatchHistogramScorer:
    """Fits the class/patch histogram Gaussians on train/good label maps."""
    hist = ctx.config.histogram
    folder = ctx.run_dir / "patch_histogram"
    advice = f"delete {folder}: csad fit then fits the histograms again"
    ckpt = Checkpointer(folder, max_to_keep=1, advice=advice)
    try:
        if ctx.record.done("patch_histogram") and ckpt.latest_step() is not None:
            like = model_lib.like_calibration(ctx.config, segmentor.num_outputs - 1)
            scorer = ckpt.restore(like.scorer.replace(stats=None))
            return scorer
        desc = "segment train" if ctx.progress else None
        maps = segment_images(
            segmentor, ctx.images("train"), ctx.config.batch_size, desc
        )
        scorer = PatchHistogramScorer.fit(
            maps,
            segmentor.num_outputs,
            grids=hist.grids,
            background=hist.background,
            method=hist.method,
            unseen_std=hist.unseen_std,
            batch_size=hist.batch_size,
        )
        ckpt.save(0, scorer)
        return scorer
    finally:
        ckpt.close()


def stage_lgst(ctx: FitContext):
    """Trains (or resumes, or reloads) the LGST branch; fits map quantiles."""
    return fit_lgst(
        ctx.config.lgst,
        ctx.backbone,
        ctx.images("train"),
        ctx.images("validation"),
        ctx.run_dir / "lgst",
        progress=ctx.progress,
    )


def stage_calibration(ctx: FitContext, segmentor, scorer, lgst_model, meta):
    """Fuses the parts, fits detector and branch statistics, saves the model."""
    nets = model_lib.FusedNetworks(ctx.backbone, segmentor.decoder, lgst_model.nets)
    calib = model_lib.Calibration(
        teacher_stats=lgst_model.teacher_stats,
        quantiles=lgst_model.quantiles,
        scorer=scorer,
    )
    fused = model_lib.CSADModel(ctx.config, nets, calib, meta)
    fused = model_lib.calibrate(fused, ctx.normalised("validation"), ctx.progress)
    model_lib.save_model(fused, ctx.run_dir)
    return fused


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


class StageRunner:
    """Runs stages in order, announcing them and recording their completion."""

    def __init__(self, record: RunRecord, progress: bool):
        self.record, self.progress = record, progress
        self.summary: dict[str, dict] = {}

    def announce(self, stage: str, resumed: bool) -> None:
        """The `[i/n] stage: running` line on stderr."""
        if self.progress:
            index = STAGES.index(stage) + 1
            state = "already done, reloading" if resumed else "running"
            print(f"[{index}/{len(STAGES)}] {stage}: {state}", file=sys.stderr)
            sys.stderr.flush()

    def run(self, stage: str, fn, *args):
        """Runs (or reloads) one stage; marks it complete in stages.json."""
        resumed = self.record.done(stage)
        self.announce(stage, resumed)
        start = time.perf_counter()
        product = fn(*args)
        seconds = time.perf_counter() - start
        if not resumed:
            self.record.complete(stage, seconds)
        stored = self.record.info(stage).get("seconds", seconds)
        self.summary[stage] = {"seconds": float(stored), "resumed": resumed}
        return product


def fit(
    data_root: str | Path,
    category: str,
    run_dir: str | Path,
    config: CSADConfig,
    *,
    labels_dir: str | Path | None = None,
    progress: bool = True,
    backbone=None,
) -> tuple[model_lib.CSADModel, dict[str, dict]]:
    """Fits (or resumes) a CSAD model of one category into `run_dir`.

    Args:
      data_root: LOCO-layout root holding the category folder.
      category: category name.
      run_dir: run directory (created; an existing one is resumed).
      config: the configuration; must equal the stored one when resuming.
      labels_dir: existing pseudo-labels (`<out>` or `<out>/<category>`);
        None generates them with label_gen into `<run_dir>/labels`.
      progress: progress bars and stage lines on stderr.
      backbone: an already built frozen backbone to use instead of the one
        `config.backbone` names (tests use a tiny stand-in; `load_model` then
        needs the same object passed in).

    Returns:
      (the fitted model, per-stage summary {stage: {"seconds", "resumed"}}).
    """
    config.validate()
    data_root, run_dir = Path(data_root).resolve(), Path(run_dir)
    view = run_dir / "data_view"
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        data = load_fit_category(data_root, category, run_dir)
        check_config(run_dir, config)
        record = RunRecord(run_dir, category, data_root)
        ctx = FitContext(config, run_dir, data, view, record, progress)
        # The backbone first: missing weights must fail before any long stage.
        ctx.backbone = (
            model_lib.build_backbone(config.backbone) if backbone is None else backbone
        )
    except CSADError as err:
        if created:  # nothing of the user's is in a folder this call made
            shutil.rmtree(run_dir, ignore_errors=True)
        raise _with_user_paths(err, view, data_root) from None
    try:
        return _run_stages(ctx, labels_dir, data_root)
    except CSADError as err:
        raise _with_user_paths(err, view, data_root) from None


def _run_stages(ctx: FitContext, labels_dir, data_root: Path):
    """The five stages of `fit`, each resumed or run."""
    record, run_dir = ctx.record, ctx.run_dir
    if not all(record.done(stage) for stage in STAGES):
        # Decode every fit image now: a broken one must fail before hours of work.
        ctx.images("train")
        ctx.images("validation")
    stages = StageRunner(record, ctx.progress)
    labels = stages.run("labels", stage_labels, ctx, _opt_path(labels_dir))
    segmentor = stages.run("segmentor", stage_segmentor, ctx, labels)
    scorer = stages.run("patch_histogram", stage_patch_histogram, ctx, segmentor)
    lgst_model = stages.run("lgst", stage_lgst, ctx)
    if record.done("calibration") and _model_complete(run_dir):
        fused = stages.run("calibration", model_lib.load_model, run_dir, ctx.backbone)
    else:
        record.data["stages"].pop("calibration", None)
        meta = _model_meta(ctx, labels, data_root)
        parts = (segmentor, scorer, lgst_model, meta)
        fused = stages.run("calibration", stage_calibration, ctx, *parts)
    return fused, stages.summary


def _with_user_paths(err: CSADError, view: Path, data_root: Path) -> CSADError:
    """`err` with paths inside the run's data view shown as the user's data paths.

    The fit reads train/ and validation/ through links in `<run>/data_view`; a
    message about an image there should name the file the user can open.
    """
    text = str(err)
    for prefix in dict.fromkeys((str(view.resolve()), str(view))):
        text = text.replace(prefix, str(data_root))
    return err if text == str(err) else type(err)(text)


def _opt_path(path) -> Path | None:
    return None if path is None else Path(path)


def _model_complete(run_dir: Path) -> bool:
    try:
        model_lib.read_model_json(run_dir)
    except CheckpointError:
        return False
    return True


def _model_meta(ctx: FitContext, labels_dir: Path, data_root: Path) -> dict[str, Any]:
    """The readable description saved in model.json."""
    sample = ctx.data.samples("train", "good")[0]
    return {
        "fit_seconds": ctx.record.seconds(),
        "category": ctx.data.name,
        "data_root": str(data_root),
        "labels": str(labels_dir),
        "backbone": model_lib.backbone_identity(ctx.config.backbone, ctx.backbone),
        "train_image_size": list(read_image_size(sample.path)),
        "train_images": len(ctx.data.samples("train", "good")),
    }


# ---------------------------------------------------------------------------
# Summary table and CLI
# ---------------------------------------------------------------------------


def format_summary(model: model_lib.CSADModel, summary: dict[str, dict]) -> str:
    """The final table printed by `csad fit`."""
    lines = [f"{'stage':<17}{'status':>10}{'seconds':>10}"]
    for stage in STAGES:
        row = summary.get(stage, {})
        status = "resumed" if row.get("resumed") else "done"
        lines.append(f"{stage:<17}{status:>10}{row.get('seconds', 0.0):>10.1f}")
    total = sum(r.get("seconds", 0.0) for r in summary.values())
    lines.append(f"{'total':<17}{'':>10}{total:>10.1f}")
    calib = model.calib
    lines.append(
        f"classes {model.num_classes}, backbone {model.config.backbone.name}, "
        f"input {model.image_size} px, preset {model.config.preset}"
    )
    for branch in model_lib.BRANCHES:
        stats = getattr(calib.fusion, branch)
        lines.append(
            f"{branch} validation score: trimmed mean {float(stats.mean):.4g}, "
            f"std {float(stats.std):.4g}"
        )
    return "\n".join(lines)


def resolve_config(args: argparse.Namespace) -> CSADConfig:
    """The configuration from --config / --preset / --backbone / --weights."""
    stored = Path(args.out) / CONFIG_JSON
    explicit = args.config or args.preset or args.backbone or args.weights
    if args.config:
        config = read_config(args.config)
    elif not explicit and stored.exists():
        config = read_config(stored)
    else:
        config = preset_config(args.preset or "paper")
    if args.backbone or args.weights or args.random_init_backbone:
        config = config.with_backbone(
            args.backbone or config.backbone.name,
            args.weights,
            random_init=args.random_init_backbone,
        )
    return config.validate()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad fit`."""
    parser.add_argument("--data", required=True, type=Path, help="dataset root")
    parser.add_argument("--category", required=True, help="category folder name")
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="hyperparameters: paper (official, WideResNet-50-2) or fast "
        "(EfficientNet-Lite0, CPU-sized); default paper for a new run, the "
        "stored config when resuming",
    )
    parser.add_argument("--backbone", help="backbone name (overrides the preset)")
    parser.add_argument("--weights", help="backbone weights file")
    parser.add_argument(
        "--labels", type=Path, help="existing pseudo-labels folder (skips label_gen)"
    )
    parser.add_argument("--config", type=Path, help="a config.json to use")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    # Test-only: PyTorch-default random backbone weights (no weights file).
    parser.add_argument(
        "--random-init-backbone", action="store_true", help=argparse.SUPPRESS
    )


def run(args: argparse.Namespace) -> int:
    """Run `csad fit`."""
    config = resolve_config(args)
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fitted, summary = fit(
            args.data,
            args.category,
            args.out,
            config,
            labels_dir=args.labels,
            progress=not args.quiet,
        )
    except OSError as err:
        raise CSADError(f"cannot write run directory {args.out}: {err}") from None
    print(format_summary(fitted, summary))
    print(f"model saved to {model_lib.model_directory(args.out)}")
    sys.stdout.flush()
    return 0
