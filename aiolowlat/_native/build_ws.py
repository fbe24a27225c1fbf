"""cffi build script for aiolowlat._native._ws: the WebSocket hot path (csrc/ws.c)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from build import make_builder  # noqa: E402

ffibuilder = make_builder("_ws", ("ws.h",), ("ws.c",), extra_compile_args=["-O3"])
