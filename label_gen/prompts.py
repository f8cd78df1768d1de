"""Text prompts: phrase normalisation, captions and optional RAM++ tags (§2.1).

Phrases are compared only after `normalize_phrase` (lower case, single spaces,
no trailing dots, and the tokenizer's " - " turned back into "-"), which fixes
the official substring test whose untrimmed pieces could never match.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from label_gen.errors import MissingFileError, MissingPackageError


def normalize_phrase(text: str) -> str:
    """Lower-case, collapse spaces, undo " - " splitting, strip dots and spaces."""
    words = " ".join(text.lower().replace(" - ", "-").split())
    return words.strip(" .")


def unique_phrases(phrases: Iterable[str]) -> tuple[str, ...]:
    """Normalised, non-empty phrases with duplicates removed (first kept)."""
    seen: dict[str, None] = {}
    for phrase in phrases:
        norm = normalize_phrase(phrase)
        if norm:
            seen.setdefault(norm, None)
    return tuple(seen)


def build_caption(phrases: Sequence[str]) -> str:
    """The detector caption: normalised phrases joined by " . ", ending in " .".

    Duplicates are kept, so the official captions tokenize to the same tokens.
    """
    norm = [normalize_phrase(p) for p in phrases]
    norm = [p for p in norm if p]
    return " . ".join(norm) + " ." if norm else ""


def phrase_spans(caption: str, phrases: Sequence[str]) -> dict[str, list[tuple]]:
    """Character spans of every occurrence of each unique phrase in `caption`.

    Returns:
      phrase -> list of (start, end) character offsets into `caption`.
    """
    spans: dict[str, list[tuple]] = {p: [] for p in unique_phrases(phrases)}
    start = 0
    for piece in caption.split("."):
        stripped = piece.strip()
        if stripped:
            offset = start + piece.index(stripped)
            key = normalize_phrase(stripped)
            spans.setdefault(key, []).append((offset, offset + len(stripped)))
        start += len(piece) + 1
    return spans


def background_problems(prompts: Sequence[str], background: Sequence[str]) -> list:
    """Warnings for background phrases that no detection can ever carry."""
    known = set(unique_phrases(prompts))
    return [
        f"background phrase {b!r} is not one of the text prompts, so it can never "
        "match a detection (no background removal from it)"
        for b in unique_phrases(background)
        if b not in known
    ]


def unmatched_background(background: Sequence[str], hits: Iterable[str]) -> list:
    """Warnings for background phrases that matched no detection in any image."""
    seen = {normalize_phrase(h) for h in hits}
    return [
        f"background phrase {b!r} matched no detection in any image"
        for b in unique_phrases(background)
        if b not in seen
    ]


def refine_tags(tags: Iterable[str], stop_tags: Iterable[str]) -> tuple[str, ...]:
    """Normalised unique tags minus the stop list (the paper's manual refinement)."""
    stop = set(unique_phrases(stop_tags))
    return tuple(t for t in unique_phrases(tags) if t not in stop)


def _load_ram(checkpoint: Path, image_size: int):
    """RAM++ (recognize-anything) from a local checkpoint, or a one-line error."""
    try:
        from ram.models import ram_plus
    except ImportError:
        raise MissingPackageError(
            "RAM++ tags need the recognize-anything package (import name 'ram'), "
            "which is not installed; give the prompts in settings instead"
        ) from None
    try:
        return ram_plus(pretrained=str(checkpoint), image_size=image_size, vit="swin_l")
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise MissingFileError(
            f"cannot build RAM++ from {checkpoint} offline "
            f"(its BERT tokenizer must be in the local cache): {reason}"
        ) from None


def ram_tags(
    image: np.ndarray,
    checkpoint: str | Path,
    stop_tags: Iterable[str],
    device: str = "cpu",
    image_size: int = 384,
) -> tuple[str, ...]:
    """Tags of one normal image from RAM++ (recognize-anything), refined.

    Args:
      image: uint8 [H, W, 3], one normal training image.
      checkpoint: a local RAM++ checkpoint (e.g. ram_plus_swin_large_14m.pth).
      stop_tags: tags to drop (non-nouns, background words).
      device: torch device.
      image_size: RAM++ input size.

    Returns:
      The refined tags, in RAM's order.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise MissingFileError(f"RAM++ checkpoint not found: {checkpoint}")
    model = _load_ram(checkpoint, image_size).eval().to(device)
    import torch
    from PIL import Image
    from ram import get_transform, inference_ram

    tensor = get_transform(image_size=image_size)(Image.fromarray(image))
    with torch.no_grad():
        english, _ = inference_ram(tensor[None].to(device), model)
    tags = refine_tags(english.split("|"), stop_tags)
    if not tags:
        warnings.warn("RAM++ produced no usable tags", stacklevel=2)
    return tags
