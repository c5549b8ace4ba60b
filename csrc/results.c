/* SPDX-License-Identifier: Apache-2.0 */
/* results.c -- results of finished jobs, kept for a time and a count, and
 * waiting for them. The ring and arena are described in layout.h ("Jobs"). */
#define _GNU_SOURCE
#include <string.h>

#include "jobs.h"

/* Reserves `length` bytes of arena, never across its end; returns the
 * position (only grows: position % result_bytes is the offset). */
static uint64_t arena_reserve(shmq_handle *h, uint32_t length)
{
    uint64_t size = h->result_bytes;
    /* relaxed: the position is ours once the CAS succeeds; readers check
     * the head again after copying (see result_copy). */
    uint64_t head = atomic_load_explicit(&h->jobs->arena_head, memory_order_relaxed);
    for (;;) {
        uint64_t start = head;
        if (start % size + length > size)
            start = (start / size + 1) * size; /* skip the arena's end */
        if (atomic_compare_exchange_weak_explicit(&h->jobs->arena_head, &head, start + length,
                                                  memory_order_relaxed, memory_order_relaxed))
            return start;
    }
}

void shmq_result_put(shmq_handle *h, uint64_t job_id, uint8_t status, uint16_t attempt, uint8_t tag,
                     const uint8_t *data, uint32_t length, int64_t run_ns)
{
    if (!h->jobs || h->result_slots == 0)
        return;
    if (length > h->result_bytes / 4)
        length = 0; /* too large to keep: the outcome is kept, the bytes not (see shmq_result_wait) */
    uint64_t pos = length ? arena_reserve(h, length) : 0;
    if (length)
        memcpy(h->arena + pos % h->result_bytes, data, length);
    /* relaxed: the ring index is ours; the seq stores below order the entry. */
    uint64_t n = atomic_fetch_add_explicit(&h->jobs->result_seq, 1, memory_order_relaxed);
    shmq_result_entry *e = &h->results[n % h->result_slots];
    /* relaxed then release fence: readers that see this odd seq know the
     * entry is changing; the fence orders it before the field writes. */
    atomic_store_explicit(&e->seq, 2 * n + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    shmq_fault(h, SHMQ_FAULT_RESULT_WRITING);
    e->job_id = job_id;
    e->finished_ns = shmq_wall_ns();
    e->arena_pos = pos;
    e->length = length;
    e->attempt = attempt;
    e->tag = tag;
    e->status = status;
    e->run_ns = run_ns;
    /* release: publishes the fields (and the arena bytes written above). */
    atomic_store_explicit(&e->seq, 2 * n + 2, memory_order_release);
    shmq_jobs_header *jh = h->jobs;
    /* seq_cst: orders the publish before the load of result_waiters; pairs
     * with the fence after a waiter's increment (as wake() in ring.h). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&jh->result_waiters, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&jh->result_event, 1, memory_order_relaxed);
        shmq_futex_wake_all(&jh->result_event);
    }
}

/* Reads ring entry n if it is published and about `job_id`. 1: found
 * (*info filled, *pos its arena position), 0: not this job, -1: expired. */
static int result_read(const shmq_handle *h, uint64_t n, uint64_t job_id, shmq_result_info *info, uint64_t *pos)
{
    const shmq_result_entry *e = &h->results[n % h->result_slots];
    /* acquire: pairs with the release store of the even seq. */
    uint64_t seq = atomic_load_explicit(&e->seq, memory_order_acquire);
    if (seq != 2 * n + 2)
        return 0;
    uint64_t id = e->job_id;
    shmq_result_info copy = {.finished_ns = e->finished_ns, .length = e->length, .attempt = e->attempt,
                             .tag = e->tag, .status = e->status, .run_ns = e->run_ns};
    uint64_t at = e->arena_pos;
    /* acquire fence: the field reads above happen before the seq re-check. */
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&e->seq, memory_order_relaxed) != seq || id != job_id)
        return 0;
    if (h->header->result_ttl_ns && shmq_wall_ns() - copy.finished_ns > (int64_t)h->header->result_ttl_ns)
        return -1;
    *info = copy;
    *pos = at;
    return 1;
}

/* Copies result bytes at `pos`; 0 if the arena moved over them meanwhile. */
static int result_copy(const shmq_handle *h, uint64_t pos, uint32_t length, uint8_t *out)
{
    memcpy(out, h->arena + pos % h->result_bytes, length);
    /* acquire fence then relaxed load: the copy happens before we look at the head again. */
    atomic_thread_fence(memory_order_acquire);
    uint64_t head = atomic_load_explicit(&h->jobs->arena_head, memory_order_relaxed);
    return head <= pos + h->result_bytes;
}

