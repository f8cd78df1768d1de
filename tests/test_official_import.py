"""`csad import-official`: the official fused export -> our networks and calibration.

Mapping tests use NumPy state dicts with the official names and shapes; file
tests save random tensors with torch.save; the slow test checks that the
imported run scores exactly like the PyTorch restatement of the official model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from csad_jax import cli
from csad_jax import official_import as oi
from csad_jax.errors import CheckpointError, WeightsError

FIXTURE = Path("/work/shared/fixtures/official_export_state_dict_shapes.json")
DET = "patch_hist_detector."


def random_state(num_classes: int = 5, dim: int = 512, seed: int = 0) -> dict:
    """Random float32 arrays with the official names/shapes (stds positive)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in oi.official_shapes(num_classes, dim).items():
        if name.endswith("num_batches_tracked"):
            out[name] = np.asarray(rng.integers(0, 100), np.int64)
        elif name.endswith("invcov"):  # symmetric positive semi-definite
            a = rng.normal(size=shape) / np.sqrt(shape[0])
            out[name] = (a @ a.T).astype(np.float32)
        else:
            out[name] = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def state() -> dict:
    return random_state(num_classes=4)


@pytest.fixture(scope="module")
def imported(state) -> oi.OfficialWeights:
    return oi.map_official(state, "file.pth")


def test_expected_layout_equals_the_official_export_fixture():
    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} not available")
    record = json.loads(FIXTURE.read_text())
    expected = oi.official_shapes(record["num_classes"])
    fixture = {k: tuple(v) for k, v in record["state_dict"].items()}
    assert list(expected) == list(fixture)
    assert expected == fixture


@pytest.mark.parametrize("k", [2, 5, 9])
def test_sizes_are_inferred_from_the_file(k):
    shapes = oi.official_shapes(k, dim=64)
    state = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    assert oi.infer_sizes(state, "f") == (k, 64)
    assert shapes[DET + "patch_hist_invcov"] == (4 * k, 4 * k)
    assert shapes["segmentor.fc2.conv3.weight"] == (k, 256, 1, 1)
    assert shapes["autoencoder.deconv8.weight"] == (64, 64, 3, 3)


def test_every_entry_is_mapped_once(state, imported):
    assert imported.num_classes == 4 and imported.dim == 512
    n_out = sum(len(m) for m in imported.modules.values())
    n_out += len(
        [x for x in _leaves(imported.calibration) if isinstance(x, np.ndarray)]
    )
    dropped = [n for n in state if n.endswith("num_batches_tracked")]
    assert n_out == len(state) - len(dropped)
    encoder = [n for n in oi.encoder_shapes() if not n.endswith("batches_tracked")]
    assert len(imported.modules["backbone"]) == len(encoder)


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def test_network_weights_are_renamed_and_transposed(state, imported):
    dec = imported.modules["decoder"]
    w = state["segmentor.aspp.stages.c2.conv.weight"]
    np.testing.assert_array_equal(
        dec["aspp.atrous.1.conv.kernel"], w.transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        dec["aspp.pool.bn.var"],
        state["segmentor.aspp.stages.imagepool.conv.bn.running_var"],
    )
    np.testing.assert_array_equal(
        dec["fc2_conv1.bn.scale"], state["segmentor.fc2.conv1.bn.weight"]
    )
    assert dec["classifier.kernel"].shape == (1, 1, 256, 4)
    teacher = imported.modules["teacher"]
    proj = state["teacher.proj.weight"]
    np.testing.assert_array_equal(teacher["proj_kernel"], proj[:, :, 0, 0].T)
    np.testing.assert_array_equal(teacher["proj_bias"], state["teacher.proj.bias"])
    local = imported.modules["local_student"]
    np.testing.assert_array_equal(
        local["global_head.bias"], state["local_st.conv_ae.bias"]
    )
    assert (
        local["conv2.kernel"][3, 1, 7, 9] == state["local_st.conv2.weight"][9, 7, 3, 1]
    )
    glob = imported.modules["global_student"]
    assert glob["bottleneck.kernel"].shape == (8, 8, 64, 64)
    np.testing.assert_array_equal(
        glob["decoder.5.bias"], state["autoencoder.deconv6.bias"]
    )
    np.testing.assert_array_equal(
        glob["encoder.0.bias"], state["autoencoder.enconv1.bias"]
    )
    bb = imported.modules["backbone"]
    assert bb["layer2.0.downsample.conv.kernel"].shape == (1, 1, 256, 512)
    np.testing.assert_array_equal(
        bb["layer3.5.bn3.mean"], state["encoder.layer3.5.bn3.running_mean"]
    )


