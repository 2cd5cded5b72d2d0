"""TorchServe's stock `image_classifier` handler, changed only as far as our model needs.

This is the baseline of `python -m scripts.bench`: what a user gets by serving our TorchScript
model with the handler TorchServe ships (`--handler image_classifier`) instead of ours. It is
packaged into its own archive with `preprocess.json` and `index_to_name.json` and no model
config, so TorchServe's defaults apply to workers, batching and torch threads. Changed from the
stock `ts.torch_handler.image_classifier.ImageClassifier`, and why:

- `topk` is the number of classes (2) instead of 5: `torch.topk(k=5)` fails on a 2-class output,
  so the stock handler answers every request with an error.
- The transform resizes to `resize_size`, crops `input_size` and normalises with `mean`/`std`
  from `preprocess.json` instead of 256 / 224 / the ImageNet statistics: the model was trained
  on that input, and a 224 px crop would cost a 160 px model about twice the arithmetic,
  which would measure the wrong input rather than the handler. The stock transform classes
  (torchvision.transforms v1: Resize, CenterCrop, ToTensor, Normalize) are kept.
- When captum is not installed, a stand-in `captum.attr.IntegratedGradients` is registered
  before the stock handler is imported, because its base class `VisionHandler` imports captum
  at import time only to serve /explanations. The stand-in refuses explanations; predictions
  never touch it. Installing captum makes the real one load instead.

Everything else (decoding without JPEG draft mode, one photo after another, the answer format
`{"<class>": probability, ...}`, errors on bad photos) is the stock behaviour, measured as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

from torchvision import transforms


def provide_captum_stand_in() -> None:
    """Registers a minimal `captum.attr` module when captum is not installed."""
    if "captum.attr" in sys.modules or importlib.util.find_spec("captum") is not None:
        return

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError("explanations need captum: pip install captum")

    stand_in = type(
        "IntegratedGradients",
        (),
        {"__init__": lambda self, model: None, "attribute": refuse, "__module__": "captum.attr"},
    )
    captum = types.ModuleType("captum")
    attr = types.ModuleType("captum.attr")
    attr.IntegratedGradients = stand_in
    captum.attr = attr
    sys.modules.update({"captum": captum, "captum.attr": attr})


def import_image_classifier() -> type:
    """TorchServe's stock `ImageClassifier` class, importable with or without captum."""
    provide_captum_stand_in()
    return importlib.import_module("ts.torch_handler.image_classifier").ImageClassifier


class StockImageClassifier(import_image_classifier()):
    """The stock image classifier with our model's class count and input transform."""

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        model_dir = Path(context.system_properties["model_dir"])
        with open(model_dir / "preprocess.json", encoding="utf-8") as f:
            spec = json.load(f)
        self.set_max_result_classes(len(self.mapping))
        self.image_processing = transforms.Compose(
            [
                transforms.Resize(spec["resize_size"]),
                transforms.CenterCrop(spec["input_size"]),
                transforms.ToTensor(),
                transforms.Normalize(mean=spec["mean"], std=spec["std"]),
            ]
        )
