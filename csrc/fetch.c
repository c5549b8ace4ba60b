/* SPDX-License-Identifier: Apache-2.0 */
/* fetch.c -- shmq_fetch: a job under a lease, waiting for one (spinning, then
 * sleeping until data arrives or the next scheduled job is due); the tick
 * when a scheduled job is due, the backlog fed when jobs wait in the log. */
#define _GNU_SOURCE
#include <sched.h>

#include "ops.h"

/* A fetcher that finds nothing re-checks this often while a lane's head is
 * being written by a live producer. */
static const int64_t BUSY_RECHECK_NS = 20 * 1000 * 1000;

static void maybe_tick(shmq_handle *h)
{
    /* relaxed: a hint; the tick reads the entries with acquire. */
    int64_t due = atomic_load_explicit(&jobs_of(h)->next_due_ns, memory_order_relaxed);
    if (due != INT64_MAX && due <= shmq_wall_ns())
        shmq_jobs_tick(h);
}

/* A round of taking, unless the queue is paused (then nothing is there to take). */
static int take_round(shmq_handle *h, fetch_args *a)
{
    return shmq_queue_paused(h) ? SHMQ_EEMPTY : shmq_jobs_fetch_round(h, a);
}

/* Marks a delivery when a task is paused, so that a consumer asks which only then. */
static int delivered(shmq_handle *h, shmq_delivery *d, int rc)
{
    if ((rc == SHMQ_OK || rc == SHMQ_ECLAIMED) &&
        /* relaxed: a hint; the consumer's shmq_pause_check reads with acquire. */
        atomic_load_explicit(&h->admission->paused_tasks, memory_order_relaxed))
        d->flags |= SHMQ_DELIVERY_TASKS_PAUSED;
    return rc;
}

int shmq_fetch(shmq_handle *h, char *buffer, uint32_t capacity, int64_t timeout_ns, int64_t lease_ns,
               shmq_delivery *d /* OUT */)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    if (!h->consumer_marked && h->self) {
        h->consumer_marked = 1;
        /* relaxed: statistics (live consumers). */
        atomic_fetch_or_explicit(&h->participants[h->self].roles, SHMQ_ROLE_CONSUMER, memory_order_relaxed);
    }
    fetch_args a = {buffer, capacity, lease_ns, d, -1, {{0}, 0, 0, 0}};
    shmq_region_header *hdr = h->header;
    int64_t deadline = 0, spin_until = 0;
    for (unsigned round = 0;; round++) {
        maybe_tick(h);
        a.busy_lane = -1;
        int rc = take_round(h, &a);
        if (rc != SHMQ_EEMPTY)
            return delivered(h, d, rc);
        if (shmq_log_spilling(h) && shmq_backlog_feed(h, 256) > 0)
            continue; /* jobs waited in the log: moved into the lanes now */
        if (round == 0)
            shmq_log_ack_flush(h); /* nothing to take: a good moment to write the acks */
        if (timeout_ns == 0)
            return SHMQ_EEMPTY;
        if (round < 64) {
            shmq_cpu_relax();
            continue;
        }
        if (round < 68) {
            sched_yield();
            continue;
        }
        if (h->spin_ns > 0) {
            /* Busy-poll a while longer before sleeping: a futex wake-up costs
             * tens of microseconds, a poll a few hundred nanoseconds. */
            int64_t now = shmq_now_ns();
            if (spin_until == 0)
                spin_until = now + (timeout_ns > 0 && timeout_ns < h->spin_ns ? timeout_ns : h->spin_ns);
            if (now < spin_until) {
                if (round % 64 == 0)
                    sched_yield(); /* let a producer sharing our core run */
                else
                    shmq_cpu_relax();
                continue;
            }
        }
        if (a.busy_lane >= 0 && shmq_lane_repair_writer(h, (uint32_t)a.busy_lane, &a.busy)) {
            round = 0;
            continue;
        }
        if (deadline == 0)
            deadline = shmq_deadline(timeout_ns);
        /* relaxed: only a value for the futex to compare. */
        uint32_t seen = atomic_load_explicit(&hdr->data_event, memory_order_relaxed);
        shmq_sleep_begin(h, &hdr->data_waiters, SHMQ_SLEEP_DATA);
        /* seq_cst: orders our waiters increment before the re-check below;
         * pairs with the fence in wake(): one side always sees the other. */
        atomic_thread_fence(memory_order_seq_cst);
        rc = take_round(h, &a);
        if (rc != SHMQ_EEMPTY) {
            shmq_sleep_end(h, &hdr->data_waiters, SHMQ_SLEEP_DATA);
            return delivered(h, d, rc);
        }
        /* Wake for the next scheduled job, and now and then behind a live writer. */
        int64_t cap = a.busy_lane >= 0 ? BUSY_RECHECK_NS : -1;
        int64_t due = atomic_load_explicit(&jobs_of(h)->next_due_ns, memory_order_relaxed); /* a hint */
        if (due != INT64_MAX) {
            int64_t until = due - shmq_wall_ns();
            if (until < 1000000)
                until = 1000000; /* at least 1 ms: the mover may be another process, busy */
            if (cap < 0 || until < cap)
                cap = until;
        }
        rc = shmq_futex_wait(&hdr->data_event, seen, deadline, cap);
        shmq_sleep_end(h, &hdr->data_waiters, SHMQ_SLEEP_DATA);
        if (rc != SHMQ_OK)
            return rc;
        round = 32; /* woken: spin a little before sleeping again */
        spin_until = 0;
    }
}

void shmq_set_spin(shmq_handle *h, int64_t spin_ns) { h->spin_ns = spin_ns > 0 ? spin_ns : 0; }
