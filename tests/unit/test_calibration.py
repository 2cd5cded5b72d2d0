"""Temperature scaling, calibration error, the decision threshold and confidence intervals."""

from __future__ import annotations

import torch

from training import calibration, report


def overconfident_logits(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right 80 % of the time but say 99 %: a temperature must cool them."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    right = torch.rand(n, generator=generator) < 0.8
    predicted = torch.where(right, labels, 1 - labels)
    logits = torch.zeros(n, 2)
    logits[torch.arange(n), predicted] = 4.6  # softmax confidence ~0.99
    return logits, labels


def test_fitted_temperature_cools_overconfident_logits_and_lowers_ece() -> None:
    logits, labels = overconfident_logits()
    temperature = calibration.fit_temperature(logits, labels)
    # confidence 0.8 needs a logit gap of log(4) = 1.386; the gap is 4.6
    assert abs(temperature - 4.6 / 1.386) < 0.05
    before = calibration.expected_calibration_error(logits.softmax(1), labels)
    after = calibration.expected_calibration_error((logits / temperature).softmax(1), labels)
    assert before > 0.15
    assert after < 0.01


def test_ece_of_perfectly_calibrated_scores_is_near_zero() -> None:
    generator = torch.Generator().manual_seed(1)
    p = torch.rand(20000, generator=generator) * 0.5 + 0.5
    labels = (torch.rand(20000, generator=generator) < p).long()  # class 1 with probability p
    probabilities = torch.stack([1 - p, p], dim=1)
    assert calibration.expected_calibration_error(probabilities, labels) < 0.02


def test_threshold_maximises_accuracy_and_prefers_one_half_on_ties() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.6, 0.9])
    truth = torch.tensor([0, 0, 0, 1, 1, 1])
    threshold = calibration.choose_threshold(scores, truth)
    assert 0.3 < threshold <= 0.35
    separable = torch.tensor([0.05, 0.1, 0.9, 0.95])
    assert calibration.choose_threshold(separable, torch.tensor([0, 0, 1, 1])) == 0.5


def test_wilson_interval_contains_the_proportion_and_narrows_with_more_data() -> None:
    low, high = report.wilson_interval(90, 100)
    assert low < 0.9 < high
    wide = high - low
    low, high = report.wilson_interval(900, 1000)
    assert high - low < wide / 2
    assert report.wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_f1_interval_brackets_the_f1() -> None:
    labels = torch.tensor([1] * 50 + [0] * 50)
    predicted = labels.clone()
    predicted[:10] = 0  # 40 true positives, 10 false negatives: F1 = 80/90
    low, high = report.bootstrap_f1_interval(predicted, labels)
    assert low < 80 / 90 < high
