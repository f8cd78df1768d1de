"""Converters: name rules, layouts, the official export, strict merging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from csad_jax.backbones import convert
from csad_jax.backbones.efficientnet_lite import EfficientNetLite
from csad_jax.backbones.wide_resnet import WideResNet50x2
from csad_jax.errors import WeightsError
from tests.backbones.conftest import lite_pypi_path

FIXTURE = Path("/work/shared/fixtures/official_export_state_dict_shapes.json")


def test_kind_rules_transpose_convs_depthwise_and_linear():
    rng = np.random.default_rng(0)
    stem = rng.normal(size=(32, 3, 3, 3)).astype(np.float32)
    dw = rng.normal(size=(96, 1, 5, 5)).astype(np.float32)
    fc = rng.normal(size=(1000, 1280)).astype(np.float32)
    state = {
        "conv_stem.weight": stem,
        "blocks.1.0.conv_dw.weight": dw,
        "bn1.weight": np.full(32, 2.0, np.float32),
        "bn1.running_var": np.full(32, 3.0, np.float32),
        "bn1.num_batches_tracked": np.array(7),
        "classifier.weight": fc,
    }
    out = convert.convert_efficientnet_lite(state, "efficientnet_lite0")
    assert set(out) == {
        "conv_stem.kernel",
        "blocks.1.0.conv_dw.kernel",
        "bn1.scale",
        "bn1.var",
        "classifier.kernel",
    }
    assert out["conv_stem.kernel"].shape == (3, 3, 3, 32)
    assert out["conv_stem.kernel"][2, 1, 0, 5] == stem[5, 0, 2, 1]
    assert out["blocks.1.0.conv_dw.kernel"].shape == (5, 5, 1, 96)
    assert out["blocks.1.0.conv_dw.kernel"][4, 0, 0, 9] == dw[9, 0, 4, 0]
    np.testing.assert_array_equal(out["classifier.kernel"], fc.T)
    assert out["bn1.var"][0] == 3.0 and out["bn1.scale"][0] == 2.0


def test_unknown_source_keys_are_named():
    state = {
        "conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
        "layer1.0.se.fc.weight": np.zeros((4, 4), np.float32),
    }
    with pytest.raises(WeightsError, match=r"layer1\.0\.se\.fc\.weight"):
        convert.convert_wide_resnet(state)


def test_wrong_rank_is_refused():
    state = {"conv1.weight": np.zeros((64, 3, 7), np.float32)}
    with pytest.raises(WeightsError, match="conv1.weight"):
        convert.convert_wide_resnet(state, prefix="")


def _official_export_state():
    shapes = json.loads(FIXTURE.read_text())["state_dict"]
    # broadcast views: full-size shapes without allocating the arrays
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


@pytest.mark.skipif(not FIXTURE.is_file(), reason="shared fixture not available")
def test_official_export_encoder_prefix_maps_onto_layer3_model():
    state = _official_export_state()
    assert convert.detect_wide_resnet_prefix(state) == "encoder."
    params = convert.convert_wide_resnet(state)
    assert convert.wide_resnet_last_stage(params) == "layer3"
    model = WideResNet50x2(last_stage="layer3", rngs=None)
    target = convert.frozen_variables(model)
    assert set(params) == set(target)
    for name, var in target.items():
        assert params[name].shape == var.get_value().shape, name


def test_prefix_detection_refuses_ambiguity():
    stem = np.zeros((64, 3, 7, 7), np.float32)
    with pytest.raises(WeightsError, match="prefix"):
        convert.detect_wide_resnet_prefix(
            {"a.conv1.weight": stem, "conv1.weight": stem}
        )
    with pytest.raises(WeightsError, match="prefix"):
        convert.convert_wide_resnet({"conv1.weight": stem}, prefix="encoder.")


@pytest.fixture(scope="module")
def lite_model():
    return EfficientNetLite("efficientnet_lite0", rngs=None)


def _params_of(model) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(v.get_value()) for k, v in convert.frozen_variables(model).items()
    }


def test_merge_strict_names_missing_and_unexpected_keys(lite_model):
    params = _params_of(lite_model)
    del params["blocks.3.1.conv_dw.kernel"]
    params["blocks.9.0.conv_dw.kernel"] = np.zeros((3, 3, 1, 8), np.float32)
    with pytest.raises(WeightsError) as info:
        convert.merge_strict(lite_model, params, source="demo.pth")
    message = str(info.value)
    assert "demo.pth" in message and "\n" not in message
    assert "missing: blocks.3.1.conv_dw.kernel" in message
    assert "unexpected: blocks.9.0.conv_dw.kernel" in message


def test_merge_strict_checks_every_shape_and_honours_exclude(lite_model):
    params = _params_of(lite_model)
    params["bn1.mean"] = np.zeros(31, np.float32)
    with pytest.raises(WeightsError, match=r"bn1\.mean \(31,\) vs model \(32,\)"):
        convert.merge_strict(lite_model, params)
    params = _params_of(lite_model)
    params["bn1.mean"] = np.full(32, 0.25, np.float32)
    params["extra.kernel"] = np.zeros(1, np.float32)
    convert.merge_strict(lite_model, params, exclude=("extra.",))
    assert float(lite_model.bn1.mean[...][0]) == 0.25


@pytest.mark.torch
def test_pypi_order_cross_check_and_key_errors():
    pytest.importorskip("torch")
    from label_gen.torch_io import load_state_dict

    state = load_state_dict(lite_pypi_path(0))
    keys = list(state)
    swapped = dict(state)
    swapped = {k: swapped[k] for k in keys[:6] + [keys[7], keys[6]] + keys[8:]}
    with pytest.raises(WeightsError, match="order"):
        convert.convert_efficientnet_lite(swapped, "efficientnet_lite0")
    missing = {k: v for k, v in state.items() if k != "_blocks.4._bn1.bias"}
    with pytest.raises(WeightsError, match=r"blocks\.2\.1\.bn2\.bias"):
        convert.convert_efficientnet_lite(missing, "efficientnet_lite0")
    with pytest.raises(WeightsError, match="_blocks.0._se_reduce.weight"):
        convert.convert_efficientnet_lite(
            {**state, "_blocks.0._se_reduce.weight": np.zeros(1)}, "efficientnet_lite0"
        )
    with pytest.raises(WeightsError, match="not an EfficientNet-Lite"):
        convert.convert_efficientnet_lite({"x": np.zeros(1)}, "efficientnet_lite0")
