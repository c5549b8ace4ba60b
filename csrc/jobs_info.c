/* SPDX-License-Identifier: Apache-2.0 */
/* jobs_info.c -- what others read of the job table: the histograms, what
 * retention needs (the lowest position a job needs, the checkpoint's copies
 * of waiting jobs), a job's status, statistics and the list of jobs. */
#define _GNU_SOURCE
#include <string.h>

#include "jobs.h"

uint64_t shmq_histogram_bucket_low(uint32_t b)
{
    if (b < 4)
        return b;
    if (b >= 252u) /* past 2^63: no value lands there */
        return UINT64_MAX;
    unsigned e = b / 4u + 1u;
    return (uint64_t)(4u + b % 4u) << (e - 2u);
}

void shmq_histogram_read(const shmq_handle *h, int which, uint64_t *buckets)
{
    for (uint32_t b = 0; b < SHMQ_HIST_BUCKETS; b++)
        /* relaxed: statistics. */
        buckets[b] = h->jobs && (which == 0 || which == 1)
                         ? atomic_load_explicit(&h->jobs->hist[which][b], memory_order_relaxed)
                         : 0;
}

/* Bytes of WAITING jobs whose records lie below `target` (a checkpoint would copy them). */
uint64_t shmq_jobs_below(const shmq_handle *h, uint64_t target)
{
    uint64_t bytes = 0;
    for (uint32_t i = 0; h->jobs && i < h->job_slots; i++) {
        shmq_job_entry *e = &h->entries[i];
        /* acquire: the fields are ours to read while we hold it (MOVING). */
        uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
        if (shmq_job_kind(s) != SHMQ_JOB_WAITING ||
            !atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_MOVING, h->self, s),
                                                     memory_order_acquire, memory_order_relaxed))
            continue;
        if (entry_needs(e) < target)
            bytes += e->length + SHMQ_ENQUEUE_OVERHEAD;
        entry_store(e, SHMQ_JOB_WAITING, 0, shmq_job_gen(s));
    }
    return bytes;
}

/* The checkpoint's part for the table: WAITING jobs whose records lie below
 * `target` are copied to the tail and pointed at their copy. */
int shmq_jobs_checkpoint(shmq_handle *h, uint64_t target, uint64_t *copies)
{
    for (uint32_t i = 0; h->jobs && i < h->job_slots; i++) {
        shmq_job_entry *e = entry_at(h, i);
        /* acquire: pairs with entry_store. */
        uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
        /* acquire: the entry is ours while MOVING; no one moves or runs it meanwhile. */
        if (shmq_job_kind(s) != SHMQ_JOB_WAITING ||
            !atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_MOVING, h->self, s),
                                                     memory_order_acquire, memory_order_relaxed))
            continue;
        if (entry_needs(e) >= target) {
            entry_store(e, SHMQ_JOB_WAITING, 0, shmq_job_gen(s));
            continue;
        }
        uint64_t position;
        uint32_t offset;
        /* LANED | SCHEDULED: the feeder leaves it alone, the entry has the job. */
        int rc = shmq_jobs_entry_copy(h, e, SHMQ_ENQ_LANED | SHMQ_ENQ_SCHEDULED, &position, &offset);
        if (rc == SHMQ_OK) {
            if (e->flags & SHMQ_JOBF_REF) {
                PUT(e->record, position);
                e->offset = offset;
            } else {
                PUT(e->copy, position);
            }
            (*copies)++;
        }
        entry_store(e, SHMQ_JOB_WAITING, 0, shmq_job_gen(s));
        if (rc != SHMQ_OK)
            return rc;
    }
    return SHMQ_OK;
}

/* The lowest log position a job in the table needs (see low_water in maintain.c). */
uint64_t shmq_jobs_low_water(shmq_handle *h, uint64_t low)
{
    if (!h->jobs)
        return low;
    for (uint32_t i = 0; i < h->job_slots; i++) {
        shmq_job_entry *e = entry_at(h, i);
        /* acquire: pairs with entry_store. */
        unsigned kind = shmq_job_kind(atomic_load_explicit(&e->state, memory_order_acquire));
        if (kind == SHMQ_JOB_FREE || kind == SHMQ_JOB_FILLING)
            continue; /* FILLING: its job is still in a lane slot, or its writer holds a pin */
        uint64_t needs = entry_needs(e);
        if (needs < low)
            low = needs;
    }
    return low;
}

