/* SPDX-License-Identifier: Apache-2.0 */
/* throttle.c -- what a producer does when consumers fall behind.
 *
 * none:   a put waits for room in its lane (up to its timeout).
 * open:   a put never waits: when the lanes are full the job stays in the
 *         log (the backlog, fed back into the lanes in order); only
 *         max_log_bytes (or a full disk) stops a producer.
 * closed: producers take a credit per job from the shared `credit`, which
 *         the controller (the supervisor) refills every few milliseconds at
 *         the rate that keeps the backlog near throttle_target; and they
 *         wait while the backlog is at throttle_high. A producer that finds
 *         no refill for a second goes on without credit: the data path never
 *         waits for a supervisor that is down.
 * max_log_bytes applies in every mode. Waits sleep in 1 ms steps (nanosleep:
 * the CPU is left) and are counted as `throttled`. */
#define _GNU_SOURCE
#include <errno.h>
#include <time.h>

#include "jobs.h"

static const int64_t STEP_NS = 1000 * 1000;
static const int64_t CONTROLLER_STALE_NS = 1000 * 1000 * 1000;

uint64_t shmq_queue_depth(const shmq_handle *h)
{
    uint64_t depth = 0;
    for (uint32_t i = 0; i < h->lane_count; i++) {
        const shmq_lane_header *lh = (const shmq_lane_header *)(h->base + h->lanes_offset + (uint64_t)i * h->lane_bytes);
        /* relaxed: counts; a moment's skew is harmless to a controller. */
        uint64_t pushed = atomic_load_explicit(&lh->pushed, memory_order_relaxed);
        uint64_t popped = atomic_load_explicit(&lh->popped, memory_order_relaxed);
        depth += pushed > popped ? pushed - popped : 0;
    }
    if (h->log_on) {
        /* relaxed: as above. */
        uint64_t spilled = atomic_load_explicit(&h->header->spilled, memory_order_relaxed);
        uint64_t fed = atomic_load_explicit(&h->header->fed, memory_order_relaxed);
        depth += spilled > fed ? spilled - fed : 0;
    }
    return depth;
}

uint64_t shmq_consumed(const shmq_handle *h)
{
    uint64_t popped = 0;
    for (uint32_t i = 0; i < h->lane_count; i++) {
        const shmq_lane_header *lh = (const shmq_lane_header *)(h->base + h->lanes_offset + (uint64_t)i * h->lane_bytes);
        popped += atomic_load_explicit(&lh->popped, memory_order_relaxed); /* relaxed: a count */
    }
    return popped;
}

void shmq_throttle_refill(shmq_handle *h, int64_t credits, uint64_t rate)
{
    if (!h->jobs)
        return;
    shmq_jobs_header *jh = h->jobs;
    /* relaxed: credit is a counter; producers read it with their own atomic
     * fetch_sub. Unused credit does not pile up beyond one refill. */
    int64_t now = atomic_load_explicit(&jh->credit, memory_order_relaxed);
    int64_t next = now < 0 ? credits : (now > credits ? now : credits);
    atomic_store_explicit(&jh->credit, next, memory_order_relaxed);
    atomic_store_explicit(&jh->rate, rate, memory_order_relaxed);
    /* release: the credit is stored before producers see a fresh refill time. */
    atomic_store_explicit(&jh->refilled_ns, shmq_now_ns(), memory_order_release);
}

static int sleep_step(int64_t deadline)
{
    int64_t step = STEP_NS;
    if (deadline >= 0) {
        int64_t left = deadline - shmq_now_ns();
        if (left <= 0)
            return SHMQ_EFULL;
        if (left < step)
            step = left;
    }
    struct timespec pause = {0, step};
    if (nanosleep(&pause, NULL) != 0 && errno == EINTR)
        return SHMQ_EINTR;
    return SHMQ_OK;
}

/* May `count` jobs of `bytes` payload be put now? SHMQ_OK, SHMQ_ELOGFULL,
 * or (after waiting up to the timeout) SHMQ_EFULL / SHMQ_EINTR. */
int shmq_throttle_admit(shmq_handle *h, uint64_t count, uint64_t bytes, int64_t timeout_ns)
{
    shmq_jobs_header *jh = h->jobs;
    if (!jh || (jh->throttle_mode != SHMQ_THROTTLE_CLOSED && !jh->max_log_bytes))
        return SHMQ_OK;
    if (jh->max_log_bytes) {
        shmq_region_header *hdr = h->header;
        /* relaxed: a bound checked before each put; puts in flight may pass it by a little. */
        uint64_t tail = atomic_load_explicit(&hdr->log_tail, memory_order_relaxed) & ~SHMQ_TAIL_SPILL;
        uint64_t base = atomic_load_explicit(&hdr->log_base, memory_order_relaxed);
        /* this batch's records included: one put_many cannot carry the log past the limit */
        if (tail - base + bytes + count * SHMQ_ENQUEUE_OVERHEAD > jh->max_log_bytes)
            return SHMQ_ELOGFULL;
    }
    if (jh->throttle_mode != SHMQ_THROTTLE_CLOSED)
        return SHMQ_OK;
    int64_t deadline = -1;
    int waited = 0, rc = SHMQ_OK;
    for (;;) {
        if (shmq_queue_depth(h) < jh->throttle_high) {
            /* acquire: pairs with the refill's release of refilled_ns. */
            int64_t refilled = atomic_load_explicit(&jh->refilled_ns, memory_order_acquire);
            if (refilled == 0 || shmq_now_ns() - refilled > CONTROLLER_STALE_NS)
                break; /* no controller: no credit to wait for */
            /* relaxed: a counter; each producer takes its own share. */
            if (atomic_fetch_sub_explicit(&jh->credit, (int64_t)count, memory_order_relaxed) >= (int64_t)count)
                break;
            atomic_fetch_add_explicit(&jh->credit, (int64_t)count, memory_order_relaxed); /* not ours: back */
        }
        if (timeout_ns == 0) {
            rc = SHMQ_EFULL;
            break;
        }
        if (deadline < 0 && timeout_ns > 0)
            deadline = shmq_deadline(timeout_ns);
        waited = 1;
        rc = sleep_step(deadline);
        if (rc != SHMQ_OK)
            break;
    }
    if (waited && h->metrics) /* relaxed: statistics */
        atomic_fetch_add_explicit(&h->metrics[0].throttled, 1, memory_order_relaxed);
    return rc;
}

int shmq_throttle_open(const shmq_handle *h) { return h->jobs && h->jobs->throttle_mode == SHMQ_THROTTLE_OPEN; }
