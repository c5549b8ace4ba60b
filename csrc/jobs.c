/* SPDX-License-Identifier: Apache-2.0 */
/* jobs.c -- the job table and leases: claiming and filling entries, a job
 * taken from its lane under a lease (the ordered lanes' through their gate),
 * ack, fail (retry or dead), extend. The table's protocol is in layout.h
 * ("Jobs"); scheduling and the tick are in jobs_schedule.c, the gates'
 * repair in jobs_gate.c, what others read of the table in jobs_info.c. */
#define _GNU_SOURCE
#include <string.h>

#include "jobs.h"

/* ------------------------------------------------------------ histograms */

void shmq_jobs_hist_add(shmq_handle *h, int which, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    shmq_jobs_header *jh = jobs_of(h);
    /* relaxed: statistics; each bucket is a counter on its own. */
    atomic_fetch_add_explicit(&jh->hist[which][shmq_histogram_bucket_of((uint64_t)ns)], 1, memory_order_relaxed);
    int64_t max = atomic_load_explicit(&jh->hist_max[which], memory_order_relaxed);
    while (ns > max && !atomic_compare_exchange_weak_explicit(&jh->hist_max[which], &max, ns, memory_order_relaxed,
                                                              memory_order_relaxed)) {
    }
}

/* ------------------------------------------------------------ entries */

/* Claims a FREE entry as FILLING(me); *gen is its generation. */
int shmq_jobs_entry_claim(shmq_handle *h, uint32_t *index, uint64_t *gen)
{
    uint32_t n = h->job_slots;
    /* relaxed: a private starting hint; the CAS below is the claim. */
    uint32_t start = atomic_fetch_add_explicit(&h->entry_cursor, 1, memory_order_relaxed) % n;
    for (uint32_t i = 0, k = start; i < n; i++, k = k + 1 == n ? 0 : k + 1) {
        shmq_job_entry *e = entry_at(h, k);
        uint64_t s = atomic_load_explicit(&e->state, memory_order_relaxed);
        if (shmq_job_kind(s) != SHMQ_JOB_FREE)
            continue;
        /* acquire: the previous user's writes to the entry happen before ours. */
        /* A new generation on every claim: a CAS against a state read
         * before the entry was freed and claimed again fails. */
        uint64_t fresh = (shmq_job_gen(s) + 1) & SHMQ_JOB_GEN_MASK;
        if (atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_FILLING, h->self, fresh),
                                                    memory_order_acquire, memory_order_relaxed)) {
            *index = k;
            *gen = fresh;
            return SHMQ_OK;
        }
    }
    return SHMQ_EJOBSFULL;
}

/* Lowers next_due to `due` (only ever lowers it; shmq_jobs_tick raises it). */
void shmq_jobs_due_lower(shmq_handle *h, int64_t due)
{
    /* relaxed: a hint for when to look; the entries themselves are read with acquire. */
    int64_t cur = atomic_load_explicit(&jobs_of(h)->next_due_ns, memory_order_relaxed);
    while (due < cur && !atomic_compare_exchange_weak_explicit(&jobs_of(h)->next_due_ns, &cur, due,
                                                               memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* Copies an entry's payload (inline, or from its record). */
int shmq_jobs_entry_payload(shmq_handle *h, const shmq_job_entry *e, uint8_t *out, uint32_t length)
{
    if (!(e->flags & SHMQ_JOBF_REF)) {
        memcpy(out, e->payload, length);
        return SHMQ_OK;
    }
    shmq_log_enter(h);
    int rc = shmq_log_read_payload(h, e->record, e->offset, out, length);
    shmq_log_leave(h);
    return rc;
}

/* Writes a COPY of entry e's job at the tail (for a checkpoint, or before it
 * goes back into a lane); *position is the copy's, *offset its payload's.
 * The caller holds the entry (MOVING) and is inside the log. */
int shmq_jobs_entry_copy(shmq_handle *h, shmq_job_entry *e, uint8_t flags, uint64_t *position, uint32_t *offset)
{
    uint64_t key[2] = {e->unique_hi, e->unique_lo};
    int unique = (e->flags & SHMQ_JOBF_UNIQUE) != 0;
    shmq_enqueue_args args = {.job_id = e->job_id, .attempt = e->attempt, .tag = e->tag,
                              .flags = (uint8_t)(SHMQ_ENQ_COPY | flags |
                                                 ((e->flags & SHMQ_JOBF_UNIQUE_FINISH) ? SHMQ_ENQ_UNIQUE_FINISH : 0)),
                              .enqueued_ns = e->enqueued_ns, .not_before_ns = e->due_ns,
                              .lane_plus1 = e->lane < h->lane_count ? e->lane + 1 : 0,
                              .unique = unique ? (const uint8_t *)key : NULL,
                              .first = e->payload, .first_length = e->length};
    if (e->flags & SHMQ_JOBF_REF) {
        int err = 0;
        shmq_record_header *rec = shmq_record_at(h, e->record, 0, &err);
        if (!rec)
            return shmq_log_fail(h, err);
        args.first = (const uint8_t *)rec + e->offset;
    }
    int spilling;
    int rc = shmq_log_enqueue(h, &args, position, &spilling);
    *offset = SHMQ_ENQUEUE_FIXED + (unique ? SHMQ_UNIQUE_KEY_BYTES : 0);
    return rc;
}

static void delivery_fill(const shmq_job_entry *e, uint32_t index, uint64_t gen, shmq_delivery *d)
{
    d->job_id = e->job_id;
    d->gen = gen;
    d->enqueued_ns = e->enqueued_ns;
    d->entry = index;
    d->lane = e->lane;
    d->length = e->length;
    d->attempt = e->attempt;
    d->tag = e->tag;
    d->flags = e->flags;
    d->task = 0;
}

/* ------------------------------------------------------------ fetch */

/* A taken message's payload: from the ring, or from the record its
 * reference names (shmq_lane_take read the reference). */
static int taken_payload(shmq_handle *h, const shmq_taken *t, uint8_t *out, uint32_t length)
{
    uint32_t n = length < t->msg.length ? length : t->msg.length;
    if (!(t->msg.flags & SHMQ_MSG_REF)) {
        ring_read(h, lane_at(h, t->msg.lane), t->msg.position, SHMQ_MSG_HEADER_BYTES, out, n);
        return SHMQ_OK;
    }
    shmq_log_enter(h);
    int rc = shmq_log_read_payload(h, t->record, t->offset, out, n);
    shmq_log_leave(h);
    return rc;
}

/* Fills entry `e` from a message just taken from its lane. */
static int entry_from_taken(shmq_handle *h, shmq_job_entry *e, const shmq_taken *t)
{
    PUT(e->job_id, t->msg.job_id);
    e->enqueued_ns = t->enqueued_ns;
    e->attempt = t->msg.attempt;
    e->tag = t->msg.tag;
    e->length = t->msg.length;
    PUT(e->lane, t->msg.lane);
    uint8_t flags = 0;
    PUT(e->record, 0);
    e->offset = 0;
    e->unique_hi = e->unique_lo = 0;
    PUT(e->copy, 0);
    if (!(t->msg.flags & SHMQ_MSG_REF)) {
        /* An inline lane job below the floor has a copy from checkpoint_begin on (see low_water in maintain.c). */
        /* acquire: pairs with checkpoint()'s release of the floor (maintain.c); begin was stored before it. */
        uint64_t floor = atomic_load_explicit(&h->header->checkpoint_floor, memory_order_acquire);
        if (t->msg.job_id < floor)
            PUT(e->copy, atomic_load_explicit(&h->header->checkpoint_begin, memory_order_relaxed));
    }
    if (t->msg.flags & SHMQ_MSG_REF) {
        flags |= SHMQ_JOBF_REF;
        PUT(e->record, t->record);
        e->offset = t->offset;
    } else if (t->msg.length <= SHMQ_JOB_INLINE_BYTES) {
        int rc = taken_payload(h, t, e->payload, t->msg.length);
        if (rc != SHMQ_OK)
            return rc;
    } else { /* inline beyond an entry's room: cannot be with a log (inline_ref_min <= 256) */
        return SHMQ_EINVAL;
    }
    if ((t->msg.flags & SHMQ_MSG_UNIQUE) && (t->msg.flags & SHMQ_MSG_REF) && t->offset >= SHMQ_UNIQUE_KEY_BYTES) {
        uint64_t key[2];
        shmq_log_enter(h);
        int rc = shmq_log_read_payload(h, t->record, t->offset - SHMQ_UNIQUE_KEY_BYTES, (uint8_t *)key, sizeof key);
        shmq_log_leave(h);
        if (rc == SHMQ_OK) {
            e->unique_hi = key[0];
            e->unique_lo = key[1];
            flags |= SHMQ_JOBF_UNIQUE;
            if (t->msg.flags & SHMQ_MSG_UNIQUE_FINISH)
                flags |= SHMQ_JOBF_UNIQUE_FINISH;
        }
    }
    PUT(e->flags, flags);
    /* relaxed: published by the lease's release store. */
    atomic_store_explicit(&e->control, 0, memory_order_relaxed);
    atomic_store_explicit(&e->progress, SHMQ_PROGRESS_NONE, memory_order_relaxed);
    return SHMQ_OK;
}

/* The job's lease starts: fields, then RUNNING(me, gen + 1). */
static uint64_t lease_start(shmq_handle *h, shmq_job_entry *e, uint64_t gen, int64_t lease_ns, int64_t wait_ns)
{
    int64_t now = shmq_now_ns();
    e->started_ns = now;
    e->wait_ns = wait_ns;
    /* relaxed: published by the state store below; unbound until its consumer names the task. */
    atomic_store_explicit(&e->task, 0, memory_order_relaxed);
    /* relaxed: published by the state store below. */
    atomic_store_explicit(&e->deadline_ns, lease_ns < 0 || lease_ns > INT64_MAX - now ? INT64_MAX : now + lease_ns,
                          memory_order_relaxed);
    gen = (gen + 1) & SHMQ_JOB_GEN_MASK;
    entry_store(e, SHMQ_JOB_RUNNING_KIND, h->self, gen);
    return gen;
}

/* Copies the delivered payload into the caller's buffer, if it fits. */
static int deliver(shmq_handle *h, const shmq_job_entry *e, uint32_t index, uint64_t gen, fetch_args *a)
{
    delivery_fill(e, index, gen, a->d);
    if (e->length > a->capacity)
        return SHMQ_ECLAIMED; /* leased: shmq_delivery_payload copies it into a larger buffer */
    int rc = shmq_jobs_entry_payload(h, e, (uint8_t *)a->buffer, e->length);
    if (rc != SHMQ_OK)
        return SHMQ_ECLAIMED; /* the caller's second read reports the error */
    return SHMQ_OK;
}

/* Takes the head message of `lane` under a new lease. For an ordered lane
 * the caller holds the gate (CLAIM(me)) and we store gate = entry + 1. */
static int fetch_message(shmq_handle *h, uint32_t lane, fetch_args *a, int ordered)
{
    uint32_t index;
    uint64_t gen;
    int rc = shmq_jobs_entry_claim(h, &index, &gen);
    if (rc != SHMQ_OK)
        return rc;
    shmq_job_entry *e = entry_at(h, index);
    shmq_taken t;
    for (;;) {
        rc = shmq_lane_take(h, lane, &t);
        if (rc != SHMQ_OK) {
            if (rc == SHMQ_EFULL && a->busy_lane < 0) {
                a->busy_lane = (int)lane;
                a->busy = t;
            }
            entry_store(e, SHMQ_JOB_FREE, 0, gen);
            return SHMQ_EEMPTY;
        }
        shmq_fault(h, SHMQ_FAULT_FETCH_AFTER_TAKE);
        if (entry_from_taken(h, e, &t) == SHMQ_OK)
            break;
        /* Its record is unreadable: counted; the job stays in the log for a recovery. */
        atomic_fetch_add_explicit(&h->header->dropped_corrupt, 1, memory_order_relaxed); /* statistics */
        shmq_lane_finish(h, &t);
    }
    if (ordered)
        PUT(e->flags, (uint8_t)(e->flags | SHMQ_JOBF_ORDERED));
    int64_t wait_ns = t.enqueued_ns ? shmq_wall_ns() - t.enqueued_ns : -1;
    gen = lease_start(h, e, gen, a->lease_ns, wait_ns);
    shmq_lane_mark_leased(h, &t);
    if (ordered) {
        /* relaxed: for people (shmq_lane_info_read); ordered by nothing. */
        atomic_store_explicit(&lane_header(h, lane)->gate_since, shmq_wall_ns(), memory_order_relaxed);
        /* release: the entry is RUNNING before the gate names it. */
        atomic_store_explicit(&lane_header(h, lane)->gate, (uint64_t)index + 1, memory_order_release);
    }
    shmq_fault(h, SHMQ_FAULT_FETCH_AFTER_LEASE);
    if ((e->flags & SHMQ_JOBF_UNIQUE) && !(e->flags & SHMQ_JOBF_UNIQUE_FINISH))
        shmq_unique_drop(h, e->unique_hi, e->unique_lo, e->job_id); /* unique until it starts: free now */
    shmq_lane_finish(h, &t);
    METRIC_ADD(h, lane, started, 1);
    if (wait_ns >= 0)
        shmq_jobs_hist_add(h, SHMQ_HIST_WAIT, wait_ns);
    if (shmq_jobs_cancel_taken(h, e, index, gen))
        return SHMQ_EEMPTY; /* cancelled while it waited in the lane: ended unrun; the round goes on */
    return deliver(h, e, index, gen, a);
}

/* An ordered lane: its gate decides. */
static int fetch_ordered(shmq_handle *h, uint32_t lane, fetch_args *a)
{
    _Atomic uint64_t *gate = &lane_header(h, lane)->gate;
    /* acquire: pairs with the release stores of the gate; the entry it names is visible. */
    uint64_t g = atomic_load_explicit(gate, memory_order_acquire);
    if (g == 0) {
        if (!shmq_lane_ready(h, lane)) {
            if (a->busy_lane < 0 && shmq_lane_busy(h, lane, &a->busy)) /* as in fetch_round */
                a->busy_lane = (int)lane;
            return SHMQ_EEMPTY;
        }
        uint64_t open = 0;
        /* acquire: the previous holder's release of the lane happens before our take. */
        if (!atomic_compare_exchange_strong_explicit(gate, &open, SHMQ_GATE_CLAIM | h->self, memory_order_acquire,
                                                     memory_order_relaxed))
            return SHMQ_EEMPTY;
        shmq_fault(h, SHMQ_FAULT_GATE_CLAIMED);
        int rc = fetch_message(h, lane, a, 1);
        if (rc != SHMQ_OK && rc != SHMQ_ECLAIMED)
            /* release: nothing taken; the lane is open again. */
            atomic_store_explicit(gate, 0, memory_order_release);
        return rc;
    }
    if (g & SHMQ_GATE_CLAIM || g - 1 >= h->job_slots)
        return SHMQ_EEMPTY;
    /* The lane's job waits to run again (a retry's backoff, or its consumer
     * died). relaxed: a hint; the entry's own due time decides, once ours. */
    int64_t now = shmq_wall_ns();
    if (atomic_load_explicit(&lane_header(h, lane)->gate_due, memory_order_relaxed) > now)
        return SHMQ_EEMPTY;
    uint32_t index = (uint32_t)(g - 1);
    shmq_job_entry *e = entry_at(h, index);
    /* acquire: pairs with entry_store; the fields are visible once the CAS makes the entry ours. */
    uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
    if (shmq_job_kind(s) != SHMQ_JOB_WAITING ||
        !atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_MOVING, h->self, s),
                                                 memory_order_acquire, memory_order_relaxed))
        return SHMQ_EEMPTY;
    if (!(e->flags & SHMQ_JOBF_ORDERED) || e->lane != lane || e->due_ns > now) {
        entry_store(e, SHMQ_JOB_WAITING, 0, shmq_job_gen(s)); /* not this lane's, or not due: as it was */
        return SHMQ_EEMPTY;
    }
    int64_t due = e->due_ns;
    uint64_t gen = lease_start(h, e, shmq_job_gen(s), a->lease_ns, now - due);
    METRIC_ADD(h, lane, started, 1);
    shmq_jobs_hist_add(h, SHMQ_HIST_WAIT, now - due);
    return deliver(h, e, index, gen, a);
}

/* One lane's try: a job, or SHMQ_EEMPTY. */
static int fetch_lane(shmq_handle *h, uint32_t lane, fetch_args *a)
{
    if (shmq_lane_ordered(h, lane))
        return fetch_ordered(h, lane, a);
    if (!shmq_lane_ready(h, lane)) {
        /* A head being written: remembered, so that a writer that died there is repaired. */
        if (a->busy_lane < 0 && shmq_lane_busy(h, lane, &a->busy))
            a->busy_lane = (int)lane;
        return SHMQ_EEMPTY;
    }
    return fetch_message(h, lane, a, 0);
}

int shmq_jobs_fetch_round(shmq_handle *h, fetch_args *a)
{
    uint32_t lanes = h->lane_count;
    /* relaxed: a setting (admission.c); 0 unless a job was enqueued with a priority. */
    int64_t age_ns = atomic_load_explicit(&h->admission->priority_age_ns, memory_order_relaxed);
    if (age_ns > 0 && lanes > 1)
        return shmq_admission_fetch_round(h, age_ns, a, fetch_lane);
    /* relaxed: any rotation is correct. */
    uint32_t start = lanes == 1 ? 0 : atomic_fetch_add_explicit(&h->pop_cursor, 1, memory_order_relaxed);
    for (uint32_t i = 0; i < lanes; i++) {
        int rc = fetch_lane(h, (start + i) % lanes, a);
        if (rc != SHMQ_EEMPTY)
            return rc;
    }
    return SHMQ_EEMPTY;
}

/* Is (entry, gen) a lease this handle holds? Returns the entry or NULL. */
static shmq_job_entry *leased(const shmq_handle *h, const shmq_delivery *d)
{
    if (!h->jobs || d->entry >= h->job_slots)
        return NULL;
    shmq_job_entry *e = entry_at(h, d->entry);
    /* acquire: pairs with lease_start's release. */
    uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
    return s == shmq_job_state(SHMQ_JOB_RUNNING_KIND, h->self, d->gen) && e->job_id == d->job_id ? e : NULL;
}

int shmq_delivery_payload(shmq_handle *h, const shmq_delivery *d, char *buffer)
{
    shmq_job_entry *e = leased(h, d);
    if (!e)
        return SHMQ_ELEASE;
    return shmq_jobs_entry_payload(h, e, (uint8_t *)buffer, e->length);
}

/* Takes the lease for finishing: RUNNING(me, gen) -> FINISHING(me, gen). */
static shmq_job_entry *finish_begin(shmq_handle *h, const shmq_delivery *d)
{
    if (!h->jobs || d->entry >= h->job_slots)
        return NULL;
    shmq_job_entry *e = entry_at(h, d->entry);
    uint64_t s = shmq_job_state(SHMQ_JOB_RUNNING_KIND, h->self, d->gen);
    /* acquire: the entry's fields as the lease left them. A lease taken
     * back meanwhile (expired) fails the CAS. */
    if (!atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_FINISHING, h->self, d->gen),
                                                 memory_order_acquire, memory_order_relaxed))
        return NULL;
    if (e->job_id != d->job_id) { /* cannot be: the gen names the lease */
        entry_store(e, SHMQ_JOB_RUNNING_KIND, h->self, d->gen);
        return NULL;
    }
    return e;
}

/* The task the consumer named in the delivery (0: as bound, or none); kept
 * in the entry, so a retry's delete counts there too. */
static inline void task_from(shmq_job_entry *e, const shmq_delivery *d)
{
    if (d->task && d->task <= SHMQ_TASK_SLOTS)
        /* relaxed: the entry is ours (FINISHING); read back below by this thread. */
        atomic_store_explicit(&e->task, d->task, memory_order_relaxed);
}

int shmq_ack(shmq_handle *h, const shmq_delivery *d, uint8_t tag, const char *result, uint32_t length)
{
    shmq_job_entry *e = finish_begin(h, d);
    if (!e)
        return h->jobs ? SHMQ_ELEASE : SHMQ_ENOLOG;
    task_from(e, d);
    uint64_t job_id = e->job_id;
    shmq_log_ack(h, &job_id, 1); /* DONE, written lazily: a lost one only runs the job again after a recovery */
    if (e->flags & SHMQ_JOBF_UNIQUE_FINISH)
        shmq_unique_drop(h, e->unique_hi, e->unique_lo, job_id);
    METRIC_ADD(h, e->lane, done, 1);
    int64_t run_ns = shmq_now_ns() - e->started_ns;
    shmq_jobs_hist_add(h, SHMQ_HIST_RUN, run_ns);
    shmq_task_finished(h, e, 1u << SHMQ_TASK_DONE, run_ns);
    int ordered = (e->flags & SHMQ_JOBF_ORDERED) != 0;
    shmq_jobs_gate_open(h, e, d->entry);
    /* The result last but the entry: a waiter that wakes finds the key free,
     * the counters counted and the group's next job startable. */
    shmq_result_put(h, job_id, SHMQ_JOB_DONE, e->attempt, tag, (const uint8_t *)result, length, run_ns);
    shmq_fault(h, SHMQ_FAULT_ACK_BEFORE_FREE);
    entry_store(e, SHMQ_JOB_FREE, 0, d->gen);
    if (ordered)
        shmq_wake_data(h); /* the lane's next job may start */
    return SHMQ_OK;
}

/* Appends a RETRY or DEAD record (with the error text). */
int shmq_jobs_log_outcome(shmq_handle *h, unsigned type, uint64_t job_id, int64_t not_before, uint16_t attempt,
                       uint16_t reason, const char *error, uint32_t length)
{
    if (length > 65536)
        length = 65536; /* the log keeps the start of a long error; the result keeps it whole */
    shmq_retry_body body = {.not_before_ns = not_before, .attempt = attempt, .reason = reason, .error_bytes = length};
    part parts[2] = {{&body, sizeof body}, {error, length}};
    uint64_t position;
    int spilling;
    shmq_log_enter(h);
    int rc = shmq_log_append(h, type, job_id, parts, 2, &position, &spilling);
    shmq_log_leave(h);
    return rc;
}

int shmq_fail(shmq_handle *h, const shmq_delivery *d, int64_t retry_at_ns, uint8_t tag, const char *error,
              uint32_t length)
{
    shmq_job_entry *e = finish_begin(h, d);
    if (!e)
        return h->jobs ? SHMQ_ELEASE : SHMQ_ENOLOG;
    task_from(e, d);
    uint64_t job_id = e->job_id;
    METRIC_ADD(h, e->lane, failed, 1);
    int64_t run_ns = shmq_now_ns() - e->started_ns;
    shmq_jobs_hist_add(h, SHMQ_HIST_RUN, run_ns);
    /* seq_cst: our FINISHING before the look at the control word; pairs with
     * the canceller's fetch_or then second look at the state (jobs_cancel.c). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&e->control) & SHMQ_JOBC_CANCEL) {
        shmq_jobs_end_cancelled(h, e, d->entry, d->gen, 0); /* a cancelled job is never retried */
        return SHMQ_ECANCELLED;
    }
    if (retry_at_ns >= 0) {
        uint16_t next = (uint16_t)(e->attempt + 1);
        int rc = shmq_jobs_log_outcome(h, SHMQ_REC_RETRY, job_id, retry_at_ns, next, SHMQ_RETRY_FAILED, error, length);
        if (rc != SHMQ_OK) {
            entry_store(e, SHMQ_JOB_RUNNING_KIND, h->self, d->gen); /* still ours: the caller may try again */
            return rc;
        }
        shmq_fault(h, SHMQ_FAULT_FAIL_BEFORE_WAIT);
        e->attempt = next;
        e->due_ns = retry_at_ns;
        METRIC_ADD(h, e->lane, retried, 1);
        shmq_task_finished(h, e, 1u << SHMQ_TASK_FAILED | 1u << SHMQ_TASK_RETRIED, run_ns);
        if (e->flags & SHMQ_JOBF_ORDERED) /* relaxed: a hint for the lane's fetchers (see fetch_ordered) */
            atomic_store_explicit(&lane_header(h, e->lane)->gate_due, retry_at_ns, memory_order_relaxed);
        entry_store(e, SHMQ_JOB_WAITING, 0, d->gen);
        shmq_jobs_due_lower(h, retry_at_ns);
        shmq_wake_data(h); /* sleeping fetchers wake for the new due time */
        return SHMQ_OK;
    }
    int rc = shmq_jobs_log_outcome(h, SHMQ_REC_DEAD, job_id, 0, e->attempt, SHMQ_RETRY_FAILED, error, length);
    if (rc != SHMQ_OK) {
        entry_store(e, SHMQ_JOB_RUNNING_KIND, h->self, d->gen);
        return rc;
    }
    if (e->flags & SHMQ_JOBF_UNIQUE)
        shmq_unique_drop(h, e->unique_hi, e->unique_lo, job_id);
    METRIC_ADD(h, e->lane, dead, 1);
    shmq_task_finished(h, e, 1u << SHMQ_TASK_FAILED | 1u << SHMQ_TASK_DEAD, run_ns);
    int ordered = (e->flags & SHMQ_JOBF_ORDERED) != 0;
    shmq_jobs_gate_open(h, e, d->entry);
    shmq_result_put(h, job_id, SHMQ_JOB_DEAD, e->attempt, tag, (const uint8_t *)error, length, run_ns); /* as in ack */
    entry_store(e, SHMQ_JOB_FREE, 0, d->gen);
    if (ordered)
        shmq_wake_data(h);
    return SHMQ_OK;
}

