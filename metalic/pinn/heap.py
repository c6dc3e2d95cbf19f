"""Keep freed training buffers in the process heap instead of handing them back to the system.

A training step on a CPU allocates and frees the same few hundred tensors, many above glibc's
mmap threshold (128 KiB at start, raised as large blocks are freed). Blocks above the threshold are
mapped and unmapped each time, and free memory at the top of the heap above the trim threshold is
returned; either way the next step touches fresh pages and pays a page fault per 4 KiB. Measured
here (all nine terms, one run, compiled): a second training in the same process faulted about
1,200 pages per L-BFGS iteration and ran 2.6 -> 3.1-4.2 ms per iteration; eager steps faulted
about 800 pages each. Fixed thresholds (mmap for blocks of 32 MiB and more only, trim above
512 MiB free) stop both; the price is that a process keeps up to its peak heap.

``keep_freed_memory()`` sets them once per process through ``mallopt`` (glibc only; elsewhere,
or with ``METALIC_TUNE_HEAP=false``, it does nothing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 512 * 1024 * 1024

_done: bool | None = None  # None: not tried; else whether the thresholds are set


def keep_freed_memory() -> bool:
    """Set the heap thresholds (first call only); True when they are set in this process."""
    global _done
    if _done is None:
        _done = _set_thresholds()
    return _done


def _set_thresholds() -> bool:
    from metalic.settings import get_settings

    if not get_settings().tune_heap or os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
