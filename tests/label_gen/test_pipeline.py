"""generate_pseudo_labels end to end with stand-ins: outputs, round trip through
csad_jax.data.pseudo_labels, resume, invalidation and the empty cases."""

import dataclasses
import json
import os
import stat
import warnings

import numpy as np
import pytest
from PIL import Image

from csad_jax.data.pseudo_labels import load_pseudo_labels
from csad_jax.errors import ConfigError, DataError
from label_gen.pipeline import (
    Backend,
    few_labelled_threshold,
    generate_pseudo_labels,
    with_minimum,
)
from label_gen.settings import settings_for
from tests.label_gen.scenes import (
    EmptyProposer,
    TruthProposer,
    colour_features,
    scene,
    scene_dataset,
)

N = 8


def _dataset(tmp_path, n=N, size=64, same=False):
    return scene_dataset(tmp_path / "images", n, size, same)


def _settings(**cluster):
    # the stand-in colour features of these clean scenes barely vary inside a
    # class, so the bandwidth is given (the automatic one is tested elsewhere)
    cluster.setdefault("bandwidth", 1.0)
    s = settings_for("toy", "offline", rotations=2)
    return dataclasses.replace(
        s, clustering=dataclasses.replace(s.clustering, **cluster)
    )


def _backend(proposer):
    return Backend(lambda: proposer, lambda: colour_features, {"test": 1})


def _matched(pred, truth):
    """Fraction of foreground pixels whose class maps 1:1 onto the truth."""
    pairs = {(p, t) for p, t in zip(pred[truth > 0], truth[truth > 0], strict=True)}
    return len(pairs) == len({p for p, _ in pairs}) == len({t for _, t in pairs})


def test_outputs_and_round_trip(tmp_path):
    images, truths = _dataset(tmp_path)
    out = tmp_path / "out"
    meta = generate_pseudo_labels(
        images, out, _settings(), _backend(TruthProposer(truths)), False
    )
    assert meta["complete"] and meta["num_classes"] == 3 and meta["format"] == 1
    assert set(meta["labelled"]) | set(meta["unlabelled"]) == {i.stem for i in images}
    assert len(meta["class_area_mean"]) == 3 and meta["backend"] == "offline"
    assert meta["settings"]["label_settings"]["category"] == "toy"
    assert "numpy" in meta["versions"] and len(meta["fingerprint"]) == 64
    labels = load_pseudo_labels(out, "toy")
    assert labels.num_classes == 3 and labels.fingerprint == meta["fingerprint"]
    for stem in labels.labelled:
        maps = labels.read_labelled(stem)
        image, truth = scene(int(stem), 64)
        assert _matched(maps.class_map, truth)
        assert maps.instances.max() == 3 and (maps.background == (truth == 0)).all()
    assert (out / "toy" / "preview.png").is_file()
    assert not list(out.rglob("*.tmp"))


def test_resume_reuses_everything_and_half_written_output_is_redone(tmp_path):
    images, truths = _dataset(tmp_path)
    out, proposer = tmp_path / "out", TruthProposer(truths)
    first = generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    assert proposer.calls == N
    again = generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    assert proposer.calls == N and again == first
    (out / "toy" / "labels.json").unlink()  # interrupted before the last write
    (out / "toy" / "maps" / "000.png").write_bytes(b"half")
    redone = generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    assert proposer.calls == N and redone["fingerprint"] == first["fingerprint"]
    assert Image.open(out / "toy" / "maps" / "000.png").size == (64, 64)


