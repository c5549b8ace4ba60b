# SPDX-License-Identifier: Apache-2.0
import os

from setuptools import Extension, setup

# cffi builds csrc/ into shmq._core at install time (API mode, out of line).
# shmq._fast (csrc/pyfast.c) is a small CPython extension for the hot calls of
# shmq.Queue; it calls the core through the entry points shmq._core hands it.
setup(
    cffi_modules=["csrc/ffi_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "shmq._fast",
            sources=["csrc/pyfast.c"],
            include_dirs=["csrc"],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
            + os.environ.get("SHMQ_CFLAGS", "").split(),
        )
    ],
)
