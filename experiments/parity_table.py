"""Module-by-module fidelity of our fused model against the official PyTorch graph.

A random state dict in the official export layout is loaded strictly into the
PyTorch restatement (`experiments.torch_reference.csad_official.CSADOfficial`)
and mapped into our model by `csad_jax.official_import`, so both hold identical
weights and calibration numbers. Every module output is compared in two ways:

* isolated: our module receives the reference's own inputs (e.g. the decoder
  gets the PyTorch layer1/layer3), so the error is the module's alone;
* chained: our whole pipeline from the image, so errors of upstream modules
  propagate (argmax flips of the component map included).

The error is max |ours - reference| / max |reference| over the batch. Run under
float32 with `jax.default_matmul_precision("highest")`:

    .venv/bin/python -m experiments.parity_table [--batch 1] [--seed 1]

prints a Markdown table for the README. `tests/test_parity_official.py` uses
the same functions.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from csad_jax import lgst as lgst_lib
from csad_jax import model as model_lib
from csad_jax import official_import as oi
from csad_jax import score_fusion
from csad_jax.patch_histogram import grid_histograms
from experiments.torch_reference import csad_official as co

STAGES = ("layer1", "layer2", "layer3")
# Module -> the outputs compared for it (names of CSADOfficial.intermediates).
MODULES = {
    "backbone (WRN50-2 layer1-3)": ("layer1", "layer2", "layer3"),
    "segmentor logits": ("logits",),
    "class / patch histograms": ("class_hist", "patch_hist"),
    "histogram distances": ("hist_distance", "patch_hist_distance"),
    "patch histogram score": ("patch_hist_score",),
    "teacher (normalised)": ("teacher_raw", "teacher"),
    "local student heads": ("student_st", "student_ae"),
    "global student": ("autoencoder",),
    "LGST maps": ("map_st", "map_ae", "map_st_norm", "map_ae_norm", "lgst_map"),
    "LGST score": ("lgst_score",),
    "fused score": ("score",),
}
# Outputs of the model's own inference path (`model.forward_raw` + `fuse_scores`,
# what CSADModel.predict runs), compared chained only.
MODEL_PATH = {
    "LGST score (model path)": ("lgst", "lgst_score"),
    "fused score (model path)": ("fused", "score"),
}


# ---------------------------------------------------------------------------
# The two models with identical weights
# ---------------------------------------------------------------------------


def build_pair(num_classes: int = 5, seed: int = 1):
    """(our CSADModel, CSADOfficial) holding the same random official weights.

    Args:
      num_classes: K = N_cls + 1 segmentor outputs.
      seed: seed of `csad_official.random_state_dict`.
    """
    shapes = {k: list(v) for k, v in oi.official_shapes(num_classes).items()}
    state = co.random_state_dict(shapes, seed=seed)
    reference = co.CSADOfficial(num_classes)
    reference.load_state_dict(state, strict=True)
    reference.eval()
    arrays = {k: v.numpy() for k, v in state.items()}
    imported = oi.map_official(arrays, "random official state dict")
    config = oi.official_config(None, imported.dim)
    ours = oi.build_model(imported, config, {"category": "parity"})
    return ours, reference


def random_images(batch: int, seed: int = 0, size: int = 256) -> np.ndarray:
    """Standard-normal stand-ins for ImageNet-normalised images [B, S, S, 3]."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, size, size, 3)).astype(np.float32)