uint64_t shmq_jobs_live(const shmq_handle *h)
{
    uint64_t live = 0;
    for (uint32_t i = 0; i < h->job_slots; i++)
        /* relaxed: a count. */
        live += shmq_job_kind(atomic_load_explicit(&h->entries[i].state, memory_order_relaxed)) != SHMQ_JOB_FREE;
    return live;
}

/* ------------------------------------------------------------ observing */

static int in_lanes(const shmq_handle *h, uint64_t job_id)
{
    uint64_t slots = h->slot_mask + 1;
    for (uint32_t lane = 0; lane < h->lane_count; lane++) {
        const uint8_t *base = h->base + h->lanes_offset + (uint64_t)lane * h->lane_bytes;
        _Atomic uint64_t *states = (_Atomic uint64_t *)(base + SHMQ_LANE_STATES_OFFSET);
        for (uint64_t i = 0; i < slots; i++) {
            /* acquire: pairs with publish(); a look only. */
            unsigned kind = shmq_state_kind(atomic_load_explicit(&states[i], memory_order_acquire));
            if (kind != SHMQ_SLOT_READY && kind != SHMQ_SLOT_READING)
                continue;
            const shmq_msg_header *mh = (const shmq_msg_header *)(base + h->data_offset + i * h->slot_bytes);
            /* relaxed: a look; the holder of a READING slot may mark it leased meanwhile. */
            if (GET(mh->job_id) == job_id && !(__atomic_load_n(&mh->flags, __ATOMIC_RELAXED) & SHMQ_MSG_SKIP))
                return 1;
        }
    }
    return 0;
}

static int status_once(shmq_handle *h, uint64_t job_id, shmq_result_info *info)
{
    /* In the order a job moves (lane, table, result), so one that moves on
     * while we look is still seen. */
    if (in_lanes(h, job_id))
        return cancel_slot_of(h, job_id) >= 0 ? SHMQ_JOB_CANCELLED : SHMQ_JOB_QUEUED;
    for (uint32_t i = 0; i < h->job_slots; i++) {
        shmq_job_entry *e = entry_at(h, i);
        /* acquire: pairs with entry_store. */
        unsigned kind = shmq_job_kind(atomic_load_explicit(&e->state, memory_order_acquire));
        if (kind == SHMQ_JOB_FREE || GET(e->job_id) != job_id)
            continue;
        if (kind == SHMQ_JOB_WAITING || kind == SHMQ_JOB_MOVING)
            return SHMQ_JOB_SCHEDULED;
        if (kind == SHMQ_JOB_FINISHING && shmq_result_lookup(h, job_id, info) > 0)
            return info->status; /* its result is out, the entry not yet free */
        if (kind != SHMQ_JOB_FILLING)
            return SHMQ_JOB_RUNNING;
    }
    if (shmq_result_lookup(h, job_id, info) > 0)
        return info->status;
    shmq_log_stats s;
    shmq_log_stats_read(h, &s);
    if (s.spilling && job_id >= s.feed_cursor && job_id < s.tail)
        return cancel_slot_of(h, job_id) >= 0 ? SHMQ_JOB_CANCELLED : SHMQ_JOB_QUEUED; /* in the log, for room */
    return SHMQ_JOB_UNKNOWN;
}

int shmq_job_status(shmq_handle *h, uint64_t job_id, shmq_result_info *info /* OUT */)
{
    *info = (shmq_result_info){0};
    if (!h->jobs)
        return SHMQ_ENOLOG;
    int status = status_once(h, job_id, info);
    if (status == SHMQ_JOB_UNKNOWN) /* it may have moved back (a retry) while we looked: once more */
        status = status_once(h, job_id, info);
    return status;
}

