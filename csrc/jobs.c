/* SPDX-License-Identifier: Apache-2.0 */
/* jobs.c -- jobs under a lease: fetch, ack, fail (retry or dead), extend;
 * scheduled jobs (delays, retry backoff); ordered lanes; taking back leases
 * of dead or hung consumers; job statistics. The table's protocol is in
 * layout.h ("Jobs"). */
#define _GNU_SOURCE
#include <sched.h>
#include <string.h>

#include "jobs.h"
#include "ops.h"

/* A fetcher that finds nothing re-checks this often while a lane's head is
 * being written by a live producer. */
static const int64_t BUSY_RECHECK_NS = 20 * 1000 * 1000;

static inline shmq_jobs_header *jobs_of(const shmq_handle *h) { return h->jobs; }
static inline shmq_lane_header *lane_header(const shmq_handle *h, uint32_t lane)
{
    return (shmq_lane_header *)(h->base + h->lanes_offset + (uint64_t)lane * h->lane_bytes);
}

/* ------------------------------------------------------------ histograms */

/* Four buckets per power of two: at most 19% between a value and its bucket's floor. */
static inline uint32_t bucket_of(uint64_t v)
{
    if (v < 4)
        return (uint32_t)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    return 4u * (e - 1u) + (uint32_t)((v >> (e - 2u)) & 3u);
}

uint64_t shmq_histogram_bucket_low(uint32_t b)
{
    if (b < 4)
        return b;
    if (b >= 252u) /* past 2^63: no value lands there */
        return UINT64_MAX;
    unsigned e = b / 4u + 1u;
    return (uint64_t)(4u + b % 4u) << (e - 2u);
}

static void hist_add(shmq_handle *h, int which, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    shmq_jobs_header *jh = jobs_of(h);
    /* relaxed: statistics; each bucket is a counter on its own. */
    atomic_fetch_add_explicit(&jh->hist[which][bucket_of((uint64_t)ns)], 1, memory_order_relaxed);
    int64_t max = atomic_load_explicit(&jh->hist_max[which], memory_order_relaxed);
    while (ns > max && !atomic_compare_exchange_weak_explicit(&jh->hist_max[which], &max, ns, memory_order_relaxed,
                                                              memory_order_relaxed)) {
    }
}

void shmq_histogram_read(const shmq_handle *h, int which, uint64_t *buckets)
{
    for (uint32_t b = 0; b < SHMQ_HIST_BUCKETS; b++)
        /* relaxed: statistics. */
        buckets[b] = h->jobs && (which == 0 || which == 1)
                         ? atomic_load_explicit(&h->jobs->hist[which][b], memory_order_relaxed)
                         : 0;
}

/* relaxed: every metric is a statistic. */
#define METRIC_ADD(h, lane, field, n) \
    atomic_fetch_add_explicit(&(h)->metrics[(lane) < (h)->lane_count ? (lane) : 0].field, (n), memory_order_relaxed)

/* ------------------------------------------------------------ entries */

/* Fields that processes read without owning the entry (status, retention,
 * statistics: job_id, lane, flags, record, copy) are written and read with
 * relaxed atomics; the state word's release/acquire orders them for owners,
 * and a non-owner re-checks the state or only reports what it saw. */
#define PUT(field, value) __atomic_store_n(&(field), (value), __ATOMIC_RELAXED)
#define GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

static inline shmq_job_entry *entry_at(const shmq_handle *h, uint32_t index) { return &h->entries[index]; }

/* Claims a FREE entry as FILLING(me); *gen is its generation. */
static int entry_claim(shmq_handle *h, uint32_t *index, uint64_t *gen)
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

static inline void entry_store(shmq_job_entry *e, unsigned kind, unsigned owner, uint64_t gen)
{
    /* release: the entry's fields, written before, are visible to whoever sees the new state. */
    atomic_store_explicit(&e->state, shmq_job_state(kind, owner, gen), memory_order_release);
}

