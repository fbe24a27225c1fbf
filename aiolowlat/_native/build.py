"""cffi build script: compiles csrc/ into aiolowlat._native._uring (API mode)."""

import pathlib
import re

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"


def _cdef_from_header(path: pathlib.Path) -> str:
    """The declarations cffi needs: the header minus preprocessor lines."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


ffibuilder = FFI()
HEADERS = ("uring.h", "dgram.h", "itch.h")
ffibuilder.cdef("".join(_cdef_from_header(CSRC / name) for name in HEADERS))
ffibuilder.set_source(
    "aiolowlat._native._uring",
    "".join(f'#include "{name}"\n' for name in HEADERS),
    # setuptools wants paths relative to setup.py, which is where cffi runs this.
    sources=["csrc/uring.c", "csrc/dgram.c", "csrc/itch.c"],
    include_dirs=["csrc"],
    libraries=["uring"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"],
)
