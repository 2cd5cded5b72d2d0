"""What the handler changes in the TorchServe worker process it runs in, beyond its own objects.

The worker is a long-lived Python process that TorchServe starts, loads our handler into and then
feeds one batch after another. Two process-wide habits of it cost every request something, and
`prepare_worker_process` removes both once the model is loaded: a full garbage collection that
walks every object of torch and TorchServe, and a log line per batch.
"""

from __future__ import annotations

import gc
import logging

# TorchServe 0.12's worker logs this on the root logger for every batch it receives.
BATCH_NOTICE = "Backend received inference at: %d"


class QuietBatchNotice(logging.Filter):
    """Drops TorchServe's per-batch "Backend received inference at" line and nothing else.

    The worker writes that line to its standard output for every batch, and the frontend reads
    it back and writes it to model_log.log: CPU on both sides of the request path, for a time
    stamp that the access log and the metrics already carry.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != BATCH_NOTICE


def prepare_worker_process() -> None:
    """Quietens the per-batch log line and freezes the objects that live as long as the worker.

    A worker that has loaded torch, TorchServe and the model holds about 340 000 objects, and a
    full collection walks all of them: 140-190 ms during which the worker answers nothing, the
    first one due a few seconds into serving. `gc.freeze` moves them out of the collector's
    reach, so that a full collection takes well under a millisecond; what is allocated later is
    collected as usual. Safe to call more than once.
    """
    root = logging.getLogger()
    if not any(isinstance(f, QuietBatchNotice) for f in root.filters):
        root.addFilter(QuietBatchNotice())
    gc.collect()
    gc.freeze()
