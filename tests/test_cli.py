"""The aiolowlat command, end to end in subprocesses, each bounded in time."""

import subprocess
import sys


def aiolowlat(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "aiolowlat", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_record_then_replay_the_itch_feed(tmp_path):
    path = tmp_path / "itch.alrec"
    recorded = aiolowlat("record", "itch", "--out", str(path), "--seconds", "2",
                         "--events", "3000")
    assert recorded.returncode == 0, recorded.stderr
    assert "recorded" in recorded.stdout and path.stat().st_size > 10_000
    replayed = aiolowlat("replay", str(path))
    assert replayed.returncode == 0, replayed.stderr
    assert "'delivered': 3" in replayed.stdout and "AAPL" in replayed.stdout
    paced = aiolowlat("replay", str(path), "--speed", "4")
    assert paced.returncode == 0 and "AAPL" in paced.stdout


def test_record_then_replay_a_venue_feed(tmp_path):
    path = tmp_path / "okx.alrec"
    recorded = aiolowlat("record", "okx", "BTC-USDT", "--out", str(path), "--seconds", "2")
    assert recorded.returncode == 0, recorded.stderr
    assert "okx messages" in recorded.stdout
    replayed = aiolowlat("replay", str(path))
    assert replayed.returncode == 0, replayed.stderr
    assert "okx:" in replayed.stdout and "checksum_failures=0" in replayed.stdout
    assert "BTC-USDT bid (" in replayed.stdout


def test_replay_of_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    missing = aiolowlat("replay", str(tmp_path / "nope.alrec"))
    assert missing.returncode == 2 and "No such file" in missing.stderr
    foreign = tmp_path / "foreign.alrec"
    foreign.write_bytes(b"not a recording")
    result = aiolowlat("replay", str(foreign))
    assert result.returncode == 2 and "not an aiolowlat recording" in result.stderr


def test_sim_itch_stops_by_itself():
    result = aiolowlat("sim", "itch", "--seconds", "1", "--request-port", "0",
                       "--group-a", "127.0.0.1:39001", "--group-b", "127.0.0.1:39002")
    assert result.returncode == 0, result.stderr
    assert "session" in result.stdout


def test_sim_all_runs_every_simulator_on_loopback_and_stops():
    result = aiolowlat("sim", "all", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "FIX exchange EXCH on 127.0.0.1:" in out
    assert "exchange simulator on wss://127.0.0.1:" in out
    assert "A_sent=" in out and "send_errors=0" in out
    assert "RuntimeWarning" not in result.stderr


def test_unknown_command_is_a_usage_error():
    result = aiolowlat("fly")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_feed_prints_a_venue_from_the_simulator():
    result = aiolowlat("feed", "kraken", "BTC/USD", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    assert "kraken BTC/USD book" in result.stdout and "checksum_failures=0" in result.stdout


def test_doctor_checks_this_host():
    result = aiolowlat("doctor", "--needs", "uring,af_xdp,dpdk")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "io_uring" in result.stdout and "fix" in result.stdout.lower()


def test_demo_runs_the_strategy_on_the_simulators_and_stops():
    result = aiolowlat("demo", "--seconds", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for venue in ("binance", "coinbase", "bybit", "okx", "kraken"):
        assert venue in out
    assert "strategy: bid" in out and "orders sent" in out and "done in" in out


def test_bench_runs_a_benchmark_and_writes_its_table_and_plot(tmp_path):
    out = tmp_path / "bench"
    result = aiolowlat("bench", "--quick", "--only", "fix_codec", "--out", str(out),
                       timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/1] fix_codec" in result.stdout  # progress
    rows = (out / "fix_codec.jsonl").read_text().splitlines()
    assert rows and all(row.startswith('{"bench": "fix_codec"') for row in rows)
    assert "simplefix" in (out / "fix_codec.txt").read_text()
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
