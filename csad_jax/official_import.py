"""`csad import-official`: an official CSAD export -> a csad-jax model directory.

The official fused model `CSAD_ONNX(dim, num_classes=K)` (method-spec §8) is
saved as one PyTorch state dict: the WideResNet-50-2 encoder (`encoder.`), the
segmentor decoder, the teacher projection, both students, the patch histogram
Gaussians and every calibration number. This module maps each entry, by an
explicit name table, to our networks and calibration (pure NumPy; the file is
read through `label_gen.torch_io`, so csad_jax itself never imports torch):

* every key is consumed exactly once and every shape is checked against the
  layout expected for the K (and dim) inferred from the file;
* convolutions go OIHW -> HWIO, BatchNorm weight/bias/running_* -> scale/bias/
  mean/var, the teacher projection (with its bias, as stored) -> [in, out];
* the imported run scores like the export: background-fraction histograms
  (argmax over all K), grid-max LGST score, stored statistics.

The encoder is written as a converted backbone file in the run directory, so
`load_model` (and hence `csad eval`) rebuilds exactly the official encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from csad_jax import model as model_lib
from csad_jax.backbones import convert, weights
from csad_jax.backbones.wide_resnet import WideResNet50x2
from csad_jax.config import BackboneConfig, CSADConfig, paper_config
from csad_jax.errors import CheckpointError, CSADError, WeightsError
from csad_jax.lgst import MIN_DENOMINATOR, MapQuantiles
from csad_jax.models.teacher import TeacherStats
from csad_jax.patch_histogram import HistogramGaussian, PatchHistogramScorer
from csad_jax.score_fusion import EXPORT_STD_FLOOR, TrimmedStats

log = logging.getLogger("csad_jax")

BACKBONE = "wide_resnet50_2"
ENCODER_PREFIX = "encoder."
BACKBONE_FILE = Path("backbone") / "wide_resnet50_2.official.npz"
PRESET = "official"
GRIDS = (1, 2)  # official patch sizes 256 and 128 on the 256 x 256 map
TEACHER_IN = 1536  # layer2 (512) + layer3 (1024)

_BN_LEAVES = {
    "weight": "scale",
    "bias": "bias",
    "running_mean": "mean",
    "running_var": "var",
    "num_batches_tracked": None,
}
_WRN_STAGES = (("layer1", 3, 128), ("layer2", 4, 256), ("layer3", 6, 512))
# official segmentor ConvBNReLU prefix -> our SegmentationDecoder prefix
_DECODER_CBR = {
    "aspp.stages.c0": "aspp.c0",
    "aspp.stages.c1": "aspp.atrous.0",
    "aspp.stages.c2": "aspp.atrous.1",
    "aspp.stages.c3": "aspp.atrous.2",
    "aspp.stages.imagepool.conv": "aspp.pool",
    "reduce": "reduce",
    "fc1": "fc1",
    "fc2.conv1": "fc2_conv1",
    "fc2.conv2": "fc2_conv2",
}
_LOCAL_CONVS = {f"conv{i}": f"conv{i}" for i in range(1, 6)}
_LOCAL_CONVS |= {"conv_st": "local_head", "conv_ae": "global_head"}
_AE_CONVS = {f"enconv{i + 1}": f"encoder.{i}" for i in range(5)}
_AE_CONVS |= {"enconv6": "bottleneck"}
_AE_CONVS |= {f"deconv{i + 1}": f"decoder.{i}" for i in range(6)}
_AE_CONVS |= {"deconv7": "deconv7", "deconv8": "deconv8"}
_SCALARS = (
    "q_st_start",
    "q_st_end",
    "q_ae_start",
    "q_ae_end",
    "lgst_mean",
    "lgst_std",
    "patch_hist_mean",
    "patch_hist_std",
)
_DETECTOR_SCALARS = (
    "hist_val_mean",
    "hist_val_std",
    "patch_hist_val_mean",
    "patch_hist_val_std",
)
# Entries that divide: a value <= 0 would give infinite or flipped scores.
_POSITIVE = (
    "teacher_std",
    "lgst_std",
    "patch_hist_std",
    "patch_hist_detector.hist_val_std",
    "patch_hist_detector.patch_hist_val_std",
)


# ---------------------------------------------------------------------------
# The expected layout
# ---------------------------------------------------------------------------


def _bn_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.{leaf}": () if leaf == "num_batches_tracked" else (channels,)
        for leaf in _BN_LEAVES
    }


def _conv_shapes(prefix: str, cout, cin, k, bias=True) -> dict[str, tuple]:
    out = {f"{prefix}.weight": (cout, cin, k, k)}
    return out | ({f"{prefix}.bias": (cout,)} if bias else {})


def _cbr_shapes(prefix: str, cout: int, cin: int, k: int) -> dict[str, tuple]:
    return _conv_shapes(f"{prefix}.conv", cout, cin, k, False) | _bn_shapes(
        f"{prefix}.bn", cout
    )


def encoder_shapes() -> dict[str, tuple[int, ...]]:
    """torch names -> shapes of the WRN50-2 stem and layer1..3 (timm order)."""
    out = _conv_shapes("conv1", 64, 3, 7, False) | _bn_shapes("bn1", 64)
    cin = 64
    for stage, blocks, width in _WRN_STAGES:
        for j in range(blocks):
            p = f"{stage}.{j}"
            out |= _conv_shapes(f"{p}.conv1", width, cin, 1, False)
            out |= _bn_shapes(f"{p}.bn1", width)
            out |= _conv_shapes(f"{p}.conv2", width, width, 3, False)
            out |= _bn_shapes(f"{p}.bn2", width)
            out |= _conv_shapes(f"{p}.conv3", 2 * width, width, 1, False)
            out |= _bn_shapes(f"{p}.bn3", 2 * width)
            if j == 0:
                out |= _conv_shapes(f"{p}.downsample.0", 2 * width, cin, 1, False)
                out |= _bn_shapes(f"{p}.downsample.1", 2 * width)
            cin = 2 * width
    return out


def _student_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    local = {"conv1": (256, 3, 4), "conv2": (512, 256, 4), "conv3": (512, 512, 1)}
    local |= {"conv4": (512, 512, 3), "conv5": (512, 512, 4)}
    local |= {"conv_st": (dim, 512, 1), "conv_ae": (dim, 512, 1)}
    ae = {"enconv1": (32, 3, 4), "enconv2": (32, 32, 4), "enconv3": (64, 32, 4)}
    ae |= {"enconv4": (64, 64, 4), "enconv5": (64, 64, 4), "enconv6": (64, 64, 8)}
    ae |= {f"deconv{i}": (64, 64, 4) for i in range(1, 7)}
    ae |= {"deconv7": (64, 64, 3), "deconv8": (dim, 64, 3)}
    out = {}
    for prefix, table in (("local_st", local), ("autoencoder", ae)):
        for name, (cout, cin, k) in table.items():
            out |= _conv_shapes(f"{prefix}.{name}", cout, cin, k)
    return out


def _segmentor_shapes(k: int) -> dict[str, tuple[int, ...]]:
    out = _cbr_shapes("segmentor.aspp.stages.c0", 256, 1024, 1)
    for i in (1, 2, 3):
        out |= _cbr_shapes(f"segmentor.aspp.stages.c{i}", 256, 1024, 3)
    out |= _cbr_shapes("segmentor.aspp.stages.imagepool.conv", 256, 1024, 1)
    out |= _cbr_shapes("segmentor.reduce", 48, 256, 1)
    out |= _cbr_shapes("segmentor.fc1", 256, 1280, 1)
    out |= _cbr_shapes("segmentor.fc2.conv1", 256, 304, 3)
    out |= _cbr_shapes("segmentor.fc2.conv2", 256, 256, 3)
    return out | _conv_shapes("segmentor.fc2.conv3", k, 256, 1)


def official_shapes(num_classes: int, dim: int = 512) -> dict[str, tuple[int, ...]]:
    """Every entry of the official fused state dict and its shape, in order.

    Args:
      num_classes: K = N_cls + 1 segmentor outputs.
      dim: teacher / student channels (official 512).

    Returns:
      name -> shape (() for scalars), in the official state-dict order.
    """
    k = num_classes
    out = {"teacher_mean": (1, dim, 1, 1), "teacher_std": (1, dim, 1, 1)}
    out |= {name: () for name in _SCALARS}
    out |= {ENCODER_PREFIX + n: s for n, s in encoder_shapes().items()}
    out |= _conv_shapes("teacher.proj", dim, TEACHER_IN, 1)
    out |= _student_shapes(dim) | _segmentor_shapes(k)
    det = "patch_hist_detector."
    out |= {det + "hist_mean": (k, 1), det + "hist_invcov": (k, k)}
    out |= {det + "patch_hist_mean": (4 * k, 1)}
    out |= {det + "patch_hist_invcov": (4 * k, 4 * k)}
    return out | {det + name: () for name in _DETECTOR_SCALARS}


def infer_sizes(state_dict: dict[str, np.ndarray], source: str) -> tuple[int, int]:
    """(K, dim) from the classifier bias and the teacher mean of the file."""
    try:
        (k,) = np.shape(state_dict["segmentor.fc2.conv3.bias"])
        _, dim, _, _ = np.shape(state_dict["teacher_mean"])
    except (KeyError, ValueError):
        raise WeightsError(
            f"{source}: not an official CSAD fused export (needs"
            " segmentor.fc2.conv3.bias [K] and teacher_mean [1, dim, 1, 1])"
        ) from None
    if k < 2 or dim < 1:
        raise WeightsError(f"{source}: K = {k} segmentor outputs, need at least 2")
    return int(k), int(dim)


def validate_state_dict(state_dict: dict[str, np.ndarray], source: str):
    """Checks names, shapes, finiteness and positive stds; returns (K, dim).

    Raises:
      WeightsError naming missing / unexpected keys, the first wrong shapes,
      a non-finite entry or a std <= 0.
    """
    k, dim = infer_sizes(state_dict, source)
    expected = official_shapes(k, dim)
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    if missing or unexpected:
        raise WeightsError(
            f"{source}: not an official CSAD export for K = {k}:"
            f" missing {convert.name_list(missing) or 'none'};"
            f" unexpected {convert.name_list(unexpected) or 'none'}"
        )
    wrong = [
        f"{n} {tuple(np.shape(v))} (expected {expected[n]})"
        for n, v in state_dict.items()
        if tuple(np.shape(v)) != expected[n]
    ]
    if wrong:
        raise WeightsError(f"{source}: wrong shapes: {convert.name_list(wrong, 3)}")
    bad = [n for n, v in state_dict.items() if not np.all(np.isfinite(v))]
    if bad:
        raise WeightsError(f"{source}: non-finite values in {convert.name_list(bad)}")
    bad = [n for n in _POSITIVE if not np.all(np.asarray(state_dict[n]) > 0)]
    if bad:
        raise WeightsError(f"{source}: std entries <= 0: {convert.name_list(bad)}")
    return k, dim


# ---------------------------------------------------------------------------
# Mapping
# ---------------------------------------------------------------------------


class _Entries:
    """The state dict being consumed: each key may be taken exactly once."""

    def __init__(self, state_dict: dict[str, np.ndarray], source: str):
        self._left = dict(state_dict)
        self._taken: set[str] = set()
        self.source = source

    def take(self, name: str) -> np.ndarray:
        """The entry `name`; taking it again is an error."""
        if name in self._taken:
            raise WeightsError(f"{self.source}: mapping takes {name} twice")
        self._taken.add(name)
        return np.asarray(self._left.pop(name))

    def take_prefix(self, prefix: str) -> dict[str, np.ndarray]:
        """Every remaining entry whose name starts with `prefix`."""
        names = [n for n in self._left if n.startswith(prefix)]
        return {n: self.take(n) for n in names}

    def finish(self) -> None:
        """Raises if any entry was never taken."""
        if self._left:
            raise WeightsError(
                f"{self.source}: entries not mapped: {convert.name_list(self._left)}"
            )


def _kernel(weight: np.ndarray) -> np.ndarray:
    """OIHW -> HWIO float32."""
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0), dtype=np.float32)


def _convs(entries: _Entries, src: str, table: dict, bias: bool = True) -> dict:
    """Conv weights (and biases) of `src.<name>` -> `<ours>.kernel/bias`."""
    out = {}
    for name, ours in table.items():
        out[f"{ours}.kernel"] = _kernel(entries.take(f"{src}.{name}.weight"))
        if bias:
            out[f"{ours}.bias"] = _f32(entries.take(f"{src}.{name}.bias"))
    return out


def _f32(value: np.ndarray) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _decoder(entries: _Entries) -> dict[str, np.ndarray]:
    """segmentor.* -> SegmentationDecoder variables (params + BatchNorm stats)."""
    out = {}
    for src, ours in _DECODER_CBR.items():
        src = f"segmentor.{src}"
        out[f"{ours}.conv.kernel"] = _kernel(entries.take(f"{src}.conv.weight"))
        for leaf, target in _BN_LEAVES.items():
            value = entries.take(f"{src}.bn.{leaf}")
            if target is not None:
                out[f"{ours}.bn.{target}"] = _f32(value)
    return out | _convs(entries, "segmentor.fc2", {"conv3": "classifier"})


def _pair(entries: _Entries, mean: str, std: str) -> dict[str, np.ndarray]:
    return {"mean": _f32(entries.take(mean)), "std": _f32(entries.take(std))}


def _calibration(entries: _Entries) -> dict[str, dict]:
    """Buffers -> calibration arrays under our names (float32, see OfficialWeights)."""
    det = "patch_hist_detector."
    quantiles = {
        f"{ours}_{end}": _f32(entries.take(f"q_{theirs}_{end}"))
        for ours, theirs in (("local", "st"), ("global", "ae"))
        for end in ("start", "end")
    }
    gaussians = {
        f"grid{grid}": {
            "mean": _f32(entries.take(f"{det}{name}_mean").reshape(-1)),
            "precision": _f32(entries.take(f"{det}{name}_invcov")),
        }
        for grid, name in zip(GRIDS, ("hist", "patch_hist"), strict=True)
    }
    detector_stats = {
        f"grid{grid}": _pair(entries, f"{det}{name}_val_mean", f"{det}{name}_val_std")
        for grid, name in zip(GRIDS, ("hist", "patch_hist"), strict=True)
    }
    branch_stats = {
        "patch_histogram": _pair(entries, "patch_hist_mean", "patch_hist_std"),
        "lgst": _pair(entries, "lgst_mean", "lgst_std"),
    }
    teacher = {
        k: _f32(entries.take(f"teacher_{k}")).reshape(1, 1, 1, -1)
        for k in ("mean", "std")
    }
    return {
        "teacher_stats": teacher,
        "quantiles": quantiles,
        "gaussians": gaussians,
        "detector_stats": detector_stats,
        "branch_stats": branch_stats,
    }


@dataclasses.dataclass(frozen=True)
class OfficialWeights:
    """An official export mapped to csad-jax names (NumPy float32 arrays).

    Attributes:
      num_classes: K = N_cls + 1.
      dim: teacher / student channels.
      modules: "backbone" (WideResNet50x2 paths), "decoder"
        (SegmentationDecoder), "teacher" (proj_kernel [1536, dim], proj_bias),
        "local_student", "global_student": dotted variable path -> array.
      calibration: "teacher_stats" {mean, std: [1, 1, 1, dim]};
        "quantiles" {local_start, local_end, global_start, global_end}
        (official q_st_*, q_ae_*); "gaussians" {grid1: {mean [K], precision
        [K, K]}, grid2: {mean [4K], precision [4K, 4K]}}; "detector_stats"
        {grid1, grid2: {mean, std}} (official hist_val_*, patch_hist_val_*);
        "branch_stats" {patch_histogram, lgst: {mean, std}}. Scalars are
        0-d arrays.
    """

    num_classes: int
    dim: int
    modules: dict[str, dict[str, np.ndarray]]
    calibration: dict[str, np.ndarray]


def map_official(state_dict: dict[str, np.ndarray], source: str = "checkpoint"):
    """Validates an official fused state dict and maps every entry.

    Args:
      state_dict: torch name -> NumPy array (e.g. from `read_checkpoint`).
      source: file name for error messages.

    Returns:
      OfficialWeights.
    """
    k, dim = validate_state_dict(state_dict, source)
    entries = _Entries(state_dict, source)
    encoder = entries.take_prefix(ENCODER_PREFIX)
    teacher_w = entries.take("teacher.proj.weight")
    modules = {
        "backbone": convert.convert_wide_resnet(
            encoder, prefix=ENCODER_PREFIX, source=source
        ),
        "decoder": _decoder(entries),
        "teacher": {
            "proj_kernel": _f32(teacher_w[:, :, 0, 0].T),
            "proj_bias": _f32(entries.take("teacher.proj.bias")),
        },
        "local_student": _convs(entries, "local_st", _LOCAL_CONVS),
        "global_student": _convs(entries, "autoencoder", _AE_CONVS),
    }
    calibration = _calibration(entries)
    entries.finish()
    return OfficialWeights(k, dim, modules, calibration)


# ---------------------------------------------------------------------------
# Our model from the mapped arrays
# ---------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict file via label_gen.torch_io (needs torch)."""
    try:
        torch_io = importlib.import_module("label_gen.torch_io")
    except ImportError as err:
        raise WeightsError(
            f"reading {path} needs PyTorch: pip install 'csad-jax[labels]'"
        ) from err
    return torch_io.load_state_dict(path)


