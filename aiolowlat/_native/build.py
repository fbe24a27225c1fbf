"""cffi build scripts (API mode): each C component of csrc/ is its own compiled module.

``make_builder`` is shared by the per-component scripts (``build_*.py``) so that a
module's cdef is always its headers minus preprocessor lines, and flags stay alike.
This script builds the core: aiolowlat._native._uring (io_uring loop, datagrams, ITCH).
"""

import pathlib
import re

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"]


def _cdef_from_header(path: pathlib.Path) -> str:
    """The declarations cffi needs: the header minus preprocessor lines."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


def make_builder(module, headers, sources, **kwargs) -> FFI:
    """An FFI compiling ``csrc/<sources>`` into ``aiolowlat._native.<module>``."""
    ffi = FFI()
    ffi.cdef("".join(_cdef_from_header(CSRC / name) for name in headers))
    ffi.set_source(
        f"aiolowlat._native.{module}",
        "".join(f'#include "{name}"\n' for name in headers),
        # setuptools wants paths relative to setup.py, which is where cffi runs this.
        sources=[f"csrc/{name}" for name in sources],
        include_dirs=["csrc", *kwargs.pop("include_dirs", [])],
        extra_compile_args=[*CFLAGS, *kwargs.pop("extra_compile_args", [])],
        **kwargs,
    )
    return ffi


ffibuilder = make_builder(
    "_uring", ("uring.h", "dgram.h", "itch.h"), ("uring.c", "dgram.c", "itch.c"),
    libraries=["uring"],
)
