"""Train the smoking classifier, calibrate it and export it as TorchScript.

    python -m training.train --config training/configs/default.yaml [key.sub=value ...]

Reads the photos named by the config, trains with AdamW on the CPU, keeps the best epoch by a
validation metric, fits a softmax temperature and a decision threshold on the validation split,
evaluates on the test split when there is one, and writes everything into
`runs/<UTC time>-<name>/`: resolved config, data manifest, metrics per epoch, plots,
checkpoints, environment record and `export/` (model.pt, index_to_name.json, preprocess.json).
`train.resume=runs/<run>` continues an interrupted run from its last checkpoint.

It does not archive or serve the model: `make archive` and `make serve` do that.
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torchvision.transforms import v2

from handler.preprocessing import CLASS_NAMES, PreprocessSpec
from training import calibration, data, tracking
from training.config import Config, ConfigError, config_from_dict, load_config
from training.engine import (
    build_ema,
    build_lr_scheduler,
    build_optimizer,
    classification_metrics,
    confusion_matrix,
    cpu_has_fast_bf16,
    predict_logits,
    train_one_epoch,
)
from training.export import InferenceModel, export_torchscript
from training.model import build_model, check_weights_file
from training.report import write_model_card

logger = logging.getLogger("training.train")

PARITY_PHOTOS = 32


@dataclass
class Dataset:
    train: data.Split
    val: data.Split
    test: data.Split | None
    manifest: list[data.ManifestRow]
    fingerprint: str
    skipped: int


@dataclass
class TrainState:
    """What a checkpoint holds beyond the weights, so that a run can resume exactly."""

    epoch: int = 0
    best_score: float = float("-inf")
    best_epoch: int = 0
    stale_epochs: int = 0
    rows: list[dict[str, float]] | None = None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train, calibrate and export the smoking classifier.",
    )
    parser.add_argument(
        "--config", required=True, help="YAML file, or a name in training/configs (default, real)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="e.g. train.epochs=5 data.root=DIR"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser.parse_args(argv)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def choose_precision(config: Config) -> Config:
    """Falls back from bf16 to fp32 training on CPUs that would only emulate bfloat16.

    The resolved config that the run records then says fp32, which is what was trained.
    """
    if config.train.precision != "bf16" or cpu_has_fast_bf16():
        return config
    logger.warning(
        "train.precision=bf16 asked for, but this CPU has no native bfloat16 support and would "
        "train some ten times slower: training in fp32 instead"
    )
    return replace(config, train=replace(config.train, precision="fp32"))


def preprocess_spec(config: Config, **extra: Any) -> PreprocessSpec:
    """The evaluation preprocessing of this config: the single source the handler reads."""
    model = config.model
    return PreprocessSpec(
        input_size=model.input_size,
        resize_size=model.resize_size,
        resize_policy=model.resize_policy,
        interpolation=model.interpolation,
        mean=model.mean,
        std=model.std,
        class_names=CLASS_NAMES,
        model_name=config.export.model_name,
        **extra,
    )


def load_dataset(config: Config) -> Dataset:
    """Finds, hashes and decodes the photos; generates the embedded scenes if asked to."""
    root = Path(config.data.root)
    if config.data.synthetic and not root.exists():
        from training.synthetic import generate_dataset

        logger.info("Generating the embedded synthetic scenes into %s", root)
        generate_dataset(root, seed=0, size=config.data.synthetic_size)
    samples = data.discover(config.data, config.seed)
    manifest = data.build_manifest(samples, root)
    cache_size = config.data.cache_size or config.model.resize_size
    threads = config.data.decode_threads
    train, skipped = data.load_split("train", samples, data.train_decoder(cache_size), threads)
    eval_decoder = data.eval_decoder(preprocess_spec(config))
    val, skipped_val = data.load_split("val", samples, eval_decoder, threads)
    skipped += skipped_val
    test = None
    if any(s.split == "test" for s in samples):
        test, skipped_test = data.load_split("test", samples, eval_decoder, threads)
        skipped += skipped_test
    unreadable = {str(s.path) for s in skipped}
    for row, sample in zip(manifest, samples, strict=True):
        if str(sample.path) in unreadable:
            row.status = "unreadable"
    fingerprint = data.fingerprint(manifest)
    logger.info(
        "Data %s: train %d, val %d, test %d photos, %d unreadable skipped, fingerprint %s",
        root,
        len(train.images),
        len(val.images),
        len(test.images) if test else 0,
        len(skipped),
        fingerprint,
    )
    return Dataset(train, val, test, manifest, fingerprint, len(skipped))


def build_data_loader(
    dataset: Dataset, config: Config, generator: torch.Generator
) -> torch.utils.data.DataLoader:
    """Shuffled, augmented training batches; `generator` fixes the order (and is checkpointed)."""
    transform = data.build_train_transform(config.augment, config.model)
    mixers = []
    if config.augment.mixup_alpha:
        mixers.append(v2.MixUp(alpha=config.augment.mixup_alpha, num_classes=len(CLASS_NAMES)))
    if config.augment.cutmix_alpha:
        mixers.append(v2.CutMix(alpha=config.augment.cutmix_alpha, num_classes=len(CLASS_NAMES)))
    collate = torch.utils.data.default_collate
    if mixers:
        mix = v2.RandomChoice(mixers)

        def collate(batch: list[Any]) -> Any:
            return mix(*torch.utils.data.default_collate(batch))

    batch_size = min(config.train.batch_size, len(dataset.train.images))
    return torch.utils.data.DataLoader(
        data.AugmentedDataset(dataset.train, transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(dataset.train.images) > batch_size,
        num_workers=config.train.num_workers,
        persistent_workers=config.train.num_workers > 0,
        collate_fn=collate,
        generator=generator,
    )


def evaluate(model: nn.Module, split: data.Split, threshold: float = 0.5) -> dict[str, float]:
    probabilities = predict_logits(model, split.images).softmax(dim=1)
    return classification_metrics(probabilities, split.labels, threshold)


def resume_config(config: Config) -> tuple[Config, Path, dict[str, Any]]:
    """Loads the last checkpoint of the run named by `train.resume`; its config wins."""
    target = Path(config.train.resume or "")
    path = target / "checkpoints" / "last.pt" if target.is_dir() else target
    if not path.is_file():
        raise ConfigError(
            f"train.resume={target} is neither a run folder with checkpoints/last.pt nor a file"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = config_from_dict(checkpoint["config"])
    logger.info("Resuming %s from epoch %d", path, checkpoint["epoch"])
    resumed = replace(saved, train=replace(saved.train, resume=str(path)))
    return resumed, path.parent.parent, checkpoint


class Trainer:
    """The model, its optimiser, schedule and weight average, and where training stands."""

    def __init__(self, config: Config, dataset: Dataset, run_dir: Path):
        self.config = config
        self.dataset = dataset
        self.model = build_model(config.model, len(CLASS_NAMES))
        if config.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.data_loader = build_data_loader(dataset, config, self.shuffle)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
        self.optimizer = build_optimizer(self.model, config.train)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, config.train, len(self.data_loader))
        self.ema = build_ema(self.model, config.train.ema_decay)
        self.state = TrainState(rows=[])
        self.checkpoints = run_dir / "checkpoints"
        self.checkpoints.mkdir(exist_ok=True)
        self.log = tracking.MetricsLog(run_dir / "metrics.csv")
        stopping = config.train.early_stopping
        self.sign = -1.0 if stopping.metric == "val_loss" else 1.0

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated and exported: the average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.state = TrainState(**checkpoint["state"])
        self.log.rows = list(self.state.rows or [])
        torch.set_rng_state(checkpoint["rng"])
        self.shuffle.set_state(checkpoint["shuffle_rng"])

    def fit(self, tracker: tracking.Tracker) -> nn.Module:
        """Trains until the last epoch or early stopping; returns the best model, in eval mode."""
        patience = self.config.train.early_stopping.patience
        for epoch in range(self.state.epoch + 1, self.config.train.epochs + 1):
            row = self.run_epoch(epoch)
            tracker.log(row, step=epoch)
            self.record(epoch, row)
            self.save_last()
            if patience and self.state.stale_epochs >= patience:
                logger.info("Early stopping: no improvement for %d epochs", patience)
                break
        tracking.plot_curves(self.log.rows, self.checkpoints.parent / "curves.png")
        if self.config.export.checkpoint == "last":
            logger.info("Keeping the weights of the last epoch, %d", self.state.epoch)
            return copy.deepcopy(self.evaluated).eval()
        return self.best_model()

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Trains one epoch, validates, logs one INFO line and returns the metrics row."""
        stats = train_one_epoch(
            self.model,
            self.data_loader,
            self.criterion,
            self.optimizer,
            self.lr_scheduler,
            epoch,
            self.config.train.grad_clip,
            self.ema,
            bf16=self.config.train.precision == "bf16",
            channels_last=self.config.model.channels_last,
        )
        val = evaluate(self.evaluated, self.dataset.val)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            **{f"val_{key}": value for key, value in val.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_second": stats.images_per_second,
            "seconds": stats.seconds,
        }
        self.log.append(row)
        logger.info(
            "epoch %d/%d train loss %.4f acc %.4f | val loss %.4f acc %.4f prec %.4f rec %.4f "
            "f1 %.4f | lr %.2e | %.0f img/s | %.1f s",
            *(epoch, self.config.train.epochs, stats.loss, stats.accuracy, val["loss"]),
            *(val["accuracy"], val["precision"], val["recall"], val["f1"], row["lr"]),
            *(stats.images_per_second, stats.seconds),
        )
        return row

    def record(self, epoch: int, row: dict[str, float]) -> None:
        """Keeps the best checkpoint by the early-stopping metric."""
        stopping = self.config.train.early_stopping
        self.state.epoch, self.state.rows = epoch, self.log.rows
        score = self.sign * row[stopping.metric]
        if score > self.state.best_score + stopping.min_delta:
            self.state.best_score, self.state.best_epoch = score, epoch
            self.state.stale_epochs = 0
            best = {"model": self.evaluated.state_dict(), "epoch": epoch}
            torch.save({**best, "config": self.config.to_dict()}, self.checkpoints / "best.pt")
        else:
            self.state.stale_epochs += 1

    def save_last(self) -> None:
        """Everything needed to resume, written atomically."""
        path = self.checkpoints / "last.pt"
        temporary = path.with_suffix(".tmp")
        checkpoint = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "epoch": self.state.epoch,
            "state": vars(self.state),
            "config": self.config.to_dict(),
            "data_fingerprint": self.dataset.fingerprint,
            "rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
        }
        torch.save(checkpoint, temporary)
        temporary.replace(path)

    def best_model(self) -> nn.Module:
        model = build_model(
            replace(self.config.model, init_weights=None, pretrained=False), len(CLASS_NAMES)
        )
        best = torch.load(self.checkpoints / "best.pt", weights_only=True)
        model.load_state_dict(best["model"])
        logger.info(
            "Best epoch %d: %s %.4f",
            self.state.best_epoch,
            self.config.train.early_stopping.metric,
            self.sign * self.state.best_score,
        )
        return model.eval()


