"""inbox-daemon: partner catalog files in, exactly-once catalog changes out."""

import os

__version__ = "0.1.0"

# numpy's OpenBLAS starts a thread per core when numpy is imported, and those threads spin
# while they wait for work. The daemon does no linear algebra: on two cores the spinning took
# ~0.1 s of CPU from each large file's import, beside its own threads (perf: 5 % of the samples
# of a 500k-row re-send in ``blas_thread_server``). Read by OpenBLAS when it loads, so set
# here, before any of the daemon's modules imports numpy (the command line and the worker
# processes import this package first); an operator's own OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
