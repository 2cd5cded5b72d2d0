"""Shapes of every architecture, loading local weights, and the TorchScript round trip."""

from __future__ import annotations

import threading
import typing
from pathlib import Path

import pytest
import torch
import torchvision

from handler.preprocessing import PreprocessSpec, build_eval_transform, decode_image
from handler.torchscript import SplitForward, load_torchscript, quiet_torchscript
from training.config import ModelConfig
from training.efficientnet_lite import SamePadConv2d, packaged_state_dict
from training.export import InferenceModel
from training.model import build_model, load_matching_weights

# Every architecture the config accepts, so that a new one cannot go untested.
ARCHS = list(typing.get_args(typing.get_type_hints(ModelConfig)["arch"]))


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


@pytest.mark.parametrize("parts", [2, 3])
def test_a_batch_cut_into_slices_gets_the_logits_of_the_whole_batch(
    tmp_path: Path, parts: int
) -> None:
    model = build_model(ModelConfig(width=8, input_size=48, resize_size=48)).eval()
    with quiet_torchscript():
        torch.jit.save(torch.jit.freeze(torch.jit.script(model)), str(tmp_path / "m.pt"))
    scripted = load_torchscript(tmp_path / "m.pt")
    forward = SplitForward(scripted, parts)
    try:
        for size in range(1, 6):
            batch = torch.randn(size, 3, 48, 48)
            with torch.inference_mode():
                whole = scripted(batch)
            sliced = forward(batch)
            assert sliced.shape == (size, 2)
            assert torch.allclose(sliced, whole, atol=1e-5), size
        names = {thread.name for thread in threading.enumerate()}
        assert any(name.startswith("smoke-forward") for name in names)
    finally:
        forward.close()


def test_packaged_imagenet_weights_fill_every_tensor_of_efficientnet_lite0_but_the_head() -> None:
    packaged = packaged_state_dict()
    model = build_model(ModelConfig(arch="efficientnet_lite0", pretrained=True, input_size=64))
    own = model.state_dict()
    assert set(packaged) == set(own), "every packaged tensor must find its place in our module"
    loaded = [key for key in own if not key.startswith("classifier.")]
    assert all(torch.equal(own[key], packaged[key]) for key in loaded)
    assert packaged["classifier.weight"].shape == (1000, 1280)
    assert own["classifier.weight"].shape == (2, 1280)


@pytest.mark.parametrize(("size", "kernel", "stride"), [(160, 3, 2), (161, 5, 2), (20, 5, 1)])
def test_same_padding_pads_like_tensorflow(size: int, kernel: int, stride: int) -> None:
    """TensorFlow's SAME output is ceil(size / stride), the extra pad going bottom and right."""
    conv = SamePadConv2d(1, 1, kernel, stride)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        image = torch.ones(1, 1, size, size)
        out = conv(image)
    expected = -(-size // stride)
    assert out.shape[-2:] == (expected, expected)
    total = max((expected - 1) * stride + kernel - size, 0)
    # The top-left output sees `total // 2` padded rows and columns, never more.
    assert out[0, 0, 0, 0] == (kernel - total // 2) ** 2


def test_channels_last_inside_the_served_model_changes_no_answer() -> None:
    model = build_model(ModelConfig(arch="efficientnet_lite0", input_size=64)).eval()
    batch = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        nchw = InferenceModel(model, 1.5, channels_last=False)(batch)
        nhwc = InferenceModel(model, 1.5, channels_last=True)(batch)
    assert torch.allclose(nchw, nhwc, atol=1e-5)


def _pooled_features(
    model: torch.nn.Module, paths: list[Path], spec: PreprocessSpec
) -> torch.Tensor:
    transform = build_eval_transform(spec)
    batch = torch.stack([transform(decode_image(path.read_bytes())) for path in paths])
    with torch.inference_mode():
        return model.features(batch)


@pytest.mark.slow
@pytest.mark.real_data
def test_packaged_imagenet_features_alone_tell_smoking_photos_apart(real_data_root: Path) -> None:
    """A linear probe on the frozen packaged features, against the same probe on random weights.

    This is what makes the real-photo recipe work without a download: if the weights, the
    TensorFlow padding or the normalisation were wrong, the frozen features would carry little
    more than random ones do.
    """
    spec = PreprocessSpec(input_size=160, resize_size=176, mean=(0.5,) * 3, std=(0.5,) * 3)
    splits = {
        name: sorted((real_data_root / name).glob("*/*.jpg"))[::2] for name in ("train", "val")
    }
    labels = {
        name: torch.tensor([int(path.parent.name == "smoking") for path in paths])
        for name, paths in splits.items()
    }
    accuracy = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        config = ModelConfig(
            arch="efficientnet_lite0", pretrained=pretrained, input_size=160, resize_size=176
        )
        model = build_model(config).eval()
        train_x, val_x = (_pooled_features(model, splits[n], spec) for n in ("train", "val"))
        mean, std = train_x.mean(0), train_x.std(0) + 1e-6
        probe = _fit_linear_probe((train_x - mean) / std, labels["train"])
        predicted = probe((val_x - mean) / std).argmax(1)
        accuracy[pretrained] = float((predicted == labels["val"]).float().mean())
    assert accuracy[True] >= 0.85, accuracy
    assert accuracy[True] >= accuracy[False] + 0.15, accuracy


def _fit_linear_probe(features: torch.Tensor, labels: torch.Tensor) -> torch.nn.Linear:
    probe = torch.nn.Linear(features.shape[1], 2)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(features), labels)
        loss = loss + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe
