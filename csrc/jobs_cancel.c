/* SPDX-License-Identifier: Apache-2.0 */
/* jobs_cancel.c -- job control: cancelling a queued, scheduled or running
 * job (with force: its process is killed), a running job's control word and
 * progress, and taking over the lease of a worker child that is about to be
 * killed (a timeout).
 *
 * Where a job is decides how it is cancelled:
 * - in the table, WAITING (a delay, a retry's backoff): the canceller takes
 *   the entry (CAS -> MOVING(me)) and ends it.
 * - in the table, RUNNING: the canceller sets SHMQ_JOBC_CANCEL in the
 *   entry's control word. The task may look (shmq_job_control); a failure
 *   ends it cancelled (shmq_fail: SHMQ_ECANCELLED), and so does the taking
 *   back of its lease (its process died: with force, the canceller killed
 *   it). An ack ends it done: the task chose to finish.
 * - in a lane or the backlog: the canceller puts its id in the header's
 *   cancel set and writes its end (a DEAD record with reason CANCELLED, so a
 *   recovery drops it, and a CANCELLED result); the fetcher that takes it
 *   finds the id, takes it out of the set and frees the entry unrun. The
 *   fetcher publishes its lease before it looks at the set, the canceller
 *   puts the id in the set before it looks at the table; a seq_cst fence on
 *   each side between the two means one always sees the other: either the
 *   fetcher takes the id out (the job is ended unrun), or the canceller sees
 *   the lease, takes the id back out and cancels the running job instead.
 * A process killed in between: an id left in the set is taken out by the
 * fetcher that meets the job (its end is already written); a DEAD record not
 * written means the job runs (its cancel call never returned). */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "jobs.h"

/* A canceller waits at most this long for an entry to leave a brief state
 * (MOVING, FILLING, FINISHING): a holder that died is repaired by the next
 * tick; one that is stopped makes the cancel return SHMQ_ELOCKED. */
#define CANCEL_WAIT_NS (2ll * 1000 * 1000 * 1000)

/* The cancel set's helpers (cancel_slot_of, cancel_take) are in jobs.h;
 * the fetcher's side, shmq_jobs_cancel_taken, in jobs.c. */

/* ------------------------------------------------------------ cancel */

static int set_add(shmq_handle *h, uint64_t job_id)
{
    int at = cancel_slot_of(h, job_id);
    if (at >= 0)
        return at;
    for (int i = 0; i < SHMQ_CANCEL_SLOTS; i++) {
        uint64_t empty = 0;
        /* seq_cst: the id is in the set before we look at the table (the handshake). */
        if (atomic_compare_exchange_strong(&h->jobs->cancel_ids[i], &empty, job_id)) {
            atomic_fetch_add(&h->jobs->cancel_count, 1); /* seq_cst: read by fetchers after their fence */
            return i;
        }
    }
    return -1;
}



/* Kills the process of participant `owner` (not ourselves), if it still is the one registered. */
static void kill_owner(shmq_handle *h, unsigned owner)
{
    if (owner == 0 || owner == h->self || owner > SHMQ_MAX_PARTICIPANTS)
        return;
    /* relaxed: pid and start time are checked together by participant_alive. */
    uint32_t pid = atomic_load_explicit(&h->participants[owner].pid, memory_order_relaxed);
    if (pid > 1 && shmq_participant_alive(h, owner))
        kill((pid_t)pid, SIGKILL);
}

/* The job's entry, if the table holds it: 1 = done (*outcome set), 0 = not in
 * the table, -1 = in a brief state: look again. */
