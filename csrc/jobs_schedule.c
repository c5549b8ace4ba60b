/* SPDX-License-Identifier: Apache-2.0 */
/* jobs_schedule.c -- scheduled jobs (delays, retry backoff) and the tick: taking back
 * leases of dead or hung consumers, moving due jobs into their lanes; the
 * leases of a handle that closes. */
#define _GNU_SOURCE
#include <string.h>

#include "jobs.h"

/* ------------------------------------------------------------ scheduling */

/* Fills a WAITING entry for a job whose ENQUEUE record is at `position`. */
static void entry_from_record(shmq_job_entry *e, const shmq_record_header *rec, uint64_t position)
{
    const shmq_enqueue_body *body = (const shmq_enqueue_body *)(rec + 1);
    uint32_t offset = (uint32_t)(sizeof *rec + sizeof *body) + body->group_bytes + body->unique_bytes;
    PUT(e->job_id, rec->job_id);
    e->enqueued_ns = body->enqueued_ns;
    e->due_ns = body->not_before_ns;
    e->attempt = body->attempt ? body->attempt : 1;
    e->tag = body->tag;
    e->length = body->payload_bytes;
    PUT(e->lane, body->lane);
    uint8_t flags = 0;
    e->unique_hi = e->unique_lo = 0;
    PUT(e->copy, position != rec->job_id ? position : 0); /* a copy (recovered, checkpointed): that record */
    if (body->unique_bytes == SHMQ_UNIQUE_KEY_BYTES) {
        uint64_t key[2];
        memcpy(key, (const uint8_t *)(body + 1) + body->group_bytes, sizeof key);
        e->unique_hi = key[0];
        e->unique_lo = key[1];
        flags |= SHMQ_JOBF_UNIQUE | ((body->flags & SHMQ_ENQ_UNIQUE_FINISH) ? SHMQ_JOBF_UNIQUE_FINISH : 0);
    }
    if (e->length <= SHMQ_JOB_INLINE_BYTES && !(flags & SHMQ_JOBF_UNIQUE)) {
        memcpy(e->payload, (const uint8_t *)rec + offset, e->length);
    } else { /* by reference; unique jobs always, so that a consumer finds the key */
        flags |= SHMQ_JOBF_REF;
        PUT(e->record, position);
        e->offset = offset;
    }
    PUT(e->flags, flags);
    /* relaxed: published by the entry's release store. */
    atomic_store_explicit(&e->control, 0, memory_order_relaxed);
    atomic_store_explicit(&e->progress, SHMQ_PROGRESS_NONE, memory_order_relaxed);
}

static void scheduled(shmq_handle *h, shmq_job_entry *e, uint64_t gen)
{
    int64_t due = e->due_ns;
    entry_store(e, SHMQ_JOB_WAITING, 0, gen);
    shmq_jobs_due_lower(h, due);
    shmq_wake_data(h); /* sleeping fetchers wake for the new due time */
}

/* A job of the backlog (recovered, or fed) that must wait for its time. */
int shmq_jobs_schedule(shmq_handle *h, const shmq_record_header *rec, uint64_t position, uint16_t attempt,
                       int64_t due_ns)
{
    uint32_t index;
    uint64_t gen;
    int rc = shmq_jobs_entry_claim(h, &index, &gen);
    if (rc != SHMQ_OK)
        return rc;
    shmq_job_entry *e = entry_at(h, index);
    entry_from_record(e, rec, position);
    /* What recovery worked out may differ from the record (recovered in place). */
    e->attempt = attempt ? attempt : e->attempt;
    e->due_ns = due_ns;
    if (e->flags & SHMQ_JOBF_UNIQUE)
        shmq_unique_set(h, e->unique_hi, e->unique_lo, e->job_id);
    /* A group's job waiting to run again (a retry's backoff, recovered) holds
     * its lane, as it did before the restart: later jobs of the group wait. */
    int holds = e->lane < h->lane_count && shmq_lane_ordered(h, e->lane) && e->attempt > 1;
    if (holds)
        PUT(e->flags, (uint8_t)(e->flags | SHMQ_JOBF_ORDERED));
    int64_t due = e->due_ns;
    uint32_t lane = e->lane;
    scheduled(h, e, gen);
    if (holds)
        shmq_jobs_gate_adopt(h, lane, index, due);
    return SHMQ_OK;
}

