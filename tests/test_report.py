"""metrics.json shape and validation, scores.csv, TIFF maps, table and HTML report."""

import base64
import copy
import csv
import json
import os
import re

import numpy as np
import pytest
import tifffile

from csad_jax import metrics as M
from csad_jax import report as R

KINDS = ["good"] * 6 + ["logical_anomalies"] * 4 + ["structural_anomalies"] * 3
STEMS = [f"{i:03d}" for i in range(len(KINDS))]


def _scores(seed=0, kinds=KINDS):
    rng = np.random.default_rng(seed)
    offset = np.array([0.0 if k == "good" else 1.5 for k in kinds])
    return {
        name: rng.normal(size=len(kinds)) + offset - 4.0 for name in R.SCORE_COLUMNS
    }


def _spro():
    return {
        "logical": dict(zip(M.SPRO_LIMITS, [0.1, 0.2, 0.3, 0.5, 0.8], strict=True)),
        "structural": dict.fromkeys(M.SPRO_LIMITS, 0.4),
    }


def _metrics(**overrides):
    args = dict(
        category="breakfast_box",
        preset="smoke",
        backbone="efficientnet_lite0",
        scores=_scores(),
        kinds=KINDS,
        spro=_spro(),
        timing={"fit": 1.5, "eval": 0.25},
    )
    args.update(overrides)
    return R.build_metrics(**args)


def test_build_metrics_shape_and_values():
    metrics = _metrics()
    scores = _scores()
    assert list(metrics) == list(R.TOP_KEYS)
    fused = M.image_auroc(scores["fused"], KINDS)
    assert metrics["auroc"] == fused
    lgst = M.image_auroc(scores["lgst"], KINDS)
    assert metrics["branches"]["lgst"] == {k: lgst[k] for k in M.ANOMALY_KINDS}
    assert set(metrics["spro"]["logical"]) == {"0.01", "0.05", "0.1", "0.3", "1.0"}
    assert metrics["spro"]["logical"]["0.05"] == 0.2
    assert metrics["counts"] == {"good": 6, "logical": 4, "structural": 3}


def test_absent_kind_is_null_in_json(tmp_path):
    kinds = KINDS[:10]  # no structural images
    scores = _scores(1, kinds)
    metrics = _metrics(
        scores=scores,
        kinds=kinds,
        spro={"logical": _spro()["logical"], "structural": None},
    )
    path = R.write_metrics_json(tmp_path / "metrics.json", metrics)
    text = path.read_text()
    assert "NaN" not in text
    loaded = R.read_metrics_json(path)
    assert loaded == metrics
    assert loaded["auroc"]["structural"] is None
    assert loaded["auroc"]["mean"] == loaded["auroc"]["logical"]
    assert loaded["auroc"]["mean_over"] == ["logical"]
    assert loaded["spro"]["structural"] is None
    assert loaded["branches"]["patch_histogram"]["structural"] is None
    assert "mean (logical only)" in R.format_metrics_table(loaded)


def test_missing_branch_is_reported_as_null():
    scores = _scores()
    del scores["patch_histogram"]
    metrics = _metrics(scores=scores, spro=None)
    assert metrics["branches"]["patch_histogram"] == {
        "logical": None,
        "structural": None,
    }
    assert metrics["spro"] == {"logical": None, "structural": None}


def _broken(path, value):
    metrics = copy.deepcopy(_metrics())
    *parents, last = path
    target = metrics
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return metrics


@pytest.mark.parametrize(
    "path,value,match",
    [
        (("preset",), KeyError, "keys"),
        (("extra",), 1, "keys"),
        (("auroc", "logical"), 1.5, "not in"),
        (("auroc", "logical"), float("nan"), "not in"),
        (("auroc", "mean"), 0.123, "not the mean"),
        (("auroc", "mean_over"), ["logical"], "mean_over"),
        (("branches", "lgst", "logical"), "0.9", "number"),
        (("spro", "logical", "0.05"), KeyError, "spro.logical"),
        (("spro", "structural", "0.05"), -0.1, "not in"),
        (("counts", "logical"), 0, "null exactly"),
        (("timing", "fit"), -1.0, "seconds"),
        (("category",), "", "non-empty"),
    ],
)
def test_validator_rejects_malformed_records(path, value, match):
    with pytest.raises(R.ReportError, match=match):
        R.validate_metrics(_broken(path, value))


