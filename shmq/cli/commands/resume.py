# SPDX-License-Identifier: Apache-2.0
"""``shmq resume QUEUE [--task T]``: undoes ``shmq pause`` (see pause.py)."""

from shmq.cli.commands.pause import command

COMMAND = command("resume")
