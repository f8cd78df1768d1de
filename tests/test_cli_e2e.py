"""The csad commands end to end: fit, eval, predict, export, reload, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from csad_tiny import (
    CATEGORY,
    StandInBackbone,
    fast_compile,
    make_dataset,
    make_labels,
    tiny_config,
)
from PIL import Image

from csad_jax import model as model_lib
from csad_jax import report
from csad_jax.cli import main
from csad_jax.config import write_config
from csad_jax.evaluate import check_output_folder
from csad_jax.predict import heatmap_paths, predict_paths

pytestmark = pytest.mark.usefixtures("fast_xla")


@pytest.fixture(scope="module", autouse=True)
def _stand_in_by_name():
    """Lets the commands load the tiny run's unregistered stand-in backbone."""
    original = model_lib.build_backbone

    def build(cfg):
        return StandInBackbone() if cfg.name == "stand_in" else original(cfg)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_lib, "build_backbone", build)
        yield


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    with fast_compile():
        code = main(
            ["eval", "--run", str(tiny["run"]), "--data", str(tiny["data"])]
            + ["--out", str(out), "--quiet"]
        )
    assert code == 0
    return out


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_eval_writes_metrics_scores_report_and_maps(evaluated):
    metrics = report.read_metrics_json(evaluated / "metrics.json")
    assert list(metrics) == list(report.TOP_KEYS)
    assert metrics["counts"] == {"good": 4, "logical": 6, "structural": 3}
    assert set(metrics["auroc"]) == {"logical", "structural", "mean", "mean_over"}
    for branch in ("patch_histogram", "lgst"):
        assert 0.0 <= metrics["branches"][branch]["logical"] <= 1.0
    assert set(metrics["spro"]["logical"]) == set(report.SPRO_KEYS)
    assert "eval" in metrics["timing"] and "fit_lgst" in metrics["timing"]
    rows = (evaluated / "scores.csv").read_text().splitlines()
    assert rows[0] == "image,kind,patch_histogram,lgst,fused" and len(rows) == 14
    assert "<html" in (evaluated / "report.html").read_text().lower()
    tiffs = list((evaluated / "anomaly_maps" / CATEGORY / "test").rglob("*.tiff"))
    assert len(tiffs) == 13