/* Lowers next_due to `due` (only ever lowers it; shmq_jobs_tick raises it). */
static void due_lower(shmq_handle *h, int64_t due)
{
    /* relaxed: a hint for when to look; the entries themselves are read with acquire. */
    int64_t cur = atomic_load_explicit(&jobs_of(h)->next_due_ns, memory_order_relaxed);
    while (due < cur && !atomic_compare_exchange_weak_explicit(&jobs_of(h)->next_due_ns, &cur, due,
                                                               memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* Copies an entry's payload (inline, or from its record). */
static int entry_payload(shmq_handle *h, const shmq_job_entry *e, uint8_t *out, uint32_t length)
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

/* The log position an entry's job needs kept (its payload, or its copy). */
static inline uint64_t entry_needs(const shmq_job_entry *e)
{
    uint64_t copy = GET(e->copy);
    return (GET(e->flags) & SHMQ_JOBF_REF) ? GET(e->record) : copy ? copy : GET(e->job_id);
}

/* Writes a COPY of entry e's job at the tail (for a checkpoint, or before it
 * goes back into a lane); *position is the copy's, *offset its payload's.
 * The caller holds the entry (MOVING) and is inside the log. */
static int entry_copy(shmq_handle *h, shmq_job_entry *e, uint8_t flags, uint64_t *position, uint32_t *offset)
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
}

/* ------------------------------------------------------------ fetch */

typedef struct fetch_args {
    char *buffer;
    uint32_t capacity;
    int64_t lease_ns;
    shmq_delivery *d;
    int busy_lane;            /* a lane whose head a producer is writing (or -1) */
    shmq_taken busy;
} fetch_args;

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
        /* An inline lane job below the floor has a copy from checkpoint_begin on (see low_water). */
        /* acquire: pairs with checkpoint()'s release of the floor; begin was stored before it. */
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
    return SHMQ_OK;
}

/* The job's lease starts: fields, then RUNNING(me, gen + 1). */
static uint64_t lease_start(shmq_handle *h, shmq_job_entry *e, uint64_t gen, int64_t lease_ns)
{
    int64_t now = shmq_now_ns();
    e->started_ns = now;
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
    int rc = entry_payload(h, e, (uint8_t *)a->buffer, e->length);
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
    int rc = entry_claim(h, &index, &gen);
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
    gen = lease_start(h, e, gen, a->lease_ns);
    shmq_lane_mark_leased(h, &t);
    if (ordered)
        /* release: the entry is RUNNING before the gate names it. */
        atomic_store_explicit(&lane_header(h, lane)->gate, (uint64_t)index + 1, memory_order_release);
    shmq_fault(h, SHMQ_FAULT_FETCH_AFTER_LEASE);
    if ((e->flags & SHMQ_JOBF_UNIQUE) && !(e->flags & SHMQ_JOBF_UNIQUE_FINISH))
        shmq_unique_drop(h, e->unique_hi, e->unique_lo, e->job_id); /* unique until it starts: free now */
    shmq_lane_finish(h, &t);
    METRIC_ADD(h, lane, started, 1);
    if (t.enqueued_ns)
        hist_add(h, SHMQ_HIST_WAIT, shmq_wall_ns() - t.enqueued_ns);
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
    uint64_t gen = lease_start(h, e, shmq_job_gen(s), a->lease_ns);
    METRIC_ADD(h, lane, started, 1);
    hist_add(h, SHMQ_HIST_WAIT, now - due);
    return deliver(h, e, index, gen, a);
}

static int fetch_round(shmq_handle *h, fetch_args *a)
{
    uint32_t lanes = h->lane_count;
    /* relaxed: any rotation is correct. */
    uint32_t start = lanes == 1 ? 0 : atomic_fetch_add_explicit(&h->pop_cursor, 1, memory_order_relaxed);
    for (uint32_t i = 0; i < lanes; i++) {
        uint32_t lane = (start + i) % lanes;
        int rc;
        if (shmq_lane_ordered(h, lane)) {
            rc = fetch_ordered(h, lane, a);
        } else {
            if (!shmq_lane_ready(h, lane)) {
                /* A head being written: remembered, so that a writer that died there is repaired. */
                if (a->busy_lane < 0 && shmq_lane_busy(h, lane, &a->busy))
                    a->busy_lane = (int)lane;
                continue;
            }
            rc = fetch_message(h, lane, a, 0);
        }
        if (rc != SHMQ_EEMPTY)
            return rc;
    }
    return SHMQ_EEMPTY;
}

static void maybe_tick(shmq_handle *h)
{
    /* relaxed: a hint; the tick reads the entries with acquire. */
    int64_t due = atomic_load_explicit(&jobs_of(h)->next_due_ns, memory_order_relaxed);
    if (due != INT64_MAX && due <= shmq_wall_ns())
        shmq_jobs_tick(h);
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
        int rc = fetch_round(h, &a);
        if (rc != SHMQ_EEMPTY)
            return rc;
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
        rc = fetch_round(h, &a);
        if (rc != SHMQ_EEMPTY) {
            shmq_sleep_end(h, &hdr->data_waiters, SHMQ_SLEEP_DATA);
            return rc;
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
    return entry_payload(h, e, (uint8_t *)buffer, e->length);
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

/* Opens the gate of an ordered lane held by entry `index`, then wakes fetchers. */
static void gate_open(shmq_handle *h, const shmq_job_entry *e, uint32_t index)
{
    if (!(e->flags & SHMQ_JOBF_ORDERED) || e->lane >= h->lane_count)
        return;
    uint64_t held = (uint64_t)index + 1;
    /* release: our work on the job happens before the next job of the lane starts. */
    atomic_compare_exchange_strong_explicit(&lane_header(h, e->lane)->gate, &held, 0, memory_order_release,
                                            memory_order_relaxed);
}

int shmq_ack(shmq_handle *h, const shmq_delivery *d, uint8_t tag, const char *result, uint32_t length)
{
    shmq_job_entry *e = finish_begin(h, d);
    if (!e)
        return h->jobs ? SHMQ_ELEASE : SHMQ_ENOLOG;
    uint64_t job_id = e->job_id;
    shmq_log_ack(h, &job_id, 1); /* DONE, written lazily: a lost one only runs the job again after a recovery */
    if (e->flags & SHMQ_JOBF_UNIQUE_FINISH)
        shmq_unique_drop(h, e->unique_hi, e->unique_lo, job_id);
    METRIC_ADD(h, e->lane, done, 1);
    hist_add(h, SHMQ_HIST_RUN, shmq_now_ns() - e->started_ns);
    int ordered = (e->flags & SHMQ_JOBF_ORDERED) != 0;
    gate_open(h, e, d->entry);
    /* The result last but the entry: a waiter that wakes finds the key free,
     * the counters counted and the group's next job startable. */
    shmq_result_put(h, job_id, SHMQ_JOB_DONE, e->attempt, tag, (const uint8_t *)result, length);
    shmq_fault(h, SHMQ_FAULT_ACK_BEFORE_FREE);
    entry_store(e, SHMQ_JOB_FREE, 0, d->gen);
    if (ordered)
        shmq_wake_data(h); /* the lane's next job may start */
    return SHMQ_OK;
}

/* Appends a RETRY or DEAD record (with the error text). */
static int log_outcome(shmq_handle *h, unsigned type, uint64_t job_id, int64_t not_before, uint16_t attempt,
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
    uint64_t job_id = e->job_id;
    METRIC_ADD(h, e->lane, failed, 1);
    hist_add(h, SHMQ_HIST_RUN, shmq_now_ns() - e->started_ns);
    if (retry_at_ns >= 0) {
        uint16_t next = (uint16_t)(e->attempt + 1);
        int rc = log_outcome(h, SHMQ_REC_RETRY, job_id, retry_at_ns, next, SHMQ_RETRY_FAILED, error, length);
        if (rc != SHMQ_OK) {
            entry_store(e, SHMQ_JOB_RUNNING_KIND, h->self, d->gen); /* still ours: the caller may try again */
            return rc;
        }
        shmq_fault(h, SHMQ_FAULT_FAIL_BEFORE_WAIT);
        e->attempt = next;
        e->due_ns = retry_at_ns;
        METRIC_ADD(h, e->lane, retried, 1);
        if (e->flags & SHMQ_JOBF_ORDERED) /* relaxed: a hint for the lane's fetchers (see fetch_ordered) */
            atomic_store_explicit(&lane_header(h, e->lane)->gate_due, retry_at_ns, memory_order_relaxed);
        entry_store(e, SHMQ_JOB_WAITING, 0, d->gen);
        due_lower(h, retry_at_ns);
        shmq_wake_data(h); /* sleeping fetchers wake for the new due time */
        return SHMQ_OK;
    }
    int rc = log_outcome(h, SHMQ_REC_DEAD, job_id, 0, e->attempt, SHMQ_RETRY_FAILED, error, length);
    if (rc != SHMQ_OK) {
        entry_store(e, SHMQ_JOB_RUNNING_KIND, h->self, d->gen);
        return rc;
    }
    if (e->flags & SHMQ_JOBF_UNIQUE)
        shmq_unique_drop(h, e->unique_hi, e->unique_lo, job_id);
    METRIC_ADD(h, e->lane, dead, 1);
    int ordered = (e->flags & SHMQ_JOBF_ORDERED) != 0;
    gate_open(h, e, d->entry);
    shmq_result_put(h, job_id, SHMQ_JOB_DEAD, e->attempt, tag, (const uint8_t *)error, length); /* as in ack */
    entry_store(e, SHMQ_JOB_FREE, 0, d->gen);
    if (ordered)
        shmq_wake_data(h);
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
}

/* An ordered WAITING entry that its lane's gate does not name takes the
 * gate if it is open (see shmq_jobs_schedule; the tick retries). */
static void gate_adopt(shmq_handle *h, uint32_t lane, uint32_t index, int64_t due)
{
    uint64_t open = 0;
    /* acq_rel: the entry (published before) is visible to whoever sees the gate. */
    if (atomic_compare_exchange_strong_explicit(&lane_header(h, lane)->gate, &open, (uint64_t)index + 1,
                                                memory_order_acq_rel, memory_order_relaxed))
        /* relaxed: a hint (see fetch_ordered). */
        atomic_store_explicit(&lane_header(h, lane)->gate_due, due, memory_order_relaxed);
}

static void scheduled(shmq_handle *h, shmq_job_entry *e, uint64_t gen)
{
    int64_t due = e->due_ns;
    entry_store(e, SHMQ_JOB_WAITING, 0, gen);
    due_lower(h, due);
    shmq_wake_data(h); /* sleeping fetchers wake for the new due time */
}

/* A job of the backlog (recovered, or fed) that must wait for its time. */
int shmq_jobs_schedule(shmq_handle *h, const shmq_record_header *rec, uint64_t position)
{
    uint32_t index;
    uint64_t gen;
    int rc = entry_claim(h, &index, &gen);
    if (rc != SHMQ_OK)
        return rc;
    shmq_job_entry *e = entry_at(h, index);
    entry_from_record(e, rec, position);
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
        gate_adopt(h, lane, index, due);
    return SHMQ_OK;
}

/* A new job with a delay: its record, then a WAITING entry. */
int shmq_jobs_schedule_new(shmq_handle *h, const shmq_enqueue_args *args, const uint8_t *payload, uint32_t length,
                           uint64_t *job_id)
{
    uint32_t index;
    uint64_t gen;
    int rc = entry_claim(h, &index, &gen);
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
static int take_back(shmq_handle *h, uint32_t index, uint64_t s, int expired)
{
    shmq_job_entry *e = entry_at(h, index);
    /* acquire: the fields as the owner left them; the CAS makes the entry ours. */
    if (!atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_MOVING, h->self, s),
                                                 memory_order_acquire, memory_order_relaxed))
        return 0;
    uint64_t gen = shmq_job_gen(s);
    if ((e->flags & SHMQ_JOBF_ORDERED) && e->lane < h->lane_count &&
        /* acquire: as in fetch_ordered. */
        atomic_load_explicit(&lane_header(h, e->lane)->gate, memory_order_acquire) != (uint64_t)index + 1) {
        entry_store(e, SHMQ_JOB_FREE, 0, gen);
        return 1;
    }
    uint16_t next = (uint16_t)(e->attempt + 1);
    log_outcome(h, SHMQ_REC_RETRY, e->job_id, 0, next, SHMQ_RETRY_CONSUMER_DIED, NULL, 0);
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
    /* acquire: as in low_water. An inline lane job below the floor must have
     * a copy from checkpoint_begin on; one that has not goes by reference
     * to a fresh copy (its original may be about to go). */
    uint64_t floor = atomic_load_explicit(&h->header->checkpoint_floor, memory_order_acquire);
    uint64_t begin = atomic_load_explicit(&h->header->checkpoint_begin, memory_order_relaxed);
    int rc = SHMQ_OK;
    if (!by_ref && e->job_id < floor && e->copy < begin) {
        shmq_log_enter(h);
        rc = entry_copy(h, e, SHMQ_ENQ_LANED, &record, &offset);
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
            if (take_back(h, i, s, !dead)) {
                next = wall;
                moved++; /* due now: wake sleeping fetchers */
            }
            continue;
        }
        case SHMQ_JOB_FINISHING:
            if (!is_alive(h, &cache, owner) && take_back(h, i, s, 0)) {
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
            if (e->flags & SHMQ_JOBF_ORDERED) { /* its lane's fetchers take it (see fetch_ordered) */
                uint32_t lane = e->lane;
                entry_store(e, SHMQ_JOB_WAITING, 0, gen);
                if (lane < h->lane_count &&
                    /* relaxed: a look; gate_adopt's CAS decides. */
                    atomic_load_explicit(&lane_header(h, lane)->gate, memory_order_relaxed) != (uint64_t)i + 1)
                    gate_adopt(h, lane, i, due); /* recovered: it holds its lane again */
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
    due_lower(h, next);
    for (uint32_t lane = h->unordered_lanes; lane < h->lane_count; lane++)
        shmq_jobs_repair_gate(h, lane);
    mover_give(h);
    if (moved || wake_ordered)
        shmq_wake_data(h);
    h->last_tick_ns = mono;
    return moved;
}

int64_t shmq_jobs_next_due(const shmq_handle *h)
{
    /* relaxed: a hint. */
    return h->jobs ? atomic_load_explicit(&h->jobs->next_due_ns, memory_order_relaxed) : INT64_MAX;
}

/* Repairs what a dead consumer left in an ordered lane's gate (layout.h,
 * "Ordered lanes"). Returns 1 if it repaired something. */
int shmq_jobs_repair_gate(shmq_handle *h, uint32_t lane)
{
    if (!h->jobs || !shmq_lane_ordered(h, lane))
        return 0;
    _Atomic uint64_t *gate = &lane_header(h, lane)->gate;
    /* acquire: pairs with the gate's release stores. */
    uint64_t g = atomic_load_explicit(gate, memory_order_acquire);
    if (g == 0)
        /* A head still READING under a dead owner with the gate open: its job
         * was leased, taken back and finished since; the slots go. */
        return shmq_lane_release_dead_head(h, lane, 0);
    if (g & SHMQ_GATE_CLAIM) {
        unsigned owner = (unsigned)(g & 0x1FFFu);
        if (owner == h->self || shmq_participant_alive(h, owner))
            return 0;
        /* Its half-made lease, if any: the lane still has the job. */
        for (uint32_t i = 0; i < h->job_slots; i++) {
            shmq_job_entry *e = entry_at(h, i);
            /* acquire: as in the tick. */
            uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
            unsigned kind = shmq_job_kind(s);
            if (shmq_job_owner(s) == owner && (kind == SHMQ_JOB_FILLING || kind == SHMQ_JOB_RUNNING_KIND) &&
                (GET(e->flags) & SHMQ_JOBF_ORDERED) && GET(e->lane) == lane)
                /* relaxed: never published as the lane's lease. */
                atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_FREE, 0, s),
                                                        memory_order_relaxed, memory_order_relaxed);
        }
        shmq_lane_untake_dead(h, lane, owner);
        /* release: the head message is READY again before the lane opens. */
        if (atomic_compare_exchange_strong_explicit(gate, &g, 0, memory_order_release, memory_order_relaxed))
            shmq_wake_data(h);
        return 1;
    }
    if (g - 1 >= h->job_slots) {
        atomic_compare_exchange_strong_explicit(gate, &g, 0, memory_order_release, memory_order_relaxed);
        return 1;
    }
    shmq_job_entry *e = entry_at(h, (uint32_t)(g - 1));
    /* acquire: as above. */
    uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
    unsigned kind = shmq_job_kind(s);
    int holds = kind != SHMQ_JOB_FREE && kind != SHMQ_JOB_FILLING && (GET(e->flags) & SHMQ_JOBF_ORDERED) &&
                GET(e->lane) == lane;
    if (!holds) {
        /* release: as above. A gate naming an entry that no longer holds the lane. */
        if (atomic_compare_exchange_strong_explicit(gate, &g, 0, memory_order_release, memory_order_relaxed))
            shmq_wake_data(h);
        return 1;
    }
    /* The consumer died after its lease was published but before it released
     * the head's slots: the lease has the job, the slots go. */
    return shmq_lane_release_dead_head(h, lane, 0);
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
    }
    return 0;
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
            take_back(h, i, s, 0);
        else if (kind == SHMQ_JOB_MOVING)
            entry_store(&h->entries[i], SHMQ_JOB_WAITING, 0, shmq_job_gen(s));
    }
    due_lower(h, shmq_wall_ns());
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
        int rc = entry_copy(h, e, SHMQ_ENQ_LANED | SHMQ_ENQ_SCHEDULED, &position, &offset);
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

/* The lowest log position a job in the table needs (see low_water). */
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
            if (mh->job_id == job_id && !(mh->flags & SHMQ_MSG_SKIP))
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
        return SHMQ_JOB_QUEUED;
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
        return SHMQ_JOB_QUEUED; /* waiting in the log for room in the lanes */
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
            if (owner && owner < h->participant_capacity)
                /* relaxed: a look at who holds it. */
                info->owner_pid = atomic_load_explicit(&h->participants[owner].pid, memory_order_relaxed);
        }
    }
    return n;
}
