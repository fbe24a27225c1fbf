"""Host tuning for the hot path, applied from settings with a report of what took effect.

Each step (core pinning, mlockall, GC policy, SCHED_FIFO, huge pages) returns a
``Finding``: whether it was applied, what was found, and the exact fix when it was
not. A ``Tuner`` remembers how to undo each step; ``restore()`` undoes them in reverse.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import mmap
import os
import resource
import sys
from collections.abc import Iterable, Iterator
from typing import Literal

import msgspec

__all__ = ["Finding", "Tuner", "TuningSettings", "apply", "engine_memory", "format_findings",
           "gc_policy"]

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
MAP_HUGETLB = 0x40000  # linux/mman.h; Python's mmap module does not export it
CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_SYS_ADMIN, CAP_SYS_NICE, CAP_BPF = (
    12, 13, 14, 21, 23, 39)
_HUGEPAGES = "/sys/kernel/mm/hugepages/hugepages-{}kB"
_libc = ctypes.CDLL(None, use_errno=True)


class Finding(msgspec.Struct, frozen=True):
    """One tuning step: applied or not, what was found, and how to make it take effect."""

    name: str
    applied: bool
    detail: str
    fix: str = ""


class TuningSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What to apply to the loop thread and the process; every step is off by default."""

    cpus: list[int] | None = None     # pin the loop thread to these CPUs
    mlockall: bool = False            # lock current and future memory (no page faults)
    gc: Literal["default", "freeze", "off"] = "default"
    gc_thresholds: tuple[int, int, int] | None = None
    sched_fifo: int | None = None     # real-time priority 1..99 for the loop thread
    hugepages: int = 0                # 2 MiB pages the engines need free
    reserve_hugepages: bool = False   # reserve missing ones (root), given back on restore


# -- small readers of process and host state, shared with aiolowlat.doctor --

def read_text(path: str) -> str | None:
    """The stripped content of a /proc or /sys file, or None when it is not there."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def has_capability(cap: int) -> bool:
    """Whether this process has capability ``cap`` in its effective set."""
    for line in (read_text("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` size field (VmLck, VmSize, ...) in KiB."""
    for line in (read_text("/proc/self/status") or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def format_limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else f"{value // 1024} KiB"


def python_path() -> str:
    return os.path.realpath(sys.executable)


def parse_cpu_list(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5} (the kernel's cpu list format)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def allowed_cpus() -> set[int]:
    """CPUs this process's cpuset allows (cgroup v2 or v1), else the online ones.

    Unlike os.sched_getaffinity, not narrowed by pinning a thread."""
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            found = read_text(f"/sys/fs/cgroup{path.rstrip('/')}/cpuset.cpus.effective")
        elif "cpuset" in controllers.split(","):
            found = read_text(f"/sys/fs/cgroup/cpuset{path.rstrip('/')}/cpuset.effective_cpus")
        else:
            continue
        if found:
            return parse_cpu_list(found)
    return parse_cpu_list(read_text("/sys/devices/system/cpu/online") or "0")


def isolated_cpus() -> set[int]:
    return parse_cpu_list(read_text("/sys/devices/system/cpu/isolated") or "")


def format_table(headers: tuple[str, ...], rows: Iterable[tuple[str, ...]],
                 widths: tuple[int, ...] | None = None) -> str:
    """A plain text table; a column given a width wraps its cells' text to it."""
    rows = [tuple(str(c) for c in row) for row in rows]
    widths = widths or tuple(0 for _ in headers)
    lines_per_row = []
    for row in rows:
        cells = [_wrap(cell, w) if w else [cell] for cell, w in zip(row, widths)]
        height = max(len(c) for c in cells)
        lines_per_row.extend(tuple(c[i] if i < len(c) else "" for c in cells)
                             for i in range(height))
    cols = [max([len(h)] + [len(line[i]) for line in lines_per_row])
            for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in cols)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in cols))]
    out.extend(fmt.format(*line).rstrip() for line in lines_per_row)
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]


