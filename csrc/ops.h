/* SPDX-License-Identifier: Apache-2.0 */
/* ops.h -- the operations layer: the public calls (shmq_api.h) composed
 * from the layers below. Its files may call every layer; none calls them. */
#ifndef SHMQ_OPS_H
#define SHMQ_OPS_H

#include "lane.h"
#include "log.h"

/* backlog.c */
int shmq_backlog_feed(shmq_handle *h, uint32_t budget);

#endif /* SHMQ_OPS_H */