/* A held job waits at most this long for the unique-key table's lock. */
static const int64_t HOLD_LOCK_NS = 100 * 1000 * 1000;

int shmq_hold(shmq_handle *h, const shmq_delivery *d, int64_t retry_at_ns)
{
    shmq_job_entry *e = finish_begin(h, d);
    if (!e)
        return h->jobs ? SHMQ_ELEASE : SHMQ_ENOLOG;
    /* As a retry (fail), but the attempt stays: the job did not run. */
    int rc = shmq_jobs_log_outcome(h, SHMQ_REC_RETRY, e->job_id, retry_at_ns, e->attempt, SHMQ_RETRY_HELD, NULL, 0);
    if (rc != SHMQ_OK) {
        entry_store(e, SHMQ_JOB_RUNNING_KIND, h->self, d->gen); /* still ours: the caller may try again */
        return rc;
    }
    if ((e->flags & SHMQ_JOBF_UNIQUE) && !(e->flags & SHMQ_JOBF_UNIQUE_FINISH)) {
        /* Its key was freed when it was fetched (unique until start), but it
         * did not start: pending again, it holds the key again. Another job
         * that took the key in between (or a table locked by a stopped
         * process for longer than a moment) leaves it without. */
        uint64_t existing;
        if (shmq_unique_claim_until(h, e->unique_hi, e->unique_lo, &existing, shmq_deadline(HOLD_LOCK_NS)) == SHMQ_OK)
            shmq_unique_set(h, e->unique_hi, e->unique_lo, e->job_id);
    }
    METRIC_ADD(h, e->lane, started, (uint64_t)-1); /* it did not start after all (modular: a decrement) */
    atomic_fetch_add_explicit(&h->admission->held, 1, memory_order_relaxed); /* relaxed: a statistic */
    e->due_ns = retry_at_ns;
    if (e->flags & SHMQ_JOBF_ORDERED) /* relaxed: a hint for the lane's fetchers (see fetch_ordered) */
        atomic_store_explicit(&lane_header(h, e->lane)->gate_due, retry_at_ns, memory_order_relaxed);
    entry_store(e, SHMQ_JOB_WAITING, 0, d->gen);
    shmq_jobs_due_lower(h, retry_at_ns);
    shmq_wake_data(h); /* sleeping fetchers wake for the new due time */
    return SHMQ_OK;
}

