"""Shapes of every architecture, loading local weights, and the TorchScript round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from handler.torchscript import load_torchscript, quiet_torchscript
from training.config import ModelConfig
from training.model import build_model, load_matching_weights

ARCHS = ["smokenet", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "efficientnet_b0"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_maps_a_batch_to_two_logits(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch, input_size=64, resize_size=64)).eval()
    with torch.inference_mode():
        logits = model(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 2)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_smokenet_widths_depths_and_norms(norm: str) -> None:
    config = ModelConfig(width=8, depths=(1, 2, 1), norm=norm, input_size=48, resize_size=48)
    model = build_model(config)
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 2)
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(widths) == 8 * 2**2


@pytest.mark.parametrize(
    ("pool", "stem_stride", "downsample", "size"),
    [("max", 1, "max", 96), ("avgmax", 2, "stride", 112), ("avg", 1, "max", 75)],
)
def test_smokenet_pooling_stem_and_downsampling_variants_accept_odd_sizes(
    pool: str, stem_stride: int, downsample: str, size: int
) -> None:
    config = ModelConfig(
        width=8,
        pool=pool,
        stem_stride=stem_stride,
        downsample=downsample,
        input_size=size,
        resize_size=size,
    )
    model = build_model(config).eval()
    with torch.inference_mode():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 2)


def test_max_downsampling_keeps_a_one_pixel_line_that_striding_skips() -> None:
    line = torch.zeros(1, 8, 16, 16)
    line[:, :, :, 5] = 1.0  # a vertical line on an odd column
    pooled = build_model(ModelConfig(width=8, downsample="max")).blocks[0].pool(line)
    assert pooled.amax() == 1.0
    assert line[:, :, ::2, ::2].amax() == 0.0


def test_smokenet_starts_every_residual_block_as_the_identity_branch() -> None:
    model = build_model(ModelConfig(width=8, input_size=48, resize_size=48))
    assert all(not block.body[-1].weight.detach().any() for block in model.blocks)


def test_local_weights_load_what_matches_and_leave_the_head(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(source.state_dict(), path)
    model = build_model(ModelConfig(arch="resnet18", init_weights=str(path), input_size=64))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.weight.shape == (2, 512)


def test_local_weights_errors_name_the_remedy(tmp_path: Path) -> None:
    model = build_model(ModelConfig(width=8, input_size=48, resize_size=48))
    with pytest.raises(FileNotFoundError, match=r"give a local \.pth state dict"):
        load_matching_weights(model, tmp_path / "missing.pth")
    path = tmp_path / "other.pth"
    torch.save({"unrelated.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"no tensor .* matches the SmokeNet model"):
        load_matching_weights(model, path)


def test_torchscript_round_trip_gives_the_same_logits(tmp_path: Path) -> None:
    model = build_model(ModelConfig(width=8, input_size=48, resize_size=48)).eval()
    batch = torch.randn(4, 3, 48, 48)
    with quiet_torchscript():
        torch.jit.save(torch.jit.freeze(torch.jit.script(model)), str(tmp_path / "m.pt"))
    with torch.inference_mode():
        assert torch.allclose(load_torchscript(tmp_path / "m.pt")(batch), model(batch), atol=1e-5)