/* Finds the newest result of `job_id` among ring entries [from, to). */
static int result_find(const shmq_handle *h, uint64_t job_id, uint64_t from, uint64_t to, shmq_result_info *info,
                       uint64_t *pos)
{
    for (uint64_t n = to; n > from; n--) {
        int r = result_read(h, n - 1, job_id, info, pos);
        if (r != 0)
            return r;
    }
    return 0;
}

/* The ring entries still held: [oldest, newest). */
static void ring_span(const shmq_handle *h, uint64_t *oldest, uint64_t *newest)
{
    /* acquire: entries below it were claimed; their seq says if they are published. */
    *newest = atomic_load_explicit(&h->jobs->result_seq, memory_order_acquire);
    *oldest = *newest > h->result_slots ? *newest - h->result_slots : 0;
}

int shmq_result_lookup(const shmq_handle *h, uint64_t job_id, shmq_result_info *info)
{
    if (!h->jobs || h->result_slots == 0)
        return 0;
    uint64_t oldest, newest, pos;
    ring_span(h, &oldest, &newest);
    return result_find(h, job_id, oldest, newest, info, &pos);
}

/* A waiter counts itself in result_waiters and in its participant entry,
 * so a waiter killed asleep is taken back by shmq_sweep_sleepers (else
 * every finish would pay for a futex wake). */
static void result_sleep(shmq_handle *h, int delta)
{
    /* relaxed: counts; the caller's seq_cst fence orders the increment. */
    if (delta > 0) {
        atomic_fetch_add_explicit(&h->jobs->result_waiters, 1, memory_order_relaxed);
        if (h->self)
            atomic_fetch_add_explicit(&h->participants[h->self].result_sleeping, 1, memory_order_relaxed);
    } else {
        if (h->self)
            atomic_fetch_sub_explicit(&h->participants[h->self].result_sleeping, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&h->jobs->result_waiters, 1, memory_order_relaxed);
    }
}

int shmq_result_wait(shmq_handle *h, uint64_t job_id, int64_t timeout_ns, char *buffer, uint32_t capacity,
                     shmq_result_info *info /* OUT */)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    if (h->result_slots == 0)
        return SHMQ_EINVAL;
    shmq_jobs_header *jh = h->jobs;
    int64_t deadline = timeout_ns > 0 ? shmq_deadline(timeout_ns) : 0;
    uint64_t oldest, newest, seen = 0;
    for (;;) {
        /* relaxed: only a value for the futex to compare. */
        uint32_t event = atomic_load_explicit(&jh->result_event, memory_order_relaxed);
        ring_span(h, &oldest, &newest);
        /* Entries below `seen` were looked at and published (see below). */
        uint64_t from = seen > oldest ? seen : oldest;
        uint64_t pos;
        int r = result_find(h, job_id, from, newest, info, &pos);
        if (r < 0)
            return SHMQ_EEMPTY; /* expired: the caller tells the difference by status */
        if (r > 0) {
            if (info->length > capacity)
                return SHMQ_ECLAIMED;
            if (info->length && !result_copy(h, pos, info->length, (uint8_t *)buffer)) {
                info->length = 0;
                info->status = SHMQ_JOB_UNKNOWN; /* overwritten while copying: gone */
            }
            return SHMQ_OK;
        }
        /* Look again next time from the first entry still being written: its
         * writer may be slow or stopped while any number of later entries are
         * published, and it may be ours. (A writer that died there leaves it
         * odd until the ring laps it: at most result_slots entries to look at.) */
        seen = newest;
        for (uint64_t n = from; n < newest; n++) {
            /* acquire: as in result_read; below 2n + 2 it is claimed, not published. */
            if (atomic_load_explicit(&h->results[n % h->result_slots].seq, memory_order_acquire) < 2 * n + 2) {
                seen = n;
                break;
            }
        }
        if (timeout_ns == 0)
            return SHMQ_EEMPTY;
        result_sleep(h, +1);
        /* seq_cst: orders our waiters increment before the re-check; pairs
         * with the fence in shmq_result_put. */
        atomic_thread_fence(memory_order_seq_cst);
        /* acquire: as in ring_span. */
        uint64_t now_newest = atomic_load_explicit(&jh->result_seq, memory_order_acquire);
        int rc = SHMQ_OK;
        if (now_newest == newest)
            rc = shmq_futex_wait(&jh->result_event, event, timeout_ns < 0 ? -1 : deadline, 100 * 1000 * 1000);
        result_sleep(h, -1);
        if (rc != SHMQ_OK)
            return rc; /* EINTR, or EEMPTY at the deadline */
    }
}