int shmq_extend(shmq_handle *h, const shmq_delivery *d, int64_t lease_ns)
{
    shmq_job_entry *e = leased(h, d);
    if (!e)
        return h->jobs ? SHMQ_ELEASE : SHMQ_ENOLOG;
    int64_t now = shmq_now_ns();
    /* relaxed: a lone word; a sweep that read the old deadline and takes the
     * lease back anyway is seen by the next ack (ELEASE). */
    atomic_store_explicit(&e->deadline_ns, lease_ns < 0 || lease_ns > INT64_MAX - now ? INT64_MAX : now + lease_ns,
                          memory_order_relaxed);
    return leased(h, d) ? SHMQ_OK : SHMQ_ELEASE;
}

/* ------------------------------------------------------------ cancelled jobs (see jobs_cancel.c) */


/* Ends a job whose entry we hold (FINISHING or MOVING under our index). */
void shmq_jobs_end_cancelled(shmq_handle *h, shmq_job_entry *e, uint32_t index, uint64_t gen, int logged)
{
    uint64_t job_id = e->job_id;
    if (!logged) {
        shmq_jobs_log_outcome(h, SHMQ_REC_DEAD, job_id, 0, e->attempt, SHMQ_RETRY_CANCELLED, SHMQ_CANCELLED_TEXT,
                              sizeof SHMQ_CANCELLED_TEXT - 1);
    }
    if (e->flags & SHMQ_JOBF_UNIQUE)
        shmq_unique_drop(h, e->unique_hi, e->unique_lo, job_id);
    METRIC_ADD(h, e->lane, cancelled, 1);
    int ordered = (e->flags & SHMQ_JOBF_ORDERED) != 0;
    shmq_jobs_gate_open(h, e, index);
    if (!logged)
        shmq_result_put(h, job_id, SHMQ_JOB_CANCELLED, e->attempt, 0, (const uint8_t *)"", 0, -1);
    entry_store(e, SHMQ_JOB_FREE, 0, gen);
    if (ordered)
        shmq_wake_data(h); /* the lane's next job may start */
}

