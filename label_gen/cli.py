"""`csad labels`: semantic pseudo-labels for one category (offline or foundation).

The offline backend (default when no foundation checkpoint is given) needs no
foundation-model weights: colour over-segmentation proposals and the embedded
EfficientNet-Lite0 features. The foundation backend is Grounded-SAM + SAM with
local checkpoint files; nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import warnings
from pathlib import Path

from csad_jax.errors import ConfigError, DataError
from label_gen.output import CategoryOutput, InputImage
from label_gen.pipeline import Backend, generate_pseudo_labels
from label_gen.settings import LabelSettings, settings_for, with_prompts


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad labels`."""
    parser.add_argument("--data", required=True, type=Path, help="dataset root")
    parser.add_argument("--category", required=True, help="category folder name")
    parser.add_argument("--out", required=True, type=Path, help="output root")
    parser.add_argument(
        "--backend",
        choices=("offline", "foundation"),
        help="default: foundation when --sam-checkpoint is given, else offline",
    )
    parser.add_argument("--sam-checkpoint", type=Path, help="SAM / HQ-SAM .pth")
    parser.add_argument("--sam-variant", choices=("vit_h", "vit_l", "vit_b"))
    parser.add_argument("--grounding-checkpoint", type=Path, help="GroundingDINO .pth")
    parser.add_argument(
        "--grounding-config", type=Path, help="GroundingDINO .py config"
    )
    parser.add_argument(
        "--text-encoder", type=Path, help="local bert-base-uncased folder"
    )
    parser.add_argument(
        "--ram-checkpoint", type=Path, help="RAM++ .pth: tags as prompts"
    )
    parser.add_argument("--prompts", help="text prompts 'a . b . c' (overrides config)")
    parser.add_argument("--background", help="background phrases 'x . y'")
    parser.add_argument(
        "--feature-weights",
        type=Path,
        help="wide_resnet50_2 weights for component features (official choice); "
        "without them EfficientNet-Lite0 is used",
    )
    parser.add_argument("--rotations", type=int, help="R (official 60; offline 8)")
    parser.add_argument("--bandwidth", type=float, help="MeanShift bandwidth override")
    parser.add_argument(
        "--min-labelled",
        type=int,
        default=0,
        help="label at least this many maps, the closest to the largest cluster's "
        "mean (default 0: official rule only; csad fit passes what its segmentor "
        "needs)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def category_images(data: Path, category: str) -> list[InputImage]:
    """The category's train/good images (the only ones labels are made from)."""
    from csad_jax.data.loco import load_category

    samples = load_category(data, category).require_nonempty("train", "good")
    return [InputImage(s.stem, Path(s.path)) for s in samples]


def file_identity(path: Path | None) -> str | None:
    """name:size:mtime of a weights file (part of the cache key), or None."""
    if path is None or not Path(path).exists():
        return None
    st = Path(path).stat()
    return f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}"


def _check_out(data: Path, out: Path, category: str) -> None:
    """Refuse a file, the dataset's own folder or any dataset-like category."""
    target, source = (out / category).resolve(), (data / category).resolve()
    if target == source or source in target.parents:
        raise ConfigError(f"--out {out} would write into the dataset folder {source}")
    CategoryOutput(out, category).check_target()