def test_eval_keeps_files_it_did_not_write(tiny, evaluated, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("my own report")
    argv = ["eval", "--run", str(tiny["run"]), "--data", str(tiny["data"])]
    assert main([*argv, "--out", str(mine), "--quiet"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "not written by csad eval" in err[0]
    assert (mine / "report.html").read_text() == "my own report"
    check_output_folder(evaluated)  # an earlier evaluation may be replaced
    check_output_folder(tmp_path / "new")
    partial = tmp_path / "partial" / "anomaly_maps" / CATEGORY / "test" / "good"
    partial.mkdir(parents=True)
    (partial / "000.tiff").write_bytes(b"")
    check_output_folder(tmp_path / "partial")  # maps of an interrupted run


def test_predict_prints_one_json_line_per_image(tiny, tmp_path, capsys):
    images = sorted((tiny["data"] / CATEGORY / "test" / "good").glob("*.png"))[:2]
    heat = tmp_path / "heat"
    code = main(
        ["predict", "--run", str(tiny["run"]), *map(str, images), "--out", str(heat)]
    )
    assert code == 0
    results = [json.loads(line) for line in _lines(capsys.readouterr().out)]
    assert [r["image"] for r in results] == list(map(str, images))
    for r in results:
        assert {"fused", "patch_histogram", "lgst", "heatmap"} <= set(r)
        assert Image.open(r["heatmap"]).size == (128, 128)


def test_predict_keeps_one_heatmap_per_image_when_names_repeat(tiny, tmp_path, capsys):
    test = tiny["data"] / CATEGORY / "test"
    images = [test / "good" / "000.png", test / "logical_anomalies" / "000.png"]
    heat = tmp_path / "heat"
    argv = ["predict", "--run", str(tiny["run"]), *map(str, images)]
    assert main([*argv, "--out", str(heat)]) == 0
    results = [json.loads(line) for line in _lines(capsys.readouterr().out)]
    assert [r["heatmap"] for r in results] == [
        str(heat / "good" / "000_heatmap.png"),
        str(heat / "logical_anomalies" / "000_heatmap.png"),
    ]
    first, second = (np.asarray(Image.open(r["heatmap"])) for r in results)
    assert not np.array_equal(first, second)


def test_scores_that_are_not_finite_are_null_with_a_warning(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)

    def predictor(images):
        n = len(images)
        nan = np.full(n, np.nan, np.float32)
        return {"fused": nan, "patch_histogram": -nan, "lgst": np.ones(n)}

    (result,) = predict_paths(predictor, [image], 8, None)
    assert result["fused"] is None and result["lgst"] == 1.0
    json.dumps(result, allow_nan=False)
    assert "fused score of" in capsys.readouterr().err


def test_heatmap_paths_are_distinct_and_flat_when_names_are_unique(tmp_path):
    out = tmp_path / "out"
    flat = heatmap_paths([tmp_path / "a" / "1.png", tmp_path / "b" / "2.png"], out)
    assert flat == [out / "1_heatmap.png", out / "2_heatmap.png"]
    same_folder = heatmap_paths([tmp_path / "0.png", tmp_path / "0.jpg"], out)
    assert same_folder == [out / "0_png_heatmap.png", out / "0_jpg_heatmap.png"]
    repeated = heatmap_paths([tmp_path / "0.png", tmp_path / "0.png"], out)
    assert repeated == [out / "0_heatmap.png"] * 2


def test_predict_takes_any_mode_and_warns_about_another_size(tiny, tmp_path, capsys):
    source = sorted((tiny["data"] / CATEGORY / "test" / "good").glob("*.png"))[0]
    image = Image.open(source)
    gray, rgba, big = tmp_path / "gray.png", tmp_path / "rgba.png", tmp_path / "b.jpg"
    image.convert("L").save(gray)
    image.convert("RGBA").save(rgba)
    image.resize((200, 160)).save(big)
    code = main(["predict", "--run", str(tiny["run"]), str(gray), str(rgba), str(big)])
    captured = capsys.readouterr()
    assert code == 0
    results = [json.loads(line) for line in _lines(captured.out)]
    assert len(results) == 3 and all(np.isfinite(r["fused"]) for r in results)
    warnings = _lines(captured.err)
    assert len(warnings) == 1 and "b.jpg is 200x160" in warnings[0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "file not found"),
        (lambda d: (d / "notes.png").write_text("hello") and d / "notes.png", "not a"),
    ],
)
def test_predict_refuses_unreadable_images_in_one_line(
    tiny, tmp_path, capsys, make, message
):
    path = make(tmp_path)
    code = main(["predict", "--run", str(tiny["run"]), str(path)])
    err = _lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and message in err[0]


def test_export_then_predict_from_the_artifact(tiny, tmp_path, capsys):
    artifact = tmp_path / "model.npz"
    assert main(["export", "--run", str(tiny["run"]), "--out", str(artifact)]) == 0
    images = sorted((tiny["data"] / CATEGORY / "test").rglob("*.png"))[:3]
    capsys.readouterr()
    assert main(["predict", "--run", str(tiny["run"]), *map(str, images)]) == 0
    by_run = [json.loads(x) for x in _lines(capsys.readouterr().out)]
    assert main(["predict", "--artifact", str(artifact), *map(str, images)]) == 0
    by_artifact = [json.loads(x) for x in _lines(capsys.readouterr().out)]
    for a, b in zip(by_run, by_artifact, strict=True):
        for key in ("fused", "patch_histogram", "lgst"):
            assert abs(a[key] - b[key]) <= 1e-5


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_missing_or_corrupt_run_is_a_one_line_error(tiny, tmp_path, capsys, command):
    broken = tmp_path / "run"
    shutil.copytree(tiny["run"], broken, symlinks=True)
    (broken / "model" / "model.json").write_text("{")
    for run in (tmp_path / "absent", broken):
        argv = {
            "eval": ["eval", "--run", str(run), "--data", str(tiny["data"])],
            "predict": ["predict", "--run", str(run), str(tmp_path / "x.png")],
            "export": ["export", "--run", str(run), "--out", str(tmp_path / "a")],
        }[command]
        assert main(argv) == 2
        err = _lines(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith(f"csad {command}: error:")


def test_fit_refuses_bad_data_in_one_line(tiny, tmp_path, capsys):
    config = write_config(tmp_path / "config.json", tiny_config())
    base = ["fit", "--config", str(config), "--quiet"]
    code = main(
        [*base, "--data", str(tiny["data"]), "--category", "nope"]
        + ["--out", str(tmp_path / "r1")]
    )
    err = _lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "category 'nope' not found" in err[0]
    assert not (tmp_path / "r1").exists()
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    shutil.rmtree(data / CATEGORY / "validation")
    code = main(
        [*base, "--data", str(data), "--category", CATEGORY]
        + ["--out", str(tmp_path / "r2")]
    )
    err = _lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "validation/good" in err[0]
    assert not (tmp_path / "r2").exists()
    shutil.copytree(
        tiny["data"] / CATEGORY / "validation", data / CATEGORY / "validation"
    )
    broken = sorted((data / CATEGORY / "validation" / "good").glob("*.png"))[-1]
    broken.write_bytes(broken.read_bytes()[:100])
    code = main(
        [*base, "--data", str(data), "--category", CATEGORY]
        + ["--out", str(tmp_path / "r3")]
    )
    err = _lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and str(broken.resolve()) in err[0], err
    assert not (tmp_path / "r3" / "labels").exists()  # before any stage
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "keep.txt").write_text("the user's file")
    code = main(
        [*base, "--data", str(data), "--category", CATEGORY, "--out", str(mine)]
    )
    assert code == 2 and (mine / "notes" / "keep.txt").read_text() == "the user's file"


def _csad(*args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "csad_jax.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_commands_in_subprocesses_with_a_random_lite0(tmp_path):
    """fit -> eval -> predict -> export -> predict --artifact, as a user would."""
    data = make_dataset(tmp_path / "data")
    labels = make_labels(data, tmp_path / "labels")
    config = write_config(
        tmp_path / "config.json", tiny_config("efficientnet_lite0", random_init=True)
    )
    run = tmp_path / "run"
    fit_args = ["--data", data, "--category", CATEGORY, "--out", run]
    fit_args += ["--config", config, "--labels", labels, "--quiet"]
    done = _csad("fit", *fit_args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "calibration" in done.stdout
    done = _csad("eval", "--run", run, "--data", data, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report.read_metrics_json(run / "eval" / "metrics.json")
    image = sorted((data / CATEGORY / "test" / "good").glob("*.png"))[0]
    by_run = _csad("predict", "--run", run, image, cwd=tmp_path)
    assert by_run.returncode == 0, by_run.stderr
    done = _csad("export", "--run", run, "--out", tmp_path / "a.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    by_artifact = _csad(
        "predict", "--artifact", tmp_path / "a.npz", image, cwd=tmp_path
    )
    assert by_artifact.returncode == 0, by_artifact.stderr
    a, b = json.loads(by_run.stdout), json.loads(by_artifact.stdout)
    assert abs(a["fused"] - b["fused"]) <= 1e-5
