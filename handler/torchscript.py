"""Saving, loading and running TorchScript models, without the deprecation noise.

TorchScript is deprecated in current PyTorch (every `torch.jit` call warns and points to
`torch.export`), yet it is the format TorchServe 0.12 loads without extra code, so it is the
format we ship. `quiet_torchscript` silences exactly those deprecation warnings, and only inside
its `with` block; every other warning still reaches the user. When TorchServe gains a maintained
loader for `torch.export` programs, the export and this module are the two places to change.
`SplitForward` runs a model on a batch cut into slices, one thread each, to use several cores.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


class SplitForward:
    """Runs a TorchScript model on a batch cut into up to `parts` slices, each on its own thread.

    TorchScript releases the GIL while it runs, so the slices run at the same time, one core
    each, with the intra-op threads the process has (one in our configuration). On a 2-core CPU
    this is how a single worker keeps both cores busy: a second intra-op thread speeds up this
    network's depthwise convolutions far less than a second slice does (a batch of 4 took 17-20
    ms with 2 intra-op threads, 13-18 ms as two slices of 2). A single photo cannot be cut and
    runs on the calling thread. Meant for CPUs; with `parts=1` it is a plain call.
    """

    def __init__(self, model: torch.jit.ScriptModule, parts: int) -> None:
        self.model = model
        self.parts = parts
        self.pool = (
            ThreadPoolExecutor(max_workers=parts, thread_name_prefix="smoke-forward")
            if parts > 1
            else None
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        # (N, 3, S, S) normalised -> (N, C) logits
        if self.pool is None or len(batch) < 2:
            return self._run(batch)
        slices = batch.tensor_split(min(len(batch), self.parts))
        return torch.cat(list(self.pool.map(self._run, slices)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # per thread: inference mode is thread-local
            return self.model(batch)
