"""``aiolowlat doctor``: check the host as the low-latency tuning guides do.

Each check probes the real thing where it can (creates an io_uring with the project's
loop, an AF_XDP socket, a BPF map) and returns a ``Check``: ok / warn / fail / info,
what was found, and the exact command that fixes it. ``fail`` means a feature cannot
work; it counts (non-zero exit) only for the features the caller needs, and is shown
as ``warn`` otherwise.

    python -m aiolowlat.doctor --needs uring,af_xdp --interface eth1
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import glob
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Literal

import msgspec

from .tuning import (
    CAP_IPC_LOCK,
    allowed_cpus,
    format_limit,
    format_table,
    has_capability,
    isolated_cpus,
    memlock_fix,
    parse_cpu_list,
    python_path,
    read_text,
)

__all__ = ["NEEDS", "Check", "exit_status", "format_checks", "main", "print_checks",
           "run_checks"]

Status = Literal["ok", "warn", "fail", "info"]


class Check(msgspec.Struct, frozen=True):
    """One finding about the host: its status, what was found, and how to fix it."""

    name: str
    status: Status
    found: str
    fix: str = ""


# What each need requires: a fail in one of these checks makes the exit status non-zero.
NEEDS: dict[str, tuple[str, ...]] = {
    "uring": ("io_uring", "io_uring_disabled"),
    "af_xdp": ("af_xdp", "bpf"),
    "dpdk": ("dpdk",),
    "busy_poll": ("cpus",),
    "mlock": ("memlock",),
    "hugepages": ("hugepages",),
    "hw_timestamps": ("timestamping",),
}

_libc = ctypes.CDLL(None, use_errno=True)
AF_XDP = 44
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
_SYS_IO_URING_SETUP, _SYS_IO_URING_REGISTER = 425, 427  # the same on every architecture
_IORING_REGISTER_PROBE, _IO_URING_OP_SUPPORTED, _IORING_OP_SEND_ZC = 8, 1, 47
_SETUP_FLAGS = {"SQPOLL": 1 << 1, "SINGLE_ISSUER": 1 << 12,
                "DEFER_TASKRUN": (1 << 12) | (1 << 13)}  # DEFER_TASKRUN needs SINGLE_ISSUER
_FEATURES = ("SINGLE_MMAP", "NODROP", "SUBMIT_STABLE", "RW_CUR_POS", "CUR_PERSONALITY",
             "FAST_POLL", "POLL_32BITS", "SQPOLL_NONFIXED", "EXT_ARG", "NATIVE_WORKERS",
             "RSRC_TAGS", "CQE_SKIP", "LINKED_FILE", "REG_REG_RING", "RECVSEND_BUNDLE",
             "MIN_TIMEOUT")
_SOF_RX_HARDWARE, _SOF_RAW_HARDWARE = 1 << 2, 1 << 6
SOCKET_BUFFER_MIN = 8 << 20


def _kernel_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _sysctl(name: str) -> str | None:
    return read_text("/proc/sys/" + name.replace(".", "/"))


def _pkg_config(name: str) -> str | None:
    if shutil.which("pkg-config") is None:
        return None
    out = subprocess.run(["pkg-config", "--modversion", name], capture_output=True, text=True,
                         timeout=10)
    return out.stdout.strip() if out.returncode == 0 else None


# -- host checks --

def check_kernel() -> Check:
    release, version = os.uname().release, _kernel_version()
    if version >= (6, 1):
        return Check("kernel", "ok", f"Linux {release}")
    return Check("kernel", "warn", f"Linux {release}: multishot receives and provided-buffer "
                 "rings need 6.0 or newer", "upgrade to a 6.1 LTS kernel or newer")


def _uring_setup(flags: int) -> tuple[int, int]:
    """io_uring_setup(2) with ``flags``: (ring fd or -errno, feature bits)."""
    params = (ctypes.c_uint32 * 30)()  # struct io_uring_params, 120 bytes
    params[2] = flags
    fd = _libc.syscall(_SYS_IO_URING_SETUP, 4, params)
    return (fd if fd >= 0 else -ctypes.get_errno()), params[5]


def _uring_features() -> str:
    fd, features = _uring_setup(0)
    if fd < 0:
        return ""
    try:
        probe = (ctypes.c_uint8 * (16 + 256 * 8))()
        ops = "opcodes not probed"
        if _libc.syscall(_SYS_IO_URING_REGISTER, fd, _IORING_REGISTER_PROBE, probe, 256) == 0:
            flags = ctypes.c_uint16.from_buffer(probe, 16 + _IORING_OP_SEND_ZC * 8 + 2).value
            send_zc = "SEND_ZC" if flags & _IO_URING_OP_SUPPORTED else "no SEND_ZC"
            ops = f"{probe[0] + 1} opcodes ({send_zc})"
    finally:
        os.close(fd)
    setups = []
    for name, flag in _SETUP_FLAGS.items():
        ring, _ = _uring_setup(flag)
        if ring >= 0:
            os.close(ring)
            setups.append(name)
    names = [n for i, n in enumerate(_FEATURES) if features >> i & 1]
    setup = " ".join(setups) or "none of " + ", ".join(_SETUP_FLAGS)
    return f"features {' '.join(names)}; setup {setup}; {ops}"


def check_io_uring() -> Check:
    """Create a ring the way the loop does (aiolowlat.new_event_loop)."""
    try:
        from . import UringUnavailableError, new_event_loop

        loop = new_event_loop()
    except ImportError as exc:
        return Check("io_uring", "fail", f"aiolowlat's C core is not built: {exc}",
                     "apt-get install liburing-dev && pip install --force-reinstall aiolowlat")
    except UringUnavailableError as exc:
        # The loop's error explains the cause and names the fix.
        cause = os.strerror(exc.errno) if exc.errno else "unknown error"
        fix = str(exc.strerror or exc).removeprefix("io_uring set-up failed: ")
        return Check("io_uring", "fail", f"the loop cannot create a ring: {cause}", fix)
    loop.close()
    return Check("io_uring", "ok", f"aiolowlat.new_event_loop() created a ring; "
                 f"{_uring_features()}")


def check_io_uring_disabled() -> Check:
    value = _sysctl("kernel.io_uring_disabled")
    fix = ("sysctl -w kernel.io_uring_disabled=0 (persist: echo 'kernel.io_uring_disabled = 0' "
           "> /etc/sysctl.d/90-aiolowlat.conf)")
    if value is None:
        return Check("io_uring_disabled", "info", "no kernel.io_uring_disabled (kernel before "
                     "6.6): io_uring is on for everyone")
    if value == "0":
        return Check("io_uring_disabled", "ok", "kernel.io_uring_disabled = 0")
    if value == "1":
        group = _sysctl("kernel.io_uring_group")
        return Check("io_uring_disabled", "warn", f"kernel.io_uring_disabled = 1: only "
                     f"CAP_SYS_ADMIN or group {group} may create rings",
                     fix + f", or add the user to group {group}")
    return Check("io_uring_disabled", "fail", f"kernel.io_uring_disabled = {value}: io_uring "
                 "is off for every process", fix)


def check_af_xdp() -> Check:
    libxdp = _pkg_config("libxdp")
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:
            return Check("af_xdp", "fail", "the kernel has no AF_XDP sockets",
                         "use a kernel built with CONFIG_XDP_SOCKETS=y (Debian's is)")
        return Check("af_xdp", "fail", f"socket(AF_XDP): {exc.strerror}",
                     "needs CAP_NET_RAW, CAP_NET_ADMIN and CAP_BPF: run as root or "
                     f"`setcap cap_net_raw,cap_net_admin,cap_bpf=ep {python_path()}`")
    if libxdp is None:
        return Check("af_xdp", "fail", "the kernel has AF_XDP sockets; libxdp is not installed",
                     "apt-get install libxdp-dev libbpf-dev xdp-tools")
    return Check("af_xdp", "ok", f"an AF_XDP socket was created; libxdp {libxdp}, "
                 f"libbpf {_pkg_config('libbpf')}")


def check_bpf() -> Check:
    """Create a one-entry BPF array map: the syscall works and we may use it."""
    if _SYS_BPF is None:
        return Check("bpf", "info", f"BPF not probed on {platform.machine()}")
    attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    fd = _libc.syscall(_SYS_BPF, 0, attr, ctypes.sizeof(attr))  # BPF_MAP_CREATE
    if fd >= 0:
        os.close(fd)
        return Check("bpf", "ok", "a BPF map was created (bpf(2) works, CAP_BPF held)")
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return Check("bpf", "fail", "the kernel has no bpf(2)",
                     "use a kernel built with CONFIG_BPF_SYSCALL=y")
    unpriv = _sysctl("kernel.unprivileged_bpf_disabled")
    return Check("bpf", "fail", f"bpf(BPF_MAP_CREATE): {os.strerror(err)} "
                 f"(kernel.unprivileged_bpf_disabled = {unpriv})",
                 f"needs CAP_BPF (or CAP_SYS_ADMIN): run as root or "
                 f"`setcap cap_bpf,cap_net_admin,cap_net_raw=ep {python_path()}`")


def check_dpdk() -> Check:
    version, testpmd = _pkg_config("libdpdk"), shutil.which("dpdk-testpmd")
    fix = "apt-get install dpdk dpdk-dev libdpdk-dev"
    if version and testpmd:
        return Check("dpdk", "ok", f"DPDK {version} (pkg-config libdpdk), {testpmd}")
    if version or testpmd:
        return Check("dpdk", "warn", f"DPDK partly installed: libdpdk {version or 'missing'}, "
                     f"dpdk-testpmd {testpmd or 'missing'}", fix)
    return Check("dpdk", "fail", "DPDK is not installed (no pkg-config libdpdk)", fix)


def check_hugepages() -> Check:
    sizes = []
    free_any = False
    for base in sorted(glob.glob("/sys/kernel/mm/hugepages/hugepages-*kB")):
        size = f"{int(base.rsplit('-', 1)[1][:-2]) // 1024} MiB"
        nr, free = read_text(base + "/nr_hugepages"), read_text(base + "/free_hugepages")
        sizes.append(f"{size}: {nr} reserved, {free} free")
        free_any = free_any or (free or "0") != "0"
    mounts = [line.split()[1] for line in (read_text("/proc/mounts") or "").splitlines()
              if line.split()[2:3] == ["hugetlbfs"]]
    found = "; ".join(sizes) or "no huge page sizes"
    found += f"; hugetlbfs at {', '.join(mounts)}" if mounts else "; no hugetlbfs mounted"
    fix = ("echo 512 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages (or hugepages=512 "
           "on the kernel command line)")
    if not free_any:
        return Check("hugepages", "fail", found + " (DPDK can still run with --no-huge)",
                     fix + "; mount -t hugetlbfs nodev /dev/hugepages")
    if not mounts:
        return Check("hugepages", "warn", found, "mount -t hugetlbfs nodev /dev/hugepages "
                     "(DPDK without --in-memory needs it)")
    return Check("hugepages", "ok", found)


def _cmdline_params() -> dict[str, str]:
    params = {}
    for word in (read_text("/proc/cmdline") or "").split():
        if word == "--":  # the rest belongs to init
            break
        key, _, value = word.partition("=")
        params[key] = value
    return params


def check_isolation() -> Check:
    params = _cmdline_params()
    given = {k: params[k] for k in ("isolcpus", "nohz_full", "rcu_nocbs") if k in params}
    isolated = isolated_cpus()
    nohz = read_text("/sys/devices/system/cpu/nohz_full") or ""
    cpus = sorted(allowed_cpus())
    spare = ",".join(str(c) for c in cpus[1:]) or "1"
    fix = (f'add "isolcpus={spare} nohz_full={spare} rcu_nocbs={spare}" to GRUB_CMDLINE_LINUX '
           "in /etc/default/grub, run update-grub and reboot; then pin the loop and the "
           "engines there")
    if not isolated and not given:
        return Check("cpu_isolation", "warn", "no isolated CPUs (no isolcpus, nohz_full or "
                     "rcu_nocbs on the kernel command line): the scheduler and kernel work share "
                     "every core with the hot path", fix)
    found = ", ".join(f"{k}={v}" for k, v in given.items()) or "no boot parameters"
    found += f"; isolated: {','.join(map(str, sorted(isolated))) or 'none'}"
    found += f"; nohz_full: {nohz or 'none'}"
    missing = [k for k in ("isolcpus", "nohz_full", "rcu_nocbs") if k not in given]
    if missing:
        return Check("cpu_isolation", "warn", found + f"; missing {', '.join(missing)}", fix)
    return Check("cpu_isolation", "ok", found)


def check_governor() -> Check:
    governors = {}
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"):
        cpu = path.split("/")[5][3:]
        governors.setdefault(read_text(path) or "?", []).append(cpu)
    if not governors:
        return Check("cpu_governor", "info", "no cpufreq driver (a VM or a fixed-frequency CPU): "
                     "nothing to set")
    found = "; ".join(f"{g} on CPU {','.join(sorted(c, key=int))}" for g, c in governors.items())
    if set(governors) == {"performance"}:
        return Check("cpu_governor", "ok", found)
    return Check("cpu_governor", "warn", found + ": frequency changes add latency",
                 "cpupower frequency-set -g performance (or echo performance > "
                 "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)")


def _selected(text: str | None) -> str | None:
    match = re.search(r"\[(\w[\w+]*)\]", text or "")
    return match[1] if match else None


def check_thp() -> Check:
    base = "/sys/kernel/mm/transparent_hugepage"
    enabled, defrag = _selected(read_text(base + "/enabled")), _selected(read_text(base + "/defrag"))
    if enabled is None:
        return Check("transparent_hugepages", "info", "no transparent huge pages in this kernel")
    found = f"enabled [{enabled}], defrag [{defrag}]"
    if enabled == "always" or defrag in ("always", "defer+madvise"):
        return Check("transparent_hugepages", "warn", found + ": khugepaged and direct "
                     "compaction can stall any allocation",
                     f"echo madvise > {base}/enabled; echo defer > {base}/defrag")
    return Check("transparent_hugepages", "ok", found + " (only memory that asks gets them)")


def check_memlock() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    found = f"RLIMIT_MEMLOCK {format_limit(soft)} (hard {format_limit(hard)})"
    if has_capability(CAP_IPC_LOCK):
        return Check("memlock", "ok", found + "; CAP_IPC_LOCK held, so the limit does not apply")
    if soft == resource.RLIM_INFINITY:
        return Check("memlock", "ok", found)
    return Check("memlock", "fail", found + "; no CAP_IPC_LOCK: mlockall fails once the "
                 "process maps more, and io_uring's buffers count against it", memlock_fix())


def check_socket_buffers() -> Check:
    rmem, wmem = _sysctl("net.core.rmem_max"), _sysctl("net.core.wmem_max")
    found = f"net.core.rmem_max = {rmem}, net.core.wmem_max = {wmem}"
    if rmem is None or wmem is None:
        return Check("socket_buffers", "info", "net.core sysctls not readable here")
    if min(int(rmem), int(wmem)) < SOCKET_BUFFER_MIN:
        return Check("socket_buffers", "warn", found + f" (under {SOCKET_BUFFER_MIN >> 20} MiB: "
                     "a burst overflows a feed's receive buffer)",
                     "sysctl -w net.core.rmem_max=33554432 net.core.wmem_max=33554432 (persist "
                     "in /etc/sysctl.d/90-aiolowlat.conf)")
    return Check("socket_buffers", "ok", found)


def check_busy_poll_sysctls() -> Check:
    poll, read = _sysctl("net.core.busy_poll"), _sysctl("net.core.busy_read")
    found = f"net.core.busy_poll = {poll}, net.core.busy_read = {read}"
    if poll is None:
        return Check("busy_poll_sysctls", "info", "net.core.busy_poll not readable here")
    if poll == "0" or read == "0":
        return Check("busy_poll_sysctls", "info", found + ": the kernel does not busy-poll "
                     "sockets (aiolowlat's busy_poll=True spins on the ring in user space and "
                     "does not need it)", "sysctl -w net.core.busy_poll=50 net.core.busy_read=50")
    return Check("busy_poll_sysctls", "ok", found)


def check_cpus() -> Check:
    cpus = sorted(os.sched_getaffinity(0))  # what this process was started with (taskset)
    found = f"{len(cpus)} CPU(s) allowed: {','.join(map(str, cpus))}"
    if len(cpus) >= 2:
        return Check("cpus", "ok", found + " (a busy-polling loop can have one of its own)")
    return Check("cpus", "fail", found + ": a busy-polling loop would starve everything else",
                 "give the process at least 2 CPUs (taskset, --cpuset-cpus, CPUAffinity=)")


# -- interface checks --

def check_interface(interface: str) -> Check:
    try:
        index = socket.if_nametoindex(interface)
    except OSError:
        names = ", ".join(name for _, name in socket.if_nameindex())
        return Check("interface", "fail", f"no interface {interface!r} here (have: {names})",
                     "pass an interface of this host (ip -br link)")
    return Check("interface", "ok", f"{interface} (index {index})")


def check_timestamping(interface: str) -> Check:
    """What ``ethtool -T`` reports, read with the SIOCETHTOOL ETHTOOL_GET_TS_INFO ioctl."""
    from .transports import nic_timestamping

    try:
        caps, phc, _ = nic_timestamping(interface)
    except OSError as exc:
        return Check("timestamping", "fail", f"{interface}: ETHTOOL_GET_TS_INFO failed: "
                     f"{exc.strerror}", f"check the interface: ethtool -T {interface}")
    if caps & _SOF_RX_HARDWARE and caps & _SOF_RAW_HARDWARE and phc >= 0:
        return Check("timestamping", "ok", f"{interface}: hardware receive timestamps, PTP "
                     f"clock /dev/ptp{phc}")
    return Check("timestamping", "fail", f"{interface}: software timestamps only (no hardware "
                 "receive stamps, no PTP clock): rx_ns is the kernel's receive time",
                 f"hardware stamps need a NIC with a PTP clock: `ethtool -T {interface}` must list "
                 "hardware-receive; aiolowlat then switches them on itself")


def _nic_irqs(interface: str) -> list[int]:
    device = f"/sys/class/net/{interface}/device"
    irqs: set[int] = set()
    for where in (device, device + "/.."):  # virtio: the PCI parent owns the vectors
        for path in glob.glob(where + "/msi_irqs/*"):
            irqs.add(int(os.path.basename(path)))
        if irqs:
            break
    for line in (read_text("/proc/interrupts") or "").splitlines():
        head, _, rest = line.partition(":")
        if head.strip().isdigit() and re.search(rf"\b{re.escape(interface)}\b", rest):
            irqs.add(int(head))
    return sorted(irqs)


def _irqbalance_running() -> bool:
    return any(read_text(path) == "irqbalance" for path in glob.glob("/proc/[0-9]*/comm"))


def check_irq_affinity(interface: str) -> Check:
    if not os.path.exists(f"/sys/class/net/{interface}"):
        return Check("irq_affinity", "info", f"{interface} is not in this namespace's sysfs: "
                     "IRQs not checked")
    if not os.path.exists(f"/sys/class/net/{interface}/device"):
        return Check("irq_affinity", "info", f"{interface} is virtual (no device): no IRQs "
                     "of its own")
    irqs = _nic_irqs(interface)
    if not irqs:
        return Check("irq_affinity", "info", f"{interface}: no IRQs found")
    isolated = isolated_cpus()
    placed, clashes = [], []
    for irq in irqs:
        cpus = (read_text(f"/proc/irq/{irq}/effective_affinity_list")
                or read_text(f"/proc/irq/{irq}/smp_affinity_list") or "")
        placed.append(f"{irq}->{cpus}")
        if parse_cpu_list(cpus) & isolated:
            clashes.append(irq)
    found = f"{interface} IRQs (irq->CPUs): {' '.join(placed)}"
    if _irqbalance_running():
        found += "; irqbalance is running and moves them"
    # Without isolation, suggest the first CPU for IRQs and leave the others to the hot path.
    allowed = allowed_cpus()
    housekeeping = ",".join(map(str, sorted(allowed - isolated) if isolated else [min(allowed)]))
    fix = (f"for n in {' '.join(map(str, clashes or irqs))}; do echo {housekeeping} > "
           "/proc/irq/$n/smp_affinity_list; done (and stop irqbalance or set "
           "IRQBALANCE_BANNED_CPULIST)")
    if clashes:
        return Check("irq_affinity", "warn", found + f"; IRQs {clashes} land on isolated CPUs",
                     fix)
    return Check("irq_affinity", "info", found + "; keep them off the loop's and engines' CPUs",
                 fix)


HOST_CHECKS: tuple[Callable[[], Check], ...] = (
    check_kernel, check_io_uring, check_io_uring_disabled, check_af_xdp, check_bpf, check_dpdk,
    check_hugepages, check_isolation, check_cpus, check_governor, check_thp, check_memlock,
    check_socket_buffers, check_busy_poll_sysctls)


def run_checks(needs: Iterable[str] = (), interface: str | None = None) -> list[Check]:
    """Run every host check (and the interface's, when given). A ``fail`` stays a fail
    only when one of ``needs`` requires that check; otherwise it is shown as ``warn``."""
    needs = set(needs)
    unknown = needs - NEEDS.keys()
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}: choose from {sorted(NEEDS)}")
    required = {name for need in needs for name in NEEDS[need]}
    checks = [check() for check in HOST_CHECKS]
    if interface is not None:
        iface = check_interface(interface)
        checks.append(iface)
        required.add("interface")
        if iface.status == "ok":
            checks += [check_timestamping(interface), check_irq_affinity(interface)]
    return [c if c.status != "fail" or c.name in required
            else msgspec.structs.replace(c, status="warn") for c in checks]


def format_checks(checks: Iterable[Check]) -> str:
    """The findings as a table, then a one-line count."""
    checks = list(checks)
    table = format_table(("check", "status", "found", "fix"),
                         ((c.name, c.status.upper() if c.status in ("warn", "fail") else c.status,
                           c.found, c.fix) for c in checks), (0, 0, 60, 52))
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail", "info")}
    return table + "\n\n" + ", ".join(f"{n} {s}" for s, n in counts.items())


def print_checks(checks: Iterable[Check], file=None) -> None:
    """Print the findings table (``format_checks``) to ``file`` (stdout)."""
    print(format_checks(checks), file=file or sys.stdout)


def exit_status(checks: Iterable[Check]) -> int:
    """1 when something the needs require cannot work, else 0."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def needs_of(settings) -> set[str]:
    """What a strategy's settings (aiolowlat.config.Settings) need of this host."""
    needs = set()
    if settings.loop == "uring" or any(f.transport == "uring" for f in settings.feeds.values()):
        needs.add("uring")
    needs |= {f.transport for f in settings.feeds.values() if f.transport in ("af_xdp", "dpdk")}
    if settings.busy_poll or any(f.engine.busy_poll for f in settings.feeds.values()
                                 if f.transport in ("af_xdp", "dpdk")):
        needs.add("busy_poll")
    if settings.tuning.mlockall:
        needs.add("mlock")
    if settings.tuning.hugepages:
        needs.add("hugepages")
    return needs


def main(argv: list[str] | None = None) -> int:
    """``aiolowlat doctor``: print the findings; exit 1 when a need cannot be met."""
    parser = argparse.ArgumentParser(
        prog="aiolowlat doctor", description="Check this host for low-latency trading I/O.")
    parser.add_argument("--needs", default="", help="comma-separated features that must work: "
                        + ", ".join(NEEDS))
    parser.add_argument("--interface", "-i", help="also check this NIC (timestamps, IRQs)")
    parser.add_argument("--config", help="a strategy TOML file: check what it needs")
    parser.add_argument("--json", action="store_true", help="one JSON object per check")
    args = parser.parse_args(argv)
    needs = {n.strip() for n in args.needs.split(",") if n.strip()}
    if args.config:
        from . import config

        try:
            settings = config.load(args.config)
        except config.ConfigError as exc:
            parser.error(str(exc))
        needs |= needs_of(settings)
        interfaces = {f.interface for f in settings.feeds.values() if f.interface}
        if args.interface is None and len(interfaces) == 1:
            args.interface = interfaces.pop()
    if needs - NEEDS.keys():
        parser.error(f"unknown needs {sorted(needs - NEEDS.keys())}: choose from "
                     f"{', '.join(NEEDS)}")
    checks = run_checks(needs, args.interface)
    if args.json:
        for check in checks:
            print(msgspec.json.encode(check).decode())
    else:
        print_checks(checks)
    return exit_status(checks)


if __name__ == "__main__":
    sys.exit(main())