static int cancel_in_table(shmq_handle *h, uint64_t job_id, int force, int *outcome)
{
    for (uint32_t i = 0; i < h->job_slots; i++) {
        shmq_job_entry *e = entry_at(h, i);
        /* seq_cst: the canceller's look at the table (see the top comment). */
        uint64_t s = atomic_load(&e->state);
        unsigned kind = shmq_job_kind(s);
        if (kind == SHMQ_JOB_FREE || GET(e->job_id) != job_id)
            continue;
        if (kind == SHMQ_JOB_WAITING) {
            /* acquire: the entry's fields are ours once the CAS makes it ours. */
            if (!atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_MOVING, h->self, s),
                                                         memory_order_acquire, memory_order_relaxed))
                return -1;
            if (GET(e->job_id) != job_id) { /* reused meanwhile: as it was */
                entry_store(e, SHMQ_JOB_WAITING, 0, shmq_job_gen(s));
                return -1;
            }
            shmq_jobs_end_cancelled(h, e, i, shmq_job_gen(s), 0);
            *outcome = SHMQ_CANCEL_ENDED;
            return 1;
        }
        if (kind == SHMQ_JOB_RUNNING_KIND) {
            /* seq_cst: the bit before our second look at the state; pairs with the fence in shmq_fail. */
            atomic_fetch_or(&e->control, SHMQ_JOBC_CANCEL | (force ? SHMQ_JOBC_FORCE : 0u));
            if (atomic_load(&e->state) != s)
                return -1; /* it moved on (finished, retried): look again */
            if (force)
                kill_owner(h, shmq_job_owner(s));
            *outcome = SHMQ_CANCEL_RUNNING;
            return 1;
        }
        /* FILLING, MOVING, FINISHING: brief (a holder that died is repaired by the next tick). */
        return -1;
    }
    return 0;
}

/* A job in a lane or the backlog (see the top comment). */
static int cancel_queued(shmq_handle *h, uint64_t job_id, int *outcome)
{
    int at = set_add(h, job_id);
    if (at < 0)
        return SHMQ_ECANCELFULL;
    /* seq_cst: the id in the set before the look at the table; pairs with the fence in shmq_jobs_cancel_taken. */
    atomic_thread_fence(memory_order_seq_cst);
    int found = 0;
    for (uint32_t i = 0; i < h->job_slots && !found; i++) {
        /* seq_cst: as above. */
        unsigned kind = shmq_job_kind(atomic_load(&h->entries[i].state));
        found = kind != SHMQ_JOB_FREE && GET(h->entries[i].job_id) == job_id;
    }
    if (found && cancel_take(h, at, job_id))
        return 1; /* leased before our id was seen: cancel it where it is now */
    shmq_result_info info;
    if (!found && shmq_result_lookup(h, job_id, &info) > 0) {
        /* It ended before our id went in (its result is out): nothing to cancel. */
        if (cancel_take(h, at, job_id))
            return SHMQ_OK;
    }
    /* Its end, now (a recovery drops it; status and wait answer at once); the fetcher frees it unrun. */
    shmq_jobs_log_outcome(h, SHMQ_REC_DEAD, job_id, 0, 0, SHMQ_RETRY_CANCELLED, SHMQ_CANCELLED_TEXT,
                          sizeof SHMQ_CANCELLED_TEXT - 1);
    shmq_result_put(h, job_id, SHMQ_JOB_CANCELLED, 0, 0, (const uint8_t *)"", 0, -1);
    *outcome = SHMQ_CANCEL_ENDED;
    return SHMQ_OK;
}

int shmq_job_cancel(shmq_handle *h, uint64_t job_id, int force, int *outcome /* OUT */)
{
    *outcome = SHMQ_CANCEL_NONE;
    if (!h->jobs)
        return SHMQ_ENOLOG;
    int64_t give_up = shmq_now_ns() + CANCEL_WAIT_NS;
    for (unsigned look = 0;; look++) {
        if (look > 0 && shmq_now_ns() > give_up)
            return SHMQ_ELOCKED;
        if (look >= 64) {
            struct timespec pause = {0, 1000 * 1000}; /* a holder that died: the next tick (50 ms) repairs it */
            nanosleep(&pause, NULL);
        }
        int rc = cancel_in_table(h, job_id, force, outcome);
        if (rc > 0)
            return SHMQ_OK;
        if (rc < 0) {
            sched_yield();
            continue;
        }
        shmq_result_info info;
        int status = shmq_job_status(h, job_id, &info);
        if (status == SHMQ_JOB_RUNNING || status == SHMQ_JOB_SCHEDULED)
            continue; /* into the table meanwhile */
        if (status != SHMQ_JOB_QUEUED)
            return status < 0 ? status : SHMQ_OK; /* finished, cancelled already, or unknown */
        rc = cancel_queued(h, job_id, outcome);
        if (rc != 1)
            return rc;
    }
}

