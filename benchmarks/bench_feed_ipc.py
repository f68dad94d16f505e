"""What handing a call to a child process costs the server: ProcessPoolExecutor against a pipe per child.

    python -m benchmarks.bench_feed_ipc [--calls 2000] [--rounds 3]

The choice behind serving/feed_processes.py. One child, an empty task (a small request
in, a reply the size of a short feed's metadata out), calls one at a time from an asyncio
loop: the latency per call and the CPU the calling process spends on it, both ways in
turns. A ``ProcessPoolExecutor`` moves each call through two threads of the caller (its
queue feeder and its result thread); a pipe per child is written and read by the event
loop itself.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection

REQUEST = (b"u" * 60, 1.0, "request-id")


def empty_task(request: bytes, now: float, request_id: str) -> tuple[bytes, None, dict, dict]:
    return request * 20, None, {"embedding_neighbours": 150}, {"out_of_stock": 3}


def pipe_child(pipe: Connection) -> None:
    while True:
        try:
            request = pipe.recv_bytes()
        except EOFError:
            return
        pipe.send_bytes(pickle.dumps(empty_task(*pickle.loads(request))))


async def through_executor(pool: ProcessPoolExecutor, calls: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(calls):
        await loop.run_in_executor(pool, empty_task, *REQUEST)


async def through_pipe(pipe: Connection, calls: int) -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future | None = None

    def on_reply() -> None:
        reply.set_result(pickle.loads(pipe.recv_bytes()))

    loop.add_reader(pipe.fileno(), on_reply)
    try:
        for _ in range(calls):
            reply = loop.create_future()
            pipe.send_bytes(pickle.dumps(REQUEST))
            await reply
    finally:
        loop.remove_reader(pipe.fileno())


def timed(calls: int, run) -> tuple[float, float]:
    """(µs of latency, µs of this process's CPU) per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(run)
    return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_feed_ipc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and transport (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the transports in turns (default: %(default)s)")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        ours, theirs = context.Pipe()
        child = context.Process(target=pipe_child, args=(theirs,), daemon=True)
        child.start()
        theirs.close()
        timed(100, through_executor(pool, 100))  # both warm: the child started, the code paths run once
        timed(100, through_pipe(ours, 100))
        print(f"{'round':>5} {'transport':<22} {'latency µs':>11} {'caller CPU µs':>14}")
        for round_ in range(1, args.rounds + 1):
            for name, run in (("ProcessPoolExecutor", through_executor(pool, args.calls)), ("pipe per child", through_pipe(ours, args.calls))):
                latency, cpu = timed(args.calls, run)
                print(f"{round_:>5} {name:<22} {latency:>11.0f} {cpu:>14.0f}")
        ours.close()
        child.join()


if __name__ == "__main__":
    main()
