"""What a copy of the memory store costs a feed process (``--feed-processes`` on the memory store).

    python -m benchmarks.bench_store_copy --data DIR

Loads the memory store from DIR, then times ``pickled_state`` (held under the store's
lock: how long Ingest waits when a feed process starts or is replaced) and the
unpickling a child does, and reports the state's size and this process's resident memory
after each step.
"""

from __future__ import annotations

import argparse
import pickle
import time

from serving.store_url import open_store


def resident_mb() -> int:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) // 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_store_copy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory (python -m training generate)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a bar while the store loads (default: --progress)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        store = open_store("memory", args.data, progress=args.progress)
    except ValueError as error:  # a missing or broken dataset: its file, line and column
        parser.exit(2, f"{parser.prog}: {error}\n")
    loaded = time.perf_counter()
    print(f"load: {loaded - started:.1f} s, resident {resident_mb()} MB", flush=True)
    state = store.pickled_state()
    pickled = time.perf_counter()
    print(f"state: {len(state) / 1e6:.0f} MB, pickled in {pickled - loaded:.2f} s under the store's lock, "
          f"resident {resident_mb()} MB", flush=True)
    del store
    pickle.loads(state)
    print(f"unpickled (as a feed process does) in {time.perf_counter() - pickled:.2f} s, resident {resident_mb()} MB")


if __name__ == "__main__":
    main()
