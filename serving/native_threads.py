"""Native thread settings of a server process: one BLAS and one faiss thread per request thread."""

from __future__ import annotations

import sys

GIL_SWITCH_INTERVAL = 0.001


def limit_native_threads() -> None:
    """Process-wide: one BLAS thread, and a 1 ms GIL switch interval; and ``one_faiss_thread``
    for the calling thread.

    Parallel BLAS calls from request threads otherwise fight for the cores. Python's default
    switch interval is 5 ms: with every feed thread busy, a health Check needs the GIL
    several times, and at 5 ms it waited past 100 ms in 3 of 4 floods of 200 deep GetFeeds;
    at 1 ms in none, with no loss of throughput measured (benchmarks/bench_health_flood.py).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    one_faiss_thread()


def one_faiss_thread() -> None:
    """One OpenMP thread for the faiss searches of the calling thread.

    OpenMP keeps the thread count per thread: a thread that never set it searches with
    one OpenMP thread per core. For one query that is 3x slower (hnsw-mips, 50k items,
    k = 40: 0.21 against 0.064 ms) and keeps another core spinning. So every thread that
    builds feeds calls this first: the event loop, the feed pool, the HTTP workers.
    """
    import faiss

    faiss.omp_set_num_threads(1)
