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
from csad_jax.export import (
    artifact_path,
    export_model,
    heatmap_png,
    load_artifact,
)

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
    _, _, path = exported
    broken = tmp_path / "broken.npz"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not an .npz archive") as err:
        load_artifact(broken)
    assert "\n" not in str(err.value)
    partial = tmp_path / "partial.npz"
    with np.load(path) as data:
        np.savez(partial, header=data["header"])
    with pytest.raises(CheckpointError, match="not a usable export") as err:
        load_artifact(partial)
    assert "\n" not in str(err.value)
    other = tmp_path / "other.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["header"] = np.frombuffer(b'{"format": "something-else"}', np.uint8)
    np.savez(other, **arrays)
    with pytest.raises(CheckpointError, match="not a csad-jax export"):
        load_artifact(other)
    for name, content in [("empty.npz", b""), ("notes.npz", b"hello\n")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="not an .npz archive") as err:
            load_artifact(tmp_path / name)
        assert "allow_pickle" not in str(err.value)


def _edited(path, out, edit):
    """A copy of the artifact at `path` with `edit(arrays, header)` applied."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(bytes(arrays["header"]).decode())
    edit(arrays, header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a, h: h.update(batch_sizes=[]), "bad batch_sizes"),
        (lambda a, h: h.update(num_weights="many"), "bad num_weights"),
        (lambda a, h: h["input"].update(shape="abc"), "bad input shape"),
        (lambda a, h: h.update(train_image_size="x"), "bad train_image_size"),
        (lambda a, h: h["input"].update(shape=[None, 64, 64, 3]), "does not take"),
        (lambda a, h: a.update(w00000=np.zeros((3, 3), np.float32)), "does not take"),
        (lambda a, h: a.update(exported_b1=a["exported_b1"][:100]), "damaged"),
    ],
)
def test_hand_edited_artifacts_are_one_line_errors(exported, tmp_path, edit, message):
    _, _, path = exported
    bad = _edited(path, tmp_path / "bad.npz", edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_artifact(bad)
    assert "\n" not in str(err.value)


def test_artifact_for_another_platform_is_refused_by_name(exported, tmp_path):
    _, _, path = exported
    cuda_only = _edited(
        path, tmp_path / "cuda.npz", lambda a, h: h.update(platforms=["cuda"])
    )
    with pytest.raises(CheckpointError, match="exported for cuda") as err:
        load_artifact(cuda_only)
    assert "--platforms cuda,cpu" in str(err.value)


def test_export_checks_platforms_and_the_output_path(exported, tmp_path):
    _, model, _ = exported
    with pytest.raises(ConfigError, match="unknown export platform bogus"):
        export_model(model, tmp_path / "x.npz", platforms=("cpu", "bogus"))
    with pytest.raises(ConfigError, match="is a folder"):
        export_model(model, tmp_path)
    assert artifact_path(tmp_path / "m.NPZ") == tmp_path / "m.NPZ"
    assert artifact_path(tmp_path / "m.csadx") == tmp_path / "m.csadx.npz"
    assert list(tmp_path.iterdir()) == []
    mine = tmp_path / "mine.npz"
    np.savez(mine, data=np.arange(3))
    with pytest.raises(ConfigError, match="not a csad-jax export; refusing"):
        export_model(model, mine)
    assert np.load(mine)["data"].tolist() == [0, 1, 2]
    again = export_model(model, tmp_path / "again.npz")
    assert export_model(model, again) == again  # an artifact may be replaced


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
