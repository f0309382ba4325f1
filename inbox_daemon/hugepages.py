"""The daemon's processes run without transparent huge pages.

Arrow's allocator (mimalloc) asks for huge pages where the kernel lets a process opt in (THP in
``madvise`` mode, as on this machine): a page fault then zeroes 2 MB at once, and the whole 2 MB
counts in the resident size. The pipeline gives freed memory back every few blocks to keep a
file's peak flat (``pipeline._give_back_memory``), so the next blocks fault such pages in again.
Without them, on the 500k-row fresh import, interleaved (``bench/README.md``): 2.93–2.95 s
against 3.05–3.23 s, peak RSS 307–311 MB against 342–349 MB. The floor script, which gives
nothing back, gains no time from it (2.80–2.85 s against 2.82–2.89 s).
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_THP_DISABLE = 41     # <linux/prctl.h>; Linux 3.15 and later


def turn_off() -> None:
    """No transparent huge pages for this process from now on, nor for the processes it starts
    (the flag is inherited by ``fork`` and kept across ``exec``: the worker processes have it).
    Elsewhere than on Linux, or where the call is refused (a seccomp filter), nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
