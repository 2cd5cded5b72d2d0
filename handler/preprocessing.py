"""Photo decoding and evaluation preprocessing, shared by training and serving.

This module is the one place that turns photo bytes into the tensor the model sees. Training
uses it to evaluate and to export; the TorchServe handler uses it for every request. Both build
the transform from the same `PreprocessSpec`, which is written next to the exported model as
`preprocess.json` and travels inside the model archive, so no size, mean or std is repeated
anywhere else.

It needs only torch, torchvision and Pillow, because it ships inside `smoke.mar`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode, v2

CLASS_NAMES = ("not_smoking", "smoking")
RESIZE_POLICIES = ("shorter_side_center_crop", "squash")
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}

# Formats a phone, a browser or a web crawler hands us. Anything else Pillow can open (TIFF,
# ICO, PSD, ...) is refused as unsupported rather than guessed at. MPO is the multi-picture
# JPEG that many cameras write; Pillow reads its first picture.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF"})

DEFAULT_MAX_PIXELS = 50_000_000  # a 50-megapixel photo decodes to about 150 MB of RGB
MIN_SIDE = 16  # below this a photo holds no person to classify
MAX_SIDE = 20_000
MAX_ASPECT_RATIO = 20.0


class ImageRejectedError(ValueError):
    """A request body that cannot be turned into a photo, with the reason and a remedy.

    Attributes:
        reason: a short machine-readable tag, used as the metric dimension and the JSON `type`.
        status: the HTTP status the server should answer with (always 4xx).
    """

    def __init__(self, reason: str, message: str, status: int = 400):
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a photo into model input and the output into an answer.

    Written as `preprocess.json` beside the exported model. `input_size` is the side of the
    square the model sees; with the `shorter_side_center_crop` policy the photo's shorter side
    is first resized to `resize_size`, with `squash` the whole photo is resized to the square.
    `threshold` applies to the probability of `positive_class`.
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_policy: str = "shorter_side_center_crop"
    interpolation: str = "bilinear"
    class_names: tuple[str, ...] = CLASS_NAMES
    positive_class: str = "smoking"
    threshold: float = 0.5
    temperature: float = 1.0
    model_name: str = "smoke"
    model_version: str = "0"
    data_fingerprint: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not 16 <= self.input_size <= 1024:
            problems.append(f"input_size={self.input_size} must be between 16 and 1024")
        if self.resize_size < self.input_size:
            problems.append(
                f"resize_size={self.resize_size} must be at least input_size={self.input_size}"
            )
        if self.resize_policy not in RESIZE_POLICIES:
            problems.append(
                f"resize_policy={self.resize_policy!r} must be one of {RESIZE_POLICIES}"
            )
        if self.interpolation not in INTERPOLATIONS:
            problems.append(
                f"interpolation={self.interpolation!r} must be one of {sorted(INTERPOLATIONS)}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std must hold three numbers each, std all positive")
        if len(set(self.class_names)) != len(self.class_names) or len(self.class_names) < 2:
            problems.append(f"class_names={list(self.class_names)} must be two or more names")
        if self.positive_class not in self.class_names:
            problems.append(f"positive_class={self.positive_class!r} is not in class_names")
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold={self.threshold} must lie strictly between 0 and 1")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            problems.append(f"temperature={self.temperature} must be a positive number")
        if problems:
            raise ValueError("invalid preprocessing spec: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreprocessSpec:
        """Build a spec from parsed JSON, refusing keys it does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        for key in ("mean", "std", "class_names"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> PreprocessSpec:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["metrics"] = dict(self.metrics)
        return values

    def save(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)

    @property
    def draft_size(self) -> int:
        """The smallest side a photo must keep when the JPEG decoder may shrink it."""
        return (
            self.resize_size
            if self.resize_policy == "shorter_side_center_crop"
            else (self.input_size)
        )


def decode_image(
    data: bytes | bytearray,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decodes photo bytes into an upright RGB image, or raises `ImageRejectedError`.

    The first frame of an animation is used, EXIF orientation is applied, transparency is laid
    over white, and grayscale, palette, CMYK and 16-bit photos become RGB.

    Args:
        data: the encoded photo.
        max_pixels: photos with more pixels are refused before they are decoded.
        draft_size: when given, a JPEG may be decoded at a reduced scale (1/2, 1/4, 1/8) as long
            as both sides stay at least this long; this is much faster for large photos.
    """
    if not data:
        raise ImageRejectedError(
            "empty_body",
            "The request carried no bytes; send the photo itself, e.g. curl -T photo.jpg.",
        )
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageRejectedError(
            "too_many_pixels", f"The photo is far too large to decode ({error}).", 413
        ) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageRejectedError(
            "not_an_image",
            f"The body ({len(data)} bytes) is not a photo Pillow can read; send a JPEG, PNG, "
            "WebP, BMP or GIF file.",
        ) from error

    if image.format not in ACCEPTED_FORMATS:
        raise ImageRejectedError(
            "unsupported_format",
            f"{image.format} photos are not accepted; convert it to JPEG, PNG, WebP, BMP or GIF.",
            415,
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejectedError(
            "too_many_pixels",
            f"The photo is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; downscale it before sending.",
            413,
        )
    if (
        min(width, height) < MIN_SIDE
        or max(width, height) > MAX_SIDE
        or (max(width, height) / min(width, height) > MAX_ASPECT_RATIO)
    ):
        raise ImageRejectedError(
            "bad_dimensions",
            f"The photo is {width}x{height}; each side must lie between {MIN_SIDE} and "
            f"{MAX_SIDE} pixels and the long side may be at most {MAX_ASPECT_RATIO:g} times the "
            "short side.",
            422,
        )

    try:
        if draft_size and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, struct.error) as error:
        raise ImageRejectedError(
            "truncated",
            f"The {image.format} data is truncated or corrupt ({error}); send the complete file.",
        ) from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def build_eval_transform(spec: PreprocessSpec) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic transform from an RGB photo to a normalised `(3, H, W)` tensor."""
    interpolation = INTERPOLATIONS[spec.interpolation]
    if spec.resize_policy == "squash":
        resize: Sequence[v2.Transform] = [
            v2.Resize((spec.input_size, spec.input_size), interpolation, antialias=True)
        ]
    else:
        resize = [
            v2.Resize(spec.resize_size, interpolation, antialias=True),
            v2.CenterCrop(spec.input_size),
        ]
    return v2.Compose(
        [
            v2.PILToTensor(),
            *resize,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(spec.mean), list(spec.std)),
        ]
    )
