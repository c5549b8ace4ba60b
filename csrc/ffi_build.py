# SPDX-License-Identifier: Apache-2.0
"""Builds csrc/ into the extension module shmq._core (cffi API mode, out of line).

The cdef is read from csrc/shmq_api.h, the one public header, so it cannot
drift from the C code: "#define NAME value" lines become "#define NAME ..."
and the compiler supplies the values. Environment switches for developers:
SHMQ_CFLAGS adds compiler flags (e.g. "-O0 -g -fsanitize=address").
"""

import os
import pathlib
import re

from cffi import FFI

CSRC = pathlib.Path(__file__).resolve().parent


def read_cdef(header: pathlib.Path) -> str:
    lines = []
    for line in header.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith(("#include", "#ifndef", "#endif", "#define SHMQ_API_H")):
            continue
        lines.append(re.sub(r"^#define\s+(\w+)\s+.*$", r"#define \1 ...", stripped))
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(read_cdef(CSRC / "shmq_api.h"))
ffibuilder.set_source(
    "shmq._core",
    '#include "shmq_api.h"',
    # Relative paths: setuptools rejects absolute ones in sources.
    # pyfast.c is the CPython extension shmq._fast (setup.py), not part of the core.
    sources=[os.path.relpath(path) for path in sorted(CSRC.glob("*.c")) if path.name != "pyfast.c"],
    include_dirs=[os.path.relpath(CSRC)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
    + os.environ.get("SHMQ_CFLAGS", "").split(),
    libraries=["rt"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