def reference_outputs(reference, images: np.ndarray) -> dict[str, np.ndarray]:
    """CSADOfficial intermediates of NHWC images, converted to NHWC / [B, D]."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    out = {}
    for name, value in reference.intermediates(x).items():
        value = value.numpy()
        if value.ndim == 4:
            value = value.transpose(0, 2, 3, 1)
        elif value.ndim == 3 and value.shape[-1] == 1:  # histograms [B, D, 1]
            value = value[..., 0]
        out[name] = value
    return out


# ---------------------------------------------------------------------------
# Our modules, each a function of explicit inputs
# ---------------------------------------------------------------------------


def backbone_part(nets, images):
    """Shared backbone pass: layer1..layer3 [B, h, w, C]."""
    return nets.backbone(images, stages=STAGES)


def decoder_part(nets, layer1, layer3, size):
    """Segmentor decoder logits [B, S, S, K] from layer1 and layer3."""
    return {"logits": nets.decoder(layer1, layer3, size, train=False)}


def histogram_part(calib: model_lib.Calibration, logits):
    """Histograms, Mahalanobis distances and the branch score of logits."""
    scorer = calib.scorer
    segmentation = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    hists = grid_histograms(
        segmentation, scorer.num_classes, scorer.grids, scorer.background
    )
    distances = scorer.raw_scores(segmentation)
    stats = dict(zip(scorer.grids, scorer.stats, strict=True))
    return {
        "class_hist": hists[0],
        "patch_hist": hists[1],
        "hist_distance": distances[1],
        "patch_hist_distance": distances[2],
        "patch_hist_score": score_fusion.fuse(distances, stats),
    }


def teacher_part(nets, calib, layer2, layer3):
    """Raw and normalised teacher features [B, 64, 64, D]."""
    feats = {"layer2": layer2, "layer3": layer3}
    grid = (2 * layer2.shape[1], 2 * layer2.shape[2])  # layer2: stride 8
    raw = nets.lgst.teacher.head(feats, grid)
    return {"teacher_raw": raw, "teacher": calib.teacher_stats.normalize(raw)}


def student_part(nets, images):
    """Local student heads and global student output [B, 64, 64, D]."""
    student = nets.lgst.local_student(images)
    return {
        "student_st": student["local_head"],
        "student_ae": student["global_head"],
        "autoencoder": nets.lgst.global_student(images),
    }


def maps_part(calib, teacher, student_st, student_ae, autoencoder):
    """Raw and normalised LGST maps [B, 64, 64] and the LGST score [B]."""
    maps = {
        "map_local": jnp.mean(jnp.square(teacher - student_st), axis=-1),
        "map_global": jnp.mean(jnp.square(autoencoder - student_ae), axis=-1),
    }
    scored = lgst_lib.normalize_maps(maps, calib.quantiles, (0, 0), "fused")
    return {
        "map_st": maps["map_local"],
        "map_ae": maps["map_global"],
        "map_st_norm": scored["map_local"],
        "map_ae_norm": scored["map_global"],
        "lgst_map": scored["anomaly_map"],
        "lgst_score": scored["pred_score"],
    }


def fuse_part(calib, patch_hist_score, lgst_score):
    """Fused score [B] from the two branch scores."""
    fusion = calib.fusion
    ph = score_fusion.normalize(patch_hist_score, fusion.patch_histogram)
    return {"score": ph + score_fusion.normalize(lgst_score, fusion.lgst)}


def _jit(model: model_lib.CSADModel, part: Callable):
    """jit(part) over (nets state, calibration, *arrays)."""
    graphdef, state = nnx.split(model.nets)

    def fn(state, calib, *arrays):
        nets = nnx.merge(graphdef, state)
        return part(nets, calib, *arrays)

    jitted = jax.jit(fn)
    return lambda *arrays: jitted(state, model.calib, *arrays)


def _chained(nets, calib, images, config):
    """Every intermediate of our fused pipeline, and the model path's scores."""
    size = images.shape[1:3]
    out = dict(backbone_part(nets, images))
    out |= decoder_part(nets, out["layer1"], out["layer3"], size)
    out |= histogram_part(calib, out["logits"])
    out |= teacher_part(nets, calib, out["layer2"], out["layer3"])
    out |= student_part(nets, images)
    out |= maps_part(
        calib, out["teacher"], out["student_st"], out["student_ae"], out["autoencoder"]
    )
    out |= fuse_part(calib, out["patch_hist_score"], out["lgst_score"])
    fused = model_lib.fuse_scores(
        calib, model_lib.forward_raw(nets, calib, images, config)
    )
    return out | {"lgst": fused["lgst"], "fused": fused["fused"]}