/* A new job with a delay: its record, then a WAITING entry. */
int shmq_jobs_schedule_new(shmq_handle *h, const shmq_enqueue_args *args, const uint8_t *payload, uint32_t length,
                           uint64_t *job_id)
{
    uint32_t index;
    uint64_t gen;
    int rc = shmq_jobs_entry_claim(h, &index, &gen);
    if (rc != SHMQ_OK)
        return rc;
    shmq_job_entry *e = entry_at(h, index);
    shmq_enqueue_args a = *args;
    a.flags |= SHMQ_ENQ_LANED | SHMQ_ENQ_SCHEDULED; /* the feeder leaves it alone: the entry has it */
    a.first = payload;
    a.first_length = length;
    uint64_t position;
    int spilling;
    shmq_log_pin(h); /* the record is needed before the entry says so */
    rc = shmq_log_enqueue(h, &a, &position, &spilling);
    if (rc != SHMQ_OK) {
        shmq_log_unpin(h);
        entry_store(e, SHMQ_JOB_FREE, 0, gen);
        return rc;
    }
    int err = 0;
    shmq_record_header *rec = shmq_record_at(h, position, 0, &err);
    if (!rec) {
        shmq_log_unpin(h);
        entry_store(e, SHMQ_JOB_FREE, 0, gen);
        return shmq_log_fail(h, err);
    }
    entry_from_record(e, rec, position);
    if (e->flags & SHMQ_JOBF_UNIQUE)
        shmq_unique_set(h, e->unique_hi, e->unique_lo, position); /* before anyone can run it */
    uint32_t lane = a.lane_plus1 ? a.lane_plus1 - 1 : 0;
    METRIC_ADD(h, lane, enqueued, 1);
    METRIC_ADD(h, lane, scheduled, 1);
    *job_id = position;
    scheduled(h, e, gen);
    shmq_log_unpin(h);
    return SHMQ_OK;
}

/* ------------------------------------------------------------ the tick */

/* Liveness of participants, looked up once per tick. */
typedef struct alive_cache {
    uint8_t known[SHMQ_MAX_PARTICIPANTS + 1]; /* 0 unknown, 1 alive, 2 dead */
} alive_cache;

static int is_alive(const shmq_handle *h, alive_cache *c, unsigned owner)
{
    if (owner == h->self)
        return 1;
    if (!c)
        return shmq_participant_alive(h, owner);
    if (!c->known[owner])
        c->known[owner] = shmq_participant_alive(h, owner) ? 1 : 2;
    return c->known[owner] == 1;
}

static int mover_take(shmq_handle *h)
{
    _Atomic uint32_t *word = &jobs_of(h)->mover;
    uint32_t expected = 0;
    /* acquire: the previous mover's work is visible to us. */
    if (atomic_compare_exchange_strong_explicit(word, &expected, h->self, memory_order_acquire, memory_order_relaxed))
        return 1;
    return expected != h->self && !shmq_participant_alive(h, expected) &&
           atomic_compare_exchange_strong_explicit(word, &expected, h->self, memory_order_acquire,
                                                   memory_order_relaxed);
}

static void mover_give(shmq_handle *h)
{
    /* release: pairs with mover_take's acquire. */
    atomic_store_explicit(&jobs_of(h)->mover, 0, memory_order_release);
}

/* A lease of a dead (or hung) consumer, or a finish a dead one left half
 * done: the job waits to run again with attempt + 1; for an ordered lane it
 * keeps the gate. A finish that had already opened its gate (an ack or a
 * death) is over: the entry is freed. Returns 1 if it changed the entry. */
