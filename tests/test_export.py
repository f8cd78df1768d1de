"""csad export: a jax.export artifact that reloads without the training code."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from csad_tiny import load_tiny_model, sample_test_images
from PIL import Image

from csad_jax.errors import CheckpointError, ConfigError
from csad_jax.export import export_model, heatmap_png, load_artifact

pytestmark = pytest.mark.usefixtures("fast_xla")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    model = load_tiny_model(tiny["run"])
    path = export_model(model, tmp_path_factory.mktemp("export") / "tiny")
    return tiny, model, path


def test_artifact_scores_match_the_run(exported):
    tiny, model, path = exported
    images = sample_test_images(tiny["data"], n=6)
    want = model.predict(images)
    artifact = load_artifact(path)
    assert path.suffix == ".npz"
    assert artifact.header["input"]["shape"] == [None, 128, 128, 3]
    assert artifact.header["batch_sizes"] == [1, 4]
    got = artifact.predict(images)  # batches of 4 and a padded remainder
    for key in ("fused", "patch_histogram", "lgst", "anomaly_map"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=0, err_msg=key)
    np.testing.assert_array_equal(got["segmentation"], want["segmentation"])
    one = artifact.predict(images[:1])  # the batch-1 executable
    np.testing.assert_allclose(one["fused"], want["fused"][:1], atol=1e-5, rtol=0)


_RELOAD = """
import json, sys
import numpy as np
from csad_jax.export import load_artifact
artifact = load_artifact({path!r})
out = artifact.predict(np.load({images!r}))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax",
    "orbax", "torch") or m in ("csad_jax.model", "csad_jax.train_lgst",
    "csad_jax.train_segmentor", "csad_jax.pipeline", "csad_jax.training"))
print(json.dumps({{"fused": out["fused"].tolist(), "heavy": heavy}}))
"""


def test_reload_needs_no_training_code(exported, tmp_path):
    tiny, model, path = exported
    images = sample_test_images(tiny["data"], n=3)
    np.save(tmp_path / "images.npy", images)
    code = _RELOAD.format(path=str(path), images=str(tmp_path / "images.npy"))
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    want = model.predict(images)["fused"]
    np.testing.assert_allclose(result["fused"], want, atol=1e-5, rtol=0)


def test_bad_artifacts_are_one_line_errors(exported, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_artifact(tmp_path / "missing.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="not a usable export") as err:
        load_artifact(broken)
    assert "\n" not in str(err.value)
    _, _, path = exported
    other = tmp_path / "other.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["header"] = np.frombuffer(b'{"format": "something-else"}', np.uint8)
    np.savez(other, **arrays)
    with pytest.raises(CheckpointError, match="not a csad-jax export"):
        load_artifact(other)


def test_artifact_refuses_images_of_the_wrong_shape(exported):
    _, _, path = exported
    with pytest.raises(ConfigError, match="128, 128, 3"):
        load_artifact(path).predict(np.zeros((1, 64, 64, 3), np.float32))


def test_heatmap_has_the_image_size():
    image = np.full((90, 120, 3), 128, np.uint8)
    amap = np.zeros((32, 32), np.float32)
    amap[:16] = 1.0
    out = heatmap_png(amap, image)
    assert isinstance(out, Image.Image) and out.size == (120, 90)
    pixels = np.asarray(out)
    assert not np.array_equal(pixels[0, 0], pixels[-1, -1])