@dataclass(frozen=True)
class Calibration:
    temperature: float
    threshold: float
    ece_before: float
    ece_after: float
    uncalibrated_val: torch.Tensor  # (N, C) probabilities at temperature 1


def calibrate(
    model: nn.Module, config: Config, val: data.Split
) -> tuple[InferenceModel, Calibration]:
    """Folds a validation-fitted temperature into the model and picks the decision threshold."""
    layout = config.model.channels_last
    served = InferenceModel(model, 1.0, config.export.tta_hflip, layout).eval()
    logits = predict_logits(served, val.images)
    temperature = 1.0
    if config.export.calibrate:
        temperature = calibration.fit_temperature(logits, val.labels)
    before = logits.softmax(1)
    after = (logits / temperature).softmax(1)
    threshold = config.export.threshold
    if threshold == "auto":
        threshold = calibration.choose_threshold(after[:, 1], val.labels == 1)
    result = Calibration(
        temperature=temperature,
        threshold=float(threshold),
        ece_before=calibration.expected_calibration_error(before, val.labels),
        ece_after=calibration.expected_calibration_error(after, val.labels),
        uncalibrated_val=before,
    )
    logger.info(
        "Calibration on val: temperature %.3f, ECE %.4f -> %.4f, threshold %.3f",
        result.temperature,
        result.ece_before,
        result.ece_after,
        result.threshold,
    )
    served = InferenceModel(model, temperature, config.export.tta_hflip, layout).eval()
    return served, result


