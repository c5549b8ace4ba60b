/* SPDX-License-Identifier: Apache-2.0 */
/* queue.c -- opening and closing a handle: the region's handle (region.c)
 * with the callbacks by which the ring and the participant table hand a
 * decision up to the layers above them, the log and the job tables. */
#define _GNU_SOURCE
#include <stdlib.h>

#include "ops.h"

/* The callbacks the lower layers call instead of calling up (core.h). */
static void set_callbacks(shmq_handle *h)
{
    h->references = h->jobs ? shmq_jobs_references : NULL;
    h->dead_reader = shmq_backlog_redeliver;
    h->repair_gate = h->jobs ? shmq_jobs_repair_gate : NULL;
}

int shmq_attach(void *base, uint64_t size, shmq_handle **out /* OUT */)
{
    shmq_handle *h;
    int rc = shmq_handle_make(base, size, &h);
    if (rc != SHMQ_OK)
        return rc;
    set_callbacks(h);
    rc = shmq_participant_register(h);
    if (rc != SHMQ_OK) {
        free(h);
        return rc;
    }
    /* relaxed: a private hint; handles of several processes start apart. */
    atomic_store_explicit(&h->entry_cursor, h->job_slots ? (h->self * 61u) % h->job_slots : 0, memory_order_relaxed);
    shmq_sweep_sleepers(h); /* a newcomer often follows a crash: tidy up after it */
    *out = h;
    return SHMQ_OK;
}

void shmq_detach(shmq_handle *h)
{
    if (!h)
        return;
    shmq_jobs_detach(h);
    shmq_log_close(h);
    shmq_participant_unregister(h);
    free(h);
}

/* In a forked child the inherited entry names the parent: take our own, so
 * the parent's death is never mistaken for ours (or ours for the parent's). */
int shmq_after_fork(shmq_handle *h)
{
    h->ack_count = 0; /* the parent's acks: the parent writes them */
    atomic_flag_clear(&h->ack_lock);
    /* Another thread of the parent may have held it at the fork; that thread
     * does not exist here, so the lock is made anew (else it is held for ever). */
    pthread_mutex_init(&h->segment_lock, NULL);
    h->self = 0; /* the parent's entry, never ours: on failure the handle must not be used */
    long nth = 1;
    h->fault_point = shmq_fault_parse(getenv("SHMQ_FAULT"), &nth);
    h->fault_countdown = nth;
    return shmq_participant_register(h);
}
