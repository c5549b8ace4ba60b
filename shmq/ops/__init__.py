# SPDX-License-Identifier: Apache-2.0
"""Running shmq: ``config`` (shmq.toml and SHMQ_* settings), ``supervisor``
(``shmq supervise``: maintenance of a data directory), ``metrics`` (stats
and the Prometheus text format)."""