def final_metrics(
    served: nn.Module, dataset: Dataset, calibrated: Calibration
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Metrics of the model as served, on val and (when present) test, and the probabilities."""
    threshold = calibrated.threshold
    metrics = {"val_ece_before": calibrated.ece_before, "val_ece_after": calibrated.ece_after}
    probabilities = {}
    for split in (dataset.val, dataset.test):
        if split is None:
            continue
        probabilities[split.name] = predict_logits(served, split.images).softmax(1)
        values = classification_metrics(probabilities[split.name], split.labels, threshold)
        metrics.update({f"{split.name}_{key}": value for key, value in values.items()})
    return metrics, probabilities


def run(config: Config) -> Path:
    """Runs every step from photos to exported model; returns the run folder."""
    started = time.perf_counter()
    checkpoint, run_dir = None, None
    if config.train.resume:
        config, run_dir, checkpoint = resume_config(config)
    check_weights_file(config.model)
    config = choose_precision(config)
    seed_everything(config.seed, config.train.threads)
    dataset = load_dataset(config)
    if checkpoint is not None and checkpoint["data_fingerprint"] != dataset.fingerprint:
        raise ConfigError(
            "the photos changed since the run being resumed (data fingerprint "
            f"{checkpoint['data_fingerprint']} -> {dataset.fingerprint}); start a new run"
        )
    run_dir = run_dir or tracking.create_run_dir(config)
    record_run(run_dir, config, dataset)
    tracker = tracking.Tracker(config.wandb, run_dir, config.to_dict())

    trainer = Trainer(config, dataset, run_dir)
    if checkpoint is not None:
        trainer.restore(checkpoint)
    model = trainer.fit(tracker)
    served, calibrated = calibrate(model, config, dataset.val)
    metrics, probabilities = final_metrics(served, dataset, calibrated)
    write_predictions(run_dir / "predictions.csv", dataset, probabilities)
    plot_confusion(run_dir, dataset, probabilities, calibrated.threshold)
    export_dir = export(run_dir, config, dataset, served, calibrated, metrics)
    if config.model_card:
        splits = [split for split in (dataset.val, dataset.test) if split is not None]
        counts = {split.name: len(split.images) for split in (dataset.train, *splits)}
        write_model_card(
            run_dir,
            config,
            dataset.fingerprint,
            counts,
            splits,
            probabilities,
            calibrated.uncalibrated_val,
            calibrated.threshold,
            calibrated.temperature,
            metrics,
        )
    summary = {
        **metrics,
        "threshold": calibrated.threshold,
        "temperature": calibrated.temperature,
        "best_epoch": trainer.state.best_epoch,
        "data_fingerprint": dataset.fingerprint,
        "unreadable_photos": dataset.skipped,
        "seconds": round(time.perf_counter() - started, 1),
    }
    tracking.write_json(run_dir / "summary.json", summary)
    tracker.log_images({name: run_dir / f"{name}.png" for name in ("curves", "confusion_matrix")})
    tracker.log_artifact(f"{config.export.model_name}-model", export_dir, summary)
    tracker.finish(summary)
    return run_dir


def record_run(run_dir: Path, config: Config, dataset: Dataset) -> None:
    """Writes the resolved config, the data manifest and the environment into the run."""
    logger.info("Run folder %s", run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    data.write_manifest(dataset.manifest, run_dir / "manifest.csv")
    tracking.write_json(run_dir / "environment.json", tracking.environment_record(config.seed))


def write_predictions(path: Path, dataset: Dataset, probabilities: dict[str, torch.Tensor]) -> None:
    """Writes the served model's smoking probability for every val and test photo.

    `python -m scripts.check_served` compares TorchServe's answers for the same files with these.
    """
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "file", "label", "smoking_probability"])
        for split in (dataset.val, dataset.test):
            if split is None:
                continue
            smoking = probabilities[split.name][:, 1].tolist()
            for sample, probability in zip(split.samples, smoking, strict=True):
                writer.writerow(
                    [split.name, sample.path.resolve(), sample.label, f"{probability:.8f}"]
                )


def plot_confusion(
    run_dir: Path, dataset: Dataset, probabilities: dict[str, torch.Tensor], threshold: float
) -> None:
    split = dataset.test or dataset.val
    predicted = (probabilities[split.name][:, 1] >= threshold).long()
    matrix = confusion_matrix(predicted, split.labels, len(CLASS_NAMES))
    title = f"{split.name} split"
    tracking.plot_confusion(matrix, CLASS_NAMES, title, run_dir / "confusion_matrix.png")


def export(
    run_dir: Path,
    config: Config,
    dataset: Dataset,
    served: InferenceModel,
    calibrated: Calibration,
    metrics: dict[str, float],
) -> Path:
    """Exports the served model with its `preprocess.json`; returns the export folder."""
    spec = preprocess_spec(
        config,
        threshold=calibrated.threshold,
        temperature=calibrated.temperature,
        model_version=run_dir.name,
        data_fingerprint=dataset.fingerprint,
        metrics={key: round(value, 5) for key, value in metrics.items()},
    )
    export_dir = run_dir / "export"
    check_images = dataset.val.images[:PARITY_PHOTOS]
    export_torchscript(served, spec, export_dir, check_images, config.export.parity_tolerance)
    return export_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_config(args.config, args.overrides)
        run_dir = run(config)
    except (ConfigError, data.DataError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    summary = tracking.read_json(run_dir / "summary.json")
    headline = ", ".join(
        f"{key} {summary[key]:.4f}" for key in ("val_accuracy", "test_accuracy") if key in summary
    )
    print(f"{run_dir}: {headline}; exported {run_dir / 'export' / 'model.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
