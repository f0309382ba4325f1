"""How the daemon's processes use memory, set once at each one's start (``tune``).

- **No transparent huge pages.** Arrow's allocator (mimalloc) asks for huge pages where the
  kernel lets a process opt in (THP in ``madvise`` mode, as on this machine): a page fault then
  zeroes 2 MB at once, and the whole 2 MB counts in the resident size. The pipeline gives freed
  memory back every few blocks to keep a file's peak flat (``pipeline._give_back_memory``), so
  the next blocks faulted such pages in again. Without them, the 500k-row fresh import took
  2.93–2.95 s against 3.05–3.23 s, peak RSS 307–311 MB against 342–349 MB (interleaved); the
  floor script, which gives nothing back, gains no time from it (2.80–2.85 s against 2.82–2.89 s).
- **One malloc arena.** glibc gives each thread that contends for malloc an arena of its own
  (up to eight per core), and numpy's arrays, the reader's buffers and SQLite's pages are malloc
  memory: freed in one thread's arena while the next block allocates in another's, it stayed
  with the process. Half of the 5M-row imports held 60–130 MB of such free memory for seconds
  (peak RSS 421–428 MB against 350–358 MB); with one arena, none of six did, and the 500k
  import's time did not change (3.05–3.15 s against 3.09–3.19 s, interleaved).

Linux with glibc only; elsewhere, or where a call is refused (a seccomp filter), nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_THP_DISABLE = 41     # <linux/prctl.h>; Linux 3.15 and later
M_ARENA_MAX = -8            # <malloc.h>


def tune() -> None:
    """No transparent huge pages for this process (nor for those it starts: the flag is
    inherited by ``fork`` and kept across ``exec``) and one malloc arena. Called before the
    process starts its threads: an arena made before stays."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)
        if hasattr(libc, "mallopt"):            # glibc (musl has no arenas to limit)
            libc.mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass
