"""cffi build script: aiolowlat._native._bypass, the AF_XDP and DPDK engines and the
packet code (csrc/pkt.c, bypass_core.c, xsk_engine.c, dpdk_engine.c).

Compiler and linker flags come from pkg-config (libxdp, libbpf, libdpdk), so Debian's
split DPDK libraries and its rte_config.h are found wherever the distribution puts them.
"""

import pathlib
import shlex
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from build import make_builder  # noqa: E402

PACKAGES = ("libxdp", "libbpf", "libdpdk")


def pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", *args, *PACKAGES], check=True, text=True,
                             capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            "aiolowlat's bypass engines need libxdp, libbpf and DPDK with pkg-config "
            "(Debian: apt-get install pkg-config libxdp-dev libbpf-dev libdpdk-dev dpdk): "
            f"{getattr(exc, 'stderr', exc)}") from exc
    return shlex.split(out)


cflags, libs = pkg_config("--cflags"), pkg_config("--libs")
ffibuilder = make_builder(
    "_bypass", ("pkt.h", "bypass_core.h", "xsk_engine.h", "dpdk_engine.h"),
    ("pkt.c", "bypass_core.c", "xsk_engine.c", "dpdk_engine.c"),
    include_dirs=[f[2:] for f in cflags if f.startswith("-I")],
    extra_compile_args=[f for f in cflags if not f.startswith("-I")] + ["-pthread"],
    libraries=[f[2:] for f in libs if f.startswith("-l")],
    library_dirs=[f[2:] for f in libs if f.startswith("-L")],
    extra_link_args=[f for f in libs if f.startswith("-Wl")] + ["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(pathlib.Path(__file__).resolve().parents[2] / "build"),
                       verbose=False)
