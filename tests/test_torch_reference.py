"""The PyTorch restatement of the official fused model (experiments/torch_reference).

Names and shapes must equal the official export (fixture, K = 5) so that an
official checkpoint loads strictly; the forward must run at batch 1 and 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from experiments.torch_reference import csad_official as co  # noqa: E402

pytestmark = pytest.mark.torch

FIXTURE = Path("/work/shared/fixtures/official_export_state_dict_shapes.json")


@pytest.fixture(scope="module")
def fixture_shapes() -> dict[str, list[int]]:
    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} not available")
    record = json.loads(FIXTURE.read_text())
    assert record["num_classes"] == 5
    return record["state_dict"]


@pytest.fixture(scope="module")
def model() -> co.CSADOfficial:
    torch.set_num_threads(2)
    return co.CSADOfficial(num_classes=5)


def test_state_dict_names_shapes_and_order_equal_the_official_export(
    model, fixture_shapes
):
    ours = co.state_dict_shapes(model)
    assert sorted(set(ours) ^ set(fixture_shapes)) == []
    assert ours == fixture_shapes
    assert list(ours) == list(fixture_shapes)  # state-dict order as well


def test_segmentor_and_detector_shapes_follow_num_classes():
    shapes = co.state_dict_shapes(co.Segmentor(num_classes=9))
    assert shapes["fc2.conv3.weight"] == [9, 256, 1, 1]
    detector = co.state_dict_shapes(co.PatchHistogramDetector(9))
    assert detector["patch_hist_invcov"] == [36, 36]
    assert detector["hist_mean"] == [9, 1]


def test_random_fixture_state_dict_loads_strictly(model, fixture_shapes):
    state = co.random_state_dict(fixture_shapes, seed=3)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    for name in ("segmentor.fc2.conv3.bias", "teacher.proj.bias", "q_ae_end"):
        assert torch.equal(loaded[name], state[name])
    bad = dict(state)
    bad.pop("teacher.proj.bias")
    with pytest.raises(RuntimeError, match="teacher.proj.bias"):
        model.load_state_dict(bad, strict=True)


def test_detector_quadrant_order_and_background_fraction():
    k = 5
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4, :4] = 1  # top-left
    labels[0, 4:, :4] = 2  # bottom-left
    labels[0, :4, 4:] = 3  # top-right
    labels[0, 6:, 6:] = 4  # bottom-right corner; rest of BR is background
    logits = torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()
    hist, patch = co.PatchHistogramDetector.histograms(logits)
    np.testing.assert_allclose(hist[0, :, 0], [0.1875, 0.25, 0.25, 0.25, 0.0625])
    expected = np.zeros((4, k))
    expected[0, 1] = expected[1, 2] = expected[2, 3] = 1.0
    expected[3, 0], expected[3, 4] = 0.75, 0.25
    np.testing.assert_allclose(patch[0, :, 0], expected.ravel())


def test_detector_distances_and_z_scores():
    k = 3
    det = co.PatchHistogramDetector(k)
    det.hist_invcov.copy_(torch.diag(torch.tensor([0.0, 4.0, 1.0])))
    det.patch_hist_invcov.copy_(torch.eye(4 * k))
    det.hist_val_mean.fill_(1.0)
    det.hist_val_std.fill_(2.0)
    det.patch_hist_val_std.fill_(0.5)
    logits = torch.zeros(1, k, 4, 4)
    logits[:, 1] = 1.0  # every pixel class 1
    out = det(logits)
    assert out["hist_distance"].item() == pytest.approx(2.0)  # sqrt(4 * 1^2)
    assert out["patch_hist_distance"].item() == pytest.approx(2.0)  # sqrt(4)
    assert out["patch_hist_score"].item() == pytest.approx(0.5 + 4.0)


def test_autoencoder_sizes_and_eval_dropout_is_inactive():
    torch.manual_seed(0)
    ae = co.AutoEncoder(out_dim=8).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a, b = ae(x), ae(x)
    assert a.shape == (1, 8, 64, 64)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_forward_batch_1_and_2_is_finite_and_batch_independent(model, fixture_shapes):
    model.load_state_dict(co.random_state_dict(fixture_shapes, seed=1))
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    out2 = model.intermediates(x)
    score1 = model(x[:1])
    assert out2["score"].shape == (2,) and score1.shape == (1,)
    assert torch.isfinite(out2["score"]).all() and torch.isfinite(score1).all()
    torch.testing.assert_close(score1, out2["score"][:1], rtol=1e-4, atol=1e-4)
    shapes = {
        "layer3": (2, 1024, 16, 16),
        "logits": (2, 5, 256, 256),
        "patch_hist": (2, 20, 1),
        "teacher": (2, 512, 64, 64),
        "autoencoder": (2, 512, 64, 64),
        "lgst_map": (2, 64, 64),
    }
    for name, shape in shapes.items():
        assert tuple(out2[name].shape) == shape, name
    assert out2["class_hist"].sum(dim=1).flatten().tolist() == pytest.approx([1, 1])