def test_other_settings_or_inputs_invalidate(tmp_path):
    images, truths = _dataset(tmp_path)
    out, proposer = tmp_path / "out", TruthProposer(truths)
    first = generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    changed = generate_pseudo_labels(
        images, out, _settings(alpha_ratio=0.25), _backend(proposer), False
    )
    assert changed["fingerprint"] != first["fingerprint"]
    assert proposer.calls == N  # proposals do not depend on the clustering
    # a changed image: only its proposals are recomputed
    image, truth = scene(100, 64)
    Image.fromarray(image).save(images[0].path)
    truths[int(image.astype(np.int64).sum())] = truth
    third = generate_pseudo_labels(
        images, out, _settings(alpha_ratio=0.25), _backend(proposer), False
    )
    assert proposer.calls == N + 1 and third["fingerprint"] != changed["fingerprint"]
    # proposal settings changed: all proposals again, old cache folders gone
    s = _settings(alpha_ratio=0.25)
    s = dataclasses.replace(s, offline=dataclasses.replace(s.offline, merge_distance=5))
    generate_pseudo_labels(images, out, s, _backend(proposer), False)
    assert proposer.calls == 2 * N + 1
    assert len(list((out / "toy" / "cache").iterdir())) == 2


USER_FILES = (
    "maps/my_hand_label.png",
    "maps/.notes.tmp",
    "background/photo.jpg",
    "cache/keep.txt",
    "cache/myruns/results.csv",
    "cache/proposals-0123456789abcdef/notes.txt",
    "notes.txt",
)


def _user_files(root):
    paths = [root / name for name in USER_FILES]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("user file")
    return paths


def test_only_files_label_gen_wrote_are_ever_deleted(tmp_path):
    images, truths = _dataset(tmp_path)
    out, proposer = tmp_path / "out", TruthProposer(truths)
    generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    root = out / "toy"
    user = _user_files(root)
    (root / "cache/proposals-0123456789abcdef/000.npz").write_bytes(b"old cache")
    # other proposal settings and one image fewer: caches and its maps go
    s = _settings()
    s = dataclasses.replace(s, offline=dataclasses.replace(s.offline, merge_distance=5))
    meta = generate_pseudo_labels(images[1:], out, s, _backend(proposer), False)
    assert "000" not in meta["labelled"] + meta["unlabelled"]
    assert not any((root / d / "000.png").exists() for d in ("maps", "instances"))
    assert all(p.read_text() == "user file" for p in user)
    stage = root / "cache/proposals-0123456789abcdef"
    assert [p.name for p in stage.iterdir()] == ["notes.txt"]
    stages = [p for p in (root / "cache").iterdir() if p.name.startswith("pro")]
    assert len(stages) == 2  # this run's and the user-touched one


def test_a_folder_label_gen_did_not_write_is_refused_untouched(tmp_path):
    images, truths = _dataset(tmp_path, n=4)
    out, proposer = tmp_path / "out", TruthProposer(truths)
    user = _user_files(out / "toy")
    (out / "toy" / "preview.png").write_text("user file")
    with pytest.raises(ConfigError, match="did not write") as err:
        generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    assert str(out / "toy") in str(err.value) and "\n" not in str(err.value)
    assert all(p.read_text() == "user file" for p in user)
    assert (out / "toy" / "preview.png").read_text() == "user file"
    assert proposer.calls == 0 and not (out / "toy" / ".csad-labels.json").exists()


def test_a_stand_in_label_set_is_not_label_gens(tmp_path):
    from csad_jax.data.pseudo_labels import LabelledMaps, write_pseudo_labels

    images, truths = _dataset(tmp_path, n=4)
    z = np.zeros((8, 8), np.uint8)
    write_pseudo_labels(
        tmp_path / "out", "toy", {"000": LabelledMaps(z + 1, z, z > 0)}, [], 1,
        backend="hand",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="did not write"):
        generate_pseudo_labels(
            images, tmp_path / "out", _settings(), _backend(TruthProposer(truths)),
            False,
        )  # fmt: skip
    assert (tmp_path / "out" / "toy" / "maps" / "000.png").is_file()


