"""Build a benchmark's C reference program (csrc/NAME.c) once, rebuilt when the source changes."""

import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_c(name: str, *libs: str) -> str:
    """The path of the built program; RuntimeError with gcc's own message if it fails."""
    out = os.path.join(tempfile.gettempdir(), f"aiolowlat_{name}")
    src = os.path.join(ROOT, "csrc", f"{name}.c")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        done = subprocess.run(["gcc", "-O2", "-Wall", "-o", out, src, *libs],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"gcc {os.path.basename(src)}: {done.stderr.strip()}")
    return out
