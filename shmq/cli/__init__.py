# SPDX-License-Identifier: Apache-2.0
"""The command line: ``main`` builds the parser from ``commands/`` (one
module per subcommand)."""

from shmq.cli.main import main

__all__ = ["main"]