def test_output_without_marker_from_an_older_label_gen_is_reused(tmp_path):
    images, truths = _dataset(tmp_path, n=4)
    out, proposer = tmp_path / "out", TruthProposer(truths)
    generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    (out / "toy" / ".csad-labels.json").unlink()
    meta = generate_pseudo_labels(
        images, out, _settings(alpha_ratio=0.25), _backend(proposer), False
    )
    assert meta["complete"] and (out / "toy" / ".csad-labels.json").is_file()


@pytest.mark.parametrize("layout", ["file", "file_parent", "dataset"])
def test_bad_targets_are_refused(tmp_path, layout):
    images, truths = _dataset(tmp_path, n=2)
    out = tmp_path / "out"
    if layout == "dataset":
        (out / "toy" / "validation").mkdir(parents=True)
        message = "looks like a dataset category"
    else:
        out.write_text("a file")
        out = out / "sub" if layout == "file_parent" else out
        message = "is a file, not a folder"
    with pytest.raises(ConfigError, match=message):
        generate_pseudo_labels(
            images, out, _settings(), _backend(TruthProposer(truths)), False
        )


def test_files_get_the_umask_permissions(tmp_path):
    images, truths = _dataset(tmp_path, n=4)
    old = os.umask(0o027)
    try:
        generate_pseudo_labels(
            images, tmp_path / "out", _settings(), _backend(TruthProposer(truths)),
            False,
        )  # fmt: skip
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) > 4 * 5
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    images, truths = _dataset(tmp_path)
    out, proposer = tmp_path / "out", TruthProposer(truths)
    generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    cache = next((out / "toy" / "cache").glob("proposals-*"))
    (cache / "003.npz").write_bytes(b"garbage")
    (out / "toy" / "labels.json").unlink()
    generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    assert proposer.calls == N + 1


def test_no_proposals_anywhere_is_complete_but_unusable(tmp_path):
    images, _ = _dataset(tmp_path, n=4)
    out = tmp_path / "out"
    meta = generate_pseudo_labels(
        images, out, _settings(), _backend(EmptyProposer()), False
    )
    assert meta["num_classes"] == 0 and meta["labelled"] == []
    assert meta["complete"] and meta["usable"] is False
    assert "no component was found" in meta["unusable_reason"]
    assert len(meta["unlabelled"]) == 4
    assert np.asarray(Image.open(out / "toy" / "maps" / "000.png")).max() == 0
    with pytest.raises(DataError):
        load_pseudo_labels(out, "toy")  # nothing to train on, said in one line


def test_one_training_image_is_unusable(tmp_path):
    images, truths = _dataset(tmp_path, n=1)
    meta = generate_pseudo_labels(
        images, tmp_path / "out", _settings(), _backend(TruthProposer(truths)), False
    )
    assert meta["usable"] is False and meta["labelled"] == []
    assert (
        "no training image was labelled (1 training image" in (meta["unusable_reason"])
    )
    with pytest.raises(DataError, match="no labelled images"):
        load_pseudo_labels(tmp_path / "out", "toy")


