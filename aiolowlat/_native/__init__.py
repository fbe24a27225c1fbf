"""The compiled C core (cffi, API mode). Import errors name the fix."""

try:
    from ._uring import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "aiolowlat's C core is not built. Install liburing (Debian: apt-get install "
        "liburing-dev) and reinstall aiolowlat (pip install .), or run ./dev.sh test. "
        f"Cause: {exc}"
    ) from exc

__all__ = ["ffi", "lib"]
