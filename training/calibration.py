"""Calibrated probabilities: temperature scaling, expected calibration error, the threshold."""

from __future__ import annotations

import itertools

import torch


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Finds the softmax temperature that minimises the negative log-likelihood of `labels`.

    Args:
        logits: `(N, C)` validation logits.
        labels: `(N,)` class indices.

    Returns:
        The temperature T (logits are divided by it), clamped to [0.05, 20].
    """
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits = logits.detach().double()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp().double(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def reliability_bins(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per non-empty equal-width confidence bin."""
    confidence, predicted = probabilities.double().max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.double).tolist()
    rows = []
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            rows.append(
                (float(confidence[inside].mean()), float(correct[inside].mean()), int(inside.sum()))
            )
    return rows


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> float:
    """The gap between confidence and accuracy, averaged over confidence bins by their size."""
    rows = reliability_bins(probabilities, labels, bins)
    return sum(count * abs(confidence - accuracy) for confidence, accuracy, count in rows) / len(
        labels
    )


def choose_threshold(positive_probability: torch.Tensor, is_positive: torch.Tensor) -> float:
    """The decision threshold with the best accuracy; ties go to the one nearest 0.5.

    Candidates are the midpoints between consecutive distinct probabilities, so the result
    does not sit exactly on a validation photo's score.
    """
    scores = torch.unique(positive_probability.double())
    candidates = torch.cat(
        [torch.tensor([0.5], dtype=torch.double), (scores[1:] + scores[:-1]) / 2]
    ).clamp(0.01, 0.99)
    truth = is_positive.bool()
    best, best_key = 0.5, (-1.0, 0.0)
    for threshold in candidates.tolist():
        accuracy = float(((positive_probability >= threshold) == truth).double().mean())
        key = (accuracy, -abs(threshold - 0.5))
        if key > best_key:
            best, best_key = threshold, key
    return round(best, 6)