def official_config(backbone_weights: str | None, dim: int = 512) -> CSADConfig:
    """The paper config set up to score like the official fused export.

    Background-fraction histograms, grid-max LGST score and the export's
    std floor; `backbone_weights` is the converted encoder file.
    """
    config = paper_config()
    histogram = dataclasses.replace(config.histogram, background="fraction")
    lgst = dataclasses.replace(config.lgst, score_variant="fused", out_dim=dim)
    fusion = dataclasses.replace(
        config.fusion,
        detector_std_floor=EXPORT_STD_FLOOR,
        branch_std_floor=EXPORT_STD_FLOOR,
    )
    return dataclasses.replace(
        config,
        preset=PRESET,
        backbone=BackboneConfig(name=BACKBONE, weights=backbone_weights),
        histogram=histogram,
        lgst=lgst,
        fusion=fusion,
    ).validate()


def _stats(pair: dict[str, np.ndarray]) -> TrimmedStats:
    return TrimmedStats(mean=jnp.float32(pair["mean"]), std=jnp.float32(pair["std"]))


def _warn_flat_quantiles(q: dict[str, np.ndarray]) -> None:
    for name in ("local", "global"):
        start, end = float(q[f"{name}_start"]), float(q[f"{name}_end"])
        if end - start <= MIN_DENOMINATOR:
            log.warning(
                "official %s map quantiles %.3g..%.3g: the map is left"
                " unnormalised here (the export divides by ~0)",
                name,
                start,
                end,
            )


