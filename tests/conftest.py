"""Shared event-loop test fixtures.

Every test that takes the ``loop`` fixture runs once per loop implementation
(asyncio's, uvloop's and aiolowlat's, the last also busy-polling and with SQPOLL) with the same
body and the same assertions, so a behaviour difference of aiolowlat shows up as a
failure of its param only.
"""

import asyncio
import gc
import os
import resource
import shutil
import signal
import ssl
import tempfile

import pytest
import trustme
import uvloop

import aiolowlat

LOOP_FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
    "aiolowlat": aiolowlat.new_event_loop,
    "aiolowlat-busy": lambda: aiolowlat.new_event_loop(busy_poll=True),
    "aiolowlat-sqpoll": lambda: aiolowlat.new_event_loop(sqpoll=True),
}

# 1,000 concurrent connections take ~2,000 descriptors in this one process.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "xfail_uvloop(reason): uvloop legitimately differs from asyncio here"
    )
    config.addinivalue_line(
        "markers", "xfail_asyncio(reason): aiolowlat does as uvloop, where asyncio falls short"
    )


def pytest_collection_modifyitems(items):
    # Turn xfail_uvloop (xfail_asyncio) into a strict xfail of the uvloop (asyncio) param
    # only: if that loop ever gains the behaviour, the XPASS fails and the marker must go.
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("loop") if callspec else None
        for name, kind in (("xfail_uvloop", "uvloop"), ("xfail_asyncio", "asyncio")):
            marker = item.get_closest_marker(name)
            if marker and param == kind:
                item.add_marker(pytest.mark.xfail(strict=True, reason=marker.args[0]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # Let fixtures see whether the test body raised (item.failed_call), also
    # when that is an expected (xfail) failure.
    report = yield
    if report.when == "call" and call.excinfo is not None:
        item.failed_call = True
    return report


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="session")
def warmed_up():
    # A loop implementation may open process-wide fds once, on first use (libuv
    # keeps a signal pipe for good): make them exist before any fd count.
    for factory in LOOP_FACTORIES.values():
        lp = factory()
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop(request, warmed_up):
    """A fresh loop of each kind; after the test it is closed and fds must balance."""
    gc.collect()
    before = open_fds()
    lp = LOOP_FACTORIES[request.param]()
    try:
        yield lp
    finally:
        if not lp.is_closed():
            try:
                lp.run_until_complete(asyncio.wait_for(lp.shutdown_asyncgens(), 5))
                lp.run_until_complete(asyncio.wait_for(lp.shutdown_default_executor(), 5))
            finally:
                lp.close()
    # A failed test's traceback keeps its transports alive, so its fds are not
    # a leak (they go when pytest drops the traceback, which can make the next
    # test's count negative: fewer fds than before is never a leak).
    if getattr(request.node, "failed_call", False):
        return
    # Abandoned transports are closed by the GC (asyncio's in __del__): collect
    # first, so what is counted are fds nothing references and still open.
    gc.collect()
    leaked = open_fds() - before
    assert leaked <= 0, f"{request.param}: {leaked} file descriptor(s) leaked"


def sigint_at_default():
    """Popen's preexec_fn for a child that a test stops with Ctrl-C: SIGINT at its default,
    as a foreground program has it. Run as a background job, these tests inherit SIGINT
    ignored from the shell, and a Python child keeps ignoring it (as it should)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(loop, coro, timeout=10):
    """Run ``coro`` on ``loop``, failing with TimeoutError instead of hanging."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


@pytest.fixture
def sock_dir():
    # Short path: AF_UNIX addresses are limited to 108 bytes, and pytest's
    # tmp_path grows with the (parametrized) test name.
    path = tempfile.mkdtemp(prefix="al-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ssl(tls_ca):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_ssl(tls_ca):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    tls_ca.configure_trust(ctx)
    return ctx


class Recorder(asyncio.Protocol):
    """Protocol that records everything the loop reports to it."""

    def __init__(self, loop, *, keep_open_on_eof=False):
        self.loop = loop
        self.keep_open_on_eof = keep_open_on_eof
        self.transport = None
        self.data = bytearray()
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._grew = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        assert not self.eof.done(), "data_received after eof_received"
        self.data += data
        self._grew.set()

    def eof_received(self):
        self.eof.set_result(None)
        return self.keep_open_on_eof

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    async def wait_for_bytes(self, n):
        # Bounded by the caller's run(..., timeout).
        while len(self.data) < n:
            self._grew.clear()
            await self._grew.wait()
        return bytes(self.data)


class Echo(asyncio.Protocol):
    """Server protocol: echoes what it receives, closes on EOF."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def echo_server(loop, host="127.0.0.1", **kwargs):
    server = await loop.create_server(Echo, host, 0, **kwargs)
    return server, server.sockets[0].getsockname()[:2]
