/* SPDX-License-Identifier: Apache-2.0 */
/* ops.h -- the operations layer: the public calls (shmq_api.h) composed
 * from the layers below. Its files may call every layer; none calls them. */
#ifndef SHMQ_OPS_H
#define SHMQ_OPS_H

#include "jobs.h"
#include "log.h"
#include "ring.h"

/* backlog.c */
int shmq_backlog_feed(shmq_handle *h, uint32_t budget);
void shmq_backlog_redeliver(shmq_handle *h, uint32_t lane, uint64_t pos);

#endif /* SHMQ_OPS_H */
