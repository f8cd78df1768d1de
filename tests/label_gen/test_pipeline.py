"""generate_pseudo_labels end to end with stand-ins: outputs, round trip through
csad_jax.data.pseudo_labels, resume, invalidation and the empty cases."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from csad_jax.data.pseudo_labels import load_pseudo_labels
from csad_jax.errors import DataError
from label_gen.output import InputImage
from label_gen.pipeline import Backend, generate_pseudo_labels
from label_gen.settings import settings_for
from tests.label_gen.scenes import EmptyProposer, TruthProposer, colour_features, scene

N = 8


def _dataset(tmp_path, n=N, size=64):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    images, truths = [], {}
    for i in range(n):
        image, truth = scene(i, size)
        path = folder / f"{i:03d}.png"
        Image.fromarray(image).save(path)
        images.append(InputImage(f"{i:03d}", path))
        truths[int(image.astype(np.int64).sum())] = truth
    return images, truths


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
    stale = out / "toy" / "maps" / "999.png"
    stale.write_bytes(b"old")
    keep = [out / "notes.txt", out / "toy" / "notes.txt"]
    for path in keep:
        path.write_text("user file")
    changed = generate_pseudo_labels(
        images, out, _settings(alpha_ratio=0.25), _backend(proposer), False
    )
    assert changed["fingerprint"] != first["fingerprint"]
    assert proposer.calls == N  # proposals do not depend on the clustering
    assert not stale.exists() and all(p.read_text() == "user file" for p in keep)
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


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    images, truths = _dataset(tmp_path)
    out, proposer = tmp_path / "out", TruthProposer(truths)
    generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    cache = next((out / "toy" / "cache").glob("proposals-*"))
    (cache / "003.npz").write_bytes(b"garbage")
    (out / "toy" / "labels.json").unlink()
    generate_pseudo_labels(images, out, _settings(), _backend(proposer), False)
    assert proposer.calls == N + 1


def test_no_proposals_anywhere_is_not_a_crash(tmp_path):
    images, _ = _dataset(tmp_path, n=4)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = generate_pseudo_labels(
            images, out, _settings(), _backend(EmptyProposer()), False
        )
    assert meta["num_classes"] == 0 and meta["labelled"] == []
    assert len(meta["unlabelled"]) == 4 and any(
        "no component" in str(w.message) for w in caught
    )
    assert np.asarray(Image.open(out / "toy" / "maps" / "000.png")).max() == 0
    with pytest.raises(DataError):
        load_pseudo_labels(out, "toy")  # nothing to train on, said in one line


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