void shmq_job_stats_read(const shmq_handle *h, int lane, shmq_job_stats *s /* OUT */)
{
    *s = (shmq_job_stats){0};
    if (!h->jobs)
        return;
    for (uint32_t i = 0; i < h->lane_count; i++) {
        if (lane >= 0 && (uint32_t)lane != i)
            continue;
        const shmq_lane_metrics *m = &h->metrics[i];
        /* relaxed: statistics. */
        s->enqueued += atomic_load_explicit(&m->enqueued, memory_order_relaxed);
        s->deduplicated += atomic_load_explicit(&m->deduplicated, memory_order_relaxed);
        s->scheduled += atomic_load_explicit(&m->scheduled, memory_order_relaxed);
        s->throttled += atomic_load_explicit(&m->throttled, memory_order_relaxed);
        s->started += atomic_load_explicit(&m->started, memory_order_relaxed);
        s->done += atomic_load_explicit(&m->done, memory_order_relaxed);
        s->failed += atomic_load_explicit(&m->failed, memory_order_relaxed);
        s->retried += atomic_load_explicit(&m->retried, memory_order_relaxed);
        s->dead += atomic_load_explicit(&m->dead, memory_order_relaxed);
        s->lease_expired += atomic_load_explicit(&m->lease_expired, memory_order_relaxed);
        s->consumer_died += atomic_load_explicit(&m->consumer_died, memory_order_relaxed);
        s->cancelled += atomic_load_explicit(&m->cancelled, memory_order_relaxed);
        const shmq_lane_header *lh = lane_header(h, i);
        uint64_t pushed = atomic_load_explicit(&lh->pushed, memory_order_relaxed);
        uint64_t popped = atomic_load_explicit(&lh->popped, memory_order_relaxed);
        s->depth += pushed > popped ? pushed - popped : 0;
    }
    for (uint32_t i = 0; i < h->job_slots; i++) {
        const shmq_job_entry *e = &h->entries[i];
        /* relaxed: statistics. */
        unsigned kind = shmq_job_kind(atomic_load_explicit(&e->state, memory_order_relaxed));
        if (lane >= 0 && GET(e->lane) != (uint32_t)lane)
            continue;
        if (kind == SHMQ_JOB_RUNNING_KIND) /* FINISHING: counted done (or failed) already */
            s->in_flight++;
        else if (kind == SHMQ_JOB_WAITING || kind == SHMQ_JOB_MOVING)
            s->waiting++;
    }
    s->unique_keys = atomic_load_explicit(&h->jobs->unique_count, memory_order_relaxed);
    for (unsigned i = 1; i < h->participant_capacity; i++)
        if (atomic_load_explicit(&h->participants[i].roles, memory_order_relaxed) & SHMQ_ROLE_CONSUMER &&
            shmq_participant_alive(h, i))
            s->consumers++;
    s->wait_max_ns = atomic_load_explicit(&h->jobs->hist_max[SHMQ_HIST_WAIT], memory_order_relaxed);
    s->run_max_ns = atomic_load_explicit(&h->jobs->hist_max[SHMQ_HIST_RUN], memory_order_relaxed);
}

uint32_t shmq_jobs_list(const shmq_handle *h, shmq_job_info *out, uint32_t capacity)
{
    uint32_t n = 0;
    int64_t now = shmq_now_ns();
    for (uint32_t i = 0; h->jobs && i < h->job_slots && n < capacity; i++) {
        const shmq_job_entry *e = &h->entries[i];
        /* acquire: pairs with entry_store; a snapshot for people, fields may move on meanwhile. */
        uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
        unsigned kind = shmq_job_kind(s);
        if (kind == SHMQ_JOB_FREE || kind == SHMQ_JOB_FILLING)
            continue;
        unsigned owner = shmq_job_owner(s);
        shmq_job_info *info = &out[n++];
        *info = (shmq_job_info){.job_id = GET(e->job_id), .entry = i, .lane = GET(e->lane), .kind = (uint8_t)kind,
                                .flags = GET(e->flags)};
        info->enqueued_ns = __atomic_load_n(&e->enqueued_ns, __ATOMIC_RELAXED);
        info->due_ns = __atomic_load_n(&e->due_ns, __ATOMIC_RELAXED);
        info->length = __atomic_load_n(&e->length, __ATOMIC_RELAXED);
        info->attempt = __atomic_load_n(&e->attempt, __ATOMIC_RELAXED);
        if (kind == SHMQ_JOB_RUNNING_KIND || kind == SHMQ_JOB_FINISHING) {
            /* relaxed: a lone word (see shmq_extend). */
            info->lease_left_ns = atomic_load_explicit(&e->deadline_ns, memory_order_relaxed) - now;
            info->gen = shmq_job_gen(s); /* of the same load as owner: names the lease we saw */
            if (owner && owner < h->participant_capacity)
                /* relaxed: a look at who holds it. */
                info->owner_pid = atomic_load_explicit(&h->participants[owner].pid, memory_order_relaxed);
        }
    }
    return n;
}
