# SPDX-License-Identifier: Apache-2.0
"""The channel: a queue between processes in shared memory, and its log.

``queue`` (shmq.Queue: put/get, the region, maintenance), ``jobs`` (the job
operations of a Queue: enqueue, fetch under a lease, ack, fail, results),
``deadletter`` (dead jobs kept as files), ``codec`` (msgpack, pickle by
choice, raw, numpy), ``logparams`` (a queue's settings kept with its log),
``mp`` (the drop-in for multiprocessing.Queue)."""
