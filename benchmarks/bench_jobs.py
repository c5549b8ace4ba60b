#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Jobs through a whole job queue, enqueue -> worker process -> done, for RQ (on
a Redis server this script starts), Huey (SQLite storage) and shmq, and shmq's
enqueue-to-start latency at a fixed offered load.

The code is shmq/bench/jobs.py (installed with shmq, and part of `shmq bench`);
this script runs it from a checkout. `python benchmarks/bench_jobs.py --help`
lists the options; benchmarks/README.md explains the output.
"""

import sys
from pathlib import Path

# Appended, not prepended: an installed shmq wins over the source tree.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)

from shmq.bench.jobs import main  # noqa: E402  (after the path set-up above)

if __name__ == "__main__":
    sys.exit(main())
