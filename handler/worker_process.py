"""What the handler changes in the TorchServe worker process it runs in, beyond its own objects.

The worker is a long-lived Python process that TorchServe starts, loads our handler into and then
feeds one batch after another. Three process-wide habits of it cost every request something, and
`prepare_worker_process` removes them once the model is loaded: a full garbage collection that
walks every object of torch and TorchServe, a log line per batch, and a C allocator that hands
the memory of each forward pass back to the kernel only to fault it in again for the next.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

logger = logging.getLogger(__name__)

# TorchServe 0.12's worker logs this on the root logger for every batch it receives.
BATCH_NOTICE = "Backend received inference at: %d"

# glibc's mallopt parameters (malloc.h) and the values the worker sets; see `keep_freed_memory`.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 * 2**20


class QuietBatchNotice(logging.Filter):
    """Drops TorchServe's per-batch "Backend received inference at" line and nothing else.

    The worker writes that line to its standard output for every batch, and the frontend reads
    it back and writes it to model_log.log: CPU on both sides of the request path, for a time
    stamp that the access log and the metrics already carry.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != BATCH_NOTICE


def prepare_worker_process() -> None:
    """Quietens the per-batch log line, keeps freed memory mapped and freezes the objects that
    live as long as the worker.

    A worker that has loaded torch, TorchServe and the model holds about 340 000 objects, and a
    full collection walks all of them: 140-190 ms during which the worker answers nothing, the
    first one due a few seconds into serving. `gc.freeze` moves them out of the collector's
    reach, so that a full collection takes well under a millisecond; what is allocated later is
    collected as usual. Safe to call more than once.
    """
    root = logging.getLogger()
    if not any(isinstance(f, QuietBatchNotice) for f in root.filters):
        root.addFilter(QuietBatchNotice())
    keep_freed_memory()
    gc.collect()
    gc.freeze()


def keep_freed_memory() -> bool:
    """Makes glibc keep the memory a batch frees for the next batch instead of unmapping it.

    By default glibc serves every allocation above a threshold (128 kB, raised as large blocks
    are freed) with a fresh mmap and returns it to the kernel on free, and it trims the top of
    the heap once 128 kB of it are free. A forward pass allocates and frees megabytes of
    activations, so each photo faulted in about 1 250 fresh pages, which the kernel zeroes
    first: a sixth of the handler's time on our machine (10.6 against 8.8 ms per photo). With
    allocations up to 32 MB served from the heap and up to 256 MB of free heap kept, the pages
    stay mapped; the price is that the worker holds on to what its largest batch needed.
    Returns False, and changes nothing, where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        mallopt = None
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(
            M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES
        ):
            return True
    logger.info("The C library (%s) keeps its own allocation habits: not glibc", name)
    return False
