#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Throttling under overload: one producer process offered 10x the rate its
consumer process can take, with `shmq supervise` running.

The code is shmq/bench/throttle.py (installed with shmq, and part of `shmq bench`);
this script runs it from a checkout. `python benchmarks/bench_throttle.py --help`
lists the options; benchmarks/README.md explains the output.
"""

import sys
from pathlib import Path

# Appended, not prepended: an installed shmq wins over the source tree.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)

from shmq.bench.throttle import main  # noqa: E402  (after the path set-up above)

if __name__ == "__main__":
    sys.exit(main())
