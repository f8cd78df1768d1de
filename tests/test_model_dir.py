"""The model directory: one place for all fitted state, reload in a fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from csad_tiny import (
    StandInBackbone,
    copy_run,
    load_tiny_model,
    sample_test_images,
)

from csad_jax.errors import CheckpointError
from csad_jax.model import (
    check_replaceable,
    load_model,
    read_model_json,
    save_model,
)

TESTS = Path(__file__).parent


pytestmark = pytest.mark.usefixtures("fast_xla")


def test_model_json_describes_everything_fitted(tiny):
    record = read_model_json(tiny["run"])
    assert record["complete"] is True
    assert record["category"] == "screw_kit"
    assert record["num_classes"] == 3
    assert record["config"]["preset"] == "tiny"
    assert len(record["backbone"]["sha256"]) == 64
    calib = record["calibration"]
    assert set(calib["branches"]) == {"patch_histogram", "lgst"}
    assert set(calib["detectors"]) == {"1", "2"}
    assert calib["map_quantiles"]["local_end"] > calib["map_quantiles"]["local_start"]
    assert {"jax", "flax", "numpy"} <= set(record["versions"])
    arrays = tiny["run"] / "model" / "arrays"
    assert arrays.is_dir() and any(arrays.iterdir())


_FRESH = """
import sys
import numpy as np
import jax
jax.config.update("jax_disable_most_optimizations", True)
sys.path.insert(0, {tests!r})
from csad_tiny import load_tiny_model
images = np.load({images!r})
out = load_tiny_model({run!r}).predict(images)
np.savez({out!r}, **out)
"""


def test_a_fresh_process_gives_identical_scores(tiny, tmp_path):
    images = sample_test_images(tiny["data"])
    here = load_tiny_model(tiny["run"]).predict(images)
    np.save(tmp_path / "images.npy", images)
    code = _FRESH.format(
        tests=str(TESTS),
        images=str(tmp_path / "images.npy"),
        run=str(tiny["run"]),
        out=str(tmp_path / "out.npz"),
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    there = np.load(tmp_path / "out.npz")
    for key in ("fused", "patch_histogram", "lgst", "anomaly_map", "segmentation"):
        np.testing.assert_array_equal(here[key], there[key], err_msg=key)


def test_the_model_directory_alone_is_enough(tiny, tmp_path):
    model_dir = tmp_path / "only_model"
    shutil.copytree(tiny["run"] / "model", model_dir)
    model = load_model(model_dir, backbone=StandInBackbone())
    assert model.num_classes == 3


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as err:
        load_model(tmp_path / "nowhere")
    _one_line(err)


def test_run_without_a_model(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="csad fit") as err:
        load_model(tmp_path / "run")
    _one_line(err)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_text("{truncated"), "corrupt"),
        (lambda p: p.write_text(json.dumps({"format": 9})), "not a csad-jax model"),
        (
            lambda p: p.write_text(
                json.dumps({**json.loads(p.read_text()), "complete": False})
            ),
            "incomplete",
        ),
        (
            lambda p: p.write_text(
                json.dumps({**json.loads(p.read_text()), "config": {"x": 1}})
            ),
            "corrupt",
        ),
        (
            lambda p: p.write_text(
                json.dumps({**json.loads(p.read_text()), "train_image_size": [256]})
            ),
            "train_image_size",
        ),
    ],
)
def test_damaged_model_json(tiny, tmp_path, damage, message):
    run = copy_run(tiny["run"], tmp_path / "run")
    damage(run / "model" / "model.json")
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(run, backbone=StandInBackbone())
    _one_line(err)


def test_missing_or_corrupt_arrays(tiny, tmp_path):
    run = copy_run(tiny["run"], tmp_path / "run")
    shutil.rmtree(run / "model" / "arrays")
    with pytest.raises(CheckpointError) as err:
        load_model(run, backbone=StandInBackbone())
    _one_line(err)
    run = copy_run(tiny["run"], tmp_path / "run2")
    files = [p for p in (run / "model" / "arrays").rglob("*") if p.is_file()]
    for path in files:
        path.write_bytes(b"\0" * 7)
    with pytest.raises(CheckpointError) as err:
        load_model(run, backbone=StandInBackbone())
    _one_line(err)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_truncated_array_file_gives_one_line_and_no_thread_noise(tiny, tmp_path, capfd):
    run = copy_run(tiny["run"], tmp_path / "run")
    files = [p for p in (run / "model" / "arrays").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])
    capfd.readouterr()
    with pytest.raises(CheckpointError, match="rerun csad fit") as err:
        load_model(run, backbone=StandInBackbone())
    _one_line(err)
    assert "Event loop is closed" not in capfd.readouterr().err


def test_only_a_csad_model_folder_is_replaced(tiny, tmp_path):
    check_replaceable(tmp_path / "absent")
    run = copy_run(tiny["run"], tmp_path / "run")
    check_replaceable(run / "model")
    (run / "model" / "thesis.bin").write_bytes(b"mine")
    with pytest.raises(CheckpointError, match=r"did not write \(thesis.bin\)"):
        check_replaceable(run / "model")
    other = tmp_path / "other" / "model"
    other.mkdir(parents=True)
    for text in ('{"my": "other tool"}', '{"my": "settings", "format": 1}'):
        (other / "model.json").write_text(text)
        with pytest.raises(CheckpointError, match=r"did not write \(model.json\)"):
            check_replaceable(other)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        check_replaceable(tmp_path / "file")


def test_saving_over_an_interrupted_save_replaces_its_arrays(tiny, tmp_path):
    model = load_tiny_model(tiny["run"])
    run = copy_run(tiny["run"], tmp_path / "run")
    (run / "model" / "model.json").unlink()  # as if saving stopped before it
    save_model(model, run)
    again = load_model(run, backbone=StandInBackbone())
    images = sample_test_images(tiny["data"], n=2)
    np.testing.assert_array_equal(
        again.predict(images)["fused"], model.predict(images)["fused"]
    )


def test_other_backbone_weights_are_refused(tiny):
    with pytest.raises(CheckpointError, match="weights differ") as err:
        load_model(tiny["run"], backbone=StandInBackbone(seed=1))
    _one_line(err)


def test_unknown_backbone_name_is_a_one_line_error(tiny):
    # The stand-in is not a registered backbone, so loading it by name fails.
    with pytest.raises(Exception, match="unknown backbone") as err:
        load_model(tiny["run"])
    _one_line(err)
