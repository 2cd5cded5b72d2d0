"""Saving and loading TorchScript models without the deprecation noise.

TorchScript is deprecated in current PyTorch (every `torch.jit` call warns and points to
`torch.export`), yet it is the format TorchServe 0.12 loads without extra code, so it is the
format we ship. `quiet_torchscript` silences exactly those deprecation warnings, and only inside
its `with` block; every other warning still reaches the user. When TorchServe gains a maintained
loader for `torch.export` programs, the export and this module are the two places to change.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Ignores the FutureWarnings that `torch.jit.*` raise about their own deprecation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=FutureWarning)
        yield


def load_torchscript(
    path: str | Path, device: torch.device | str = "cpu"
) -> torch.jit.ScriptModule:
    """Loads a TorchScript file onto `device`, in eval mode."""
    with quiet_torchscript():
        model = torch.jit.load(str(path), map_location=device)
    return model.eval()