def build_calibration(imported: OfficialWeights) -> model_lib.Calibration:
    """Calibration pytree (teacher stats, quantiles, scorer, branch stats)."""
    c = imported.calibration
    _warn_flat_quantiles(c["quantiles"])
    keys = [f"grid{g}" for g in GRIDS]
    gaussians = tuple(
        HistogramGaussian(
            mean=jnp.asarray(c["gaussians"][k]["mean"]),
            precision=jnp.asarray(c["gaussians"][k]["precision"]),
        )
        for k in keys
    )
    scorer = PatchHistogramScorer(
        imported.num_classes,
        GRIDS,
        "fraction",
        gaussians,
        tuple(_stats(c["detector_stats"][k]) for k in keys),
    )
    branches = c["branch_stats"]
    return model_lib.Calibration(
        teacher_stats=TeacherStats(
            jnp.asarray(c["teacher_stats"]["mean"]),
            jnp.asarray(c["teacher_stats"]["std"]),
        ),
        quantiles=MapQuantiles(
            **{k: jnp.float32(v) for k, v in c["quantiles"].items()}
        ),
        scorer=scorer,
        fusion=model_lib.FusionStats(
            patch_histogram=_stats(branches["patch_histogram"]),
            lgst=_stats(branches["lgst"]),
        ),
    )


