"""The strategy's TOML config: typed settings, errors that name the key, overrides, run()."""

import asyncio
import textwrap

import pytest
import uvloop

import aiolowlat
from aiolowlat import config
from aiolowlat.config import ConfigError, Settings

STRATEGY = textwrap.dedent("""
    loop = "uring"
    busy_poll = true

    [tuning]
    cpus = [0]
    gc = "freeze"

    [feeds.itch]
    transport = "af_xdp"
    interface = "eth1"
    lines = { A = "239.1.1.1:30001", B = "239.1.1.2:30002" }
    rcvbuf = 16777216

    [feeds.itch.engine]
    core = 1
    local_ip = "192.0.2.2"
    static_arp = { "192.0.2.9" = "02:00:00:00:00:09" }

    [venues.binance]
    symbols = ["BTCUSDT", "ETHUSDT"]
""")


@pytest.fixture
def strategy(tmp_path):
    path = tmp_path / "strategy.toml"
    path.write_text(STRATEGY)
    return path


def test_a_file_decodes_into_typed_settings(strategy):
    settings = config.load(strategy, env={})
    assert settings.loop == "uring" and settings.busy_poll is True
    assert settings.tuning.cpus == [0] and settings.tuning.gc == "freeze"
    itch = settings.feeds["itch"]
    assert itch.transport == "af_xdp" and itch.rcvbuf == 16 << 20
    assert itch.line_addresses() == {"A": ("239.1.1.1", 30001), "B": ("239.1.1.2", 30002)}
    assert itch.engine.core == 1 and itch.engine.static_arp == {"192.0.2.9": "02:00:00:00:00:09"}
    assert itch.endpoint_options("B") == {
        "transport": "af_xdp", "local_addr": ("239.1.1.2", 30002), "groups": ["239.1.1.2"],
        "interface": "eth1", "engine": itch.engine}
    assert settings.venues["binance"].symbols == ["BTCUSDT", "ETHUSDT"]
    assert settings.venues["binance"].live is False  # the simulator unless asked
    assert config.load(env={}) == Settings()  # no file: the defaults


