"""`csad bench`: report schema, failure handling, PyTorch side, CLI errors.

A tiny stand-in model (128 px, three-conv backbone, narrow networks) keeps the
JAX compile to seconds; the PyTorch side is checked on the `fast` widths at
small batch without timing anything long.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from csad_tiny import StandInBackbone, fast_compile, tiny_config
from flax import nnx

from csad_jax import bench, cli
from csad_jax import model as model_lib
from csad_jax.config import preset_config
from csad_jax.errors import ConfigError

N_CLS = 3


def numpy_filled(factory, seed: int = 0):
    """factory() built abstractly and filled from NumPy (no eager compiles).

    BatchNorm variances are drawn positive; everything else 0.1 N(0, 1).
    """
    module = nnx.eval_shape(factory)
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(module)):
        shape, dtype = var.get_value().shape, var.get_value().dtype
        if path[-1] == "var":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        var.set_value(jnp.asarray(value, dtype))
    return module


def tiny_model() -> model_lib.CSADModel:
    """A stand-in model at 128 px with placeholder statistics (no fit)."""
    config = tiny_config()
    nets = numpy_filled(
        lambda: model_lib.build_networks(config, StandInBackbone(), N_CLS)
    )
    calib = model_lib.like_calibration(config, N_CLS)
    meta = {
        "category": "screw_kit",
        "backbone": model_lib.backbone_identity(config.backbone, nets.backbone),
    }
    return model_lib.CSADModel(config, nets, calib, meta)


@pytest.fixture(scope="module")
def tiny_subject() -> bench.Subject:
    return bench.Subject(tiny_model(), "tiny stand-in")


def _check_runner(entry: dict) -> None:
    assert entry["status"] == "ok", entry
    assert len(entry["times_s"]) == 1 and entry["first_call_s"] > 0
    assert 0 < entry["min_s"] <= entry["median_s"]
    assert entry["iqr_s"] >= 0
    assert entry["images_per_s"] > 0 and entry["per_image_ms"] > 0


def _check_report(report: dict) -> None:
    """The JSON schema of a report timed at batches 1 and 2, one run."""
    report = json.loads(json.dumps(report))  # JSON-ready
    assert report["format"] == bench.FORMAT_VERSION
    assert report["num_classes"] == N_CLS + 1 and report["image_size"] == 128
    assert set(report["results"]) == {"1", "2"}
    for entry in report["results"].values():
        _check_runner(entry["runners"]["jax"])
        assert entry["host_peak_rss_mb"] > 0
    assert len(report["load_average"]["before"]) == 3
    assert len(report["load_average"]["after"]) == 3
    assert report["settings"]["runs"] == 1 and report["settings"]["batches"] == [1, 2]
    assert report["memory"]["host_peak_rss_mb"] > 0
    assert report["memory"]["device"] is None or "peak_bytes_in_use" in str(
        report["memory"]["device"]
    )
    assert report["environment"]["jax_backend"] == jax.default_backend()
    assert report["jax"] == {"optimized": True, "rewrites": {"depthwise_convs": 0}}
    assert report["torch"] == {
        "available": False,
        "reason": "not requested (--torch none)",
    }
    assert report["ratios"] == []


def test_benchmark_report_schema(tiny_subject):
    with fast_compile():
        report = bench.benchmark(tiny_subject, (1, 2), runs=1, warmup=0, torch_modes=())
    _check_report(report)
    assert report["subject"] == "tiny stand-in"
    text = bench.format_table(report)
    assert text.count(" ok") == 2 and "jax" in text


class FakeRunner:
    """A runner that sleeps, or fails on the first call of a batch."""

    def __init__(self, fail: bool = False):
        self.fail, self.calls, self.prepared = fail, 0, []

    def prepare(self, images):
        self.prepared.append(len(images))

    def __call__(self):
        self.calls += 1
        if self.fail:
            raise RuntimeError("inductor: no C++ compiler\nlong trace")
        time.sleep(0.001)

    def scores(self):
        return np.ones(self.prepared[-1])


def test_a_failing_runner_is_reported_and_not_retried():
    ok, broken = FakeRunner(), FakeRunner(fail=True)
    runners = {"jax": ok, "torch compile": broken, "torch eager": FakeRunner()}
    results = bench.run_batches(
        runners, (1, 8), 8, runs=3, warmup=1, seed=0, compare=True
    )
    first = results["1"]["runners"]["torch compile"]
    assert first == {
        "status": "failed",
        "error": "RuntimeError: inductor: no C++ compiler",
    }
    later = results["8"]["runners"]["torch compile"]
    assert later["status"] == "failed" and "not retried" in later["error"]
    assert broken.calls == 1 and broken.prepared == [1]
    assert ok.calls == 2 * (1 + 1 + 3) and ok.prepared == [1, 8]
    assert len(results["8"]["runners"]["jax"]["times_s"]) == 3
    assert results["8"]["score_rel_diff_vs_torch_eager"] == 0.0
    ratios = bench.ratios(results)
    assert [r["versus"] for r in ratios] == ["torch eager", "torch eager"]


def test_ratios_divide_jax_by_each_other_runner():
    ok = {"status": "ok", "median_s": 2.0}
    results = {
        "8": {
            "runners": {
                "jax": {"status": "ok", "median_s": 1.0},
                "torch eager": ok,
                "torch compile": {"status": "failed", "error": "x"},
            }
        }
    }
    assert bench.ratios(results) == [
        {"batch": 8, "versus": "torch eager", "jax_over_torch": 0.5}
    ]


def test_summary_statistics():
    s = bench.summarize([4.0, 1.0, 2.0, 3.0], batch=8)
    assert s["median_s"] == 2.5 and s["min_s"] == 1.0
    assert s["iqr_s"] == pytest.approx(1.5)
    assert s["images_per_s"] == pytest.approx(8 / 2.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "fast"], "--random-weights"),
        (["--preset", "fast", "--random-weights", "--batch", "1,x"], "--batch"),
        (["--preset", "fast", "--random-weights", "--batch", "0"], "--batch"),
        (["--preset", "fast", "--random-weights", "--torch", "jit"], "--torch"),
        (["--preset", "fast", "--random-weights", "--torch-threads", "0"], "threads"),
        (["--preset", "paper", "--random-weights", "--classes", "1"], "--classes"),
    ],
)
def test_bad_options_give_one_line_errors(argv, message, capsys):
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("csad bench: error:"), err
    assert message in err[0]


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["bench", "--run", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err


def test_option_parsing():
    assert bench.parse_batches("1, 8,8") == (1, 8)
    assert bench.parse_modes("none") == ()
    assert bench.parse_modes("eager,compile") == ("eager", "compile")
    assert bench.parse_threads("") == (None,)
    assert bench.parse_threads("1,2") == (1, 2)
    with pytest.raises(ConfigError):
        bench.parse_modes("eager,xla")


def test_random_official_arrays_import_cleanly():
    from csad_jax import official_import as oi

    arrays = bench.random_official_arrays(4, dim=16, seed=3)
    k, dim = oi.validate_state_dict(arrays, "random")
    assert (k, dim) == (4, 16)
    invcov = arrays["patch_hist_detector.patch_hist_invcov"]
    np.testing.assert_allclose(invcov, invcov.T)
    assert np.linalg.eigvalsh(invcov.astype(np.float64)).min() > -1e-5


# ---------------------------------------------------------------------------
# PyTorch side
# ---------------------------------------------------------------------------


def _param_count(module, kind) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(module, kind)))


@pytest.fixture(scope="module")
def bench_torch():
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    module, reason = bench.load_torch_side()
    assert module is not None, reason
    return module


@pytest.mark.torch
def test_torch_fast_graph_has_our_widths(bench_torch):
    """Same trained parameters per module as our fast-preset networks."""
    import torch

    from csad_jax.backbones.efficientnet_lite import EfficientNetLite

    torch.set_num_threads(1)
    config = preset_config("fast")
    assert config.backbone.name == "efficientnet_lite0"
    nets = nnx.eval_shape(
        lambda: model_lib.build_networks(config, EfficientNetLite(), 4)
    )
    spec = bench.torch_spec(_shell(config, nets, 4))
    assert not bench_torch.is_official(spec)
    ref = bench_torch.build_model(spec)
    assert isinstance(ref, bench_torch.FusedTorch)

    def torch_count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert _param_count(nets.decoder, nnx.Param) == torch_count(ref.segmentor)
    local, glob = nets.lgst.local_student, nets.lgst.global_student
    assert _param_count(local, nnx.Param) == torch_count(ref.local_st)
    assert _param_count(glob, nnx.Param) == torch_count(ref.autoencoder)
    proj = np.prod(nets.lgst.teacher.proj_kernel.get_value().shape)
    assert proj == ref.teacher.proj.weight.numel()
    x = torch.zeros(2, 3, config.image_size, config.image_size)
    shapes = {k: tuple(v.shape) for k, v in ref.intermediates(x).items()}
    grid = config.image_size // 4
    assert shapes["teacher"] == (2, config.lgst.out_dim, grid, grid)
    assert shapes["autoencoder"] == shapes["student_ae"] == shapes["teacher"]
    assert shapes["logits"] == (2, 5, config.image_size, config.image_size)


def _shell(config, nets, n_cls):
    return model_lib.CSADModel(
        config, nets, model_lib.like_calibration(config, n_cls), {"category": "x"}
    )


@pytest.mark.torch
def test_torch_runners_per_thread_count(bench_torch, tiny_subject):
    config = tiny_config("efficientnet_lite0")
    spec = {
        "backbone": "efficientnet_lite0",
        "image_size": 128,
        "num_classes": 3,
        "segmentor_stages": ["layer1", "layer3"],
        "teacher_stages": ["layer2", "layer3"],
        "decoder": {
            "aspp_channels": 8,
            "low_channels": 4,
            "head_channels": 8,
            "aspp_rates": [6, 12, 18],
        },
        "out_dim": config.lgst.out_dim,
        "student_widths": [4, 8],
        "global_base_dim": 8,
    }
    runners = bench_torch.make_runners(spec, ("eager",), "cpu", threads=(1, 2))
    assert set(runners) == {"eager t1", "eager t2"}
    runners["eager t1"].prepare(np.zeros((2, 128, 128, 3), np.float32))
    scores = runners["eager t1"].scores()
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    with pytest.raises(bench_torch.UnsupportedSpec, match="image size 100"):
        bench_torch.check_spec({**spec, "image_size": 100})
    # The stand-in backbone has no restatement: reported, never fatal.
    runners, info = bench.torch_runners(tiny_subject, ("eager",), bench_torch)
    assert runners == {} and info["available"] is False
    assert "backbone stand_in" in info["reason"]


# ---------------------------------------------------------------------------
# The command on a saved run (load_model initialises eagerly: slow on 2 cores)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_benchmarks_a_saved_run(tmp_path, monkeypatch, capsys):
    model = tiny_model()
    model_lib.save_model(model, tmp_path / "run")
    backbone = model.nets.backbone
    monkeypatch.setattr(model_lib, "build_backbone", lambda cfg: nnx.clone(backbone))
    out = tmp_path / "bench.json"
    argv = ["bench", "--run", str(tmp_path / "run"), "--batch", "1,2"]
    argv += ["--runs", "1", "--warmup", "0", "--torch", "none", "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "load average" in printed and "report written" in printed
    report = json.loads(out.read_text())
    _check_report(report)
    assert report["arguments"]["run"] == str(tmp_path / "run")
