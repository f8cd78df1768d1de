"""`csad bench`: latency and throughput of the fused inference, JAX vs PyTorch.

Times the jitted fused inference (one backbone pass, both branches, fused
score) of a fitted run (`--run`) or of a preset with random weights
(`--preset paper|fast --random-weights`) at each batch size: first call
(compile) separately, `--warmup` calls, then `--runs` timed calls, each
synchronised with `block_until_ready`. Reported per batch: median, IQR and
minimum seconds per call, images per second, and peak memory (host RSS
high-water via getrusage; device statistics where the backend has them).

The PyTorch side (eager and torch.compile) is measured in the same process on
the same inputs, interleaved call by call with JAX so that both see the same
machine load. It lives in `experiments/torch_reference/bench_torch.py` and is
loaded with importlib when torch and a source checkout are present; csad_jax
never imports torch. With `--preset paper` both frameworks hold the same
random official-layout weights (also compared: the score difference is
reported); otherwise PyTorch gets independent random weights of the same
architecture (run time does not depend on the values).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from csad_jax import inference_opt
from csad_jax import model as model_lib
from csad_jax.config import PRESETS, CSADConfig, preset_config
from csad_jax.errors import ConfigError, CSADError, first_line

FORMAT_VERSION = 1
TORCH_MODULE = "experiments.torch_reference.bench_torch"
TORCH_MODES = ("eager", "compile")
DEFAULT_CLASSES = 5  # K incl. background, as the official K = 5 fixture


# ---------------------------------------------------------------------------
# What is benchmarked
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Subject:
    """The model to time and what the PyTorch side needs to rebuild it.

    Attributes:
      model: our fitted (or random) CSADModel.
      label: one-line description for the report.
      official_state: official-layout NumPy weights shared with PyTorch, or
        None (PyTorch then uses its own random weights).
    """

    model: model_lib.CSADModel
    label: str
    official_state: dict[str, np.ndarray] | None = None


def random_official_arrays(num_classes: int, dim: int = 512, seed: int = 0):
    """Plausible random weights in the official fused export layout (NumPy).

    Convolutions PyTorch-default uniform, BatchNorm scales/variances and stds
    in [0.5, 1.5], quantile ranges positive, inverse covariances symmetric
    positive semi-definite; every other entry 0.1 N(0, 1).
    """
    from csad_jax import official_import as oi

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in oi.official_shapes(num_classes, dim).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            value = np.asarray(rng.integers(0, 1000), np.int64)
        elif leaf.endswith("invcov"):
            a = rng.standard_normal(shape) / math.sqrt(shape[0])
            value = a @ a.T
        elif len(shape) == 4 and leaf == "weight":
            bound = 1.0 / math.sqrt(math.prod(shape[1:]))
            value = rng.uniform(-bound, bound, shape)
        elif leaf in ("weight", "running_var") or leaf.endswith("std"):
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf.endswith("_end"):
            value = rng.uniform(1.0, 2.0, shape)
        elif leaf.endswith("_start"):
            value = rng.uniform(0.0, 0.5, shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        out[name] = np.asarray(value, np.int64 if value.dtype == np.int64 else "f4")
    return out


def paper_subject(num_classes: int, seed: int = 0) -> Subject:
    """The official architecture with random weights, imported like an export."""
    from csad_jax import official_import as oi

    arrays = random_official_arrays(num_classes, seed=seed)
    imported = oi.map_official(arrays, "random official weights")
    config = oi.official_config(None, imported.dim)
    model = oi.build_model(imported, config, {"category": "bench"})
    label = f"paper preset (official export layout), random weights, K = {num_classes}"
    return Subject(model, label, arrays)


def random_subject(config: CSADConfig, num_classes: int) -> Subject:
    """A model of `config` with random weights and placeholder calibration."""
    config = config.with_backbone(config.backbone.name, random_init=True)
    backbone = model_lib.build_backbone(config.backbone)
    nets = model_lib.build_networks(config, backbone, num_classes - 1)
    calib = model_lib.like_calibration(config, num_classes - 1)
    meta = {"category": "bench"}
    model = model_lib.CSADModel(config, nets, calib, meta)
    label = f"{config.preset} preset, random weights, K = {num_classes}"
    return Subject(model, label)


def load_subject(args: argparse.Namespace) -> Subject:
    """The Subject named by --run or --preset/--random-weights."""
    if args.run is not None:
        model = model_lib.load_model(args.run)
        if model.calib.fusion is None:
            raise ConfigError(f"{args.run}: the model is not calibrated")
        return Subject(model, f"run {args.run} ({model.config.preset})")
    if not args.random_weights:
        raise ConfigError(
            f"--preset {args.preset} has no fitted weights: add --random-weights"
            " or benchmark a fitted run with --run"
        )
    if args.classes < 2:
        raise ConfigError(
            f"--classes must be >= 2 (K incl. background), got {args.classes}"
        )
    if args.preset == "paper":
        return paper_subject(args.classes)
    return random_subject(preset_config(args.preset), args.classes)


def torch_spec(model: model_lib.CSADModel) -> dict[str, Any]:
    """The architecture as a plain dict for the PyTorch side."""
    config = model.config
    return {
        "backbone": config.backbone.name,
        "image_size": config.image_size,
        "num_classes": model.num_classes + 1,
        "segmentor_stages": list(config.segmentor.stages),
        "teacher_stages": list(config.lgst.teacher_stages),
        "decoder": dataclasses.asdict(config.segmentor.decoder),
        "out_dim": config.lgst.out_dim,
        "student_widths": list(config.lgst.student_widths),
        "global_base_dim": config.lgst.global_base_dim,
    }


# ---------------------------------------------------------------------------
# Runners and timing
# ---------------------------------------------------------------------------


def jax_runner(model: model_lib.CSADModel, optimize: bool = True):
    """A callable running the jitted fused inference on prepared inputs.

    Args:
      model: the model to time.
      optimize: run `inference_opt` rewrites on a copy of its networks first
        (same numbers; see csad_jax/inference_opt.py).
    """
    nets, changes = model.nets, {}
    if optimize:
        nets, changes = inference_opt.optimized_copy(nets)
    fn, state = model_lib.make_inference_fn(nets, model.config)
    calib = model.calib
    jitted = jax.jit(fn)

    class _Runner:
        inputs = None
        rewrites = changes

        def prepare(self, images: np.ndarray) -> None:
            self.inputs = jax.device_put(jnp.asarray(images))

        def __call__(self):
            return jax.block_until_ready(jitted(state, calib, self.inputs))

        def scores(self) -> np.ndarray:
            return np.asarray(self()["fused"])

    return _Runner()


def summarize(times: list[float], batch: int) -> dict[str, float]:
    """Median, quartiles, IQR, min (seconds per call) and images per second."""
    t = np.asarray(times, np.float64)
    q25, median, q75 = np.percentile(t, [25, 50, 75])
    return {
        "median_s": float(median),
        "q25_s": float(q25),
        "q75_s": float(q75),
        "iqr_s": float(q75 - q25),
        "min_s": float(t.min()),
        "mean_s": float(t.mean()),
        "per_image_ms": float(median / batch * 1000.0),
        "images_per_s": float(batch / median),
    }


def _timed(runner) -> float:
    start = time.perf_counter()
    runner()
    return time.perf_counter() - start


def _first_call(runner) -> tuple[float | None, str | None]:
    """Seconds of the first (compiling) call, or the error it raised."""
    try:
        return _timed(runner), None
    except Exception as err:  # noqa: BLE001 - a failing torch.compile is reported
        return None, first_line(err)


def time_batch(runners: dict, images: np.ndarray, runs: int, warmup: int, log=None):
    """Interleaved timing of every runner on the same images.

    Args:
      runners: name -> runner (prepare(images), __call__() synchronised).
      images: float32 [B, S, S, 3] ImageNet-normalised stand-ins.
      runs: timed calls per runner.
      warmup: untimed calls per runner after the first call.
      log: progress messages go to log(str) (None: silent).

    Returns:
      name -> {"status", "first_call_s", "times_s", summary...} or error.
    """
    log = log or (lambda message: None)
    out: dict[str, dict] = {}
    live = {}
    for name, runner in runners.items():
        runner.prepare(images)
        first, error = _first_call(runner)
        log(f"batch {len(images)}: {name} first call {error or f'{first:.1f} s'}")
        if error is not None:
            out[name] = {"status": "failed", "error": error}
            continue
        for _ in range(warmup):
            runner()
        out[name] = {"status": "ok", "first_call_s": first, "times_s": []}
        live[name] = runner
    names = list(live)
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name]["times_s"].append(_timed(live[name]))
        log(f"batch {len(images)}: run {i + 1}/{runs} done")
    for name in names:
        out[name].update(summarize(out[name]["times_s"], len(images)))
    return out


def score_difference(runners: dict) -> float | None:
    """max |JAX - PyTorch eager| / max |PyTorch| fused score, prepared inputs."""
    eager = [name for name in runners if name.startswith("torch eager")]
    if "jax" not in runners or not eager:
        return None
    ours, theirs = runners["jax"].scores(), runners[eager[0]].scores()
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))


# ---------------------------------------------------------------------------
# PyTorch side (importlib, optional)
# ---------------------------------------------------------------------------


def load_torch_side():
    """(the bench_torch module, None) or (None, reason it is unavailable)."""
    if importlib.util.find_spec("torch") is None:
        return None, "torch is not installed (pip install 'csad-jax[labels]')"
    root = Path(__file__).resolve().parents[1]
    if importlib.util.find_spec("experiments") is None:
        if not (root / "experiments" / "torch_reference" / "bench_torch.py").is_file():
            return (
                None,
                "experiments/torch_reference not found (needs a source checkout)",
            )
        sys.path.append(str(root))
    try:
        return importlib.import_module(TORCH_MODULE), None
    except Exception as err:  # noqa: BLE001 - the JAX side still runs
        return None, f"cannot load {TORCH_MODULE}: {type(err).__name__}: {err}"


def torch_runners(subject: Subject, modes, bench_torch, threads=(None,)):
    """(name -> runner, info) for the requested PyTorch modes and threads."""
    spec = torch_spec(subject.model)
    info: dict[str, Any] = {"modes": list(modes), "spec": spec}
    try:
        bench_torch.check_spec(spec)
    except bench_torch.UnsupportedSpec as err:
        return {}, info | {"available": False, "reason": str(err)}
    built = bench_torch.make_runners(
        spec, modes, jax.default_backend(), subject.official_state, threads
    )
    runners = {f"torch {m}": r for m, r in built.items() if not isinstance(r, str)}
    failed = {f"torch {m}": r for m, r in built.items() if isinstance(r, str)}
    info |= {
        "available": True,
        "model": bench_torch.description(spec),
        "same_weights": subject.official_state is not None,
        "build_errors": failed,
    }
    return runners, info


# ---------------------------------------------------------------------------
# Memory, environment, report
# ---------------------------------------------------------------------------


def host_peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB, getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes vs KiB
    return float(peak * scale / 2**20)


def device_memory() -> dict | None:
    """JAX device memory statistics (GPU), None where unavailable (CPU)."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not offered by every backend
        return None
    if not stats:
        return None
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


