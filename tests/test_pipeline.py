"""csad fit: stages, resume, refusals, test-split isolation, fusion wiring."""

from __future__ import annotations

import dataclasses
import json
import shutil
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from csad_tiny import (
    CATEGORY,
    StandInBackbone,
    copy_run,
    load_tiny_model,
    sample_test_images,
    tiny_config,
)

from csad_jax import lgst, score_fusion
from csad_jax.config import (
    CSADConfig,
    fast_config,
    paper_config,
    preset_config,
    read_config,
    write_config,
)
from csad_jax.data.image_io import normalize_imagenet, read_rgb, resize_rgb
from csad_jax.errors import ConfigError, DataError
from csad_jax.model import forward_raw
from csad_jax.models.teacher import Teacher
from csad_jax.pipeline import STAGES, fit, label_command

pytestmark = pytest.mark.usefixtures("fast_xla")


@pytest.fixture(scope="module")
def model(tiny):
    return load_tiny_model(tiny["run"])


# --------------------------------------------------------------------- config


@pytest.mark.parametrize("make", [paper_config, fast_config, tiny_config])
def test_config_round_trips_through_json(make, tmp_path):
    config = make()
    assert CSADConfig.from_dict(config.to_dict()) == config
    path = write_config(tmp_path / "config.json", config)
    assert read_config(path) == config
    assert json.loads(path.read_text())["segmentor"]["image_size"] == config.image_size


def test_presets_share_backbone_and_input_size():
    for name in ("paper", "fast"):
        config = preset_config(name)
        assert config.segmentor.backbone == config.lgst.backbone
        assert config.segmentor.backbone == config.backbone.name
        assert config.segmentor.image_size == config.lgst.image_size
    assert paper_config().backbone.name == "wide_resnet50_2"
    assert fast_config().backbone.name == "efficientnet_lite0"


