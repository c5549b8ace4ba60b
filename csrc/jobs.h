/* SPDX-License-Identifier: Apache-2.0 */
/* jobs.h -- the job layer: the job table and leases, scheduling and the
 * tick, the ordered lanes' gates, unique keys, results and the throttle.
 * It uses the ring and the log, never the operations (ops.h). */
#ifndef SHMQ_JOBS_H
#define SHMQ_JOBS_H

#include "log.h"
#include "ring.h"

/* Shared by the job layer's files: the table's helpers. */
static inline shmq_jobs_header *jobs_of(const shmq_handle *h) { return h->jobs; }
static inline shmq_lane_header *lane_header(const shmq_handle *h, uint32_t lane)
{
    return (shmq_lane_header *)(h->base + h->lanes_offset + (uint64_t)lane * h->lane_bytes);
}

/* relaxed: every metric is a statistic. */
#define METRIC_ADD(h, lane, field, n) \
    atomic_fetch_add_explicit(&(h)->metrics[(lane) < (h)->lane_count ? (lane) : 0].field, (n), memory_order_relaxed)

/* Fields that processes read without owning the entry (status, retention,
 * statistics: job_id, lane, flags, record, copy) are written and read with
 * relaxed atomics; the state word's release/acquire orders them for owners,
 * and a non-owner re-checks the state or only reports what it saw. */
#define PUT(field, value) __atomic_store_n(&(field), (value), __ATOMIC_RELAXED)
#define GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

/* Four buckets per power of two: at most 19% between a value and its bucket's floor. */
static inline uint32_t shmq_histogram_bucket_of(uint64_t v)
{
    if (v < 4)
        return (uint32_t)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    return 4u * (e - 1u) + (uint32_t)((v >> (e - 2u)) & 3u);
}

static inline shmq_job_entry *entry_at(const shmq_handle *h, uint32_t index) { return &h->entries[index]; }

static inline void entry_store(shmq_job_entry *e, unsigned kind, unsigned owner, uint64_t gen)
{
    /* release: the entry's fields, written before, are visible to whoever sees the new state. */
    atomic_store_explicit(&e->state, shmq_job_state(kind, owner, gen), memory_order_release);
}

/* The log position an entry's job needs kept (its payload, or its copy). */
static inline uint64_t entry_needs(const shmq_job_entry *e)
{
    uint64_t copy = GET(e->copy);
    return (GET(e->flags) & SHMQ_JOBF_REF) ? GET(e->record) : copy ? copy : GET(e->job_id);
}

/* The error text of a cancelled job's DEAD record. */
#define SHMQ_CANCELLED_TEXT "cancelled"

/* The cancel set (jobs_cancel.c says how it is used): the slot holding
 * job_id, or -1. seq_cst loads: one side of the canceller/fetcher handshake. */
static inline int cancel_slot_of(const shmq_handle *h, uint64_t job_id)
{
    for (int i = 0; i < SHMQ_CANCEL_SLOTS; i++)
        if (atomic_load(&h->jobs->cancel_ids[i]) == job_id)
            return i;
    return -1;
}

/* Takes job_id out of slot `at`; 1 if we did (whoever does, owns the outcome). */
static inline int cancel_take(shmq_handle *h, int at, uint64_t job_id)
{
    uint64_t expected = job_id;
    /* seq_cst: one taker wins; pairs with the other side's take. */
    if (!atomic_compare_exchange_strong(&h->jobs->cancel_ids[at], &expected, 0))
        return 0;
    atomic_fetch_sub(&h->jobs->cancel_count, 1); /* seq_cst: a hint for fetchers (see shmq_jobs_cancel_taken) */
    return 1;
}

typedef struct fetch_args {
    char *buffer;
    uint32_t capacity;
    int64_t lease_ns;
    shmq_delivery *d;
    int busy_lane;            /* a lane whose head a producer is writing (or -1) */
    shmq_taken busy;
} fetch_args;

