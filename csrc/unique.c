/* SPDX-License-Identifier: Apache-2.0 */
/* unique.c -- the unique-key table: at most one pending job per key.
 *
 * Open addressing with linear probing over 128-bit key hashes, changed and
 * read only under the table's lock word (a participant index, taken over
 * when its holder died). Deletion shifts later entries of the chain back,
 * so no tombstones pile up. A holder killed in the middle of a shift can
 * leave one key twice in a chain; lookups take the first and deletions
 * remove every copy, so that is harmless. */
#define _GNU_SOURCE
#include <sched.h>
#include <time.h>

#include "jobs.h"

enum { LOCK_SPINS = 128, LOCK_YIELDS = 64 };

/* Takes the table's lock; SHMQ_ELOCKED once `deadline` (< 0: none) has
 * passed. A dead holder's lock is taken over; a live one's is not, even if
 * it is stopped: the table is several words per change, and a holder
 * waking up late would write into a table another holder is changing.
 * So a stopped holder holds up every change of the table until it runs
 * again (docs/architecture.md, "What a stopped process can hold up"); a
 * waiter spins briefly, then yields, then sleeps, and gives up at its
 * deadline. */
static int table_lock_until(shmq_handle *h, int64_t deadline)
{
    _Atomic uint32_t *word = &h->jobs->unique_lock;
    for (unsigned round = 0;; round++) {
        uint32_t expected = 0;
        /* acquire: the previous holder's changes to the table are visible to us. */
        if (atomic_compare_exchange_weak_explicit(word, &expected, h->self, memory_order_acquire,
                                                  memory_order_relaxed))
            break;
        if (round < LOCK_SPINS) {
            shmq_cpu_relax();
            continue;
        }
        if (expected && !shmq_participant_alive(h, expected) &&
            atomic_compare_exchange_strong_explicit(word, &expected, h->self, memory_order_acquire,
                                                    memory_order_relaxed))
            break; /* its holder died inside: every single store leaves the table usable */
        if (deadline >= 0 && shmq_now_ns() >= deadline)
            return SHMQ_ELOCKED;
        if (round < LOCK_SPINS + LOCK_YIELDS) {
            sched_yield();
        } else {
            struct timespec pause = {0, 100 * 1000}; /* a held lock for this long: leave the CPU */
            nanosleep(&pause, NULL);
        }
    }
    shmq_fault(h, SHMQ_FAULT_UNIQUE_LOCKED);
    return SHMQ_OK;
}

static void table_lock(shmq_handle *h) { table_lock_until(h, -1); }

static void table_unlock(shmq_handle *h)
{
    /* release: our changes happen before the next holder's look. */
    atomic_store_explicit(&h->jobs->unique_lock, 0, memory_order_release);
}

static inline uint64_t home_of(const shmq_handle *h, uint64_t hi) { return hi & (h->unique_slots - 1); }

/* The entry holding the key, or the empty entry ending its chain (*found = 0);
 * UINT64_MAX if the table has neither (full). Caller holds the lock. */
static uint64_t probe(const shmq_handle *h, uint64_t hi, uint64_t lo, int *found)
{
    uint64_t mask = h->unique_slots - 1;
    for (uint64_t n = 0, i = home_of(h, hi); n < h->unique_slots; n++, i = (i + 1) & mask) {
        shmq_unique_entry *e = &h->unique[i];
        /* relaxed: the lock orders the table. */
        uint64_t job = atomic_load_explicit(&e->job, memory_order_relaxed);
        if (job == 0) {
            *found = 0;
            return i;
        }
        if (e->hi == hi && e->lo == lo) {
            *found = 1;
            return i;
        }
    }
    *found = 0;
    return UINT64_MAX;
}

static void sleep_briefly(void)
{
    struct timespec pause = {0, 50 * 1000};
    nanosleep(&pause, NULL);
}

int shmq_unique_claim(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t *existing)
{
    return shmq_unique_claim_until(h, hi, lo, existing, -1);
}