def format_findings(findings: Iterable[Finding]) -> str:
    """The tuning report as a table: step, applied, what was found, the fix."""
    rows = [(f.name, "yes" if f.applied else "NO", f.detail, f.fix) for f in findings]
    return format_table(("step", "applied", "detail", "fix"), rows, (0, 0, 56, 56))


# -- the steps --

class Tuner:
    """Applies tuning steps, keeps their ``findings`` and how to undo each one."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._undo: list = []

    def _report(self, finding: Finding, undo=None) -> Finding:
        self.findings.append(finding)
        if undo is not None:
            self._undo.append(undo)
        return finding

    def restore(self) -> None:
        """Undo every applied step, last first."""
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> Tuner:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def pin_thread(self, cpus: int | Iterable[int], tid: int = 0) -> Finding:
        """Pin thread ``tid`` (0: the calling thread; else a native thread id) to ``cpus``."""
        wanted = {cpus} if isinstance(cpus, int) else set(cpus)
        if not wanted or any(not isinstance(c, int) or c < 0 for c in wanted):
            raise ValueError(f"cpus must be non-negative CPU numbers, not {cpus!r}")
        who = "this thread" if tid == 0 else f"thread {tid}"
        name = f"pin {who}"
        try:
            previous = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, wanted)
        except OSError as exc:
            allowed = allowed_cpus()
            if exc.errno == errno.EINVAL:
                return self._report(Finding(
                    name, False,
                    f"CPU(s) {_cpus(wanted)} not online or not in this process's cpuset "
                    f"(allowed here: {_cpus(allowed)})",
                    f"choose CPUs from {_cpus(allowed)}, or widen the cpuset "
                    "(`taskset -c`, the container's --cpuset-cpus, systemd CPUAffinity=)"))
            if exc.errno == errno.ESRCH:
                return self._report(Finding(name, False, f"no thread {tid}",
                                            "pass a live thread's native id (Thread.native_id)"))
            return self._report(Finding(name, False, f"sched_setaffinity: {exc.strerror}",
                                        "needs CAP_SYS_NICE to pin another user's thread"))
        shared = wanted - isolated_cpus()
        fix = ""
        if shared:
            fix = (f"CPU(s) {_cpus(shared)} also run other tasks and kernel work: boot with "
                   f"isolcpus={_cpus(shared)} nohz_full={_cpus(shared)} "
                   f"rcu_nocbs={_cpus(shared)}")
        return self._report(
            Finding(name, True, f"{who} runs only on CPU(s) {_cpus(wanted)} "
                    f"(was {_cpus(previous)})", fix),
            lambda: _set_affinity_quietly(tid, previous))

    def mlockall(self, future: bool = True, on_fault: bool = False) -> Finding:
        """Lock the process's memory so the hot path never waits on a page fault."""
        flags = MCL_CURRENT | (MCL_FUTURE if future else 0) | (MCL_ONFAULT if on_fault else 0)
        if _libc.mlockall(flags) == 0:
            return self._report(
                Finding("mlockall", True,
                        f"{status_kib('VmLck') // 1024} MiB locked"
                        f"{', future mappings too' if future else ''}"),
                _libc.munlockall)
        err = ctypes.get_errno()
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        detail = (f"mlockall failed: {os.strerror(err)}; RLIMIT_MEMLOCK is {format_limit(soft)} "
                  f"for {status_kib('VmSize') // 1024} MiB mapped, CAP_IPC_LOCK "
                  f"{'present' if has_capability(CAP_IPC_LOCK) else 'missing'}")
        return self._report(Finding("mlockall", False, detail, memlock_fix()))

    def gc(self, mode: Literal["default", "freeze", "off"] = "freeze",
           thresholds: tuple[int, int, int] | None = None) -> Finding:
        """``freeze``: collect, then exempt every object alive now from future collections;
        ``off``: that and no automatic collections. ``thresholds`` as gc.set_threshold."""
        if mode not in ("default", "freeze", "off"):
            raise ValueError(f"gc mode must be 'default', 'freeze' or 'off', not {mode!r}")
        was_enabled, old_thresholds = gc.isenabled(), gc.get_threshold()
        done = []
        if mode in ("freeze", "off"):
            gc.collect()
            gc.freeze()
            done.append(f"{gc.get_freeze_count()} objects frozen")
        if mode == "off":
            gc.disable()
            done.append("automatic collection off")
        if thresholds is not None:
            gc.set_threshold(*thresholds)
            done.append(f"thresholds {thresholds} (were {old_thresholds})")

        def undo() -> None:
            gc.set_threshold(*old_thresholds)
            if mode in ("freeze", "off"):
                gc.unfreeze()
            if was_enabled:
                gc.enable()

        return self._report(Finding(f"gc {mode}", True, "; ".join(done) or "unchanged"), undo)

    def sched_fifo(self, priority: int = 1, tid: int = 0) -> Finding:
        """Run thread ``tid`` (0: this one) as SCHED_FIFO at ``priority`` (1..99)."""
        if not isinstance(priority, int) or not 1 <= priority <= 99:
            raise ValueError(f"SCHED_FIFO priority must be 1..99, not {priority!r}")
        name = f"SCHED_FIFO {priority}"
        try:
            policy, param = os.sched_getscheduler(tid), os.sched_getparam(tid)
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        except ProcessLookupError:
            return self._report(Finding(name, False, f"no thread {tid}",
                                        "pass a live thread's native id (Thread.native_id)"))
        except OSError as exc:
            soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
            return self._report(Finding(
                name, False, f"sched_setscheduler: {exc.strerror} (RLIMIT_RTPRIO {soft}, "
                f"CAP_SYS_NICE {'present' if has_capability(CAP_SYS_NICE) else 'missing'})",
                f"allow real-time priority {priority}: `ulimit -r {priority}` (as root) or "
                f"`LimitRTPRIO={priority}` in the systemd unit, or grant the capability: "
                f"`setcap cap_sys_nice=ep {python_path()}`"))
        runtime = read_text("/proc/sys/kernel/sched_rt_runtime_us")
        detail = (f"real-time at priority {priority}; a spinning thread can starve its CPU's "
                  f"kernel threads (kernel.sched_rt_runtime_us={runtime} leaves them the rest)")
        return self._report(
            Finding(name, True, detail, "keep it on an isolated CPU (isolcpus=, nohz_full=)"),
            lambda: os.sched_setscheduler(tid, policy, param))

    def hugepages(self, pages: int, reserve: bool = False, size_kib: int = 2048) -> Finding:
        """Check that ``pages`` huge pages are free for engine memory; ``reserve`` asks the
        kernel for the missing ones (root), given back by restore()."""
        if pages < 0:
            raise ValueError(f"pages must be >= 0, not {pages}")
        base = _HUGEPAGES.format(size_kib)
        name = f"hugepages {size_kib // 1024} MiB x {pages}"
        total, free = _read_int(base + "/nr_hugepages"), _read_int(base + "/free_hugepages")
        if total is None or free is None:
            return self._report(Finding(name, False, f"no {size_kib} KiB huge pages here "
                                        f"({base} missing)",
                                        "use a kernel with CONFIG_HUGETLBFS and that page size"))
        missing = pages - free
        if missing <= 0:
            return self._report(Finding(name, True, f"{free} of {total} free"))
        fix = (f"echo {total + missing} > {base}/nr_hugepages (now; as root), or "
               f"hugepages={total + missing} on the kernel command line (at boot)"
               + ("" if _hugetlbfs_mounted() else
                  "; for DPDK also `mount -t hugetlbfs nodev /dev/hugepages`"))
        if not reserve:
            return self._report(Finding(name, False, f"{free} of {total} free, {missing} "
                                        "missing", fix))
        try:
            _write(base + "/nr_hugepages", total + missing)
        except OSError as exc:
            return self._report(Finding(name, False, f"cannot reserve: {exc.strerror}", fix))
        got = (_read_int(base + "/nr_hugepages") or 0) - total

        def give_back() -> None:
            now = _read_int(base + "/nr_hugepages") or 0
            _write(base + "/nr_hugepages", max(0, now - got))

        free = _read_int(base + "/free_hugepages") or 0
        applied = free >= pages
        detail = (f"reserved {got} more ({total} -> {total + got}), {free} free"
                  + ("" if applied else ": memory too fragmented for the rest"))
        return self._report(Finding(name, applied, detail, "" if applied else fix), give_back)


