"""Tuning steps on this host, each checked through the kernel's own view and restored;
the failure reports and their fixes checked in subprocesses without the capabilities."""

import gc
import json
import os
import subprocess
import sys
import threading
import weakref

import msgspec
import pytest

from aiolowlat import tuning
from aiolowlat.tuning import Finding, Tuner, TuningSettings, apply, engine_memory, gc_policy

HUGE = "/sys/kernel/mm/hugepages/hugepages-2048kB"


def read_int(path):
    with open(path) as f:
        return int(f.read())


def sched_policy(tid):
    return os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority


class Parked:
    """A live thread to tune by its native id; it reports its own affinity and policy."""

    def __init__(self):
        self.go, self.seen = threading.Event(), {}
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        self.go.wait(10)
        self.seen = {"cpus": os.sched_getaffinity(0), "policy": sched_policy(0)}

    def finish(self):
        self.go.set()
        self.thread.join(10)
        return self.seen


def test_pin_this_thread_and_restore():
    before = os.sched_getaffinity(0)
    cpu = max(before)
    with Tuner() as tuner:
        finding = tuner.pin_thread(cpu)
        assert finding.applied and f"CPU(s) {cpu}" in finding.detail
        assert os.sched_getaffinity(0) == {cpu}
        if cpu not in tuning.isolated_cpus():  # this host isolates none: the fix says how
            assert f"isolcpus={cpu} nohz_full={cpu} rcu_nocbs={cpu}" in finding.fix
    assert os.sched_getaffinity(0) == before


def test_pin_another_thread_by_native_id():
    parked = Parked()
    cpu = min(os.sched_getaffinity(0))
    try:
        with Tuner() as tuner:
            assert tuner.pin_thread([cpu], tid=parked.thread.native_id).applied
            assert os.sched_getaffinity(parked.thread.native_id) == {cpu}
            seen = parked.finish()
    finally:
        parked.finish()
    assert seen["cpus"] == {cpu}
    assert os.sched_getaffinity(0) != {cpu} or os.cpu_count() == 1  # only that thread moved


def test_pin_to_a_cpu_that_does_not_exist_reports_the_allowed_ones():
    before = os.sched_getaffinity(0)
    missing = max(tuning.allowed_cpus()) + 64
    finding = Tuner().pin_thread(missing)
    assert not finding.applied and "not online or not in this process's cpuset" in finding.detail
    allowed = ",".join(map(str, sorted(tuning.allowed_cpus())))
    assert f"choose CPUs from {allowed}" in finding.fix
    assert os.sched_getaffinity(0) == before


def test_pin_a_thread_that_does_not_exist_or_bad_cpus():
    # Thread ids stay below pid_max (an ended thread's id could be reused at once).
    with open("/proc/sys/kernel/pid_max") as f:
        missing = int(f.read())
    finding = Tuner().pin_thread(0, tid=missing)
    assert not finding.applied and finding.detail == f"no thread {missing}"
    finding = Tuner().sched_fifo(1, tid=missing)
    assert not finding.applied and finding.detail == f"no thread {missing}"
    with pytest.raises(ValueError, match="non-negative"):
        Tuner().pin_thread(-1)
    with pytest.raises(ValueError, match="non-negative"):
        Tuner().pin_thread([])


def test_mlockall_locks_and_unlocks():
    assert tuning.status_kib("VmLck") == 0
    with Tuner() as tuner:
        finding = tuner.mlockall()
        assert finding.applied, finding
        locked = tuning.status_kib("VmLck")
        assert locked > 1024 and f"{locked // 1024} MiB locked" in finding.detail
    assert tuning.status_kib("VmLck") == 0


CHILD = """
import json, resource, sys
from aiolowlat.tuning import Tuner
limit = int(sys.argv[1])
if limit >= 0:
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
tuner = Tuner()
tuner.mlockall()
tuner.sched_fifo(3)
print(json.dumps([[f.name, f.applied, f.detail, f.fix] for f in tuner.findings]))
"""


