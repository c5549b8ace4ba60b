# SPDX-License-Identifier: Apache-2.0
"""Tasks over a job backend: ``app`` (shmq.App, Task), ``worker`` (the
process pool of ``shmq worker``), ``eager`` (tasks run inline, for tests)."""
