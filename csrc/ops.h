/* SPDX-License-Identifier: Apache-2.0 */
/* ops.h -- the operations layer: the public calls (shmq_api.h) composed
 * from the layers below. Its files may call every layer; none calls them. */
#ifndef SHMQ_OPS_H
#define SHMQ_OPS_H

#include "lane.h"
#include "log.h"

#endif /* SHMQ_OPS_H */