def assign_strict(module, arrays: dict[str, np.ndarray], what: str, skip=()) -> None:
    """Overwrites every variable of `module` from dotted path -> array.

    Args:
      module: an nnx module.
      arrays: exactly one array per variable (paths joined with ".").
      what: module name for error messages.
      skip: path prefixes of variables left untouched (e.g. a shared backbone).

    Raises:
      WeightsError on missing / unexpected paths or a shape mismatch.
    """
    flat = nnx.to_flat_state(nnx.state(module))
    target = {".".join(map(str, path)): var for path, var in flat}
    target = {k: v for k, v in target.items() if not k.startswith(tuple(skip))}
    missing, unexpected = target.keys() - arrays.keys(), arrays.keys() - target.keys()
    wrong = [
        f"{k} {np.shape(arrays[k])} vs {tuple(v.get_value().shape)}"
        for k, v in target.items()
        if k in arrays and tuple(np.shape(arrays[k])) != tuple(v.get_value().shape)
    ]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{what}: imported weights do not fit our model: missing"
            f" {convert.name_list(missing) or 'none'}; unexpected"
            f" {convert.name_list(unexpected) or 'none'}; shapes"
            f" {convert.name_list(wrong, 3) or 'ok'}"
        )
    for key, var in target.items():
        var.set_value(jnp.asarray(arrays[key], dtype=var.get_value().dtype))