def test_read_metrics_json_names_the_broken_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{not json")
    with pytest.raises(R.ReportError, match="metrics.json"):
        R.read_metrics_json(path)


def test_scores_csv_round_trips(tmp_path):
    scores = _scores(2)
    images = [f"test/{k}/{s}.png" for k, s in zip(KINDS, STEMS, strict=True)]
    path = R.write_scores_csv(tmp_path / "scores.csv", images, KINDS, scores)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "kind", "patch_histogram", "lgst", "fused"]
    assert [r["image"] for r in rows] == images
    assert rows[7]["kind"] == "logical_anomalies"
    for name in R.SCORE_COLUMNS:
        np.testing.assert_array_equal([float(r[name]) for r in rows], scores[name])


def test_anomaly_maps_written_as_float32_tiff_in_official_layout(tmp_path):
    amap = np.random.default_rng(3).normal(size=(13, 17))
    path = R.write_anomaly_map(tmp_path, "pushpins", "structural", "007", amap)
    assert path == (
        tmp_path / "anomaly_maps/pushpins/test/structural_anomalies" / "007.tiff"
    )
    back = tifffile.imread(path)
    assert back.dtype == np.float32 and back.shape == (13, 17)
    np.testing.assert_array_equal(back, amap.astype(np.float32))
    good = R.write_anomaly_map(tmp_path, "pushpins", "good", "001", amap[:5])
    assert good.parent.name == "good" and tifffile.imread(good).shape == (5, 17)
    with pytest.raises(R.ReportError):
        R.write_anomaly_map(tmp_path, "pushpins", "good", "002", np.zeros((2, 2, 3)))


def test_terminal_table_is_aligned():
    metrics = _metrics()
    lines = R.format_metrics_table(metrics).splitlines()
    table = lines[1:]
    assert [line.split()[0] for line in table] == [
        "kind",
        "logical",
        "structural",
        "mean",
    ]
    assert len({len(line) for line in table}) == 1  # right-aligned columns
    fused = f"{100 * metrics['auroc']['logical']:.2f}"
    assert table[1].split()[3] == fused
    assert table[1].split()[4] == "20.00"  # sPRO@0.05 of logical
    ends = {tuple(m.end() for m in re.finditer(r"\S+", line))[1:] for line in table}
    assert len(ends) == 1  # the four value columns end at the same positions


def _visual(i):
    rng = np.random.default_rng(i)
    image = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    seg = rng.integers(0, 4, size=(12, 16))
    return R.ItemVisual(image, seg, rng.random((6, 8)))


def test_failure_cases_pick_extreme_scores():
    fused = np.array([0.1, 5.0, 2.0, -1.0, 3.0, 0.0])
    kinds = ["good", "good", "good", "logical", "structural", "logical"]
    good, anomalous = R.failure_cases(fused, kinds, 2)
    assert good == [1, 2] and anomalous == [3, 5]


def test_html_report_is_self_contained_with_figures_and_table(tmp_path):
    metrics = _metrics()
    scores = _scores()
    calls = []

    def visuals(i):
        calls.append(i)
        return _visual(i)

    path = R.write_report_html(
        tmp_path / "report.html",
        metrics=metrics,
        scores=scores,
        kinds=KINDS,
        stems=STEMS,
        visuals=visuals,
        num_failures=2,
    )
    text = path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 2 + 4  # ROC + histograms + 2 good + 2 anomalous
    assert all(base64.b64decode(d)[:8] == b"\x89PNG\r\n\x1a\n" for d in images)
    assert sorted(calls) == sorted(
        R.failure_cases(scores["fused"], KINDS, 2)[0]
        + R.failure_cases(scores["fused"], KINDS, 2)[1]
    )
    assert '<table class="metrics">' in text and "sPRO@0.05" in text
    assert f"{100 * metrics['auroc']['mean']:.2f}" in text
    assert "<tr><th>eval</th><td>0.2</td></tr>" in text  # seconds, 1 decimal
    assert "<tr><th>structural</th><td>3</td></tr>" in text
    assert "&quot;" not in text
    assert "http" not in text  # nothing loaded from elsewhere
    assert json.loads(R.write_metrics_json(tmp_path / "m.json", metrics).read_text())


