"""One epoch of training, evaluation, the classification metrics and the optimiser pieces."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from training.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float
    images_per_second: float
    seconds: float


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively here (AVX-512 and newer on x86).

    Without that, bfloat16 autocast is emulated: on a 2-core AVX2 machine an epoch of the real
    recipe took 494 s in bf16 against 44 s in float32. PyTorch exposes the check only as
    a private op, so a build without it counts as having no fast path.
    """
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, without weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per batch.

    A one-cycle schedule too short to rise and fall (under 3 steps) keeps the rate constant.
    """
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "onecycle" and total >= 3:
        # OneCycleLR divides by the length of its rising and falling phases, so each needs at
        # least one step: a warm-up of 2 to total - 1 steps (a short run on few photos).
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total,
            pct_start=min(max(warmup, 2), total - 1) / total,
            anneal_strategy="cos",
        )
    milestones = [m * steps_per_epoch for m in config.step_milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if config.schedule == "step":
            return 0.1 ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights (and of the BatchNorm statistics)."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_one_epoch(
    model: nn.Module,
    data_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    grad_clip: float = 0.0,
    ema: AveragedModel | None = None,
    bf16: bool = False,
    channels_last: bool = False,
) -> EpochStats:
    """Trains for one pass over `data_loader`; targets may be class indices or soft labels.

    With `bf16` the forward pass runs under CPU autocast in bfloat16 (weights, gradients and
    the optimiser stay float32); `channels_last` feeds NHWC batches, which oneDNN convolves
    faster on CPUs. Both change speed, not the model that is saved.
    """
    model.train()
    start = time.perf_counter()
    total_loss, correct, seen = 0.0, 0.0, 0
    progress = tqdm(data_loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None)
    for images, targets in progress:
        # images: (N, 3, H, W) float; targets: (N,) int64 or (N, C) soft labels
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        lr_scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
        total_loss += loss.item() * len(images)
        correct += (logits.argmax(dim=1) == hard).sum().item()
        seen += len(images)
        progress.set_postfix(loss=f"{total_loss / seen:.3f}")
    seconds = time.perf_counter() - start
    return EpochStats(total_loss / seen, correct / seen, seen / seconds, seconds)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: Sequence[torch.Tensor], batch_size: int = 128
) -> torch.Tensor:
    """Runs the model in eval mode over preprocessed `(3, S, S)` tensors: `(N, C)` logits."""
    model.eval()
    outputs = [
        model(torch.stack(list(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs)


def classification_metrics(
    probabilities: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5, positive: int = 1
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of the positive class, and the log loss.

    `probabilities` is `(N, C)`; the positive class is predicted when its probability is at
    least `threshold`.
    """
    predicted = (probabilities[:, positive] >= threshold).long()
    truth = (labels == positive).long()
    tp = int(((predicted == 1) & (truth == 1)).sum())
    fp = int(((predicted == 1) & (truth == 0)).sum())
    fn = int(((predicted == 0) & (truth == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    picked = probabilities.gather(1, labels[:, None]).clamp_min(1e-12)
    return {
        "accuracy": float((predicted == truth).float().mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "loss": float(-picked.log().mean()),
    }


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """`(C, C)` counts; rows are the true class, columns the predicted one."""
    return torch.bincount(labels * classes + predicted, minlength=classes * classes).view(
        classes, classes
    )
