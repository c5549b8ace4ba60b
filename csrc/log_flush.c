/* SPDX-License-Identifier: Apache-2.0 */
/* log_flush.c -- making the log durable: one flusher at a time syncs the
 * segments written since the last flush, for every writer waiting (group
 * commit); a flusher that stops is taken over; a flush that is due. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* ------------------------------------------------------------ flushing */

/* fdatasync of every segment that may hold records appended since the
 * last flush (a record reserved before that flush read the tail may have
 * been published after it, so start one record's length back). */
static int flush_segments(shmq_handle *h, uint64_t from, uint64_t to)
{
    uint64_t S = h->segment_bytes;
    uint64_t back = h->header->max_message_bytes + SHMQ_ENQUEUE_OVERHEAD + 4096;
    from = from > back ? from - back : 0;
    /* acquire: pairs with shmq_log_delete_below's release; below it nothing is left to flush. */
    uint64_t log_base = atomic_load_explicit(&h->header->log_base, memory_order_acquire);
    if (from < log_base)
        from = log_base;
    for (uint64_t index = from / S; index * S < to; index++) {
        int err = 0;
        if (!shmq_segment_map(h, index, 0, &err))
            continue; /* deleted by retention meanwhile: nothing to flush */
        int fd = h->segments[index % SHMQ_SEGMENT_SLOTS].fd;
        if (fdatasync(fd) != 0)
            return shmq_log_fail(h, errno);
    }
    return SHMQ_OK;
}

/* Before a flush, while fewer writers have published since the last flush
 * began than the largest group lately, give the others a moment (they are
 * between two puts): one flush then covers them too. Only when writers come
 * in groups, so a lone writer never waits; at most SHMQ_GROUP_WAIT_NS. */
static const int64_t SHMQ_GROUP_WAIT_NS = 100 * 1000;

static void gather_group(shmq_handle *h)
{
    shmq_region_header *hdr = h->header;
    /* relaxed: a heuristic; correctness never depends on these counts. */
    uint32_t expect = atomic_load_explicit(&hdr->last_group, memory_order_relaxed);
    if (expect < 2)
        return;
    int64_t until = shmq_now_ns() + SHMQ_GROUP_WAIT_NS;
    while (atomic_load_explicit(&hdr->unflushed, memory_order_relaxed) < expect && shmq_now_ns() < until)
        sched_yield();
}

/* Raises *word to at least `value`: two flushers may finish out of order
 * (one was taken over while stopped, and woke up later). */
static void store_max(_Atomic uint64_t *word, uint64_t value, memory_order order)
{
    /* relaxed on failure: only the value is compared; `order` is the caller's publish. */
    uint64_t seen = atomic_load_explicit(word, memory_order_relaxed);
    while (seen < value && !atomic_compare_exchange_weak_explicit(word, &seen, value, order, memory_order_relaxed))
        ;
}

/* One flush, as the flusher (the caller holds `flusher`, or held it until a
 * waiter took it over: a second flusher at the same time is harmless, since
 * each flush only covers more and both results are stored as maxima). */
static int flush_as_flusher(shmq_handle *h)
{
    shmq_region_header *hdr = h->header;
    shmq_fault(h, SHMQ_FAULT_FLUSH_HELD);
    gather_group(h);
    /* relaxed: the heuristic's record of the largest group lately: this
     * flush covers the writers counted so far; it rises at once and decays
     * by one every 32 flushes that cover fewer. */
    uint32_t covered = atomic_exchange_explicit(&hdr->unflushed, 0, memory_order_relaxed);
    uint32_t group = atomic_load_explicit(&hdr->last_group, memory_order_relaxed);
    if (covered > group)
        atomic_store_explicit(&hdr->last_group, covered, memory_order_relaxed);
    else if (covered < group && atomic_load_explicit(&hdr->flushes, memory_order_relaxed) % 32 == 0)
        atomic_store_explicit(&hdr->last_group, group - 1, memory_order_relaxed);
    /* seq_cst: a writer that read the generation before this increment had
     * published before it, so the fdatasync below covers its record. */
    uint64_t generation = atomic_fetch_add_explicit(&hdr->flush_started, 1, memory_order_seq_cst) + 1;
    uint64_t tail = atomic_load_explicit(&hdr->log_tail, memory_order_seq_cst) & ~SHMQ_TAIL_SPILL;
    uint64_t from = atomic_load_explicit(&hdr->flushed_tail, memory_order_relaxed);
    atomic_store_explicit(&hdr->flushed_ns, shmq_now_ns(), memory_order_relaxed); /* a time stamp only */
    int rc = flush_segments(h, from, tail);
    if (rc == SHMQ_OK) {
        store_max(&hdr->flushed_tail, tail, memory_order_relaxed); /* the next range's start */
        /* release: waiters that see the generation see the flush done. A
         * flush of a later generation that finished first already covered
         * every writer this one covers: the maximum stays. */
        store_max(&hdr->flush_done, generation, memory_order_release);
        atomic_fetch_add_explicit(&hdr->flushes, 1, memory_order_relaxed); /* statistics */
    }
    return rc;
}

static int flusher_take(shmq_handle *h)
{
    uint32_t expected = 0;
    /* acquire: the previous flusher's flushed_tail is visible to us. */
    if (atomic_compare_exchange_strong_explicit(&h->header->flusher, &expected, h->self, memory_order_acquire,
                                                memory_order_relaxed))
        return 1;
    if (expected != h->self && !shmq_participant_alive(h, expected))
        /* the flusher died: free the role; the next round takes it. */
        atomic_compare_exchange_strong_explicit(&h->header->flusher, &expected, 0, memory_order_relaxed,
                                                memory_order_relaxed);
    return 0;
}

/* Takes the role from a live flusher that has made no progress (no flush
 * begun or finished) for SHMQ_STALL_NS: it is stopped, or stuck in the
 * kernel. When it wakes up it finishes its flush (harmless, see
 * flush_as_flusher) and flusher_give finds the role no longer its own. */
static int flusher_take_over(shmq_handle *h)
{
    /* A thread's own: the wait for a flush comes in slices (shmq_wait_durable). */
    static _Thread_local shmq_stall_watch watch;
    shmq_region_header *hdr = h->header;
    /* relaxed: only compared over time; the CAS below orders the take-over. */
    uint32_t holder = atomic_load_explicit(&hdr->flusher, memory_order_relaxed);
    uint64_t progress = atomic_load_explicit(&hdr->flush_started, memory_order_relaxed) ^
                        (atomic_load_explicit(&hdr->flush_done, memory_order_relaxed) << 32);
    if (holder == 0 || holder == h->self || !shmq_stalled(&watch, &hdr->flusher, holder, progress))
        return 0;
    /* acquire: as in flusher_take. */
    return atomic_compare_exchange_strong_explicit(&hdr->flusher, &holder, h->self, memory_order_acquire,
                                                   memory_order_relaxed);
}

static void flusher_give(shmq_handle *h)
{
    uint32_t mine = h->self;
    /* release: pairs with flusher_take's acquire. Fails if a waiter took
     * the role over from us: then it is its own to give. */
    atomic_compare_exchange_strong_explicit(&h->header->flusher, &mine, 0, memory_order_release,
                                            memory_order_relaxed);
    atomic_fetch_add_explicit(&h->header->flush_event, 1, memory_order_release);
    shmq_futex_wake_all(&h->header->flush_event);
}

static int sync_wait(shmq_handle *h, int64_t deadline);

/* Returns once everything published before the call is on disk: one
 * fdatasync serves every writer waiting meanwhile (group commit). Waits
 * for another's flush until `deadline` (< 0: none; SHMQ_EEMPTY after it);
 * a flush of its own is not cut short. */
static int log_sync(shmq_handle *h, int64_t deadline)
{
    /* relaxed: a count for gather_group's heuristic only. */
    atomic_fetch_add_explicit(&h->header->unflushed, 1, memory_order_relaxed);
    return sync_wait(h, deadline);
}

int shmq_log_sync(shmq_handle *h)
{
    return log_sync(h, -1);
}