/* ------------------------------------------------------------ the lease's holder */

static shmq_job_entry *held(const shmq_handle *h, const shmq_delivery *d)
{
    if (!h->jobs || d->entry >= h->job_slots)
        return NULL;
    shmq_job_entry *e = entry_at(h, d->entry);
    /* acquire: pairs with lease_start's release. */
    uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
    return s == shmq_job_state(SHMQ_JOB_RUNNING_KIND, h->self, d->gen) && GET(e->job_id) == d->job_id ? e : NULL;
}

int shmq_job_control(shmq_handle *h, const shmq_delivery *d)
{
    shmq_job_entry *e = held(h, d);
    if (!e)
        return h->jobs ? SHMQ_ELEASE : SHMQ_ENOLOG;
    /* relaxed: a look; the canceller's fetch_or is a lone word. */
    return (int)atomic_load_explicit(&e->control, memory_order_relaxed);
}

int shmq_job_progress_set(shmq_handle *h, const shmq_delivery *d, uint32_t ppm)
{
    if (ppm > 1000000)
        return SHMQ_EINVAL;
    shmq_job_entry *e = held(h, d);
    if (!e)
        return h->jobs ? SHMQ_ELEASE : SHMQ_ENOLOG;
    /* relaxed: a lone word for people to read. */
    atomic_store_explicit(&e->progress, ppm, memory_order_relaxed);
    return SHMQ_OK;
}

int64_t shmq_job_progress(const shmq_handle *h, uint64_t job_id)
{
    for (uint32_t i = 0; h->jobs && i < h->job_slots; i++) {
        const shmq_job_entry *e = entry_at(h, i);
        /* acquire: pairs with entry_store; a look for people. */
        if (shmq_job_kind(atomic_load_explicit(&e->state, memory_order_acquire)) != SHMQ_JOB_RUNNING_KIND ||
            GET(e->job_id) != job_id)
            continue;
        /* relaxed: as in shmq_job_progress_set. */
        uint32_t ppm = atomic_load_explicit(&e->progress, memory_order_relaxed);
        return ppm == SHMQ_PROGRESS_NONE ? -1 : (int64_t)ppm;
    }
    return -1;
}

int shmq_lease_take(shmq_handle *h, uint64_t job_id, uint32_t entry, uint64_t gen, shmq_delivery *d /* OUT */)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    if (entry >= h->job_slots)
        return SHMQ_EINVAL;
    shmq_job_entry *e = entry_at(h, entry);
    /* acquire: pairs with lease_start's release; the fields as the holder left them. */
    uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
    if (shmq_job_kind(s) != SHMQ_JOB_RUNNING_KIND || shmq_job_gen(s) != gen || GET(e->job_id) != job_id)
        return SHMQ_ELEASE;
    int64_t now = shmq_now_ns();
    /* relaxed: published by the CAS below. A minute: the taker fails the job at once. */
    atomic_store_explicit(&e->deadline_ns, now + 60ll * 1000 * 1000 * 1000, memory_order_relaxed);
    /* acq_rel: the lease is ours from here; the old holder's finish_begin CAS fails. */
    if (!atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_RUNNING_KIND, h->self, gen),
                                                 memory_order_acq_rel, memory_order_relaxed))
        return SHMQ_ELEASE;
    d->job_id = job_id;
    d->gen = gen;
    d->enqueued_ns = e->enqueued_ns;
    d->entry = entry;
    d->lane = e->lane;
    d->length = e->length;
    d->attempt = e->attempt;
    d->tag = e->tag;
    d->flags = e->flags;
    return SHMQ_OK;
}