def run_child(memlock_limit, drop="-ipc_lock,-sys_nice"):
    """The tuner in a child with a low memlock limit and these capabilities dropped from
    its bounding set (so root has them no more after exec)."""
    cmd = ["setpriv", f"--bounding-set={drop}", "--inh-caps=-all",
           sys.executable, "-c", CHILD, str(memlock_limit)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [Finding(*row) for row in json.loads(out.stdout)]


def test_mlockall_and_sched_fifo_without_capability_name_the_fix():
    mlock, fifo = run_child(64 * 1024)
    assert not mlock.applied
    assert "RLIMIT_MEMLOCK is 64 KiB" in mlock.detail and "CAP_IPC_LOCK missing" in mlock.detail
    assert "`ulimit -l unlimited`" in mlock.fix and "LimitMEMLOCK=infinity" in mlock.fix
    assert "setcap cap_ipc_lock=ep" in mlock.fix
    assert not fifo.applied and "CAP_SYS_NICE missing" in fifo.detail
    assert "`ulimit -r 3`" in fifo.fix and "LimitRTPRIO=3" in fifo.fix


def test_the_capability_fix_works():
    # The same 64 KiB limit; with CAP_IPC_LOCK and CAP_SYS_NICE kept, both take effect.
    mlock, fifo = run_child(64 * 1024, drop="-net_raw")
    assert mlock.applied and fifo.applied, (mlock, fifo)


def test_gc_off_around_a_hot_loop():
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()

    class Node:
        pass

    with gc_policy("off", thresholds=(50_000, 20, 20)) as finding:
        assert finding.applied and "automatic collection off" in finding.detail
        assert not gc.isenabled() and gc.get_threshold() == (50_000, 20, 20)
        assert gc.get_freeze_count() > 0
        cycle = Node()
        cycle.self = cycle
        alive = weakref.ref(cycle)
        del cycle
        for _ in range(20_000):  # would trigger collections with the GC on
            Node().other = Node()
        assert alive() is not None
    assert gc.isenabled() and gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == frozen
    gc.collect()
    assert alive() is None


def test_gc_freeze_keeps_collection_on():
    with Tuner() as tuner:
        finding = tuner.gc("freeze")
        assert finding.applied and gc.isenabled() and gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    with pytest.raises(ValueError, match="gc mode"):
        Tuner().gc("sometimes")


def test_sched_fifo_on_a_thread_and_back():
    parked = Parked()
    tid = parked.thread.native_id
    before = sched_policy(tid)
    try:
        with Tuner() as tuner:
            finding = tuner.sched_fifo(2, tid=tid)
            assert finding.applied and "sched_rt_runtime_us" in finding.detail
            assert sched_policy(tid) == (os.SCHED_FIFO, 2)
        assert sched_policy(tid) == before
    finally:
        seen = parked.finish()
    assert seen["policy"] == before
    with pytest.raises(ValueError, match="1..99"):
        Tuner().sched_fifo(0)


def test_hugepages_reported_then_reserved_and_given_back():
    total, free = read_int(f"{HUGE}/nr_hugepages"), read_int(f"{HUGE}/free_hugepages")
    want = free + 2
    with Tuner() as tuner:
        short = tuner.hugepages(want)
        assert not short.applied and f"{free} of {total} free, 2 missing" in short.detail
        assert f"echo {total + 2} > {HUGE}/nr_hugepages" in short.fix
        reserved = tuner.hugepages(want, reserve=True)
        assert reserved.applied, reserved
        assert read_int(f"{HUGE}/nr_hugepages") == total + 2
        buf, mem = engine_memory(3 << 20)  # rounds up to 2 pages, populated at once
        assert mem.applied and "2 reserved 2 MiB huge pages" in mem.detail
        assert read_int(f"{HUGE}/free_hugepages") == free
        buf[:5] = b"hello"
        assert buf[:5] == b"hello"
        buf.close()
    assert read_int(f"{HUGE}/nr_hugepages") == total


def test_engine_memory_falls_back_to_ordinary_pages():
    free = read_int(f"{HUGE}/free_hugepages")
    buf, finding = engine_memory((free + 1) * (2 << 20))
    try:
        assert not finding.applied and "ordinary pages" in finding.detail
        assert "nr_hugepages" in finding.fix and len(buf) == (free + 1) * (2 << 20)
        buf[-1] = 7
    finally:
        buf.close()


def test_apply_settings_reports_each_step_and_restores():
    affinity = os.sched_getaffinity(0)
    settings = msgspec.convert({"cpus": [max(affinity)], "mlockall": True, "gc": "freeze",
                                "gc_thresholds": [10_000, 10, 10]}, TuningSettings)
    tuner = apply(settings)
    try:
        assert [f.name for f in tuner.findings] == ["pin this thread", "mlockall", "gc freeze"]
        assert all(f.applied for f in tuner.findings)
        table = tuning.format_findings(tuner.findings)
        assert table.splitlines()[0].split() == ["step", "applied", "detail", "fix"]
        assert "mlockall" in table and "yes" in table
    finally:
        tuner.restore()
    assert os.sched_getaffinity(0) == affinity and tuning.status_kib("VmLck") == 0
    assert gc.get_threshold() != (10_000, 10, 10)
    with pytest.raises(msgspec.ValidationError, match="mlock"):
        msgspec.convert({"mlock": True}, TuningSettings)
    with pytest.raises(msgspec.ValidationError, match=r"\$.gc"):
        msgspec.convert({"gc": "sometimes"}, TuningSettings)