def test_identical_images_floor_the_bandwidth_and_warn(tmp_path):
    images, truths = _dataset(tmp_path, n=6, same=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = generate_pseudo_labels(
            images, tmp_path / "out", _settings(bandwidth=None),
            _backend(TruthProposer(truths)), False,
        )  # fmt: skip
    stats = meta["stats"]
    assert stats["bandwidth_floored"] and stats["bandwidth_estimate"] < 1e-3
    assert meta["num_classes"] == 3 and meta["usable"]
    said = " | ".join(str(w.message) for w in caught)
    assert "5 of 6 training images are exact copies" in said
    assert "(near-)identical" in said and said.count("toy: ") == len(caught)
    assert meta["warnings"] == [str(w.message)[len("toy: ") :] for w in caught]


def test_few_labelled_images_warn():
    assert [few_labelled_threshold(n) for n in (1, 3, 16, 60, 200)] == [
        1, 3, 4, 6, 20,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("n", "filter_hist", "warned"), [(8, True, True), (12, False, False)]
)
def test_few_labelled_warning_in_a_run(tmp_path, n, filter_hist, warned):
    images, truths = _dataset(tmp_path, n=n)
    meta = generate_pseudo_labels(
        images, tmp_path / "out", _settings(filter_hist=filter_hist),
        _backend(TruthProposer(truths)), False,
    )  # fmt: skip
    k = len(meta["labelled"])
    assert (k < few_labelled_threshold(n)) == warned
    notes = [w for w in meta["warnings"] if w.startswith("only ")]
    assert len(notes) == int(warned)
    assert all(w.startswith(f"only {k} of {n} training images are") for w in notes)


def test_with_minimum_tops_up_from_the_ranking_skipping_classless_maps():
    ranking = np.array([4, 2, 0, 5, 1, 3])
    has_class = np.array([True, True, True, False, True, True])
    assert with_minimum([2, 4], ranking, has_class, 0) == [2, 4]
    assert with_minimum([2, 4], ranking, has_class, 2) == [2, 4]
    assert with_minimum([2, 4], ranking, has_class, 4) == [0, 2, 4, 5]
    # Image 3 has no class pixel, so it is never labelled, even when more are wanted.
    assert with_minimum([4], ranking, has_class, 9) == [0, 1, 2, 4, 5]


def test_min_labelled_adds_maps_and_says_so(tmp_path):
    images, truths = _dataset(tmp_path, n=8)
    backend = _backend(TruthProposer(truths))
    official = generate_pseudo_labels(
        images, tmp_path / "a", _settings(), backend, False
    )
    k = len(official["labelled"])
    assert 0 < k < 6 and official["stats"]["labelled_by_rule"] == k
    assert not [w for w in official["warnings"] if "official rule labelled" in w]
    meta = generate_pseudo_labels(
        images, tmp_path / "b", _settings(min_labelled=6), backend, False
    )
    assert len(meta["labelled"]) == 6
    assert set(official["labelled"]) < set(meta["labelled"])
    assert meta["stats"]["labelled_by_rule"] == k
    notes = [w for w in meta["warnings"] if "official rule labelled" in w]
    assert notes == [
        f"the official rule labelled only {k} training images; the next closest "
        "to the largest cluster's mean were added up to 6 (min_labelled, "
        "docs/fidelity.md)"
    ]


def test_an_image_without_components_is_unlabelled(tmp_path):
    images, truths = _dataset(tmp_path)
    blank = np.full((64, 64, 3), 200, np.uint8)
    Image.fromarray(blank).save(images[0].path)
    truths[int(blank.astype(np.int64).sum())] = np.zeros((64, 64), np.uint8)
    meta = generate_pseudo_labels(
        images,
        tmp_path / "out",
        _settings(filter_hist=False),
        _backend(TruthProposer(truths)),
        False,
    )
    assert "000" in meta["unlabelled"] and meta["num_classes"] == 3


def test_no_images_and_bad_category_names(tmp_path):
    with pytest.raises(DataError, match="no training images"):
        generate_pseudo_labels(
            [], tmp_path, _settings(), _backend(EmptyProposer()), False
        )
    images, _ = _dataset(tmp_path, n=1)
    bad = dataclasses.replace(_settings(), category="../escape")
    with pytest.raises(Exception, match="invalid category"):
        generate_pseudo_labels(images, tmp_path, bad, _backend(EmptyProposer()), False)


def test_labels_json_is_written_last(tmp_path, monkeypatch):
    from label_gen import output

    images, truths = _dataset(tmp_path, n=4)
    order = []
    real = output.atomic_write_bytes
    monkeypatch.setattr(
        output, "atomic_write_bytes", lambda p, d: (order.append(p.name), real(p, d))
    )
    generate_pseudo_labels(
        images, tmp_path / "out", _settings(), _backend(TruthProposer(truths)), False
    )
    assert order[-1] == "labels.json" and order.count("labels.json") == 1
    meta = json.loads((tmp_path / "out" / "toy" / "labels.json").read_text())
    assert meta["complete"] is True
