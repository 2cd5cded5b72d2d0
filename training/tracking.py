"""The run folder, its plots and environment record, and Weights & Biases.

Every run writes into `runs/<UTC time>-<name>/` and points `runs/latest` at it. W&B is a
mirror of what the run folder already holds: it runs offline unless the config asks for
`online`, and any W&B failure is logged as a warning and tracking carries on without it.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch

from training.config import Config, WandbConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt

logger = logging.getLogger(__name__)


def create_run_dir(config: Config) -> Path:
    """Makes `runs/<UTC time>-<name>/` and points `runs/latest` at it."""
    runs = Path(config.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = runs / f"{stamp}-{config.name}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs / f"{stamp}-{config.name}-{suffix}"
    run_dir.mkdir()
    point_latest(run_dir)
    return run_dir


def point_latest(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    temporary = run_dir.parent / f".latest-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run_dir.name)
    temporary.replace(latest)


def environment_record(seed: int) -> dict[str, Any]:
    """Versions, machine and git state, so a result can be reproduced."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "seed": seed,
        "command": sys.argv,
        "utc_time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str | None:
    """The processor's name: the same seed gives the same metrics on the same kind of CPU, while
    another CPU (other oneDNN kernels, another bf16 path) drifts in the last digits and then
    trains to a different result."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # the record is informative; a missing package must not stop training
        return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(path: Path, values: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2, default=str)
        f.write("\n")


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class MetricsLog:
    """Per-epoch metrics appended to `metrics.csv`, kept in memory for the plots."""

    def __init__(self, path: Path, rows: Sequence[Mapping[str, float]] = ()):
        self.path = path
        self.rows: list[dict[str, float]] = [dict(row) for row in rows]

    def append(self, row: Mapping[str, float]) -> None:
        self.rows.append(dict(row))
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)


def plot_curves(rows: Sequence[Mapping[str, float]], path: Path) -> None:
    """Loss, accuracy and learning rate per epoch, train beside validation."""
    epochs = [row["epoch"] for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        axes[0].plot(epochs, [row[key] for row in rows], style, label=key)
    for key, style in (("train_accuracy", "-"), ("val_accuracy", "--"), ("val_f1", ":")):
        axes[1].plot(epochs, [row[key] for row in rows], style, label=key)
    axes[2].plot(epochs, [row["lr"] for row in rows], label="learning rate")
    for axis, title in zip(axes, ("loss", "accuracy", "learning rate"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_confusion(
    matrix: torch.Tensor, class_names: Sequence[str], title: str, path: Path
) -> None:
    """Counts with rows = true class and columns = predicted class."""
    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    axis.imshow(matrix.numpy(), cmap="Blues")
    for (row, column), count in zip(
        [(r, c) for r in range(len(class_names)) for c in range(len(class_names))],
        matrix.flatten().tolist(),
        strict=True,
    ):
        colour = "white" if count > matrix.max().item() / 2 else "black"
        axis.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=13)
    axis.set_xticks(range(len(class_names)), class_names)
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class Tracker:
    """Weights & Biases, if it can be used; every call is a no-op once it has failed."""

    def __init__(self, config: WandbConfig, run_dir: Path, run_config: Mapping[str, Any]):
        self._run = None
        if config.mode == "disabled":
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._run = wandb.init(
                project=config.project,
                entity=config.entity,
                mode=config.mode,
                dir=str(run_dir),
                name=run_dir.name,
                config=dict(run_config),
                settings=wandb.Settings(init_timeout=60, console="off", x_disable_stats=True),
            )
            logger.info("W&B tracking %s in %s", config.mode, run_dir / "wandb")
        except Exception as error:  # W&B is optional: a tracking failure must not stop training
            self._warn(error)

    def log(self, values: Mapping[str, float], step: int) -> None:
        self._call(lambda run: run.log(dict(values), step=step))

    def log_images(self, images: Mapping[str, Path]) -> None:
        def log(run: Any) -> None:
            import wandb

            run.log({key: wandb.Image(str(path)) for key, path in images.items()})

        self._call(log)

    def log_artifact(self, name: str, folder: Path, metadata: Mapping[str, Any]) -> None:
        def log(run: Any) -> None:
            import wandb

            artifact = wandb.Artifact(name, type="model", metadata=dict(metadata))
            artifact.add_dir(str(folder))
            run.log_artifact(artifact)

        self._call(log)

    def finish(self, summary: Mapping[str, Any]) -> None:
        def finish(run: Any) -> None:
            run.summary.update(dict(summary))
            run.finish()

        self._call(finish)
        self._run = None

    def _call(self, action: Any) -> None:
        if self._run is None:
            return
        try:
            action(self._run)
        except Exception as error:  # see __init__: never fail training because of W&B
            self._warn(error)

    def _warn(self, error: Exception) -> None:
        logger.warning("W&B tracking is off for the rest of this run: %s", error)
        self._run = None
