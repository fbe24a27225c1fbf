"""Callback benchmark: asyncio vs uvloop vs aiolowlat on what coroutine-heavy code does most.

No I/O: the cost of scheduling and running callbacks, task steps, futures and timers, the
part of a loop that a strategy with many tasks pays on every await. Each run is a fresh
process pinned to one core; loops are interleaved over rounds and the median is reported.

    python benchmarks/loop_callbacks.py              # 5 rounds, about a minute
    python benchmarks/loop_callbacks.py --quick      # 2 rounds

Output: one JSON line per (case, loop), then a table; "vs uvloop" is the ratio of ns per
operation to uvloop's in the same run (lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import time

LOOPS = ("asyncio", "uvloop", "aiolowlat")


async def sleep0(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def callback_chain(n: int, later: bool) -> None:
    """n callbacks, each scheduling the next: by call_soon, or by call_later(0)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [n + 1]  # the first tick, below, only schedules

    def tick():
        left[0] -= 1
        if not left[0]:
            done.set_result(None)
        elif later:
            loop.call_later(0, tick)
        else:
            loop.call_soon(tick)

    tick()
    await done


async def future_chain(n: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut


async def many_tasks(n: int) -> None:
    # n operations: batches of 1,000 tasks, each awaiting sleep(0) ten times, gathered
    for _ in range(max(1, n // 10_000)):
        await asyncio.gather(*(sleep0(10) for _ in range(1000)))


# case -> (body, operations per run); each body performs n operations
CASES = {
    "sleep0": (sleep0, 200_000),
    "call_soon_chain": (functools.partial(callback_chain, later=False), 300_000),
    "future_chain": (future_chain, 100_000),
    "call_later0_chain": (functools.partial(callback_chain, later=True), 100_000),
    "tasks_1000x10": (many_tasks, 200_000),
}


def child(case: str, kind: str) -> None:
    """Run one case once on one loop; print its ns per operation as JSON."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    body, n = CASES[case]
    if kind == "asyncio":
        loop_factory = asyncio.SelectorEventLoop
    elif kind == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    else:
        import aiolowlat

        loop_factory = aiolowlat.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(body(n // 10))  # warm-up
        started = time.perf_counter_ns()
        runner.run(body(n))
        elapsed = time.perf_counter_ns() - started
    print(json.dumps({"ns_per_op": elapsed / n}))


def run_once(case: str, kind: str, timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, __file__, "--child", case, kind],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"not done within {timeout:g} s"}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-200:]}"}
    return json.loads(done.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 5, quick 2)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma separated subset")
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma separated subset")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    cases = [c for c in args.cases.split(",") if c]
    loops = [k for k in args.loops.split(",") if k]
    unknown = [c for c in cases if c not in CASES] + [k for k in loops if k not in LOOPS]
    if unknown:
        raise SystemExit(f"unknown: {','.join(unknown)}")
    rounds = args.rounds or (2 if args.quick else 5)
    rows = []
    for case in cases:
        runs: dict[str, list[dict]] = {kind: [] for kind in loops}
        for i in range(rounds):
            for kind in loops if i % 2 == 0 else loops[::-1]:  # interleaved, drift cancels
                runs[kind].append(run_once(case, kind, timeout=120))
        for kind in loops:
            ok = [r["ns_per_op"] for r in runs[kind] if "ns_per_op" in r]
            row = {"bench": "loop_callbacks", "case": case, "impl": kind, "loop": kind,
                   "rounds": len(ok)}
            if ok:
                row["ns_per_op"] = round(statistics.median(ok), 1)
            errors = [r["error"] for r in runs[kind] if "error" in r]
            if errors:
                row["error"] = errors[0]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'case':<20} {'loop':<10} {'ns/op':>9}  vs uvloop")
    for row in rows:
        base = next((r for r in rows if r["case"] == row["case"] and r["loop"] == "uvloop"), {})
        ratio = (f"{row['ns_per_op'] / base['ns_per_op']:.2f}x"
                 if "ns_per_op" in row and base.get("ns_per_op") else "-")
        value = f"{row['ns_per_op']:,.0f}" if "ns_per_op" in row else "-"
        line = f"{row['case']:<20} {row['loop']:<10} {value:>9}  {ratio}"
        print(line + (f" error: {row['error'][:80]}" if "error" in row else ""))
    print("vs uvloop: ns per operation over uvloop's in the same run (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
