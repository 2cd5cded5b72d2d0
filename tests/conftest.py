"""Fixtures shared by every test: paths, encoded photos and a fixed-weight exported model."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from handler.preprocessing import PreprocessSpec
from training.export import InferenceModel, export_torchscript

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "kaggle-smoking"

FIXED_INPUT_SIZE = 64
FIXED_GAIN = 2.0


class ColourNet(nn.Module):
    """A classifier with fixed weights whose answer can be worked out by hand.

    The smoking logit is `FIXED_GAIN * (mean red - mean blue)` of the normalised input and the
    not-smoking logit is 0, so a solid red photo is "smoking" and a solid blue one is not, with
    a probability that `expected_smoking_probability` computes exactly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(3, 2)
        with torch.no_grad():
            self.linear.weight.copy_(
                torch.tensor([[0.0, 0.0, 0.0], [FIXED_GAIN, 0.0, -FIXED_GAIN]])
            )
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(x).flatten(1))


def read_vmargs(properties: Path) -> list[str]:
    """The JVM options of a config.properties, split on spaces as TorchServe's launcher does."""
    for line in properties.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "vmargs":
            return value.split()
    return []


def fixed_spec(**overrides: object) -> PreprocessSpec:
    values: dict[str, object] = {
        "input_size": FIXED_INPUT_SIZE,
        "resize_size": FIXED_INPUT_SIZE + 8,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "threshold": 0.5,
        "model_name": "smoke",
        "model_version": "fixed-colour-1",
        "data_fingerprint": "none",
    }
    values.update(overrides)
    return PreprocessSpec(**values)  # type: ignore[arg-type]


def expected_smoking_probability(rgb: tuple[int, int, int], spec: PreprocessSpec) -> float:
    """The exact answer of `ColourNet` for a photo of one solid colour."""
    red = (rgb[0] / 255 - spec.mean[0]) / spec.std[0]
    blue = (rgb[2] / 255 - spec.mean[2]) / spec.std[2]
    return float(torch.sigmoid(torch.tensor(FIXED_GAIN * (red - blue), dtype=torch.float64)))


def encode_photo(
    rgb: tuple[int, int, int] = (200, 40, 40),
    size: tuple[int, int] = (120, 90),
    fmt: str = "PNG",
    mode: str = "RGB",
) -> bytes:
    """A solid-colour photo in the given format and mode (PNG keeps colours exact)."""
    image = Image.new("RGB", size, rgb)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def fixed_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder (model.pt, index_to_name.json, preprocess.json) of `ColourNet`."""
    out_dir = tmp_path_factory.mktemp("fixed_export")
    spec = fixed_spec()
    check = [torch.randn(3, FIXED_INPUT_SIZE, FIXED_INPUT_SIZE) for _ in range(4)]
    export_torchscript(InferenceModel(ColourNet()), spec, out_dir, check)
    return out_dir


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The real photos beside the checkout; tests using it skip when they are absent."""
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"real photos not found at {REAL_DATA}")
    return REAL_DATA
