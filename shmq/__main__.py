# SPDX-License-Identifier: Apache-2.0
"""``python -m shmq``: the same as the ``shmq`` command."""

import sys

from shmq.cli.main import main

sys.exit(main())
