# cffi API mode: each C component in csrc/ is compiled into a module of aiolowlat._native
# at install (one build script per module, see aiolowlat/_native/build.py).
from setuptools import setup

setup(
    cffi_modules=[
        "aiolowlat/_native/build.py:ffibuilder",
        "aiolowlat/_native/build_bypass.py:ffibuilder",
        "aiolowlat/_native/build_ws.py:ffibuilder",
    ]
)