def test_calibration_numbers_keep_their_meaning(state, imported):
    c = imported.calibration
    assert c["quantiles"]["local_start"] == state["q_st_start"]
    assert c["quantiles"]["global_end"] == state["q_ae_end"]
    # The branch statistic and the detector Gaussian share the name
    # "patch_hist_mean" in the official file (top level vs detector).
    assert c["branch_stats"]["patch_histogram"]["mean"] == state["patch_hist_mean"]
    np.testing.assert_array_equal(
        c["gaussians"]["grid2"]["mean"], state[DET + "patch_hist_mean"][:, 0]
    )
    np.testing.assert_array_equal(
        c["gaussians"]["grid1"]["precision"], state[DET + "hist_invcov"]
    )
    assert c["detector_stats"]["grid1"]["std"] == state[DET + "hist_val_std"]
    assert c["detector_stats"]["grid2"]["mean"] == state[DET + "patch_hist_val_mean"]
    assert c["branch_stats"]["lgst"]["std"] == state["lgst_std"]
    assert c["teacher_stats"]["mean"].shape == (1, 1, 1, 512)
    assert c["teacher_stats"]["std"][0, 0, 0, 7] == state["teacher_std"][0, 7, 0, 0]


def test_calibration_pytree_scores_like_the_export(imported):
    calib = oi.build_calibration(imported)
    scorer = calib.scorer
    assert scorer.background == "fraction" and scorer.grids == (1, 2)
    assert scorer.num_classes == 4
    maps = np.zeros((1, 256, 256), np.int32)
    maps[0, 128:, :128] = 2  # bottom-left quadrant
    raw = scorer.raw_scores(maps)
    c = imported.calibration["gaussians"]["grid2"]
    x = np.zeros((4, 4))
    x[0, 0] = x[2, 0] = x[3, 0] = 1.0  # background fraction slots
    x[1, 2] = 1.0
    delta = x.ravel() - c["mean"]
    expected = np.sqrt(delta @ c["precision"].astype(np.float64) @ delta)
    assert float(raw[2][0]) == pytest.approx(expected, rel=1e-5)
    assert float(calib.fusion.lgst.std) == pytest.approx(
        float(imported.calibration["branch_stats"]["lgst"]["std"])
    )