def test_config_refuses_mismatched_parts_and_unknown_keys(tmp_path):
    config = fast_config()
    bad = dataclasses.replace(
        config, lgst=dataclasses.replace(config.lgst, image_size=192)
    )
    with pytest.raises(ConfigError, match="one shared backbone pass"):
        bad.validate()
    values = config.to_dict()
    values["segmentor"]["no_such_key"] = 1
    with pytest.raises(ConfigError, match="no_such_key"):
        CSADConfig.from_dict(values)
    for part, key, value, message in [
        ("fusion", "low", "abc", "config.fusion.low must be float, got 'abc'"),
        ("lgst", "iterations", 2.5, "config.lgst.iterations must be int"),
        ("segmentor", "learning_rate", True, "learning_rate must be float"),
        ("backbone", "random_init", 1, "random_init must be bool"),
    ]:
        values = config.to_dict()
        values[part][key] = value
        with pytest.raises(ConfigError, match=message):
            CSADConfig.from_dict(values)
    values = config.to_dict()
    values["fusion"]["low"] = 0  # an integer is a valid float
    assert CSADConfig.from_dict(values).fusion.low == 0.0
    with pytest.raises(ConfigError, match=r"config: missing keys \['backbone'"):
        CSADConfig.from_dict({"preset": "fast"})
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config"):
        read_config(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("huge")


# ------------------------------------------------------------------ the run


def test_fit_records_every_stage_and_the_config(tiny):
    run = tiny["run"]
    stages = json.loads((run / "stages.json").read_text())
    assert stages["category"] == CATEGORY
    assert all(stages["stages"][s]["done"] for s in STAGES)
    assert read_config(run / "config.json") == tiny_config()
    assert (run / "model" / "model.json").is_file()


def test_fit_listed_only_train_and_validation(tiny):
    # The fixture fitted on a copy whose test/ is a dangling link: any listing
    # of the test split would have failed. The view holds two splits only.
    view = tiny["run"] / "data_view" / CATEGORY
    assert sorted(p.name for p in view.iterdir()) == ["train", "validation"]
    assert not (tiny["fit_data"] / CATEGORY / "test").exists()


def test_fit_resumes_a_finished_run_without_training(tiny, tmp_path):
    run = copy_run(tiny["run"], tmp_path / "run")
    fitted, summary = fit(
        tiny["fit_data"],
        CATEGORY,
        run,
        tiny_config(),
        labels_dir=tiny["labels"],
        progress=False,
        backbone=StandInBackbone(),
    )
    assert all(summary[s]["resumed"] for s in STAGES)
    original = load_tiny_model(tiny["run"])
    for a, b in zip(
        jax.tree.leaves(original.calib), jax.tree.leaves(fitted.calib), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_refuses_another_config_in_the_same_run(tiny, tmp_path):
    run = copy_run(tiny["run"], tmp_path / "run")
    other = dataclasses.replace(tiny_config(), batch_size=2)
    with pytest.raises(ConfigError, match="different configuration"):
        fit(tiny["fit_data"], CATEGORY, run, other, labels_dir=tiny["labels"])


def test_fit_refuses_an_empty_validation_split_before_training(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny["fit_data"], data, symlinks=True)
    for image in (data / CATEGORY / "validation" / "good").iterdir():
        image.unlink()
    run = tmp_path / "run"
    with pytest.raises(DataError, match="validation/good"):
        fit(data, CATEGORY, run, tiny_config(), labels_dir=tiny["labels"])
    assert not (run / "segmentor").exists()
    assert not (run / "stages.json").exists()


def test_fit_names_the_categories_when_one_is_absent(tiny, tmp_path):
    with pytest.raises(DataError, match=f"categories found: {CATEGORY}"):
        fit(tiny["fit_data"], "pushpins", tmp_path / "run", tiny_config())


# ------------------------------------------------------------ fusion wiring


def test_teacher_head_on_shared_features_matches_the_teacher():
    backbone = StandInBackbone()
    teacher = Teacher(backbone, backbone.channels, out_dim=8, seed=3)
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    feats = backbone(images, stages=("layer2", "layer3"))
    np.testing.assert_allclose(
        teacher.head(feats, (16, 16)),
        teacher(images)["proj"],
        rtol=1e-6,
        atol=1e-6,
    )


def test_fused_outputs_equal_the_separate_branches(tiny, model):
    images = sample_test_images(tiny["data"])
    out = model.predict(images)
    nets, calib = model.nets, model.calib
    branch = lgst.LGSTModel(
        nets.lgst,
        calib.teacher_stats,
        calib.quantiles,
        model.config.lgst.score_variant,
    )
    separate = branch.score(images)
    np.testing.assert_allclose(out["lgst"], separate["pred_score"], rtol=1e-5)
    np.testing.assert_allclose(
        out["anomaly_map"], separate["anomaly_map"], rtol=1e-5, atol=1e-6
    )
    feats = nets.backbone(jax.numpy.asarray(images), stages=("layer1", "layer3"))
    logits = nets.decoder(feats["layer1"], feats["layer3"], images.shape[1:3])
    np.testing.assert_array_equal(out["segmentation"], np.argmax(logits, axis=-1))
    np.testing.assert_allclose(
        out["patch_histogram"], calib.scorer.score(out["segmentation"]), rtol=1e-5
    )
    fused = score_fusion.normalize(out["patch_histogram"], calib.fusion.patch_histogram)
    fused = fused + score_fusion.normalize(out["lgst"], calib.fusion.lgst)
    np.testing.assert_allclose(out["fused"], fused, rtol=1e-5, atol=1e-6)


def test_branch_statistics_are_fitted_on_validation_scores(tiny, model):
    config = model.config
    val = sorted((tiny["data"] / CATEGORY / "validation" / "good").glob("*.png"))
    images = np.stack([resize_rgb(read_rgb(p), config.image_size) for p in val])
    out = model.predict(normalize_imagenet(images.astype(np.float32) / 255.0))
    for branch in ("patch_histogram", "lgst"):
        want = score_fusion.fit_trimmed_stats(out[branch])
        got = getattr(model.calib.fusion, branch)
        np.testing.assert_allclose(float(got.mean), float(want.mean), atol=1e-5)
        np.testing.assert_allclose(float(got.std), float(want.std), rtol=1e-4)


def test_batch_padding_does_not_change_scores(tiny, model):
    images = sample_test_images(tiny["data"], n=5)
    together = model.predict(images)["fused"]
    one_by_one = [model.predict(images[i : i + 1])["fused"][0] for i in range(5)]
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)


def test_forward_raw_reads_one_backbone_pass(model):
    calls = []
    nets = model.nets
    original = nets.backbone

    class Counting:
        channels = StandInBackbone.channels

        def __call__(self, images, stages):
            calls.append(tuple(stages))
            return original(images, stages=stages)

    images = jax.numpy.zeros((1, 128, 128, 3))
    try:
        nets.backbone = Counting()
        nets.lgst.teacher.backbone = Counting()
        # Tracing is enough to count the calls (nothing is computed).
        jax.eval_shape(
            lambda x: forward_raw(nets, model.calib, x, model.config), images
        )
    finally:
        nets.backbone = original
        nets.lgst.teacher.backbone = original
    assert calls == [("layer1", "layer2", "layer3")]


@pytest.mark.parametrize("make", [paper_config, fast_config])
def test_label_command_asks_for_what_the_segmentor_needs(make, tmp_path):
    config = make()
    ctx = SimpleNamespace(
        config=config,
        view_root=tmp_path,
        data=SimpleNamespace(name=CATEGORY),
        progress=False,
    )
    cmd = label_command(ctx, tmp_path / "labels")
    seg = config.segmentor
    need = seg.batch_size + (seg.holdout_fraction > 0)
    assert need == seg.min_labelled == 5
    assert cmd[cmd.index("--min-labelled") + 1] == str(need)
