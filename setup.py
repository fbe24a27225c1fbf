# cffi API mode: each C component in csrc/ is compiled into a module of aiolowlat._native
# at install (one build script per module, see aiolowlat/_native/build.py). The loop's
# per-event path is a plain CPython extension (_evloop): it calls into the interpreter per
# event, which cffi's calling convention makes costly.
from setuptools import Extension, setup

setup(
    cffi_modules=[
        "aiolowlat/_native/build.py:ffibuilder",
        "aiolowlat/_native/build_bypass.py:ffibuilder",
        "aiolowlat/_native/build_ws.py:ffibuilder",
    ],
    ext_modules=[
        Extension(
            "aiolowlat._native._evloop",
            sources=["csrc/evloop.c"],
            include_dirs=["csrc"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
        )
    ],
)
