"""What `prepare_worker_process` changes in the process: the C allocator's habits.

Each check runs in a fresh interpreter, since the allocator settings are process-wide and the
test process has long since warmed its heap up.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# Allocates four 100 kB blocks with malloc, writes them and frees them, fifty times, and prints
# the minor page faults of those rounds. 400 kB freed at the top of the heap is more than glibc's
# default trim threshold (128 kB), so by default every round hands the pages back to the kernel
# and the next round faults them in again.
ROUNDS = """
import ctypes, resource, sys
from handler.worker_process import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def one_round():
    blocks = [libc.malloc(100_000) for _ in range(4)]
    for block in blocks:
        ctypes.memset(block, 1, 100_000)
    for block in reversed(blocks):
        libc.free(block)

one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_rounds(mode: str) -> int:
    finished = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(finished.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_freed_memory_stays_mapped_for_the_next_batch() -> None:
    default = page_faults_of_rounds("default")
    kept = page_faults_of_rounds("keep")
    # 50 rounds of about 100 pages each by default; the pages stay mapped once kept.
    assert default > 1_000, f"glibc returned no memory by default ({default} faults)"
    assert kept < 100, f"{kept} page faults with the memory kept"