int shmq_jobs_cancels_pending(const shmq_handle *h)
{
    /* relaxed: a look for the snapshot (the last handle: nothing moves). */
    return h->jobs && atomic_load_explicit(&h->jobs->cancel_count, memory_order_relaxed) != 0;
}

/* The fetcher, holding job `e` RUNNING(me, gen) just taken from a lane: if it
 * was cancelled, takes it out of the set and frees it unrun; returns 1 then. */
int shmq_jobs_cancel_taken(shmq_handle *h, shmq_job_entry *e, uint32_t index, uint64_t gen)
{
    /* seq_cst: our lease (published above) before our look at the set; pairs
     * with the fence in cancel_queued. */
    atomic_thread_fence(memory_order_seq_cst);
    /* relaxed: after the fence; 0 means no canceller has added an id that we must see. */
    if (!atomic_load_explicit(&h->jobs->cancel_count, memory_order_relaxed))
        return 0;
    int at = cancel_slot_of(h, e->job_id);
    if (at < 0 || !cancel_take(h, at, e->job_id))
        return 0;
    uint64_t s = shmq_job_state(SHMQ_JOB_RUNNING_KIND, h->self, gen);
    /* acquire: ours already; the CAS only keeps the sweeper out while we end it. */
    if (!atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_FINISHING, h->self, gen),
                                                 memory_order_acquire, memory_order_relaxed))
        return 1; /* taken back meanwhile (we looked dead?): the sweeper sees no cancel bit; rare, runs again */
    shmq_jobs_end_cancelled(h, e, index, gen, 1); /* the canceller wrote its end */
    return 1;
}