int shmq_unique_claim_until(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t *existing, int64_t deadline)
{
    for (;;) {
        if (table_lock_until(h, deadline) != SHMQ_OK)
            return SHMQ_ELOCKED;
        int found;
        uint64_t i = probe(h, hi, lo, &found);
        if (i == UINT64_MAX) {
            table_unlock(h);
            return SHMQ_EUNIQUEFULL;
        }
        shmq_unique_entry *e = &h->unique[i];
        /* relaxed: the lock orders the table. */
        uint64_t job = atomic_load_explicit(&e->job, memory_order_relaxed);
        if (!found) {
            /* Keep one entry empty: probes end at an empty entry. */
            if (atomic_load_explicit(&h->jobs->unique_count, memory_order_relaxed) + 1 >= h->unique_slots) {
                table_unlock(h);
                return SHMQ_EUNIQUEFULL;
            }
            e->hi = hi;
            e->lo = lo;
            atomic_store_explicit(&e->job, SHMQ_UNIQUE_CLAIMED | h->self, memory_order_relaxed);
            atomic_fetch_add_explicit(&h->jobs->unique_count, 1, memory_order_relaxed);
            table_unlock(h);
            return SHMQ_OK;
        }
        if (!(job & SHMQ_UNIQUE_CLAIMED)) {
            *existing = job;
            table_unlock(h);
            return SHMQ_EDUPLICATE;
        }
        unsigned owner = (unsigned)(job & 0x1FFFu);
        if (owner != h->self && !shmq_participant_alive(h, owner)) {
            /* Its enqueuer died before writing the job: the key is free. (A
             * claim of our own index is a sibling thread's, in progress: an
             * index is not given to a new process while a claim names it.) */
            atomic_store_explicit(&e->job, SHMQ_UNIQUE_CLAIMED | h->self, memory_order_relaxed);
            table_unlock(h);
            return SHMQ_OK;
        }
        /* Another producer is enqueueing this key right now: its job id
         * comes in a moment (or its death frees the key; if it is stopped,
         * not before it runs again: give up at the deadline). */
        table_unlock(h);
        if (deadline >= 0 && shmq_now_ns() >= deadline)
            return SHMQ_ELOCKED;
        sleep_briefly();
    }
}

void shmq_unique_set(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id)
{
    table_lock(h);
    int found;
    uint64_t i = probe(h, hi, lo, &found);
    if (i != UINT64_MAX) {
        shmq_unique_entry *e = &h->unique[i];
        if (!found) {
            if (atomic_load_explicit(&h->jobs->unique_count, memory_order_relaxed) + 1 < h->unique_slots) {
                e->hi = hi;
                e->lo = lo;
                atomic_fetch_add_explicit(&h->jobs->unique_count, 1, memory_order_relaxed);
                atomic_store_explicit(&e->job, job_id, memory_order_relaxed); /* the lock orders it */
            }
        } else {
            atomic_store_explicit(&e->job, job_id, memory_order_relaxed); /* the lock orders it */
        }
    }
    table_unlock(h);
}

/* Empties entry i and shifts the rest of its chain back. Caller holds the lock. */
static void remove_at(shmq_handle *h, uint64_t i)
{
    uint64_t mask = h->unique_slots - 1;
    for (uint64_t j = (i + 1) & mask;; j = (j + 1) & mask) {
        shmq_unique_entry *next = &h->unique[j];
        /* relaxed: the lock orders the table. */
        uint64_t job = atomic_load_explicit(&next->job, memory_order_relaxed);
        if (job == 0)
            break;
        uint64_t home = home_of(h, next->hi);
        /* Can `next` move to i? Only if i lies on its path from home to j. */
        int movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
        if (!movable)
            continue;
        shmq_unique_entry *hole = &h->unique[i];
        hole->hi = next->hi;
        hole->lo = next->lo;
        atomic_store_explicit(&hole->job, job, memory_order_relaxed);
        i = j;
    }
    atomic_store_explicit(&h->unique[i].job, 0, memory_order_relaxed);
    atomic_fetch_sub_explicit(&h->jobs->unique_count, 1, memory_order_relaxed);
}

void shmq_unique_drop(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id)
{
    uint64_t mine = job_id ? job_id : (SHMQ_UNIQUE_CLAIMED | h->self);
    table_lock(h);
    for (;;) { /* every copy (see the top of this file) */
        int found;
        uint64_t i = probe(h, hi, lo, &found);
        /* relaxed: the lock orders the table. */
        if (!found || atomic_load_explicit(&h->unique[i].job, memory_order_relaxed) != mine)
            break;
        remove_at(h, i);
    }
    table_unlock(h);
}

int shmq_unique_release(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    shmq_unique_drop(h, hi, lo, job_id);
    return SHMQ_OK;
}
