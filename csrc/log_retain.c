/* SPDX-License-Identifier: Apache-2.0 */
/* log_retain.c -- keeping the log proportional to the backlog, the log's
 * part: deleting the segments below a position the caller gives (the
 * low-water mark of the live jobs, which maintain.c works out from the
 * lanes and the job tables), unmapping them, and the log's own upkeep in a
 * maintenance pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>

#include "log.h"

/* Deletes the segments wholly below `low` (the lowest position any live
 * job needs: the caller's low-water mark) and raises the log's base. */
void shmq_log_delete_below(shmq_handle *h, uint64_t low)
{
    shmq_region_header *hdr = h->header;
    uint64_t S = h->segment_bytes;
    /* acquire: pairs with the release below, by an earlier maintainer. */
    uint64_t base = atomic_load_explicit(&hdr->log_base, memory_order_acquire);
    uint64_t keep = low / S * S;
    if (keep <= base)
        return;
    /* release: whoever reads the new base no longer maps what lies below. */
    atomic_store_explicit(&hdr->log_base, keep, memory_order_release);
    for (uint64_t index = base / S; index < keep / S; index++) {
        char name[32];
        shmq_segment_name(name, sizeof name, index * S);
        if (unlinkat(h->log_dirfd, name, 0) == 0)
            atomic_fetch_add_explicit(&hdr->segments_deleted, 1, memory_order_relaxed); /* statistics */
    }
}

/* Unmaps this process's mappings of deleted segments. */
void shmq_log_retire_below_base(shmq_handle *h)
{
    /* acquire: pairs with shmq_log_delete_below's release of log_base. */
    uint64_t base = atomic_load_explicit(&h->header->log_base, memory_order_acquire);
    pthread_mutex_lock(&h->segment_lock);
    for (uint32_t i = 0; i < SHMQ_SEGMENT_SLOTS; i++) {
        shmq_segment_slot *slot = &h->segments[i];
        /* relaxed: under segment_lock. */
        if (atomic_load_explicit(&slot->base, memory_order_relaxed) &&
            (atomic_load_explicit(&slot->index, memory_order_relaxed) + 1) * h->segment_bytes <= base)
            shmq_log_retire_slot(h, slot);
    }
    pthread_mutex_unlock(&h->segment_lock);
    shmq_log_unmap_retired(h, 0); /* we have left the log code: no thread of ours may be inside */
}

/* The log's own part of a maintenance pass (inside the log code): the
 * files grown, and the next segment made, before the tail needs them; a
 * group commit that is due. Ahead means four times what was appended since
 * this handle's last pass, at least SHMQ_SEGMENT_CHUNK: a busy log has its
 * segments whole soon, an idle one stays a few chunks long. */
int shmq_log_upkeep(shmq_handle *h)
{
    uint64_t S = h->segment_bytes;
    /* relaxed: where to grow is an estimate; the writers' own cover decides. */
    uint64_t tail = atomic_load_explicit(&h->header->log_tail, memory_order_relaxed) & ~SHMQ_TAIL_SPILL;
    /* relaxed: this handle's own rate estimate. */
    uint64_t last = atomic_exchange_explicit(&h->upkeep_tail, tail, memory_order_relaxed);
    uint64_t moved = last && tail > last ? tail - last : 0;
    uint64_t ahead = moved >= S / 4 ? S : 4 * moved;
    if (ahead < SHMQ_SEGMENT_CHUNK)
        ahead = SHMQ_SEGMENT_CHUNK;
    if (ahead > S)
        ahead = S;
    int rc = SHMQ_OK, err = 0;
    for (uint64_t at = tail, end = tail + ahead; at < end && !err;) {
        uint64_t stop = (at / S + 1) * S < end ? (at / S + 1) * S : end;
        if (!shmq_segment_map(h, at / S, SHMQ_MAKE_AHEAD, &err))
            break;
        err = shmq_segment_cover(h, at, stop - at, 1);
        at = stop;
    }
    /* EAGAIN: someone else is making the segment. No space: work ahead of
     * need only; a writer that needs the space gets the error, with its put. */
    if (err && err != EAGAIN && err != ENOSPC && err != EDQUOT)
        rc = shmq_log_fail(h, err);
    int flushed = shmq_log_flush_due(h);
    if (rc == SHMQ_OK)
        rc = flushed;
    return rc;
}