@pytest.mark.parametrize("override, message", [
    ("tuning.cpus=x", "tuning.cpus: expected array, got str"),
    ("tuning.loop_core=1", "tuning.loop_core: unknown key; expected one of cpus, mlockall, gc"),
    ("feeds.itch.transport=tcp", "feeds.itch.transport: invalid enum value 'tcp'; expected one "
                                 "of 'kernel', 'uring', 'af_xdp', 'dpdk'"),
    ("feeds.itch.rcvbuf=big", "feeds.itch.rcvbuf: expected int, got str"),
    ("feeds.itch.engine.core=[1]", "feeds.itch.engine.core: expected int, got array"),
    ("feeds.itch.engine.cores=1", "feeds.itch.engine.cores: unknown key; expected one of "
                                  "busy_poll, core, eal_args"),
    ("venues.binance.symbol=[]", "venues.binance.symbol: unknown key; expected one of symbols, "
                                 "url, live"),
    ("tuning.gc=never", "tuning.gc: invalid enum value 'never'; expected one of 'default', "
                        "'freeze', 'off'"),
    ("loop=uvloop", 'busy_poll needs loop = "uring", not \'uvloop\''),
    ("speed=11", "speed: unknown key; expected one of loop, busy_poll"),
])
def test_errors_name_the_key_and_what_was_expected(strategy, override, message):
    with pytest.raises(ConfigError) as caught:
        config.load(strategy, env={}, overrides=[override])
    assert str(caught.value).startswith(f"{strategy}: {message}")


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("loop = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        config.load(overrides=["busy_poll"], env={})
    with pytest.raises(ConfigError, match="tuning.gc.x: gc is a value, not a table"):
        config.load(overrides=["tuning.gc=1", "tuning.gc.x=2"], env={})


def test_environment_then_overrides_take_precedence(strategy):
    env = {"AIOLOWLAT_FEEDS__ITCH__TRANSPORT": "uring", "AIOLOWLAT_TUNING__CPUS": "[1]",
           "AIOLOWLAT_VENUES__OKX__SYMBOLS": '["BTC-USDT"]', "OTHER": "x"}
    settings = config.load(strategy, env=env)
    assert settings.feeds["itch"].transport == "uring"  # one word swaps the transport
    assert settings.tuning.cpus == [1] and settings.venues["okx"].symbols == ["BTC-USDT"]
    settings = config.load(strategy, env=env, overrides=["feeds.itch.transport=dpdk"])
    assert settings.feeds["itch"].transport == "dpdk"
    with pytest.raises(ConfigError, match="^defaults: loop: invalid enum value .x."):
        config.load(env={"AIOLOWLAT_LOOP": "x"})


@pytest.mark.parametrize("loop_name, kind", [
    ("uring", aiolowlat.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.SelectorEventLoop)])
def test_run_uses_the_loop_the_config_names(tmp_path, loop_name, kind):
    path = tmp_path / "s.toml"
    path.write_text(f'loop = "{loop_name}"\n[venues.kraken]\nsymbols = ["BTC/USD"]\n')

    async def main():
        loop = asyncio.get_running_loop()
        return type(loop), config.current().venues["kraken"].symbols

    assert aiolowlat.run(main(), config=path) == (kind, ["BTC/USD"])
    assert config.current() == Settings()  # only while the run lasts


def test_run_busy_poll_from_the_file_or_the_caller(tmp_path):
    async def mode():
        return asyncio.get_running_loop().busy_poll

    path = tmp_path / "s.toml"
    path.write_text("busy_poll = true\n")
    assert aiolowlat.run(mode(), config=path) is True
    assert aiolowlat.run(mode(), config=Settings(), busy_poll=True) is True
    assert aiolowlat.run(mode(), config=Settings()) is False


def test_run_applies_the_tuning_and_undoes_it(tmp_path, capfd):
    import gc
    import os

    path = tmp_path / "s.toml"
    path.write_text('[tuning]\ncpus = [0]\ngc = "off"\n')
    before = os.sched_getaffinity(0)

    async def inside():
        return os.sched_getaffinity(0), gc.isenabled()

    assert aiolowlat.run(inside(), config=path) == ({0}, False)
    assert os.sched_getaffinity(0) == before and gc.isenabled()
    report = capfd.readouterr().err
    assert "pin" in report.lower() and "gc" in report.lower()


@pytest.mark.parametrize("loop_name, transport", [("uring", "uring"), ("asyncio", "kernel")])
def test_the_example_swaps_loop_and_transport_by_config(loop_name, transport):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, AIOLOWLAT_LOOP=loop_name, AIOLOWLAT_FEEDS__ITCH__TRANSPORT=transport)
    result = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "itch_multicast_vwap.py"),
         "--config", os.path.join(root, "examples", "strategy.toml"), "--seconds", "1.5"],
        capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert f"transport={transport}" in result.stdout and "AAPL" in result.stdout
    module = {"uring": "aiolowlat.loop", "asyncio": "asyncio.unix_events"}[loop_name]
    assert f"loop={module}" in result.stdout
    assert "gc freeze" in result.stderr  # the file's tuning, reported


def test_run_serves_the_metrics_and_logs_the_config_asks_for(tmp_path, capfd):
    import socket as socket_module

    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "s.toml"
    path.write_text(f'[metrics]\nsummary_interval = 0.05\nprometheus_port = {port}\n'
                    '[log]\nformat = "json"\n')

    async def main():
        from aiolowlat import metrics

        metrics.registry().counter("orders_sent_total", "orders").inc(3)
        await asyncio.sleep(0.15)  # a summary or two
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = await reader.read()
        writer.close()
        return body.decode()

    scraped = aiolowlat.run(main(), config=path)
    assert "200 OK" in scraped and "orders_sent_total 3" in scraped
    assert "aiolowlat_ring_" in scraped  # the loop's own counters
    err = capfd.readouterr()
    assert '"event":"metrics"' in err.err and '"orders_sent_total":3' in err.err  # JSON summary


def test_the_example_takes_command_line_overrides_and_names_a_bad_one():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, os.path.join(root, "examples", "itch_multicast_vwap.py"),
               "--config", os.path.join(root, "examples", "strategy.toml"), "--seconds", "1"]
    env = dict(os.environ, AIOLOWLAT_LOOP="uvloop")  # the command line beats the environment
    result = subprocess.run([*command, "--set", "feeds.itch.transport=kernel", "--set",
                             "loop=asyncio"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "loop=asyncio.unix_events transport=kernel" in result.stdout
    bad = subprocess.run([*command, "--set", "feeds.itch.rcvbuf=lots"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "feeds.itch.rcvbuf: expected int, got str" in bad.stderr
