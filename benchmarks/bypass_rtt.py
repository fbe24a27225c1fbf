"""UDP ping-pong RTT and packets/s per transport over a veth pair between two namespaces.

The echo side (namespace a, core 1) is, in turn: a busy-polling C echo on a kernel
socket (the floor), and an asyncio DatagramProtocol on the kernel, uring, af_xdp and
dpdk transports (dpdk on its default vdev, net_af_xdp here, and on net_af_packet). The
client (namespace b, core 0) is always the same busy-polling C program
(csrc/bypass_pingpong.c), so every case is measured by one clock and one client.
Busy-poll cases run the aiolowlat loop with busy_poll=True; the engines then run inline
on the loop's core (threaded=False: two cores here, one for each side); the "-eventfd"
cases use an engine thread that sleeps when idle and wakes the loop by eventfd.
A flood case sends 64-byte datagrams as fast as the client can and counts what arrives.

    python benchmarks/bypass_rtt.py --quick        # under 60 s (root: namespaces, XDP)
    python benchmarks/bypass_rtt.py --cases c_floor,af_xdp --round-trips 50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

from _cbuild import build_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

PORT, ENGINE_IP = 31001, "192.0.2.10"
CLIENT_CORE, SERVER_CORE = 0, 1
# case -> (impl, loop, server address)
CASES = {
    "c_floor": ("c-busy-poll", "none", "192.0.2.1"),
    "kernel": ("kernel", "aiolowlat-busy", "192.0.2.1"),
    "uring": ("uring", "aiolowlat-busy", "192.0.2.1"),
    "af_xdp": ("af_xdp", "aiolowlat-busy", ENGINE_IP),
    "dpdk": ("dpdk", "aiolowlat-busy", ENGINE_IP),
    "dpdk-af_packet": ("dpdk", "aiolowlat-busy", ENGINE_IP),
    "kernel-sleep": ("kernel", "aiolowlat", "192.0.2.1"),
    "af_xdp-eventfd": ("af_xdp", "aiolowlat", ENGINE_IP),
    "dpdk-eventfd": ("dpdk", "aiolowlat", ENGINE_IP),
}

# DPDK cases that name their virtual device; plain "dpdk" takes the engine's default
# (net_af_xdp on an interface that takes XDP, as a veth does)
VDEVS = {"af_packet": "net_af_packet,iface={iface},framecnt=4096"}


# -- the echo side (runs as: ip netns exec A python bypass_rtt.py --serve CASE ...) --

class Echo(asyncio.DatagramProtocol):
    def __init__(self):
        self.count, self.first, self.last = 0, 0.0, 0.0

    def connection_made(self, transport):
        self.transport = transport

    def datagrams_received(self, batch):
        sendto = self.transport.sendto
        flood = 0
        for data, addr, _ in batch:
            if data[:1] == b"f":  # flood datagrams are only counted
                flood += 1
            else:
                sendto(data, addr)
        if flood:
            now = time.perf_counter()
            if not self.count:
                self.first = now
            self.count += flood
            self.last = now


async def serve(case: str, iface: str, seconds: float):
    from aiolowlat.transports import EngineConfig, open_datagram_endpoint

    impl, loop_kind, host = CASES[case]
    busy = loop_kind == "aiolowlat-busy"
    options = {}
    if impl in ("af_xdp", "dpdk"):
        vdev = VDEVS.get(case.partition("-")[2], "").format(iface=iface)
        options["engine"] = EngineConfig(interface=iface, poll=busy, threaded=not busy,
                                         busy_poll=False, core=SERVER_CORE if busy else None,
                                         vdev=vdev)
    transport, echo = await open_datagram_endpoint(Echo, transport=impl, local_addr=(host, PORT),
                                                   **options)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
    try:
        await asyncio.wait_for(stop, seconds)
    except TimeoutError:
        pass
    engine = transport.get_extra_info("engine")
    stats = engine.stats() if engine else {}
    transport.close()
    await asyncio.sleep(0.05)
    rate = echo.count / (echo.last - echo.first) if echo.last > echo.first else 0.0
    print(json.dumps({"received": echo.count, "msgs_per_s": rate,
                      "rx_ring_full": stats.get("rx_ring_full", 0),
                      "nic_rx_dropped": stats.get("nic_rx_dropped", 0)}), flush=True)


def serve_main(case, iface, seconds):
    import aiolowlat

    os.sched_setaffinity(0, {SERVER_CORE})
    busy = CASES[case][1] == "aiolowlat-busy"
    aiolowlat.run(serve(case, iface, seconds), busy_poll=busy)


# -- the driver --

def start_server(pair, case, client, seconds):
    if case == "c_floor":
        cmd = ["ip", "netns", "exec", pair.a, client, "echo", str(PORT), str(SERVER_CORE),
               str(seconds)]
    else:
        cmd = ["ip", "netns", "exec", pair.a, sys.executable, __file__, "--serve", case,
               "--iface", pair.dev_a, "--seconds", str(seconds)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"{case}: server did not start ({line!r})")
    return proc


def finish_server(proc):
    try:  # closing stdin stops the Python servers; the C echo stops at its deadline
        out, _ = proc.communicate(input="", timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def client_cmd(pair, client, mode, host, count, size=64):
    return ["ip", "netns", "exec", pair.b, client, mode, host, str(PORT), str(count), str(size),
            str(CLIENT_CORE)]


def run_case(pair, case, client, round_trips, flood):
    host = CASES[case][2]
    seconds = 5 + round_trips * 200e-6 + 5
    proc = start_server(pair, case, client, seconds)
    try:
        subprocess.run(client_cmd(pair, client, "client", host, 200), capture_output=True,
                       timeout=30)  # warm-up: ARP, caches
        out = subprocess.run(client_cmd(pair, client, "client", host, round_trips),
                             capture_output=True, text=True, timeout=60).stdout
        rtt = json.loads(out)
        if rtt.get("lost"):
            print(f"# {case}: {rtt['lost']} pings unanswered within 200 ms", file=sys.stderr)
        if flood and case != "c_floor":
            sent = json.loads(subprocess.run(client_cmd(pair, client, "flood", host, flood),
                                             capture_output=True, text=True, timeout=60).stdout)
            time.sleep(0.3)
        else:
            sent = None
    finally:
        served = finish_server(proc)
    if sent is not None:
        received = served.get("received", 0)
        rtt["flood"] = {"sent": sent["sent"], "received": received,
                        "msgs_per_s": served.get("msgs_per_s", 0.0),
                        # where an engine's losses were counted (none for kernel sockets)
                        "rx_ring_full": served.get("rx_ring_full", 0),
                        "nic_rx_dropped": served.get("nic_rx_dropped", 0)}
    return rtt


def median_of(runs, key):
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, fewer round trips")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--round-trips", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--iface", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_main(args.serve, args.iface, args.seconds)
        return 0
    from netns import VethPair, ip

    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    round_trips = args.round_trips or (5000 if args.quick else 50000)
    rounds = args.rounds or (1 if args.quick else 3)
    flood = 50000 if args.quick else 300000
    client = build_c("bypass_pingpong")
    results = {case: [] for case in cases}
    with VethPair() as pair:
        # A real NIC puts full UDP checksums on the wire; veth leaves them to offload.
        ip("netns", "exec", pair.b, "ethtool", "-K", pair.dev_b, "tx", "off")
        for _ in range(rounds):  # interleaved: every case once per round
            for case in cases:
                try:
                    results[case].append(run_case(pair, case, client, round_trips, flood))
                except Exception as exc:  # noqa: BLE001 - a failed case is reported, not fatal
                    print(f"# {case}: {exc}", file=sys.stderr)
    rows = []
    for case in cases:
        runs = results[case]
        if not runs:
            continue
        impl, loop_kind, _ = CASES[case]
        metrics = {k: median_of(runs, k) for k in ("rtt_p50_us", "rtt_p99_us", "rtt_p999_us",
                                                   "round_trips_per_s")}
        row = {"bench": "bypass_rtt", "case": f"udp_pingpong_64/{case}", "impl": impl,
               "loop": loop_kind, **metrics}
        rows.append(row)
        print(json.dumps(row))
        floods = [r["flood"] for r in runs if "flood" in r]
        if floods:
            frow = {"bench": "bypass_rtt", "case": f"udp_flood_64/{case}", "impl": impl,
                    "loop": loop_kind,
                    "msgs_per_s": statistics.median(f["msgs_per_s"] for f in floods),
                    "sent": floods[-1]["sent"], "received": floods[-1]["received"],
                    "rx_ring_full": floods[-1]["rx_ring_full"],
                    "nic_rx_dropped": floods[-1]["nic_rx_dropped"]}
            rows.append(frow)
            print(json.dumps(frow))
    floor = next((r for r in rows if r["case"] == "udp_pingpong_64/c_floor"), None)
    print()
    print(f"{'case':<32}{'p50 us':>9}{'p99 us':>9}{'rt/s':>10}{'vs floor':>10}{'flood msg/s':>13}"
          f"{'recv/sent':>12}")
    for row in rows:
        if row["case"].startswith("udp_pingpong"):
            ratio = (f"{row['rtt_p50_us'] / floor['rtt_p50_us']:.2f}x"
                     if floor and row["rtt_p50_us"] else "-")
            name = row["case"].split("/")[1]
            fl = next((r for r in rows if r["case"] == f"udp_flood_64/{name}"), None)
            if row["rtt_p50_us"] is None:  # no round trip answered: said above, on stderr
                print(f"{name + ' (' + row['loop'] + ')':<32}{'-':>9}")
                continue
            print(f"{name + ' (' + row['loop'] + ')':<32}{row['rtt_p50_us']:>9.1f}"
                  f"{row['rtt_p99_us']:>9.1f}{row['round_trips_per_s']:>10.0f}{ratio:>10}"
                  + (f"{fl['msgs_per_s']:>13.0f}{fl['received']:>7}/{fl['sent']:<5}" if fl else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