def build_networks(imported: OfficialWeights, config: CSADConfig):
    """Fused networks holding every imported weight (built abstractly, filled).

    Args:
      imported: from `map_official`.
      config: e.g. `official_config(...)` (official widths are required).

    Returns:
      model.FusedNetworks whose backbone is the official encoder.
    """
    n_cls = imported.num_classes - 1
    nets = nnx.eval_shape(
        lambda: model_lib.build_networks(
            config, WideResNet50x2(last_stage="layer3"), n_cls
        )
    )
    mods = imported.modules
    convert.merge_strict(nets.backbone, mods["backbone"], source="official encoder")
    assign_strict(nets.decoder, mods["decoder"], "segmentor decoder")
    assign_strict(nets.lgst.teacher, mods["teacher"], "teacher", skip=("backbone",))
    assign_strict(nets.lgst.local_student, mods["local_student"], "local student")
    assign_strict(nets.lgst.global_student, mods["global_student"], "global student")
    unfilled = [
        ".".join(map(str, path))
        for path, var in nnx.to_flat_state(nnx.state(nets))
        if not isinstance(var.get_value(), jax.Array)
    ]
    if unfilled:
        raise WeightsError(f"variables not imported: {convert.name_list(unfilled)}")
    return nets


def build_model(
    imported: OfficialWeights, config: CSADConfig, meta: dict
) -> model_lib.CSADModel:
    """A calibrated CSADModel holding the imported weights and statistics.

    Args:
      imported: from `map_official`.
      config: e.g. `official_config(...)`.
      meta: model.json description (needs "category"); the backbone identity
        is added here.
    """
    nets = build_networks(imported, config)
    meta = {
        **meta,
        "backbone": model_lib.backbone_identity(config.backbone, nets.backbone),
    }
    return model_lib.CSADModel(config, nets, build_calibration(imported), meta)


