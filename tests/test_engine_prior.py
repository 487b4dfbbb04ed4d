"""Class-prior logit adjustment: the offsets, the choice of tau on held-apart halves, unfolding an old checkpoint."""
import numpy as np
import pytest
import torch

from msfer.engine.metrics import compute_metrics
from msfer.engine.prior import adjustment, choose_tau, stratified_halves, unfold_adjustment
from msfer.errors import MsferError
from msfer.labels import EMOTIONS

FER2013_TRAIN_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]  # EMOTIONS order


def test_adjustment_favours_rare_classes_and_vanishes_at_tau_zero():
    np.testing.assert_allclose(adjustment(FER2013_TRAIN_COUNTS, 0.0), 0.0)
    offsets = adjustment(FER2013_TRAIN_COUNTS, 1.0)
    assert offsets.sum() == pytest.approx(0.0, abs=1e-9)
    assert offsets.argmax() == EMOTIONS.index("disgust") and offsets.argmin() == EMOTIONS.index("happy")
    # the difference of two classes' offsets is tau times their log count ratio
    assert offsets[1] - offsets[3] == pytest.approx(np.log(7215 / 436))
    np.testing.assert_allclose(adjustment(FER2013_TRAIN_COUNTS, 0.5), offsets / 2)


@pytest.mark.parametrize("counts", [[1, 2, 3], [0, 1, 1, 1, 1, 1, 1], [-5, 1, 1, 1, 1, 1, 1]])
def test_adjustment_rejects_bad_counts(counts):
    with pytest.raises(MsferError, match="7 positive numbers"):
        adjustment(counts, 1.0)


def test_stratified_halves_split_every_class_evenly():
    labels = np.repeat(np.arange(7), [10, 3, 8, 20, 9, 7, 1])
    first, second = stratified_halves(labels)
    assert set(first).isdisjoint(second) and sorted([*first, *second]) == list(range(len(labels)))
    for label in range(7):
        assert abs((labels[first] == label).sum() - (labels[second] == label).sum()) <= 1


def biased_predictions(rng, counts, n=6000):
    """Labels drawn with the prior of ``counts``.

    Scores add log(prior) to a noisy class signal, as training on that prior does.
    """
    prior = np.asarray(counts) / sum(counts)
    labels = rng.choice(len(counts), n, p=prior)
    logits = rng.normal(0, 1.0, (n, len(counts))) + 1.5 * np.eye(len(counts))[labels] + np.log(prior)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


def test_choose_tau_finds_the_prior_in_biased_scores_and_gains_on_the_held_out_half():
    probs, labels = biased_predictions(np.random.default_rng(0), FER2013_TRAIN_COUNTS)
    result = choose_tau(probs, labels, FER2013_TRAIN_COUNTS)
    assert 0.5 <= result["tau"] <= 1.5
    by_tau = {row["tau"]: row for row in result["curve"]}
    untouched, chosen = by_tau[0.0]["held_out"], by_tau[result["tau"]]["held_out"]
    assert chosen["mean_class_accuracy"] > untouched["mean_class_accuracy"] + 0.05
    # tau 0 reproduces the plain argmax
    plain = compute_metrics(labels, probs.argmax(axis=1), EMOTIONS)
    assert by_tau[0.0]["all"]["overall_accuracy"] == pytest.approx(plain["overall_accuracy"])
    np.testing.assert_allclose(result["offsets"], adjustment(FER2013_TRAIN_COUNTS, result["tau"]))


def test_choose_tau_keeps_tau_zero_for_a_balanced_prior():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 4000)
    logits = rng.normal(0, 1.0, (4000, 7)) + 2.0 * np.eye(7)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = choose_tau(probs, labels, [1000] * 7)  # equal counts: every tau gives offsets 0, the first wins
    assert result["tau"] == 0.0 and np.allclose(result["offsets"], 0.0)


def test_choose_tau_rejects_mismatched_shapes():
    with pytest.raises(MsferError, match="N x 7"):
        choose_tau(np.full((5, 6), 1 / 6), np.zeros(5, dtype=int), FER2013_TRAIN_COUNTS)


def test_unfold_takes_a_folded_adjustment_out_of_the_bias(random_weights):
    from msfer.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(random_weights)
    offsets = adjustment(FER2013_TRAIN_COUNTS, 0.6)
    folded = dict(checkpoint, model=dict(checkpoint["model"]),
                  logit_adjustment={"tau": 0.6, "offsets": offsets.tolist()})
    folded["model"]["classifier.bias"] = (checkpoint["model"]["classifier.bias"]
                                          + torch.tensor(offsets, dtype=torch.float32))
    unfolded = unfold_adjustment(folded)
    torch.testing.assert_close(unfolded["model"]["classifier.bias"], checkpoint["model"]["classifier.bias"])
    assert "logit_adjustment" not in unfolded
    assert unfold_adjustment(checkpoint) is checkpoint  # nothing folded: unchanged