def test_missing_extra_and_misshapen_entries_are_named(state):
    bad = dict(state)
    bad.pop("local_st.conv4.bias")
    bad["segmentor.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match=r"local_st\.conv4\.bias.*extra\.weight"):
        oi.map_official(bad, "file.pth")
    bad = dict(state)
    bad["autoencoder.deconv3.weight"] = np.zeros((64, 64, 3, 3), np.float32)
    with pytest.raises(WeightsError, match=r"file\.pth: wrong shapes: autoencoder"):
        oi.map_official(bad, "file.pth")
    bad = dict(state)
    bad[DET + "patch_hist_invcov"] = np.zeros((20, 20), np.float32)  # K = 5 size
    with pytest.raises(WeightsError, match="patch_hist_invcov"):
        oi.map_official(bad, "file.pth")
    with pytest.raises(WeightsError, match="not an official CSAD fused export"):
        oi.map_official({"conv1.weight": np.zeros((64, 3, 7, 7))}, "file.pth")


def test_non_finite_values_and_non_positive_stds_are_refused(state):
    bad = dict(state)
    bad["q_ae_end"] = np.array(np.nan, np.float32)
    with pytest.raises(WeightsError, match="non-finite values in q_ae_end"):
        oi.map_official(bad, "file.pth")
    bad = dict(state)
    bad[DET + "hist_val_std"] = np.array(0.0, np.float32)
    with pytest.raises(WeightsError, match="hist_val_std"):
        oi.map_official(bad, "file.pth")


def test_entries_are_consumed_exactly_once():
    entries = oi._Entries({"a": np.zeros(1), "b": np.zeros(1)}, "f")
    entries.take("a")
    with pytest.raises(WeightsError, match="takes a twice"):
        entries.take("a")
    with pytest.raises(WeightsError, match="not mapped: b"):
        entries.finish()


def test_official_config_scores_like_the_export():
    config = oi.official_config("/x/backbone.npz", dim=512)
    assert config.histogram.background == "fraction"
    assert config.lgst.score_variant == "fused"
    assert config.backbone.name == "wide_resnet50_2"
    assert config.backbone.weights == "/x/backbone.npz"
    assert config.fusion.branch_std_floor == 1e-3


def test_networks_receive_every_weight(imported):
    nets = oi.build_networks(imported, oi.official_config(None))
    np.testing.assert_array_equal(
        np.asarray(nets.lgst.teacher.proj_bias[...]),
        imported.modules["teacher"]["proj_bias"],
    )
    np.testing.assert_array_equal(
        np.asarray(nets.decoder.aspp.atrous[2].bn.mean[...]),
        imported.modules["decoder"]["aspp.atrous.2.bn.mean"],
    )
    assert nets.lgst.teacher.backbone is nets.backbone  # one shared encoder
    np.testing.assert_array_equal(
        np.asarray(nets.backbone.layer1[0].conv1.kernel[...]),
        imported.modules["backbone"]["layer1.0.conv1.kernel"],
    )


# ---------------------------------------------------------------------------
# Files (torch.save) and the command line
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_file(tmp_path_factory, state) -> Path:
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("official") / "export.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
    return path


def test_saved_state_dict_reads_and_maps(saved_file, state):
    loaded = oi.read_checkpoint(saved_file)
    assert list(loaded) == list(state)
    imported = oi.map_official(loaded, str(saved_file))
    assert imported.num_classes == 4
    np.testing.assert_array_equal(
        imported.modules["local_student"]["conv1.bias"], state["local_st.conv1.bias"]
    )


def test_truncated_and_wrong_files_give_one_line_errors(saved_file, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(saved_file.read_bytes()[: 1 << 20])
    with pytest.raises(WeightsError, match="truncated.pth: not a readable") as err:
        oi.read_checkpoint(truncated)
    assert "\n" not in str(err.value)
    for name, content in [("notes.pth", b"hello world\n"), ("empty.pth", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError, match=f"{name}: .*torch.save, or trunc"):
            oi.read_checkpoint(tmp_path / name)
    with pytest.raises(WeightsError, match="no such file"):
        oi.read_checkpoint(tmp_path / "absent.pth")
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    torch.save({"w": _RunsCode(marker)}, tmp_path / "code.pth")
    with pytest.raises(WeightsError, match="pickled Python objects") as err:
        oi.read_checkpoint(tmp_path / "code.pth")
    assert "weights_only" not in str(err.value) and not marker.exists()


class _RunsCode:
    """Unpickling this would create `marker`: a checkpoint that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_cli_reports_a_bad_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 100)
    argv = ["import-official", "--checkpoint", str(bad)]
    argv += ["--out", str(tmp_path / "run"), "--category", "c"]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "bad.pth" in lines[0], lines
    assert lines[0].startswith("csad import-official: error:")
    assert not (tmp_path / "run" / "model").exists()


def test_existing_model_directory_is_kept_without_force(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"")
    (tmp_path / "model").mkdir()
    with pytest.raises(CheckpointError, match="--force"):
        oi.import_official(tmp_path / "x.pth", tmp_path, "c")


def test_force_replaces_only_a_csad_model_folder(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        oi.import_official(tmp_path / "absent.pth", tmp_path, "c", force=True)
    (tmp_path / "x.pth").write_bytes(b"")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "thesis.bin").write_bytes(b"the user's work")
    for force in (False, True):  # never suggests --force for the user's folder
        with pytest.raises(CheckpointError, match="did not write"):
            oi.import_official(tmp_path / "x.pth", tmp_path, "c", force=force)
    assert (tmp_path / "model" / "thesis.bin").read_bytes() == b"the user's work"


@pytest.mark.slow
def test_imported_run_scores_like_the_official_model(tmp_path):
    """import -> save -> load_model -> predict equals the PyTorch restatement."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from csad_jax import model as model_lib
    from experiments.torch_reference import csad_official as co

    torch.set_num_threads(2)
    shapes = {k: list(v) for k, v in oi.official_shapes(5).items()}
    state = co.random_state_dict(shapes, seed=1)
    path = tmp_path / "export.pth"
    torch.save(state, path)
    oi.import_official(path, tmp_path / "run", "screw_kit")
    model = model_lib.load_model(tmp_path / "run")
    assert model.meta["category"] == "screw_kit" and model.num_classes == 4
    reference = co.CSADOfficial(5)
    reference.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    ref = {k: v.numpy() for k, v in reference.intermediates(x).items()}
    ours = model.predict(x.permute(0, 2, 3, 1).numpy())
    assert (ours["segmentation"] != ref["logits"].argmax(1)).mean() < 1e-4
    np.testing.assert_allclose(
        ours["distances"],
        np.stack([ref["hist_distance"], ref["patch_hist_distance"]], 1),
        rtol=1e-3,
    )
    np.testing.assert_allclose(
        ours["patch_histogram"], ref["patch_hist_score"], rtol=1e-3
    )
    np.testing.assert_allclose(ours["lgst"], ref["lgst_score"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(ours["fused"], ref["score"], rtol=1e-3, atol=1e-5)
