"""``inbox_daemon.memory``: what every daemon process sets at its start, checked in a real
process against the real C library (the daemon and its worker processes: test_worker_processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and Linux's prctl")

# threads that allocate at once, then glibc's own report of its arenas (malloc_stats, on stderr)
_THREADS_ALLOCATE = """
import ctypes, sys, threading
{tune}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(4)
def allocate():
    start.wait()
    for _ in range(2000):
        libc.free(libc.malloc(256 * 1024))
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


def _arenas(tune: bool) -> int:
    code = _THREADS_ALLOCATE.format(tune="from inbox_daemon import memory; memory.tune()" if tune else "")
    report = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    if "Arena 0:" not in report:
        pytest.skip("this C library gives no malloc_stats report of its arenas (not glibc)")
    return sum(line.startswith("Arena ") for line in report.splitlines())


def test_threads_of_a_tuned_process_share_one_malloc_arena():
    assert _arenas(tune=False) > 1           # glibc's default: an arena for each thread here
    assert _arenas(tune=True) == 1


def test_a_tuned_process_and_its_children_have_no_transparent_huge_pages():
    # the flag is inherited: this test's process may have it from a command run in it, so the
    # process checked first gives itself the kernel's default back (huge pages allowed)
    code = ("import ctypes, subprocess, sys; from inbox_daemon import memory; "
            "ctypes.CDLL(None).prctl(memory.PR_SET_THP_DISABLE, 0, 0, 0, 0); "
            "print(open('/proc/self/status').read()); memory.tune(); "
            "print(open('/proc/self/status').read()); sys.stdout.flush(); "
            "subprocess.run(['cat', '/proc/self/status'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    flags = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("THP_enabled:")]
    if not flags:
        pytest.skip("this kernel does not say whether a process may have transparent huge pages")
    assert flags == ["1", "0", "0"]           # before, after, and a program it ran