def chained_outputs(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Our intermediates (CSADOfficial.intermediates names) + model path scores."""
    part = functools.partial(_chained, config=model.config)
    out = _jit(model, part)(jnp.asarray(images))
    return {k: np.asarray(v) for k, v in out.items()}


def isolated_outputs(model, ref: dict, chained: dict) -> dict[str, np.ndarray]:
    """Each module of ours fed with the reference's inputs to that module.

    The backbone and the students read the images, so their isolated outputs
    are the chained ones.
    """
    size = ref["logits"].shape[1:3]
    calls = [
        (lambda n, c, a, b: decoder_part(n, a, b, size), ("layer1", "layer3")),
        (lambda n, c, a: histogram_part(c, a), ("logits",)),
        (teacher_part, ("layer2", "layer3")),
        (
            lambda n, c, *a: maps_part(c, *a),
            ("teacher", "student_st", "student_ae", "autoencoder"),
        ),
        (lambda n, c, a, b: fuse_part(c, a, b), ("patch_hist_score", "lgst_score")),
    ]
    out = {k: chained[k] for k in (*STAGES, "student_st", "student_ae", "autoencoder")}
    for part, inputs in calls:
        result = _jit(model, part)(*(jnp.asarray(ref[k]) for k in inputs))
        out |= {k: np.asarray(v) for k, v in result.items()}
    return out


# ---------------------------------------------------------------------------
# Errors and the table
# ---------------------------------------------------------------------------


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference| (float64)."""
    ours = np.asarray(ours, np.float64)
    reference = np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shape {ours.shape} != reference {reference.shape}")
    scale = np.max(np.abs(reference))
    return float(np.max(np.abs(ours - reference)) / max(scale, 1e-30))


def module_errors(ours: dict, ref: dict) -> dict[str, float]:
    """Module -> worst relative error over its outputs (see MODULES)."""
    return {
        module: max(relative_error(ours[k], ref[k]) for k in keys)
        for module, keys in MODULES.items()
    }


def measure(model, reference, images: np.ndarray) -> dict[str, dict[str, float]]:
    """Relative errors of our model against the reference on `images`.

    Returns:
      {"isolated": module -> error, "chained": module (and MODEL_PATH entry)
      -> error, "flips": pixels whose chained argmax differs, "outputs": the
      reference's intermediate names}.
    """
    with jax.default_matmul_precision("highest"), torch.no_grad():
        ref = reference_outputs(reference, images)
        chained = chained_outputs(model, images)
        isolated = isolated_outputs(model, ref, chained)
    flips = int(np.sum(chained["logits"].argmax(-1) != ref["logits"].argmax(-1)))
    model_path = {
        name: relative_error(chained[ours], ref[theirs])
        for name, (ours, theirs) in MODEL_PATH.items()
    }
    return {
        "isolated": module_errors(isolated, ref),
        "chained": module_errors(chained, ref) | model_path,
        "flips": flips,
        "outputs": sorted(ref),
    }


def markdown_table(errors: dict) -> str:
    """The fidelity table (module, isolated and chained max relative error)."""
    lines = [
        "| module | isolated max rel. error | chained max rel. error |",
        "|---|---|---|",
    ]
    for module in MODULES:
        iso, chain = errors["isolated"][module], errors["chained"][module]
        lines.append(f"| {module} | {iso:.1e} | {chain:.1e} |")
    for module in MODEL_PATH:
        lines.append(f"| {module} | - | {errors['chained'][module]:.1e} |")
    return "\n".join(lines)


def main() -> None:
    """Builds both models, measures and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="weights seed")
    parser.add_argument("--classes", type=int, default=5, help="K incl. background")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    model, reference = build_pair(args.classes, args.seed)
    errors = measure(model, reference, random_images(args.batch, args.seed))
    print(
        f"batch {args.batch}, K = {args.classes}, weights seed {args.seed}, float32,"
        f" matmul precision highest, jax {jax.__version__}, torch"
        f" {torch.__version__}, {jax.default_backend()}"
    )
    print(markdown_table(errors))
    print(f"argmax flips of the chained component map: {errors['flips']}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
