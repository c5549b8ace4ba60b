# SPDX-License-Identifier: Apache-2.0
from setuptools import setup

# cffi builds csrc/ into shmq._core at install time (API mode, out of line).
setup(cffi_modules=["csrc/ffi_build.py:ffibuilder"])
