"""FIX codec and order round-trip benchmark: aiolowlat vs simplefix vs QuickFIX's binding.

Codec cases encode a whole message (header, body, BodyLength, CheckSum) and decode it back
(framing, CheckSum check, fields), per message: NewOrderSingle and ExecutionReport. Impls:
``aiolowlat`` (field list -> bytes -> FixMessage), ``aiolowlat-typed`` (msgspec Struct ->
bytes -> Struct), ``simplefix``, ``quickfix`` (C++ behind SWIG). Rounds interleave the impls;
the median round is reported. The round-trip case sends a NewOrderSingle and times the
ExecutionReport from the simulator exchange in another process on the same core, per loop
(both sides on that loop kind). Table ratios: codec cases against simplefix's msgs/s (the
target is >= 3x), round trips against asyncio's p50.

    python benchmarks/fix_codec.py            # full, ~2 min
    python benchmarks/fix_codec.py --quick    # under 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quickfix  # noqa: E402
import simplefix  # noqa: E402
from loop_echo import enter_child, new_loop  # noqa: E402  (the house helpers)

from aiolowlat.fix import (  # noqa: E402
    ExecutionReport,
    FixInitiator,
    FrameReader,
    NewOrderSingle,
    SessionConfig,
    SessionSettings,
    decode,
    encode,
    from_fix,
)
from aiolowlat.protocols.fix.codec import format_utc  # noqa: E402

BEGIN = b"FIX.4.4"
NOW = format_utc(1_700_000_000.123)
HEADER = [(49, b"CLIENT01"), (56, b"EXCHANGE"), (34, 123456), (52, NOW)]
NOS = NewOrderSingle(cl_ord_id="ORD-00012345", symbol="AAPL", side="1", order_qty=100,
                     price=187.25, time_in_force="0", account="ACC-7", transact_time=1.7e9)
ER = ExecutionReport(order_id="X-998877", cl_ord_id="ORD-00012345", exec_id="E-55443322",
                     exec_type="F", ord_status="1", symbol="AAPL", side="1", order_qty=100,
                     ord_type="2", price=187.25, last_qty=40, last_px=187.24, leaves_qty=60,
                     cum_qty=40, avg_px=187.24, transact_time=1.7e9)
MESSAGES = {"nos": NOS, "er": ER}


def as_pairs(msg) -> list[tuple[int, bytes]]:
    return HEADER[:2] + [(34, b"123456"), HEADER[3]] + msg.to_fields()


# ---- one encode+decode per impl ----------------------------------------------------------------


def make_aiolowlat(msg):
    msg_type, fields = msg.MSG_TYPE, HEADER + msg.to_fields()

    def once():
        frame = encode(BEGIN, msg_type, fields)
        reader = FrameReader()
        reader.feed(frame)
        for f in reader.frames():
            return decode(f)

    return once


def make_aiolowlat_typed(msg):
    msg_type = msg.MSG_TYPE

    def once():
        frame = encode(BEGIN, msg_type, HEADER + msg.to_fields())
        reader = FrameReader()
        reader.feed(frame)
        for f in reader.frames():
            return from_fix(decode(f))

    return once


def make_simplefix(msg):
    pairs = as_pairs(msg)
    msg_type = msg.MSG_TYPE

    def once():
        m = simplefix.FixMessage()
        m.append_pair(8, BEGIN)
        m.append_pair(35, msg_type)
        for tag, value in pairs:
            m.append_pair(tag, value)
        parser = simplefix.FixParser()
        parser.append_buffer(m.encode())
        return parser.get_message()

    return once


def make_quickfix(msg):
    pairs = [(t, v.decode()) for t, v in as_pairs(msg)]
    msg_type = msg.MSG_TYPE.decode()
    header_tags = {49, 56, 34, 52}

    def once():
        m = quickfix.Message()
        header = m.getHeader()
        header.setField(quickfix.BeginString("FIX.4.4"))
        header.setField(quickfix.MsgType(msg_type))
        for tag, value in pairs:
            field = quickfix.StringField(tag, value)
            (header if tag in header_tags else m).setField(field)
        return quickfix.Message(m.toString(), False)

    return once


CODEC_IMPLS = {"aiolowlat": make_aiolowlat, "aiolowlat-typed": make_aiolowlat_typed,
               "simplefix": make_simplefix, "quickfix": make_quickfix}


def check_agreement() -> None:
    """Every impl round-trips the same fields (a benchmark of wrong answers is no benchmark)."""
    for msg in MESSAGES.values():
        ours = make_aiolowlat(msg)()
        theirs = make_simplefix(msg)()
        assert [(t, v) for t, v in zip(ours.tags, ours.values)] == [
            (int(t), v) for t, v in theirs.pairs], "simplefix disagrees"
        qf = make_quickfix(msg)()
        qf_fields = decode(qf.toString().encode())
        assert sorted(zip(qf_fields.tags, qf_fields.values)) == sorted(
            zip(ours.tags, ours.values)), "quickfix disagrees"  # it orders fields its own way
        assert make_aiolowlat_typed(msg)() == msg


def time_codec(once, count: int) -> float:
    """ns per encode+decode over ``count`` calls."""
    start = time.perf_counter_ns()
    for _ in range(count):
        once()
    return (time.perf_counter_ns() - start) / count


# ---- round trip over loopback -------------------------------------------------------------------


def exchange_proc(kind: str, core: int, conn) -> None:
    enter_child(core)
    from aiolowlat.sim.fix_exchange import FixExchange

    async def serve():
        exchange = await FixExchange().start("127.0.0.1", 0)
        conn.send(exchange.address[1])
        await asyncio.sleep(300)  # backstop: the parent terminates us

    try:
        with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
            runner.run(serve())
    except Exception as exc:
        conn.send(f"exchange: {type(exc).__name__}: {exc}")


def percentile_us(sorted_ns, q):
    return sorted_ns[max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))] / 1000


async def rtt_client(port: int, warmup: int, count: int) -> dict:
    loop = asyncio.get_running_loop()
    waiter = None

    def on_message(session, msg):
        if waiter is not None and not waiter.done():
            waiter.set_result(time.perf_counter_ns())

    settings = SessionSettings(SessionConfig("BENCH", "EXCH"), host="127.0.0.1", port=port)
    initiator = FixInitiator(settings, on_message=on_message)
    session = await initiator.start()
    await session.wait_logged_on(10)
    rtts = []
    try:
        for i in range(warmup + count):
            waiter = loop.create_future()
            start = time.perf_counter_ns()
            # Far below the book: the simulator answers with one ExecutionReport (New).
            session.send_nowait(NewOrderSingle(cl_ord_id=f"B{i}", symbol="AAPL", side="1",
                                               order_qty=1, price=1.0))
            end = await asyncio.wait_for(waiter, 5)
            if i >= warmup:
                rtts.append(end - start)
    finally:
        await initiator.stop()
    rtts.sort()
    total_s = sum(rtts) / 1e9
    return {"rtt_p50_us": percentile_us(rtts, 0.5), "rtt_p99_us": percentile_us(rtts, 0.99),
            "rtt_p999_us": percentile_us(rtts, 0.999), "round_trips_per_s": len(rtts) / total_s}


def run_rtt(kind: str, warmup: int, count: int) -> dict:
    core = sorted(os.sched_getaffinity(0))[0]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=exchange_proc, args=(kind, core, child), daemon=True)
    proc.start()
    saved = os.sched_getaffinity(0)
    try:
        if not parent.poll(30):
            raise RuntimeError("exchange did not start in 30 s")
        port = parent.recv()
        if isinstance(port, str):
            raise RuntimeError(port)
        os.sched_setaffinity(0, {core})  # same core as the exchange (see DESIGN.md)
        with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
            return runner.run(asyncio.wait_for(rtt_client(port, warmup, count), 120))
    finally:
        os.sched_setaffinity(0, saved)
        proc.terminate()
        proc.join(10)


# ---- main ---------------------------------------------------------------------------------------


def emit(case: str, impl: str, loop: str | None, metrics: dict) -> dict:
    record = {"bench": "fix_codec", "case": case, "impl": impl, "loop": loop,
              **{k: round(v, 3) for k, v in metrics.items()}}
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under 60 s")
    parser.add_argument("--loops", default="asyncio,uvloop,aiolowlat")
    parser.add_argument("--skip-rtt", action="store_true")
    args = parser.parse_args()
    rounds, count = (3, 5_000) if args.quick else (7, 30_000)
    rtt_warmup, rtt_count = (500, 3_000) if args.quick else (2_000, 20_000)
    check_agreement()
    results = []
    for name, msg in MESSAGES.items():
        fns = {impl: make(msg) for impl, make in CODEC_IMPLS.items()}
        per_impl = {impl: [] for impl in fns}
        for _ in range(rounds):  # interleaved rounds: the same machine state for every impl
            for impl, fn in fns.items():
                n = count // 4 if impl == "simplefix" else count
                per_impl[impl].append(time_codec(fn, n))
        for impl, samples in per_impl.items():
            ns = statistics.median(samples)
            results.append(emit(f"encode_decode_{name}", impl, None,
                                {"ns_per_msg": ns, "msgs_per_s": 1e9 / ns}))
    if not args.skip_rtt:
        for kind in args.loops.split(","):
            results.append(emit("nos_to_er_rtt", "aiolowlat", kind,
                                run_rtt(kind, rtt_warmup, rtt_count)))
    print()
    print(f"{'case':22} {'impl':16} {'loop':10} {'ns/msg':>9} {'msgs/s':>9} {'rt/s':>7} "
          f"{'p50 us':>8} {'p99 us':>8}  ratio (higher is better)")
    base = {r["case"]: r["msgs_per_s"] for r in results if r["impl"] == "simplefix"}
    rtt_base = next((r["rtt_p50_us"] for r in results if r["loop"] == "asyncio"), None)

    def cell(r, key, width, spec):
        return f"{r[key]:{width}{spec}}" if key in r else f"{'-':>{width}}"

    for r in results:
        if r["case"] in base:
            ratio = f"{r['msgs_per_s'] / base[r['case']]:.2f}x simplefix's msgs/s"
        elif rtt_base:
            ratio = f"{rtt_base / r['rtt_p50_us']:.2f}x asyncio's p50 speed"
        else:
            ratio = "-"
        print(f"{r['case']:22} {r['impl']:16} {r['loop'] or '-':10} "
              f"{cell(r, 'ns_per_msg', 9, '.0f')} {cell(r, 'msgs_per_s', 9, '.0f')} "
              f"{cell(r, 'round_trips_per_s', 7, '.0f')} {cell(r, 'rtt_p50_us', 8, '.1f')} "
              f"{cell(r, 'rtt_p99_us', 8, '.1f')}  {ratio}")


if __name__ == "__main__":
    main()