int shmq_jobs_take_back(shmq_handle *h, uint32_t index, uint64_t s, int expired)
{
    shmq_job_entry *e = entry_at(h, index);
    /* acquire: the fields as the owner left them; the CAS makes the entry ours. */
    if (!atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_MOVING, h->self, s),
                                                 memory_order_acquire, memory_order_relaxed))
        return 0;
    uint64_t gen = shmq_job_gen(s);
    /* relaxed: the canceller's bit; one set after this look is seen by the next holder's fail. */
    if (atomic_load_explicit(&e->control, memory_order_relaxed) & SHMQ_JOBC_CANCEL) {
        shmq_jobs_end_cancelled(h, e, index, gen, 0); /* cancelled (with force: killed): never run again */
        return 1;
    }
    if ((e->flags & SHMQ_JOBF_ORDERED) && e->lane < h->lane_count &&
        /* acquire: as in fetch_ordered. */
        atomic_load_explicit(&lane_header(h, e->lane)->gate, memory_order_acquire) != (uint64_t)index + 1) {
        entry_store(e, SHMQ_JOB_FREE, 0, gen);
        return 1;
    }
    uint16_t next = (uint16_t)(e->attempt + 1);
    shmq_jobs_log_outcome(h, SHMQ_REC_RETRY, e->job_id, 0, next, SHMQ_RETRY_CONSUMER_DIED, NULL, 0);
    e->attempt = next;
    e->due_ns = shmq_wall_ns();
    if (e->flags & SHMQ_JOBF_ORDERED) /* relaxed: a hint for the lane's fetchers */
        atomic_store_explicit(&lane_header(h, e->lane)->gate_due, e->due_ns, memory_order_relaxed);
    if (expired)
        METRIC_ADD(h, e->lane, lease_expired, 1);
    else
        METRIC_ADD(h, e->lane, consumer_died, 1);
    entry_store(e, SHMQ_JOB_WAITING, 0, gen);
    return 1;
}

/* A due WAITING job, which we hold (MOVING), goes into a lane (its ordered lane, or any). */
static int move_to_lane(shmq_handle *h, uint32_t index, uint64_t gen)
{
    shmq_job_entry *e = entry_at(h, index);
    shmq_msg_header mh = {.length = e->length, .tag = e->tag, .attempt = e->attempt, .job_id = e->job_id,
                          .enqueued_ns = e->enqueued_ns};
    if (e->flags & SHMQ_JOBF_UNIQUE)
        mh.flags = SHMQ_MSG_UNIQUE | ((e->flags & SHMQ_JOBF_UNIQUE_FINISH) ? SHMQ_MSG_UNIQUE_FINISH : 0);
    int lane = e->lane < h->lane_count && shmq_lane_ordered(h, e->lane) ? (int)e->lane : -1;
    uint64_t record = e->record;
    uint32_t offset = e->offset;
    int by_ref = (e->flags & SHMQ_JOBF_REF) != 0;
    /* acquire: as in low_water (maintain.c). An inline lane job below the floor must have
     * a copy from checkpoint_begin on; one that has not goes by reference
     * to a fresh copy (its original may be about to go). */
    uint64_t floor = atomic_load_explicit(&h->header->checkpoint_floor, memory_order_acquire);
    uint64_t begin = atomic_load_explicit(&h->header->checkpoint_begin, memory_order_relaxed);
    int rc = SHMQ_OK;
    if (!by_ref && e->job_id < floor && e->copy < begin) {
        shmq_log_enter(h);
        rc = shmq_jobs_entry_copy(h, e, SHMQ_ENQ_LANED, &record, &offset);
        shmq_log_leave(h);
        by_ref = 1;
    }
    if (rc == SHMQ_OK)
        rc = by_ref ? shmq_lane_push_job(h, lane, &mh, NULL, record, offset, 0)
                    : shmq_lane_push_job(h, lane, &mh, e->payload, 0, 0, 0);
    if (rc != SHMQ_OK) {
        entry_store(e, SHMQ_JOB_WAITING, 0, gen); /* the lanes are full: later */
        return -1;
    }
    shmq_fault(h, SHMQ_FAULT_MOVE_AFTER_PUSH);
    entry_store(e, SHMQ_JOB_FREE, 0, gen);
    return 1;
}