def _cpus(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _set_affinity_quietly(tid: int, cpus: set[int]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the thread may have ended
        os.sched_setaffinity(tid, cpus)


def _read_int(path: str) -> int | None:
    text = read_text(path)
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _hugetlbfs_mounted() -> bool:
    return any(line.split()[2:3] == ["hugetlbfs"]
               for line in (read_text("/proc/mounts") or "").splitlines())


def memlock_fix() -> str:
    """How to let this process lock its memory."""
    return ("raise the memlock limit: `ulimit -l unlimited` (as root, in the launching shell), "
            "`LimitMEMLOCK=infinity` in the systemd unit, or `<user> - memlock unlimited` in "
            f"/etc/security/limits.conf; or grant the capability: "
            f"`setcap cap_ipc_lock=ep {python_path()}`")


def apply(settings: TuningSettings) -> Tuner:
    """Apply ``settings`` to the calling (loop) thread and the process; see ``findings``."""
    tuner = Tuner()
    if settings.hugepages:
        tuner.hugepages(settings.hugepages, reserve=settings.reserve_hugepages)
    if settings.cpus is not None:
        tuner.pin_thread(settings.cpus)
    if settings.sched_fifo is not None:
        tuner.sched_fifo(settings.sched_fifo)
    if settings.mlockall:
        tuner.mlockall()
    if settings.gc != "default" or settings.gc_thresholds is not None:
        tuner.gc(settings.gc, settings.gc_thresholds)
    return tuner


@contextlib.contextmanager
def gc_policy(mode: Literal["default", "freeze", "off"] = "off",
              thresholds: tuple[int, int, int] | None = None) -> Iterator[Finding]:
    """Around a hot loop: freeze the heap and/or pause collections, restored on exit."""
    with Tuner() as tuner:
        yield tuner.gc(mode, thresholds)


def engine_memory(size: int) -> tuple[mmap.mmap, Finding]:
    """Anonymous memory for packet buffers, on reserved huge pages when there are enough;
    otherwise ordinary pages with transparent huge pages asked for (madvise)."""
    huge = 2 << 20
    rounded = -(-size // huge) * huge
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    try:
        buf = mmap.mmap(-1, rounded, flags=flags | MAP_HUGETLB | mmap.MAP_POPULATE)
        return buf, Finding("engine memory", True,
                            f"{rounded >> 20} MiB on {rounded // huge} reserved 2 MiB huge pages")
    except OSError as exc:
        reason = exc.strerror
    buf = mmap.mmap(-1, rounded, flags=flags)
    thp = read_text("/sys/kernel/mm/transparent_hugepage/enabled") or "unknown"
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
        advised = "transparent huge pages requested (madvise)"
    except OSError:
        advised = "transparent huge pages unavailable"
    return buf, Finding(
        "engine memory", False,
        f"{rounded >> 20} MiB on ordinary pages ({reason}); {advised}, THP: {thp}",
        f"reserve {rounded // huge} more huge pages: echo "
        f"{(_read_int(_HUGEPAGES.format(2048) + '/nr_hugepages') or 0) + rounded // huge} > "
        f"{_HUGEPAGES.format(2048)}/nr_hugepages")