# ---------------------------------------------------------------------------
# Run directory and CLI
# ---------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    try:
        return weights.sha256_file(path)
    except OSError as err:
        raise WeightsError(f"{path}: cannot read ({err.strerror})") from None


def write_backbone(imported: OfficialWeights, path: Path, source: Path, digest: str):
    """Writes the encoder as a converted backbone file (`load_backbone` reads it)."""
    meta = {
        "format": 1,
        "converter": weights.CONVERTER_VERSION,
        "backbone": BACKBONE,
        "weight_set": None,
        "source": str(source),
        "source_sha256": digest,
        "prefix": ENCODER_PREFIX,
    }
    weights.write_converted(path, imported.modules["backbone"], meta)
    if not path.is_file():
        raise CheckpointError(f"cannot write the converted encoder to {path}")


def import_official(
    checkpoint: str | Path, run_dir: str | Path, category: str, *, force=False
) -> model_lib.CSADModel:
    """Converts an official fused export into `<run_dir>/model/` (+ backbone/).

    Args:
      checkpoint: the official state dict file (torch.save of CSAD_ONNX).
      run_dir: run directory to create; `csad eval --run run_dir` then scores.
      category: the MVTec LOCO category the export was fitted on.
      force: replace an existing `<run_dir>/model/`.

    Returns:
      the saved model.
    """
    checkpoint, run_dir = Path(checkpoint), Path(run_dir)
    target = run_dir / model_lib.MODEL_DIR
    if not checkpoint.is_file():
        raise WeightsError(f"{checkpoint}: no such file")
    model_lib.check_replaceable(target)
    if target.exists() and not force:
        raise CheckpointError(f"{target} already exists (use --force to replace it)")
    digest = _sha256(checkpoint)
    imported = map_official(read_checkpoint(checkpoint), str(checkpoint))
    if target.exists():
        shutil.rmtree(target)
    backbone_path = (run_dir / BACKBONE_FILE).resolve()
    write_backbone(imported, backbone_path, checkpoint, digest)
    config = official_config(str(backbone_path), imported.dim)
    meta = {
        "category": category,
        "source": "official export",
        "official_checkpoint": str(checkpoint.resolve()),
        "official_sha256": digest,
    }
    model = build_model(imported, config, meta)
    model_lib.save_model(model, run_dir)
    return model


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad import-official`."""
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="official fused state dict"
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument(
        "--category", required=True, help="category the export was fitted on"
    )
    parser.add_argument("--force", action="store_true", help="overwrite a model")


def run(args: argparse.Namespace) -> int:
    """Run `csad import-official`."""
    try:
        model = import_official(
            args.checkpoint, args.out, args.category, force=args.force
        )
    except OSError as err:
        raise CSADError(f"cannot write run directory {args.out}: {err}") from None
    print(
        f"imported {args.checkpoint}: K = {model.num_classes + 1} classes"
        f" (incl. background), category {args.category}"
    )
    print(f"model saved to {model_lib.model_directory(args.out)}")
    return 0
