# cffi API mode: the C core in csrc/ is compiled into aiolowlat._native._uring at install.
from setuptools import setup

setup(cffi_modules=["aiolowlat/_native/build.py:ffibuilder"])
