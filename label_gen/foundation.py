"""Foundation-model proposals: Grounded-SAM semantic masks and SAM proposals.

Method-spec §2.2 (a text-grounded box detector, SAM box prompts) and §2.3 (SAM
automatic masks, corner-point background, fine/coarse refinement). Everything
is built from local files: nothing here downloads. GroundingDINO
(groundingdino-py) is optional and imported only when a `GroundingDinoDetector`
is built; tests use any object that satisfies `BoxDetector`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from csad_jax.errors import ConfigError, WeightsError
from label_gen.errors import MissingFileError, MissingPackageError
from label_gen.prompts import build_caption, normalize_phrase, unique_phrases
from label_gen.refine import (
    Proposals,
    Region,
    filter_by_combine,
    merge_regions,
    refine_coarse,
    refine_fine,
    select_components,
)
from label_gen.settings import LabelSettings, SamSettings

SAM_VARIANTS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}  # by embed dim
HQ_SAM_PREFIXES = (  # extra HQ-SAM decoder weights; the SAM part is unchanged
    "mask_decoder.hf_token",
    "mask_decoder.hf_mlp",
    "mask_decoder.compress_vit_feat",
    "mask_decoder.embedding_encoder",
    "mask_decoder.embedding_maskfeature",
)
BOX_CHUNK = 16  # box prompts decoded per SAM call


@dataclass(frozen=True)
class Detection:
    """One grounded box: pixel xyxy, the prompt phrase it maps to, its score."""

    box: tuple[float, float, float, float]
    phrase: str
    score: float


class BoxDetector(Protocol):
    """A text-grounded box detector (GroundingDINO or a stand-in)."""

    def detect(
        self,
        image: np.ndarray,
        phrases: Sequence[str],
        box_threshold: float,
        text_threshold: float,
    ) -> list[Detection]:
        """Boxes in uint8 [H, W, 3] `image`, each mapped to one of `phrases`."""
        ...


def assign_phrases(
    token_probs: np.ndarray, phrase_tokens: dict[str, list[int]], text_threshold: float
) -> list[tuple[str, float] | None]:
    """Map each box to the one prompt phrase whose tokens score highest.

    Args:
      token_probs: float [N, T] sigmoid token probabilities of N boxes.
      phrase_tokens: phrase -> token indices of all its occurrences.
      text_threshold: a phrase needs a token probability above this.

    Returns:
      Per box (phrase, score), or None when no phrase passes the threshold.
    """
    names = [p for p, toks in phrase_tokens.items() if toks]
    if not names:
        return [None] * len(token_probs)
    scores = np.stack(
        [token_probs[:, phrase_tokens[p]].max(axis=1) for p in names], axis=1
    )
    out = []
    for row in scores:
        best = int(np.argmax(row))
        out.append(
            (names[best], float(row[best])) if row[best] > text_threshold else None
        )
    return out


def token_indices(offsets: Sequence[tuple[int, int]], caption: str, phrases) -> dict:
    """Token indices of each phrase, from a fast tokenizer's offset mapping."""
    from label_gen.prompts import phrase_spans

    spans = phrase_spans(caption, phrases)
    out: dict[str, list[int]] = {}
    for phrase, ranges in spans.items():
        out[phrase] = [
            j
            for j, (a, b) in enumerate(offsets)
            if b > a and any(s <= a and b <= e for s, e in ranges)
        ]
    return out


def _resized_size(h: int, w: int, short: int = 800, longest: int = 1333) -> tuple:
    """GroundingDINO's test resize: short side 800, long side at most 1333."""
    lo, hi = min(h, w), max(h, w)
    if hi / lo * short > longest:
        short = int(round(longest * lo / hi))
    if (w <= h and w == short) or (h <= w and h == short):
        return h, w
    if w < h:
        return int(short * h / w), short
    return short, int(short * w / h)


# What each user-supplied file is, the option that names it, and where to get it
# (nothing is downloaded at run time).
WHERE_TO_GET = {
    "SAM checkpoint": (
        "--sam-checkpoint",
        "sam_vit_h_4b8939.pth from the segment-anything release, or an HQ-SAM "
        "checkpoint",
    ),
    "GroundingDINO config": (
        "--grounding-config",
        "GroundingDINO_SwinB_cfg.py from the GroundingDINO repository",
    ),
    "GroundingDINO checkpoint": (
        "--grounding-checkpoint",
        "groundingdino_swinb_cogcoor.pth from the GroundingDINO release",
    ),
    "BERT text-encoder": (
        "--text-encoder",
        "a local copy of the Hugging Face bert-base-uncased folder",
    ),
}


