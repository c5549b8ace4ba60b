#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What shmq's write-ahead log costs: put+get throughput per durability mode,
durable puts/s with durability="sync" and several producers, and recovery time.

The code is shmq/bench/durability.py (installed with shmq, and part of `shmq bench`);
this script runs it from a checkout. `python benchmarks/bench_durability.py --help`
lists the options; benchmarks/README.md explains the output.
"""

import sys
from pathlib import Path

# Appended, not prepended: an installed shmq wins over the source tree.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)

from shmq.bench.durability import main  # noqa: E402  (after the path set-up above)

if __name__ == "__main__":
    sys.exit(main())