def environment() -> dict[str, Any]:
    """Host, backend and versions."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def ratios(results: dict) -> list[dict]:
    """JAX / PyTorch median time per batch and PyTorch mode (< 1: JAX faster)."""
    out = []
    for batch, entry in results.items():
        jax_entry = entry["runners"].get("jax", {})
        for name, other in entry["runners"].items():
            if name == "jax" or other.get("status") != "ok":
                continue
            if jax_entry.get("status") == "ok":
                out.append(
                    {
                        "batch": int(batch),
                        "versus": name,
                        "jax_over_torch": jax_entry["median_s"] / other["median_s"],
                    }
                )
    return out


def format_table(report: dict) -> str:
    """Plain-text table of the report (one row per batch and runner)."""
    lines = [
        f"{'batch':>5}  {'runner':<14} {'median s':>9} {'IQR s':>8} {'min s':>8}"
        f" {'img/s':>7} {'first s':>8}  status"
    ]
    for batch, entry in report["results"].items():
        for name, r in entry["runners"].items():
            if r["status"] != "ok":
                lines.append(
                    f"{batch:>5}  {name:<14} {'-':>9} {'-':>8} {'-':>8}"
                    f" {'-':>7} {'-':>8}  {r['error']}"
                )
                continue
            lines.append(
                f"{batch:>5}  {name:<14} {r['median_s']:9.4f} {r['iqr_s']:8.4f}"
                f" {r['min_s']:8.4f} {r['images_per_s']:7.2f}"
                f" {r['first_call_s']:8.2f}  ok"
            )
    for r in report["ratios"]:
        lines.append(
            f"batch {r['batch']}: JAX / {r['versus']} = {r['jax_over_torch']:.2f}"
        )
    return "\n".join(lines)


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8' -> (1, 8); ConfigError on anything else."""
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ConfigError(
            f"--batch must be comma-separated integers, got {text!r}"
        ) from None
    if not batches or min(batches) < 1:
        raise ConfigError(f"--batch needs positive batch sizes, got {text!r}")
    return tuple(dict.fromkeys(batches))