static int sync_wait(shmq_handle *h, int64_t deadline)
{
    shmq_region_header *hdr = h->header;
    /* seq_cst: orders our publish (before) before this read; see flush_as_flusher. */
    uint64_t seen = atomic_load_explicit(&hdr->flush_started, memory_order_seq_cst);
    for (;;) {
        /* acquire: pairs with the release of flush_done. */
        if (atomic_load_explicit(&hdr->flush_done, memory_order_acquire) > seen)
            return SHMQ_OK;
        /* acquire: read before trying the role, so a flush that ends in
         * between changes the value and the futex wait returns at once. */
        uint32_t event = atomic_load_explicit(&hdr->flush_event, memory_order_acquire);
        if (flusher_take(h) || flusher_take_over(h)) {
            int rc = flush_as_flusher(h);
            flusher_give(h);
            if (rc != SHMQ_OK)
                return rc;
            continue;
        }
        /* Someone flushes now; its flush may have begun before our publish. */
        int rc = shmq_futex_wait(&hdr->flush_event, event, deadline, 5 * 1000 * 1000);
        if (rc == SHMQ_EINTR)
            return rc;
        if (rc == SHMQ_EEMPTY && atomic_load_explicit(&hdr->flush_done, memory_order_acquire) <= seen)
            return SHMQ_EEMPTY; /* acquire: as above */
    }
}

int shmq_log_flush(shmq_handle *h)
{
    if (!h->log_on || h->durability == SHMQ_DURABILITY_MEMORY)
        return SHMQ_OK;
    shmq_log_enter(h);
    int rc = shmq_log_sync(h);
    shmq_log_leave(h);
    return rc;
}

/* After a put's record is published: make it as durable as the setting
 * says. The wait for another's flush ends at the call's timeout (0, a call
 * that does not wait for room, still waits for its flush). Any failure here
 * is SHMQ_ENOTDURABLE: the record is published and will be delivered, so
 * the caller must never report "not accepted" (its user would send it
 * again); it waits on with shmq_wait_durable. */
int shmq_log_durable(shmq_handle *h, int64_t timeout_ns)
{
    int rc = SHMQ_OK;
    int64_t deadline = timeout_ns == 0 ? -1 : shmq_deadline(timeout_ns);
    switch (h->durability) {
    case SHMQ_DURABILITY_SYNC:
        rc = log_sync(h, deadline);
        break;
    case SHMQ_DURABILITY_INTERVAL: {
        shmq_region_header *hdr = h->header;
        if (hdr->flush_bytes == 0) {
            rc = log_sync(h, deadline);
            break;
        }
        /* relaxed: a threshold test; the flush itself orders what it covers. */
        uint64_t tail = atomic_load_explicit(&hdr->log_tail, memory_order_relaxed) & ~SHMQ_TAIL_SPILL;
        if (tail - atomic_load_explicit(&hdr->flushed_tail, memory_order_relaxed) >= hdr->flush_bytes &&
            flusher_take(h)) {
            rc = flush_as_flusher(h);
            flusher_give(h);
        }
        break;
    }
    default:
        break;
    }
    return rc == SHMQ_OK ? SHMQ_OK : SHMQ_ENOTDURABLE;
}

int shmq_wait_durable(shmq_handle *h, int64_t timeout_ns)
{
    if (!h->log_on || h->durability < SHMQ_DURABILITY_INTERVAL)
        return SHMQ_OK;
    shmq_log_enter(h);
    int rc = log_sync(h, shmq_deadline(timeout_ns));
    shmq_log_leave(h);
    return rc;
}

/* Flushes if the interval has passed (maintenance, INTERVAL only). */
int shmq_log_flush_due(shmq_handle *h)
{
    shmq_region_header *hdr = h->header;
    if (h->durability != SHMQ_DURABILITY_INTERVAL)
        return SHMQ_OK;
    /* relaxed: a due test; the flush orders what it covers. */
    uint64_t tail = atomic_load_explicit(&hdr->log_tail, memory_order_relaxed) & ~SHMQ_TAIL_SPILL;
    if (tail == atomic_load_explicit(&hdr->flushed_tail, memory_order_relaxed) ||
        shmq_now_ns() - atomic_load_explicit(&hdr->flushed_ns, memory_order_relaxed) <
            (int64_t)hdr->flush_interval_ns ||
        !flusher_take(h))
        return SHMQ_OK;
    int rc = flush_as_flusher(h);
    flusher_give(h);
    return rc;
}