int shmq_jobs_tick(shmq_handle *h)
{
    if (!h->jobs || !mover_take(h))
        return 0;
    static __thread alive_cache cache;
    memset(&cache, 0, sizeof cache);
    shmq_jobs_header *jh = jobs_of(h);
    /* relaxed: a hint. Entries that become WAITING after this lower it themselves. */
    atomic_store_explicit(&jh->next_due_ns, INT64_MAX, memory_order_relaxed);
    int64_t next = INT64_MAX, mono = shmq_now_ns(), wall = shmq_wall_ns();
    int moved = 0, wake_ordered = 0;
    for (uint32_t i = 0; i < h->job_slots; i++) {
        shmq_job_entry *e = entry_at(h, i);
        /* acquire: pairs with entry_store; the fields are visible. */
        uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
        unsigned kind = shmq_job_kind(s), owner = shmq_job_owner(s);
        switch (kind) {
        case SHMQ_JOB_FREE:
            continue;
        case SHMQ_JOB_FILLING:
            if (!is_alive(h, &cache, owner))
                /* relaxed: the entry was never published; whoever claims it next acquires. */
                atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_FREE, 0, s),
                                                        memory_order_relaxed, memory_order_relaxed);
            continue;
        case SHMQ_JOB_RUNNING_KIND: {
            int dead = !is_alive(h, &cache, owner);
            /* relaxed: a lone word (see shmq_extend). */
            if (!dead && atomic_load_explicit(&e->deadline_ns, memory_order_relaxed) > mono)
                continue;
            if (shmq_jobs_take_back(h, i, s, !dead)) {
                next = wall;
                moved++; /* due now: wake sleeping fetchers */
            }
            continue;
        }
        case SHMQ_JOB_FINISHING:
            if (!is_alive(h, &cache, owner) && shmq_jobs_take_back(h, i, s, 0)) {
                next = wall;
                moved++;
            }
            continue;
        case SHMQ_JOB_MOVING:
            if (!is_alive(h, &cache, owner)) {
                /* relaxed: back to its state before; entry_store-like publication is not needed (fields unchanged). */
                if (atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_WAITING, 0, s),
                                                            memory_order_release, memory_order_relaxed))
                    moved++;
                next = wall;
            }
            continue;
        case SHMQ_JOB_WAITING: {
            /* acquire: its fields are ours to read once the CAS makes it ours. */
            if (!atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_MOVING, h->self, s),
                                                         memory_order_acquire, memory_order_relaxed))
                continue;
            uint64_t gen = shmq_job_gen(s);
            int64_t due = e->due_ns;
            /* relaxed: a bit set while it ran, seen late (a fail that raced the canceller). */
            if (atomic_load_explicit(&e->control, memory_order_relaxed) & SHMQ_JOBC_CANCEL) {
                shmq_jobs_end_cancelled(h, e, i, gen, 0);
                continue;
            }
            if (e->flags & SHMQ_JOBF_ORDERED) { /* its lane's fetchers take it (see fetch_ordered) */
                uint32_t lane = e->lane;
                entry_store(e, SHMQ_JOB_WAITING, 0, gen);
                if (lane < h->lane_count &&
                    /* relaxed: a look; gate_adopt's CAS decides. */
                    atomic_load_explicit(&lane_header(h, lane)->gate, memory_order_relaxed) != (uint64_t)i + 1)
                    shmq_jobs_gate_adopt(h, lane, i, due); /* recovered: it holds its lane again */
                if (due <= wall)
                    wake_ordered = 1;
                else if (due < next)
                    next = due;
                continue;
            }
            if (due > wall) {
                entry_store(e, SHMQ_JOB_WAITING, 0, gen);
                if (due < next)
                    next = due;
                continue;
            }
            int r = move_to_lane(h, i, gen);
            if (r > 0)
                moved++;
            else if (r < 0 && wall + 10 * 1000 * 1000 < next)
                next = wall + 10 * 1000 * 1000; /* lanes full: try again soon */
            continue;
        }
        default:
            continue;
        }
    }
    shmq_jobs_due_lower(h, next);
    for (uint32_t lane = h->unordered_lanes; lane < h->lane_count; lane++)
        shmq_jobs_repair_gate(h, lane);
    mover_give(h);
    if (moved || wake_ordered)
        shmq_wake_data(h);
    h->last_tick_ns = mono;
    return moved;
}

/* Takes the WAITING entry of `job_id` (MOVING, ours); NULL if no entry
 * waits for a time with that id (it runs, is in a lane, is being moved, or
 * is finished). */
static shmq_job_entry *waiting_take(shmq_handle *h, uint64_t job_id, uint32_t *index, uint64_t *gen)
{
    for (uint32_t i = 0; i < h->job_slots; i++) {
        shmq_job_entry *e = entry_at(h, i);
        /* relaxed: a look; the CAS below decides, and job_id is re-read once the entry is ours. */
        uint64_t s = atomic_load_explicit(&e->state, memory_order_relaxed);
        if (shmq_job_kind(s) != SHMQ_JOB_WAITING || GET(e->job_id) != job_id)
            continue;
        /* acquire: pairs with entry_store's release; the fields are ours while MOVING. */
        if (!atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_MOVING, h->self, s),
                                                     memory_order_acquire, memory_order_relaxed))
            return NULL; /* taken meanwhile (moved, or run) */
        if (e->job_id != job_id) { /* the entry was reused between the look and the CAS */
            entry_store(e, SHMQ_JOB_WAITING, 0, shmq_job_gen(s));
            continue;
        }
        *index = i;
        *gen = shmq_job_gen(s);
        return e;
    }
    return NULL;
}