def parse_threads(text: str) -> tuple[int | None, ...]:
    """'1,2' -> (1, 2); '' -> (None,) (torch's default)."""
    if not text.strip():
        return (None,)
    try:
        threads = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        threads = ()
    if not threads or min(threads) < 1:
        raise ConfigError(f"--torch-threads needs positive integers, got {text!r}")
    return tuple(dict.fromkeys(threads))


def parse_modes(text: str) -> tuple[str, ...]:
    """'eager,compile' -> modes; 'none' -> ()."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if modes in ((), ("none",)):
        return ()
    bad = [m for m in modes if m not in TORCH_MODES]
    if bad:
        raise ConfigError(f"--torch modes {bad} not in {TORCH_MODES} (or 'none')")
    return modes


# ---------------------------------------------------------------------------
# The benchmark and the command
# ---------------------------------------------------------------------------


def _torch_side(subject: Subject, modes, threads) -> tuple[dict, dict, Any]:
    """(runners, info, bench_torch module or None) for the requested modes."""
    if not modes:
        return {}, {"available": False, "reason": "not requested (--torch none)"}, None
    bench_torch, reason = load_torch_side()
    if bench_torch is None:
        return {}, {"available": False, "reason": reason, "modes": list(modes)}, None
    runners, info = torch_runners(subject, modes, bench_torch, threads)
    return runners, info, bench_torch


def run_batches(runners, batches, size, runs, warmup, seed, compare, log=None):
    """batch -> {"runners": time_batch(...), "host_peak_rss_mb", ...}.

    A runner that fails (e.g. torch.compile) is reported and not retried at
    the next batch sizes. With `compare`, the relative difference of the JAX
    and PyTorch eager scores is recorded too (same weights on both sides).
    """
    runners = dict(runners)
    failed: dict[str, str] = {}
    results: dict[str, dict] = {}
    rng = np.random.default_rng(seed)
    for batch in batches:
        images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
        timed = time_batch(runners, images, runs, warmup, log)
        for name, r in timed.items():
            if r["status"] != "ok":
                failed[name] = f"{r['error']} (at batch {batch}; not retried)"
                runners.pop(name)
        timed |= {
            n: {"status": "failed", "error": e}
            for n, e in failed.items()
            if n not in timed
        }
        entry: dict[str, Any] = {"runners": timed}
        if compare:
            entry["score_rel_diff_vs_torch_eager"] = score_difference(runners)
        entry["host_peak_rss_mb"] = host_peak_rss_mb()
        results[str(batch)] = entry
    return results


def benchmark(
    subject: Subject,
    batches: tuple[int, ...] = (1, 8),
    *,
    runs: int = 10,
    warmup: int = 2,
    torch_modes: tuple[str, ...] = TORCH_MODES,
    torch_threads: tuple[int | None, ...] = (None,),
    seed: int = 0,
    optimize: bool = True,
    compare_plain: bool = False,
    log=None,
) -> dict[str, Any]:
    """Times JAX (and PyTorch if available) at each batch size; the report.

    Args:
      subject: what to time (see `load_subject`).
      batches: batch sizes.
      runs: timed calls per runner and batch.
      warmup: untimed calls after the first (compiling) call.
      torch_modes: PyTorch modes to compare ("eager", "compile"); () = none.
      torch_threads: PyTorch intra-op thread counts for eager (None: torch's
        default); one eager runner each.
      seed: seed of the random input images.
      optimize: apply `inference_opt` to the timed JAX networks ("jax").
      compare_plain: also time the networks as built ("jax plain").
      log: progress messages go to log(str) (None: silent).

    Returns:
      the JSON-ready report (see `csad bench --help` and docs).
    """
    load_before = os.getloadavg()
    start = datetime.datetime.now(datetime.UTC)
    runners = {"jax": jax_runner(subject.model, optimize)}
    jax_info = {
        "optimized": optimize,
        "rewrites": runners["jax"].rewrites,
    }
    if compare_plain:
        runners["jax plain"] = jax_runner(subject.model, optimize=False)
    extra, torch_info, bench_torch = _torch_side(subject, torch_modes, torch_threads)
    runners |= extra
    size = subject.model.image_size
    compare = subject.official_state is not None
    results = run_batches(runners, batches, size, runs, warmup, seed, compare, log)
    if bench_torch is not None:
        torch_info["environment"] = bench_torch.environment()
    report = {
        "format": FORMAT_VERSION,
        "date": start.isoformat(timespec="seconds"),
        "subject": subject.label,
        "image_size": size,
        "num_classes": subject.model.num_classes + 1,
        "settings": {
            "batches": list(batches),
            "runs": runs,
            "warmup": warmup,
            "seed": seed,
            "torch_modes": list(torch_modes),
            "torch_threads": list(torch_threads),
        },
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "environment": environment(),
        "jax": jax_info,
        "torch": torch_info,
        "results": results,
        "memory": {"host_peak_rss_mb": host_peak_rss_mb(), "device": device_memory()},
    }
    report["ratios"] = ratios(results)
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `csad bench`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a fitted run directory")
    source.add_argument("--preset", choices=PRESETS, help="preset architecture")
    parser.add_argument(
        "--random-weights", action="store_true", help="random weights (with --preset)"
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=DEFAULT_CLASSES,
        help="K segmentor outputs incl. background for --random-weights (5)",
    )
    parser.add_argument("--batch", default="1,8", help="batch sizes (1,8)")
    parser.add_argument("--runs", type=int, default=10, help="timed calls (10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls (2)")
    parser.add_argument(
        "--torch",
        default="eager,compile",
        help="PyTorch modes to compare: eager, compile, or none (eager,compile)",
    )
    parser.add_argument(
        "--torch-threads",
        default="",
        help="PyTorch eager intra-op thread counts, e.g. 1,2 (default: torch's)",
    )
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="time the networks as built (no csad_jax.inference_opt rewrites)",
    )
    parser.add_argument(
        "--compare-plain",
        action="store_true",
        help="also time the unoptimised JAX networks ('jax plain')",
    )
    parser.add_argument("--seed", type=int, default=0, help="input images seed")
    parser.add_argument("--json", type=Path, help="also write the report here")


def run(args: argparse.Namespace) -> int:
    """Run `csad bench`."""
    if args.runs < 1 or args.warmup < 0:
        raise ConfigError("--runs must be >= 1 and --warmup >= 0")
    batches, modes = parse_batches(args.batch), parse_modes(args.torch)
    threads = parse_threads(args.torch_threads)
    subject = load_subject(args)
    print(f"benchmarking {subject.label}: batches {list(batches)}, {args.runs} runs")
    report = benchmark(
        subject,
        batches,
        runs=args.runs,
        warmup=args.warmup,
        torch_modes=modes,
        torch_threads=threads,
        seed=args.seed,
        optimize=not args.no_optimize,
        compare_plain=args.compare_plain,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    report["arguments"] = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
    }
    torch_info = report["torch"]
    if not torch_info.get("available"):
        print(f"PyTorch side: {torch_info['reason']}")
    load = report["load_average"]
    print(
        f"{report['date']}  load average {load['before'][0]:.2f} -> "
        f"{load['after'][0]:.2f}  ({report['environment']['jax_backend']})"
    )
    print(format_table(report))
    print(f"host peak RSS {report['memory']['host_peak_rss_mb']:.0f} MiB")
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as err:
            raise CSADError(f"cannot write {args.json}: {err.strerror}") from None
        print(f"report written to {args.json}")
    return 0