/* jobs.c */
int shmq_jobs_entry_claim(shmq_handle *h, uint32_t *index, uint64_t *gen);
void shmq_jobs_due_lower(shmq_handle *h, int64_t due);
int shmq_jobs_entry_payload(shmq_handle *h, const shmq_job_entry *e, uint8_t *out, uint32_t length);
int shmq_jobs_entry_copy(shmq_handle *h, shmq_job_entry *e, uint8_t flags, uint64_t *position, uint32_t *offset);
void shmq_jobs_hist_add(shmq_handle *h, int which, int64_t ns);
int shmq_jobs_log_outcome(shmq_handle *h, unsigned type, uint64_t job_id, int64_t not_before, uint16_t attempt,
                          uint16_t reason, const char *error, uint32_t length);
int shmq_jobs_fetch_round(shmq_handle *h, fetch_args *a);
int shmq_jobs_holds(shmq_handle *h, uint64_t job_id);
int shmq_jobs_references(const shmq_handle *h, unsigned index);
void shmq_jobs_end_cancelled(shmq_handle *h, shmq_job_entry *e, uint32_t index, uint64_t gen, int logged);
int shmq_jobs_cancel_taken(shmq_handle *h, shmq_job_entry *e, uint32_t index, uint64_t gen);
int shmq_jobs_cancels_pending(const shmq_handle *h);

/* tasks.c */
void shmq_task_finished(shmq_handle *h, const shmq_job_entry *e, unsigned counters, int64_t run_ns);

/* jobs_gate.c */
void shmq_jobs_gate_open(shmq_handle *h, const shmq_job_entry *e, uint32_t index);
void shmq_jobs_gate_adopt(shmq_handle *h, uint32_t lane, uint32_t index, int64_t due);
int shmq_jobs_repair_gate(shmq_handle *h, uint32_t lane);

/* jobs_schedule.c */
int shmq_jobs_schedule(shmq_handle *h, const shmq_record_header *rec, uint64_t position, uint16_t attempt,
                       int64_t due_ns);
int shmq_jobs_schedule_new(shmq_handle *h, const shmq_enqueue_args *args, const uint8_t *payload, uint32_t length,
                           uint64_t *job_id);
int shmq_jobs_take_back(shmq_handle *h, uint32_t index, uint64_t s, int expired);
void shmq_jobs_detach(shmq_handle *h);

/* admission.c */
int shmq_admission_references(const shmq_handle *h, unsigned index);
int shmq_admission_fetch_round(shmq_handle *h, int64_t age_ns, fetch_args *a,
                               int (*take)(shmq_handle *h, uint32_t lane, fetch_args *a));

/* jobs_info.c */
uint64_t shmq_jobs_low_water(shmq_handle *h, uint64_t low);
uint64_t shmq_jobs_below(const shmq_handle *h, uint64_t target);
int shmq_jobs_checkpoint(shmq_handle *h, uint64_t target, uint64_t *copies);
uint64_t shmq_jobs_live(const shmq_handle *h);

/* results.c */
int shmq_result_lookup(const shmq_handle *h, uint64_t job_id, shmq_result_info *info);
void shmq_result_put(shmq_handle *h, uint64_t job_id, uint8_t status, uint16_t attempt, uint8_t tag,
                     const uint8_t *data, uint32_t length, int64_t run_ns);

/* throttle.c */
int shmq_throttle_admit(shmq_handle *h, uint64_t count, uint64_t bytes, int64_t timeout_ns);
int shmq_throttle_open(const shmq_handle *h);

/* unique.c */
int shmq_unique_claim(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t *existing);
int shmq_unique_claim_until(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t *existing, int64_t deadline);
void shmq_unique_set(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id);
void shmq_unique_drop(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id);
/* Applies changes left waiting for the lock, if it is free (the maintenance pass). */
void shmq_unique_settle(shmq_handle *h);

#endif /* SHMQ_JOBS_H */