/* ------------------------------------------------------------ for the lanes and the log */

int shmq_jobs_holds(shmq_handle *h, uint64_t job_id)
{
    for (uint32_t i = 0; i < h->job_slots; i++) {
        shmq_job_entry *e = entry_at(h, i);
        /* acquire: pairs with entry_store. */
        unsigned kind = shmq_job_kind(atomic_load_explicit(&e->state, memory_order_acquire));
        if (kind != SHMQ_JOB_FREE && kind != SHMQ_JOB_FILLING && GET(e->job_id) == job_id)
            return 1;
    }
    return 0;
}

int shmq_jobs_references(const shmq_handle *h, unsigned index)
{
    for (uint32_t i = 0; i < h->job_slots; i++) {
        /* relaxed: a snapshot, as index_referenced's. */
        uint64_t s = atomic_load_explicit(&h->entries[i].state, memory_order_relaxed);
        unsigned kind = shmq_job_kind(s);
        if (kind != SHMQ_JOB_FREE && kind != SHMQ_JOB_WAITING && shmq_job_owner(s) == index)
            return 1;
    }
    for (uint32_t lane = h->unordered_lanes; lane < h->lane_count; lane++) {
        uint64_t g = atomic_load_explicit(&lane_header(h, lane)->gate, memory_order_relaxed);
        if ((g & SHMQ_GATE_CLAIM) && (g & 0x1FFFu) == index)
            return 1;
    }
    for (uint32_t i = 0; i < h->unique_slots; i++) {
        uint64_t job = atomic_load_explicit(&h->unique[i].job, memory_order_relaxed);
        if ((job & SHMQ_UNIQUE_CLAIMED) && (job & 0x1FFFu) == index)
            return 1;
        /* A change being written, or a claim's drop waiting: it names the index. */
        uint64_t state = atomic_load_explicit(&h->unique_changes[i].state, memory_order_relaxed);
        job = atomic_load_explicit(&h->unique_changes[i].job, memory_order_relaxed);
        if (((state & SHMQ_CHANGE_FILLING) && (state & SHMQ_STATE_OWNER_MASK) == index) ||
            (state && !(state & SHMQ_CHANGE_FILLING) && (job & SHMQ_UNIQUE_CLAIMED) && (job & 0x1FFFu) == index))
            return 1;
    }
    return shmq_admission_references(h, index);
}
