"""Each segmentation loss against a small NumPy reference on hand-made tensors."""

import jax
import numpy as np
import pytest

from csad_jax import segmentation_losses as sl

K = 4


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _case(absent_class: bool):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 6, K)).astype(np.float32) * 2
    labels = rng.integers(0, K, size=(2, 5, 6))
    if absent_class:
        labels[labels == 2] = 1  # class 2 absent from the whole batch
    return logits, labels


def _np_ce(z, y):
    p = _softmax(z.astype(np.float64))
    log_q = np.log(_softmax(p))  # CE applied to probabilities
    return -np.mean(np.take_along_axis(log_q, y[..., None], -1))


def _np_dice(z, y):
    p = _softmax(z.astype(np.float64))
    b = z.shape[0]
    total = 0.0
    n = np.array([(y == c).sum() for c in range(K)], np.float64)
    w = (1 / (n + 1e-5)) / np.sum(1 / (n + 1e-5))
    for i in range(b):
        for c in range(K):
            yc = (y[i] == c).astype(np.float64)
            dice = (2 * (p[i, ..., c] * yc).sum() + 1e-5) / (
                p[i, ..., c].sum() + yc.sum() + 2e-5
            )
            total += w[c] * (1 - dice)
    return total / (b * K)


def _np_focal(z, y):
    p = _softmax(z.astype(np.float64))
    out = []
    for idx in np.ndindex(y.shape):
        t = np.full(K, 1e-5 / (K - 1))
        t[y[idx]] = 1 - 1e-5
        pt = (t * p[idx]).sum() + 1e-5
        out.append(-((1 - pt) ** 2) * np.log(pt))
    return np.mean(out)


def _np_hist(z, rand_gt):
    p = _softmax(z.astype(np.float64))
    total = 0.0
    for i in range(z.shape[0]):
        target = np.bincount(rand_gt[i].ravel(), minlength=K) / rand_gt[i].size
        pred = p[i].reshape(-1, K).mean(0)
        total += np.abs(pred - target)[1:].sum()
    return total / z.shape[0]


def _np_entropy(z):
    p = _softmax(z.astype(np.float64))
    return np.mean(-p * np.log(p + 1e-5))


@pytest.mark.parametrize("absent", [False, True])
@pytest.mark.parametrize(
    "loss,ref",
    [
        (sl.cross_entropy_on_probabilities, _np_ce),
        (sl.class_balanced_dice_loss, _np_dice),
        (sl.focal_loss, _np_focal),
    ],
)
def test_supervised_losses_match_numpy(loss, ref, absent):
    logits, labels = _case(absent)
    got = float(loss(logits, labels))
    np.testing.assert_allclose(got, ref(logits, labels), rtol=2e-5, atol=1e-7)


def test_dice_absent_class_takes_almost_all_weight():
    logits, labels = _case(absent_class=True)
    # with class 2 absent the present classes' weights are ~1e-5 relative, so
    # the loss is ~ (1 - dice_2) / (B K) with dice_2 ~ 1e-5 / (sum p_2 + 2e-5)
    p = _softmax(logits.astype(np.float64))
    approx = np.mean([1 - 1e-5 / (p[i, ..., 2].sum() + 2e-5) for i in range(2)]) / K
    got = float(sl.class_balanced_dice_loss(logits, labels))
    np.testing.assert_allclose(got, approx, rtol=1e-3)
    grad = jax.grad(sl.class_balanced_dice_loss)(logits, labels)
    grad_present = jax.grad(sl.class_balanced_dice_loss)(*_case(False))
    assert np.abs(grad).max() < 1e-2 * np.abs(grad_present).max()


def test_histogram_loss_sums_foreground_and_ignores_background():
    logits, _ = _case(False)
    rand_gt = np.random.default_rng(5).integers(0, K, size=(2, 3, 7))
    got = float(sl.histogram_loss(logits, rand_gt))
    np.testing.assert_allclose(got, _np_hist(logits, rand_gt), rtol=1e-5)
    # a perfect match on the foreground classes gives zero loss
    z = np.log(np.array([[0.7, 0.1, 0.2, 0.0]]) + 1e-30)
    logits_exact = np.broadcast_to(z, (1, 10, 10, K)).astype(np.float32)
    target = np.zeros((1, 10, 10), np.int64)
    target[0, 0, :] = 1
    target[0, 1:3, :] = 2
    assert float(sl.histogram_loss(logits_exact, target)) < 1e-6


def test_entropy_matches_numpy():
    logits, _ = _case(False)
    np.testing.assert_allclose(
        float(sl.entropy_loss(logits)), _np_entropy(logits), rtol=1e-5
    )


def test_segmentor_loss_phases_and_weights():
    logits, labels = _case(False)
    logits_u = logits[::-1] * 0.5
    rand_gt = labels[::-1]
    w = sl.LossWeights()
    sup_only, parts = sl.segmentor_loss(logits, labels, logits_u, rand_gt, w, 0.0)
    full, _ = sl.segmentor_loss(logits, labels, logits_u, rand_gt, w, 1.0)
    sup = 0.5 * _np_ce(logits, labels) + 10 * _np_focal(logits, labels)
    sup += _np_dice(logits, labels)
    np.testing.assert_allclose(float(sup_only), sup, rtol=2e-5)
    unsup = 10 * _np_hist(logits_u, rand_gt) + _np_entropy(logits_u)
    unsup += _np_entropy(logits)  # entropy on the labelled output too
    np.testing.assert_allclose(float(full), sup + unsup, rtol=2e-5)
    assert set(parts) == {"ce", "focal", "dice", "hist", "entropy_u", "entropy_l"}


def test_loss_weight_conventions():
    code, paper = sl.LossWeights(), sl.LossWeights.paper_text()
    assert (code.focal, code.dice, code.convention) == (10.0, 1.0, "official_code")
    assert (paper.focal, paper.dice, paper.convention) == (1.0, 10.0, "paper_text")
