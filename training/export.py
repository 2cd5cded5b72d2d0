"""Export of a trained classifier as the frozen TorchScript model that TorchServe serves.

The exported `model.pt` takes normalised `(N, 3, S, S)` photos and returns calibrated logits
`(N, C)`: the softmax temperature, and optionally the average over the photo and its mirror
image, are folded into the graph, and so is the move of the batch to channels-last memory
layout, which makes the convolutions of a CPU forward pass about a third faster. Beside it go
`index_to_name.json` and `preprocess.json`. The export is checked against the eager model on
real photos and fails loudly on any mismatch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from handler.preprocessing import PreprocessSpec
from handler.torchscript import load_torchscript, quiet_torchscript

logger = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The TorchScript model does not reproduce the eager model."""


class InferenceModel(nn.Module):
    """What is served: the classifier, optional mirror-image averaging, then the temperature.

    `channels_last` reorders the batch in memory before the classifier sees it (the values are
    the same; oneDNN's convolutions run faster on that layout).
    """

    def __init__(
        self,
        classifier: nn.Module,
        temperature: float = 1.0,
        tta_hflip: bool = False,
        channels_last: bool = True,
    ):
        super().__init__()
        self.classifier = classifier
        self.tta_hflip = tta_hflip
        self.channels_last = channels_last
        self.register_buffer("inverse_temperature", torch.tensor(1.0 / temperature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, S, S) normalised -> (N, C) logits divided by the temperature
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.classifier(x)
        if self.tta_hflip:
            logits = 0.5 * (logits + self.classifier(torch.flip(x, dims=[3])))
        return logits * self.inverse_temperature


def export_torchscript(
    model: InferenceModel,
    spec: PreprocessSpec,
    out_dir: Path,
    check_images: Sequence[torch.Tensor],
    tolerance: float = 1e-4,
) -> Path:
    """Writes `model.pt`, `index_to_name.json` and `preprocess.json` into `out_dir`.

    Args:
        model: the eager model to export; it is put in eval mode.
        spec: the preprocessing and answer settings, saved as `preprocess.json`.
        out_dir: created if needed.
        check_images: preprocessed real photos `(3, S, S)`; the saved and reloaded model must
            match the eager one on them within `tolerance`.

    Raises:
        ExportError: the reloaded TorchScript outputs differ from the eager outputs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    batch = torch.stack(list(check_images))  # (N, 3, S, S)
    with quiet_torchscript(), torch.inference_mode():
        scripted = torch.jit.freeze(torch.jit.script(model))
        path = out_dir / "model.pt"
        torch.jit.save(scripted, str(path))
    check_parity(model, path, batch, tolerance)
    with open(out_dir / "index_to_name.json", "w", encoding="utf-8") as f:
        json.dump({str(i): name for i, name in enumerate(spec.class_names)}, f, indent=2)
        f.write("\n")
    spec.save(out_dir / "preprocess.json")
    logger.info("Exported TorchScript model to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def check_parity(model: nn.Module, path: Path, batch: torch.Tensor, tolerance: float) -> float:
    """Returns the largest absolute difference between eager and reloaded outputs.

    Raises:
        ExportError: when it exceeds `tolerance`.
    """
    with torch.inference_mode():
        expected = model.eval()(batch)
        actual = load_torchscript(path)(batch)
    difference = float((expected - actual).abs().max())
    if not difference <= tolerance:
        raise ExportError(
            f"TorchScript export {path} differs from the eager model by {difference:.2e} on "
            f"{len(batch)} photos (tolerance {tolerance:.0e}); the export is not trustworthy"
        )
    logger.info("Export parity on %d photos: max |difference| = %.2e", len(batch), difference)
    return difference