def require_file(path, what: str, folder: bool = False) -> Path:
    """A local file (or folder) that must exist; MissingFileError otherwise.

    The error names the option that gives it and where to get it.
    """
    option, source = WHERE_TO_GET.get(what, (None, None))
    hint = f" (download {source} yourself)" if source else ""
    if path is None:
        given = f"; give it with {option}" if option else ""
        raise MissingFileError(f"no {what} given{given}{hint}")
    path = Path(path)
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise MissingFileError(f"{what} {kind} not found: {path}{hint}")
    return path


def offline_hub() -> None:
    """Make Hugging Face libraries use local files only (never the network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_torch_state(path: Path) -> dict:
    """A torch state dict (tensors) read by `label_gen.torch_io` (weights_only)."""
    import torch

    from label_gen.torch_io import load_state_dict

    state = load_state_dict(path)
    return {k.removeprefix("module."): torch.from_numpy(v) for k, v in state.items()}


class GroundingDinoDetector:
    """GroundingDINO (groundingdino-py) built from local config/weights/BERT."""

    def __init__(self, config, checkpoint, text_encoder, device: str = "cpu"):
        config = require_file(config, "GroundingDINO config")
        checkpoint = require_file(checkpoint, "GroundingDINO checkpoint")
        text_encoder = require_file(text_encoder, "BERT text-encoder", folder=True)
        offline_hub()
        try:
            from groundingdino.models import build_model
            from groundingdino.util.slconfig import SLConfig
        except ImportError:
            raise MissingPackageError(
                "the foundation backend needs groundingdino-py, which is not "
                "installed (pip install groundingdino-py)"
            ) from None
        import torch

        args = SLConfig.fromfile(str(config))
        args.device = device
        args.text_encoder_type = str(text_encoder)
        try:
            model = build_model(args)
        except OSError as err:
            raise MissingFileError(f"cannot build GroundingDINO: {err}") from None
        state = load_torch_state(checkpoint)
        missing, _ = model.load_state_dict(state, strict=False)
        if len(missing) > len(state):
            raise WeightsError(f"{checkpoint} does not match the GroundingDINO config")
        self.model = model.eval().to(device)
        self.device = device
        self._torch = torch

    def _tensor(self, image: np.ndarray):
        """uint8 [H, W, 3] -> normalised float tensor [3, h, w] at test size."""
        from PIL import Image

        h, w = _resized_size(*image.shape[:2])
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        x = (resized.astype(np.float32) / 255.0 - (0.485, 0.456, 0.406)) / (
            0.229,
            0.224,
            0.225,
        )
        return self._torch.from_numpy(x.astype(np.float32).transpose(2, 0, 1))

    def detect(self, image, phrases, box_threshold, text_threshold):
        """Boxes whose best token beats box_threshold, one phrase each."""
        caption = build_caption(phrases)
        if not caption:
            return []
        with self._torch.no_grad():
            out = self.model(
                self._tensor(image)[None].to(self.device), captions=[caption]
            )
        probs = out["pred_logits"].sigmoid()[0].cpu().numpy()
        boxes = out["pred_boxes"][0].cpu().numpy()
        keep = probs.max(axis=1) > box_threshold
        enc = self.model.tokenizer(caption, return_offsets_mapping=True)
        tokens = token_indices(enc["offset_mapping"], caption, phrases)
        h, w = image.shape[:2]
        dets = []
        for (cx, cy, bw, bh), hit in zip(
            boxes[keep],
            assign_phrases(probs[keep], tokens, text_threshold),
            strict=True,
        ):
            if hit is not None:
                xyxy = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                        (cy + bh / 2) * h)  # fmt: skip
                dets.append(Detection(tuple(map(float, xyxy)), hit[0], hit[1]))
        return dets


def load_sam(checkpoint, variant: str | None = None, device: str = "cpu"):
    """Build SAM (segment-anything) and load a local SAM or HQ-SAM checkpoint.

    The variant (vit_h / vit_l / vit_b) is read from the checkpoint when not
    given. HQ-SAM files load too: their extra decoder weights are ignored, which
    leaves the (frozen, unchanged) SAM weights inside them.
    """
    from segment_anything import sam_model_registry

    path = require_file(checkpoint, "SAM checkpoint")
    state = load_torch_state(path)
    embed = state.get("image_encoder.patch_embed.proj.weight")
    found = SAM_VARIANTS.get(int(embed.shape[0])) if embed is not None else None
    if found is None:
        raise WeightsError(f"{path} is not a SAM ViT-H/L/B checkpoint")
    if variant is not None and variant != found:
        raise ConfigError(f"--sam-variant {variant} but {path} holds a {found} model")
    model = sam_model_registry[found]()
    state = {k: v for k, v in state.items() if not k.startswith(HQ_SAM_PREFIXES)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path} does not match SAM {found}: {err}") from None
    return model.eval().to(device)


class SamSegmenter:
    """SAM box/point prompts and automatic proposals for one model."""

    def __init__(self, sam_model, settings: SamSettings):
        from segment_anything import SamPredictor

        from label_gen.sam_amg import StreamingMaskGenerator

        self.model = sam_model
        self.predictor = SamPredictor(sam_model)
        self.generator = StreamingMaskGenerator(sam_model, settings)

    def set_image(self, image: np.ndarray) -> None:
        """Embed uint8 [H, W, 3] `image` for the prompt calls that follow."""
        self.predictor.set_image(image)

    def box_masks(self, boxes: np.ndarray) -> Iterator[np.ndarray]:
        """bool [H, W] mask per pixel xyxy box (single-mask output), in order."""
        import torch

        size = self.predictor.original_size
        for start in range(0, len(boxes), BOX_CHUNK):
            chunk = self.predictor.transform.apply_boxes(
                np.asarray(boxes[start : start + BOX_CHUNK], dtype=np.float32), size
            )
            tensor = torch.as_tensor(chunk, device=self.predictor.device)
            masks, _, _ = self.predictor.predict_torch(
                None, None, boxes=tensor, multimask_output=False
            )
            yield from masks[:, 0].cpu().numpy()

    def corner_background(self, shape: tuple[int, int]) -> np.ndarray:
        """The image background from 8 positive corner points (§2.3 step 4)."""
        h, w = shape
        points = np.array(
            [[10, 10], [10, h - 10], [w - 10, 10], [w - 10, h - 10],
             [0, 0], [0, h], [w, 0], [w, h]], dtype=np.float32,
        )  # fmt: skip
        masks, _, _ = self.predictor.predict(
            point_coords=points, point_labels=np.ones(8), multimask_output=False
        )
        return masks[0].astype(bool)

    def proposals(self, image: np.ndarray) -> Iterator[np.ndarray]:
        """SAM automatic-mask proposals, decoded one at a time (bool [H, W])."""
        yield from self.generator.stream(image)


class FoundationProposer:
    """Per-image Grounded-SAM + SAM proposals (§2.2-2.3) -> `Proposals`."""

    def __init__(
        self, settings: LabelSettings, sam: SamSegmenter, detector: BoxDetector | None
    ):
        self.settings = settings
        self.sam = sam
        self.detector = detector
        if detector is None and needs_detector(settings):
            raise ConfigError(
                f"category {settings.category} ({settings.mode} mode) needs the "
                "GroundingDINO box detector"
            )

    def _grounding(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """Grounded box masks -> (grounding id map, grounding background, info)."""
        s, shape = self.settings, image.shape[:2]
        background = np.zeros(shape, dtype=bool)
        info = {"detections": 0, "background_hits": []}
        if self.detector is None:
            return np.zeros(shape, np.uint16), background, info
        g = s.grounding
        dets = self.detector.detect(image, g.prompts, g.box_threshold, g.text_threshold)
        info["detections"] = len(dets)
        bg_phrases = set(unique_phrases(g.background))
        regions = []
        boxes = np.array([d.box for d in dets], dtype=np.float32).reshape(-1, 4)
        for det, mask in zip(dets, self.sam.box_masks(boxes), strict=True):
            if normalize_phrase(det.phrase) in bg_phrases:
                background |= mask
                info["background_hits"].append(normalize_phrase(det.phrase))
            elif (region := Region.from_full(mask)) is not None:
                regions.append(region)
        if g.combine_masks:
            regions = filter_by_combine(regions, shape, s.min_component_frac)
        return merge_regions(regions, shape, s.min_component_frac), background, info

    def __call__(self, image: np.ndarray) -> Proposals:
        """Proposals of one uint8 [H, W, 3] image."""
        s, shape = self.settings, image.shape[:2]
        self.sam.set_image(image)
        grounding_map, grounding_bg, info = self._grounding(image)
        sam_bg = self.sam.corner_background(shape)
        if s.mode == "coarse":
            # NOTE: the official code also runs SAM's automatic masks in coarse
            # mode and then overwrites their result; they are skipped here.
            instances = refine_coarse(grounding_map, s.min_component_frac)
            return Proposals(grounding_map, instances, sam_bg, info)
        foreground = grounding_map > 0 if s.use_grounding_filter else None
        components = select_components(
            self.sam.proposals(image), foreground, [sam_bg, grounding_bg]
        )
        info["components"] = len(components)
        instances = refine_fine(components, shape, s.min_component_frac)
        return Proposals(instances, instances, sam_bg, info)


def needs_detector(settings: LabelSettings) -> bool:
    """Whether the grounding detector can change this category's output."""
    return (
        settings.mode == "coarse"
        or settings.use_grounding_filter
        or bool(unique_phrases(settings.grounding.background))
    )