def test_file_names_that_are_not_utf8_are_escaped(tmp_path):
    stems = list(STEMS)
    stems[0] = os.fsdecode(b"bad\xff\xfename")
    path = R.write_scores_csv(tmp_path / "s.csv", stems, KINDS, _scores())
    assert (
        path.read_text(encoding="utf-8")
        .splitlines()[1]
        .startswith("bad\\udcff\\udcfename,good,")
    )
    page = R.write_report_html(
        tmp_path / "r.html",
        metrics=_metrics(),
        scores=_scores(),
        kinds=KINDS,
        stems=stems,
    )
    page.read_text(encoding="utf-8")


def test_html_report_without_visuals_lists_failures(tmp_path):
    metrics = _metrics()
    path = R.write_report_html(
        tmp_path / "r.html", metrics=metrics, scores=_scores(), kinds=KINDS, stems=STEMS
    )
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 2
    assert "Good images with the highest scores" in text


def _loco_category(root):
    """A tiny LOCO-layout category: 2 good, 1 logical, 1 structural test image."""
    from PIL import Image

    cat = root / "toy"
    for split in ("train/good", "validation/good"):
        (cat / split).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(cat / split / "000.png")
    masks = {
        "logical_anomalies": (slice(0, 4), slice(0, 5), 1),
        "structural_anomalies": (slice(5, 8), slice(6, 10), 2),
    }
    for kind in ("good", *masks):
        (cat / "test" / kind).mkdir(parents=True)
        for stem in ("000", "001") if kind == "good" else ("000",):
            Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(
                cat / "test" / kind / f"{stem}.png"
            )
    for kind, (rows, cols, value) in masks.items():
        mask = np.zeros((8, 10), np.uint8)
        mask[rows, cols] = value
        (cat / "ground_truth" / kind / "000").mkdir(parents=True)
        Image.fromarray(mask).save(cat / "ground_truth" / kind / "000" / "000.png")
    config = [
        {
            "defect_name": "missing",
            "pixel_value": 1,
            "saturation_threshold": 1.0,
            "relative_saturation": True,
        },
        {
            "defect_name": "scratch",
            "pixel_value": 2,
            "saturation_threshold": 6,
            "relative_saturation": False,
        },
    ]
    (cat / "defects_config.json").write_text(json.dumps(config))
    return root


def test_end_to_end_from_loco_folder_to_outputs(tmp_path):
    from csad_jax.data.loco import load_category

    data = load_category(_loco_category(tmp_path / "loco"), "toy")
    samples = data.samples("test")
    regions = [M.read_defect_regions(s, data.defects_config) for s in samples]
    rng = np.random.default_rng(0)
    low_res = [rng.random((4, 5)) for _ in samples]
    maps = [M.resize_anomaly_map(m, (8, 10)) for m in low_res]
    spro = M.auc_spro_by_kind(maps, regions, [s.kind for s in samples])
    for sample, amap in zip(samples, maps, strict=True):
        R.write_anomaly_map(tmp_path / "run", "toy", sample.kind, sample.stem, amap)
    read_back = [
        tifffile.imread(R.anomaly_map_path(tmp_path / "run", "toy", s.kind, s.stem))
        for s in samples
    ]
    assert M.auc_spro_by_kind(read_back, regions, [s.kind for s in samples]) == spro
    assert regions[3][0].saturation_area == 6  # absolute, min(6, 12)
    fused = np.array([float(m.max()) for m in maps])
    metrics = R.build_metrics(
        category="toy",
        preset="smoke",
        backbone="bb",
        scores={"fused": fused},
        kinds=[s.kind for s in samples],
        spro=spro,
    )
    R.read_metrics_json(R.write_metrics_json(tmp_path / "run/metrics.json", metrics))
    assert metrics["spro"]["logical"]["0.05"] == spro["logical"][0.05]