def _check_bandwidth(bandwidth: float | None) -> None:
    """--bandwidth must be a finite number > 0."""
    if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ConfigError(f"--bandwidth must be finite and > 0, got {bandwidth}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for the CLI: one `csad labels: warning:` line."""
    text = " ".join(str(message).split())
    print(f"csad labels: warning: {text}", file=sys.stderr)


@contextlib.contextmanager
def cli_warnings():
    """Within the block, warnings print as `csad labels: warning: ...` lines."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield


def _feature_extractor(settings: LabelSettings, weights: Path | None):
    """A factory of the JAX backbone feature extractor."""
    from label_gen.features import BackboneFeatures

    f = settings.features
    return lambda: BackboneFeatures(f.backbone, f.stage, weights, f.batch_size)


def offline_backend(settings: LabelSettings, weights: Path | None = None) -> Backend:
    """The offline backend: colour over-segmentation + CNN features."""
    from label_gen.offline import OfflineProposer

    identity = {"features": {"weights": file_identity(weights)}}
    return Backend(
        lambda: OfflineProposer(settings.offline),
        _feature_extractor(settings, weights),
        identity,
    )


def foundation_backend(settings: LabelSettings, args) -> Backend:
    """Grounded-SAM + SAM from local files (checked before anything is built)."""
    from label_gen import foundation as fd

    fd.require_file(args.sam_checkpoint, "SAM checkpoint")
    grounding = fd.needs_detector(settings)
    if grounding:
        fd.require_file(args.grounding_config, "GroundingDINO config")
        fd.require_file(args.grounding_checkpoint, "GroundingDINO checkpoint")
        fd.require_file(args.text_encoder, "BERT text-encoder", folder=True)

    def make_proposer():
        """Load SAM (and GroundingDINO when needed) from the local files."""
        sam = fd.load_sam(args.sam_checkpoint, args.sam_variant, args.device)
        detector = None
        if grounding:
            detector = fd.GroundingDinoDetector(
                args.grounding_config,
                args.grounding_checkpoint,
                args.text_encoder,
                args.device,
            )
        return fd.FoundationProposer(
            settings, fd.SamSegmenter(sam, settings.sam), detector
        )

    identity = {
        "proposals": {
            "sam": file_identity(args.sam_checkpoint),
            "grounding": file_identity(args.grounding_checkpoint)
            if grounding
            else None,
        },
        "features": {"weights": file_identity(args.feature_weights)},
    }
    return Backend(
        make_proposer, _feature_extractor(settings, args.feature_weights), identity
    )


def _prompt_settings(settings: LabelSettings, args, images) -> LabelSettings:
    """Apply --prompts/--background, or RAM++ tags of the first image."""
    from label_gen.prompts import background_problems, ram_tags

    prompts, background = settings.grounding.prompts, settings.grounding.background
    if args.prompts is not None:
        prompts = tuple(p for p in args.prompts.split(".") if p.strip())
    elif args.ram_checkpoint is not None and settings.backend == "foundation":
        from csad_jax.data.image_io import read_rgb

        prompts = ram_tags(
            read_rgb(images[0].path),
            args.ram_checkpoint,
            settings.grounding.stop_tags,
            args.device,
        )
    if args.background is not None:
        background = tuple(p for p in args.background.split(".") if p.strip())
    settings = with_prompts(settings, prompts, background)
    if settings.backend == "foundation":
        for problem in background_problems(prompts, background):
            warnings.warn(problem, stacklevel=2)
    return settings


def build_settings(args, images) -> LabelSettings:
    """LabelSettings from the category defaults and the command-line options."""
    backend = args.backend or ("foundation" if args.sam_checkpoint else "offline")
    backbone = "wide_resnet50_2" if args.feature_weights else "efficientnet_lite0"
    if backend == "foundation" and not args.feature_weights:
        print(
            "csad labels: note: component features use EfficientNet-Lite0; give "
            "--feature-weights (wide_resnet50_2) for the official feature CNN"
        )
    settings = settings_for(args.category, backend, backbone, args.rotations)
    overrides = {"min_labelled": args.min_labelled} if args.min_labelled else {}
    if args.bandwidth is not None:
        _check_bandwidth(args.bandwidth)
        overrides["bandwidth"] = args.bandwidth
    if overrides:
        clustering = dataclasses.replace(settings.clustering, **overrides)
        settings = dataclasses.replace(settings, clustering=clustering)
    return _prompt_settings(settings, args, images)


def run(args: argparse.Namespace) -> int:
    """Run `csad labels` for one category and print a one-line summary."""
    _check_bandwidth(args.bandwidth)
    if args.min_labelled < 0:
        raise ConfigError(f"--min-labelled must be >= 0, got {args.min_labelled}")
    _check_out(args.data, args.out, args.category)
    with cli_warnings():
        meta = _generate(args)
    root = Path(args.out) / args.category
    if not meta.get("usable", True) or not meta["num_classes"] or not meta["labelled"]:
        reason = meta.get("unusable_reason") or "no class or no labelled image"
        raise DataError(
            f"{args.category}: {reason} ({root / 'labels.json'} is marked unusable)"
        )
    print(
        f"csad labels: {args.category}: {meta['num_classes']} classes, "
        f"{len(meta['labelled'])} labelled / {len(meta['unlabelled'])} unlabelled "
        f"images -> {root}"
    )
    return 0


def _generate(args: argparse.Namespace) -> dict:
    """Build the settings and the backend, then generate; the labels.json dict."""
    images = category_images(args.data, args.category)
    settings = build_settings(args, images)
    if settings.backend == "foundation":
        backend = foundation_backend(settings, args)  # checks the files first
        if not settings.grounding.prompts and settings.mode == "coarse":
            raise ConfigError(
                f"no text prompts for category {args.category}: give --prompts "
                "or --ram-checkpoint"
            )
    else:
        backend = offline_backend(settings, args.feature_weights)
    return generate_pseudo_labels(
        images, args.out, settings, backend, progress=not args.quiet
    )
