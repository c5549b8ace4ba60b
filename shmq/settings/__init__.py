# SPDX-License-Identifier: Apache-2.0
"""Settings, below everything that reads them: ``params`` (a queue's
parameters: names, defaults, ranges, their checks, QueueParams), ``retry``
(RetryPolicy), ``config`` (shmq.toml, SHMQ_* variables and where each value
came from)."""