/* A job waiting for its time (a delay, a retry's backoff) is due now: the
 * next tick (or, for an ordered lane, its next fetch) runs it. The new due
 * time is not logged: after a restart the job waits for its logged time
 * again. SHMQ_EEMPTY: no job of that id waits for a time. */
int shmq_job_run_now(shmq_handle *h, uint64_t job_id)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    uint32_t index;
    uint64_t gen;
    shmq_job_entry *e = waiting_take(h, job_id, &index, &gen);
    if (!e)
        return SHMQ_EEMPTY;
    int64_t now = shmq_wall_ns();
    if (e->due_ns > now)
        e->due_ns = now;
    if ((e->flags & SHMQ_JOBF_ORDERED) && e->lane < h->lane_count) /* relaxed: a hint for the lane's fetchers */
        atomic_store_explicit(&lane_header(h, e->lane)->gate_due, e->due_ns, memory_order_relaxed);
    scheduled(h, e, gen); /* WAITING again (release), next_due lowered, fetchers woken */
    return SHMQ_OK;
}

/* A job waiting for its time is deleted: it ends dead (its DEAD record, with
 * `error`, so a recovery does not bring it back; its key freed; its ordered
 * lane's gate opened; `error` kept as its outcome, as for a failed job).
 * SHMQ_EEMPTY: no job of that id waits for a time. */
int shmq_job_delete(shmq_handle *h, uint64_t job_id, uint8_t tag, const char *error, uint32_t length)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    uint32_t index;
    uint64_t gen;
    shmq_job_entry *e = waiting_take(h, job_id, &index, &gen);
    if (!e)
        return SHMQ_EEMPTY;
    int rc = shmq_jobs_log_outcome(h, SHMQ_REC_DEAD, job_id, 0, e->attempt, SHMQ_RETRY_FAILED, error, length);
    if (rc != SHMQ_OK) {
        entry_store(e, SHMQ_JOB_WAITING, 0, gen); /* as it was: the caller may try again */
        return rc;
    }
    if (e->flags & SHMQ_JOBF_UNIQUE)
        shmq_unique_drop(h, e->unique_hi, e->unique_lo, job_id);
    METRIC_ADD(h, e->lane, dead, 1);
    shmq_task_finished(h, e, 1u << SHMQ_TASK_DEAD, -1);
    int ordered = (e->flags & SHMQ_JOBF_ORDERED) != 0;
    shmq_jobs_gate_open(h, e, index);
    shmq_result_put(h, job_id, SHMQ_JOB_DEAD, e->attempt, tag, (const uint8_t *)error, length, -1); /* as in fail */
    entry_store(e, SHMQ_JOB_FREE, 0, gen);
    if (ordered)
        shmq_wake_data(h); /* the lane's next job may start */
    return SHMQ_OK;
}

int64_t shmq_jobs_next_due(const shmq_handle *h)
{
    /* relaxed: a hint. */
    return h->jobs ? atomic_load_explicit(&h->jobs->next_due_ns, memory_order_relaxed) : INT64_MAX;
}

/* A handle closing with leases it never finished: they are taken back now. */
void shmq_jobs_detach(shmq_handle *h)
{
    if (!h->jobs || !h->self)
        return;
    for (uint32_t i = 0; i < h->job_slots; i++) {
        /* acquire: as in the tick. */
        uint64_t s = atomic_load_explicit(&h->entries[i].state, memory_order_acquire);
        unsigned kind = shmq_job_kind(s);
        if (shmq_job_owner(s) != h->self)
            continue;
        if (kind == SHMQ_JOB_RUNNING_KIND || kind == SHMQ_JOB_FINISHING)
            shmq_jobs_take_back(h, i, s, 0);
        else if (kind == SHMQ_JOB_MOVING)
            entry_store(&h->entries[i], SHMQ_JOB_WAITING, 0, shmq_job_gen(s));
    }
    shmq_jobs_due_lower(h, shmq_wall_ns());
}
