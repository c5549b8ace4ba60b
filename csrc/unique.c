/* SPDX-License-Identifier: Apache-2.0 */
/* unique.c -- the unique-key table: at most one pending job per key.
 *
 * Open addressing with linear probing over 128-bit key hashes, changed and
 * read only under the table's lock word (a participant index, taken over
 * when its holder died). Deletion shifts later entries of the chain back,
 * so no tombstones pile up. A holder killed in the middle of a shift can
 * leave one key twice in a chain; lookups take the first and deletions
 * remove every copy, so that is harmless.
 *
 * Only a claim (a unique enqueue asking whether the key is free) waits for
 * the lock, up to its deadline. The other changes must not wait: storing a
 * job's id once its record is written, and freeing a key when its job
 * starts or ends (a fetch, an ack, a dead letter). When the lock is held
 * they are written into the change list (layout.h, "Unique keys") and the
 * holder applies them: every holder applies the waiting changes right after
 * it takes the lock and again after it lets go, so a change waits at most
 * as long as the holder it found (a stopped one: until it runs again, or
 * dies and the next taker applies them). A taker reads the table only after
 * applying what waits, so no claim sees a key a waiting change frees or
 * names, and a key is freed neither early (only the job's own release frees
 * it, and only while the key names that job) nor twice (a drop of a key that
 * names another job changes nothing). */
#define _GNU_SOURCE
#include <sched.h>
#include <time.h>

#include "jobs.h"

enum { LOCK_SPINS = 128, LOCK_YIELDS = 64, UNLOCK_ROUNDS = 8 };

static void apply_changes(shmq_handle *h);

/* One try for the lock, taking it over from a dead holder. 1: ours. */
static int table_trylock(shmq_handle *h)
{
    _Atomic uint32_t *word = &h->jobs->unique_lock;
    uint32_t expected = 0;
    /* seq_cst: an acquire (the previous holder's changes to the table are
     * visible to us), and the second half of the handshake with defer_change. */
    if (atomic_compare_exchange_strong_explicit(word, &expected, h->self, memory_order_seq_cst,
                                                memory_order_seq_cst))
        return 1;
    /* its holder died inside: every single store leaves the table usable */
    return expected && expected != h->self && !shmq_participant_alive(h, expected) &&
           atomic_compare_exchange_strong_explicit(word, &expected, h->self, memory_order_seq_cst,
                                                   memory_order_seq_cst);
}

/* Takes the table's lock; SHMQ_ELOCKED once `deadline` (< 0: none) has
 * passed. A dead holder's lock is taken over; a live one's is not, even if
 * it is stopped: the table is several words per change, and a holder
 * waking up late would write into a table another holder is changing.
 * So a stopped holder holds up the claims of unique enqueues until it runs
 * again (docs/architecture.md, "What a stopped process can hold up"); a
 * waiter spins briefly, then yields, then sleeps, and gives up at its
 * deadline. Changes others left waiting are applied before we return. */
static int table_lock_until(shmq_handle *h, int64_t deadline)
{
    for (unsigned round = 0;; round++) {
        if (round < LOCK_SPINS) {
            uint32_t expected = 0;
            /* seq_cst: as in table_trylock (an acquire of the previous holder's changes). */
            if (atomic_compare_exchange_weak_explicit(&h->jobs->unique_lock, &expected, h->self,
                                                      memory_order_seq_cst, memory_order_relaxed))
                break;
            shmq_cpu_relax();
            continue;
        }
        if (table_trylock(h))
            break;
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
    apply_changes(h);
    return SHMQ_OK;
}

static void table_lock(shmq_handle *h) { table_lock_until(h, -1); }

/* Do changes wait in the list? (Those counted after the last full pass.) */
static int changes_waiting(const shmq_handle *h)
{
    /* seq_cst: the second half of the handshake with defer_change (see
     * there); unique_drained is written under the lock, which orders it. */
    return atomic_load_explicit(&h->jobs->unique_deferred, memory_order_seq_cst) !=
           atomic_load_explicit(&h->jobs->unique_drained, memory_order_relaxed);
}

/* Lets go of the lock; then, if changes were deferred meanwhile (their
 * writers found it held), takes it again to apply them. */
static void table_unlock(shmq_handle *h)
{
    for (unsigned round = 0;; round++) {
        /* seq_cst: a release (our changes happen before the next holder's
         * look), and the first half of the handshake with defer_change: a
         * change counted after this store finds the lock free. */
        atomic_store_explicit(&h->jobs->unique_lock, 0, memory_order_seq_cst);
        if (round == UNLOCK_ROUNDS || !changes_waiting(h) || !table_trylock(h))
            return; /* nothing waits, or the new holder applies it (or the maintenance pass) */
        apply_changes(h);
    }
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

/* Stores job_id as the key's job (inserting the key if it is absent and
 * the table has room). Caller holds the lock. */
static void set_locked(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id)
{
    int found;
    uint64_t i = probe(h, hi, lo, &found);
    if (i == UINT64_MAX)
        return;
    shmq_unique_entry *e = &h->unique[i];
    if (!found) {
        if (atomic_load_explicit(&h->jobs->unique_count, memory_order_relaxed) + 1 >= h->unique_slots)
            return;
        e->hi = hi;
        e->lo = lo;
        atomic_fetch_add_explicit(&h->jobs->unique_count, 1, memory_order_relaxed);
    }
    atomic_store_explicit(&e->job, job_id, memory_order_relaxed); /* the lock orders it */
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

/* Frees the key if its job is `mine` (every copy: see the top of this
 * file). Caller holds the lock. */
static void drop_locked(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t mine)
{
    for (;;) {
        int found;
        uint64_t i = probe(h, hi, lo, &found);
        /* relaxed: the lock orders the table. */
        if (!found || atomic_load_explicit(&h->unique[i].job, memory_order_relaxed) != mine)
            return;
        remove_at(h, i);
    }
}

/* ------------------------------------------------------------ the change list */

/* Writes a change into the list for the lock's holder. SHMQ_EUNIQUEFULL
 * when every slot is taken. */
static int defer_change(shmq_handle *h, uint64_t kind, uint64_t hi, uint64_t lo, uint64_t job)
{
    uint64_t mask = h->unique_slots - 1;
    for (uint64_t n = 0, i = hi & mask; n <= mask; n++, i = (i + 1) & mask) {
        shmq_unique_change *c = &h->unique_changes[i];
        /* relaxed: a look before the CAS that decides. */
        uint64_t state = atomic_load_explicit(&c->state, memory_order_relaxed);
        /* The same drop waiting already (a retried job that started again):
         * one is enough. Only this job's lease holder writes its drops. */
        if (kind == SHMQ_CHANGE_DROP && state == SHMQ_CHANGE_DROP &&
            atomic_load_explicit(&c->job, memory_order_relaxed) == job &&
            atomic_load_explicit(&c->hi, memory_order_relaxed) == hi &&
            atomic_load_explicit(&c->lo, memory_order_relaxed) == lo)
            return SHMQ_OK;
        /* acquire: pairs with the release that freed the slot (the holder's reads of it are done). */
        if (state != 0 || !atomic_compare_exchange_strong_explicit(&c->state, &state, SHMQ_CHANGE_FILLING | h->self,
                                                                    memory_order_acquire, memory_order_relaxed))
            continue;
        /* relaxed: published by the release store of the state below. */
        atomic_store_explicit(&c->job, job, memory_order_relaxed);
        atomic_store_explicit(&c->hi, hi, memory_order_relaxed);
        atomic_store_explicit(&c->lo, lo, memory_order_relaxed);
        /* release: the fields above are visible to the holder that reads the
         * state (acquire in apply_changes). */
        atomic_store_explicit(&c->state, kind, memory_order_release);
        /* seq_cst: the handshake with table_unlock. We count the change,
         * then look at the lock (table_trylock); a holder lets go, then
         * looks at the count (changes_waiting). One of us sees the other. */
        atomic_fetch_add_explicit(&h->jobs->unique_deferred, 1, memory_order_seq_cst);
        return SHMQ_OK;
    }
    return SHMQ_EUNIQUEFULL;
}

/* Frees a change slot (release: our reads of it happen before its next
 * writer's writes; pairs with the acquire CAS in defer_change). */
static void change_free(shmq_unique_change *c) { atomic_store_explicit(&c->state, 0, memory_order_release); }

/* Applies the changes waiting in the list. Caller holds the lock. Order
 * matters for one job: its SET is written before its job can be taken (and
 * its DROP written), so the drops found are taken first, then every SET
 * (all those written before a drop taken are visible by then), then the
 * drops. A holder killed half-way leaves slots SET or TAKEN, which the next
 * holder applies again: both are idempotent. */
static void apply_changes(shmq_handle *h)
{
    if (!changes_waiting(h))
        return;
    /* seq_cst: as in changes_waiting; a change counted after this read makes
     * the next look find changes waiting. */
    uint32_t seen = atomic_load_explicit(&h->jobs->unique_deferred, memory_order_seq_cst);
    uint64_t slots = h->unique_slots;
    for (uint64_t i = 0; i < slots; i++) {
        shmq_unique_change *c = &h->unique_changes[i];
        /* acquire: pairs with the release in defer_change; for a DROP, it
         * also makes the SET its job's enqueuer wrote before visible. */
        uint64_t state = atomic_load_explicit(&c->state, memory_order_acquire);
        if (state == SHMQ_CHANGE_DROP) {
            atomic_store_explicit(&c->state, SHMQ_CHANGE_TAKEN, memory_order_relaxed); /* only holders change it now */
        } else if (state & SHMQ_CHANGE_FILLING) {
            unsigned owner = (unsigned)(state & SHMQ_STATE_OWNER_MASK);
            /* Its writer died before publishing it: its job was not released
             * (its lease is taken back and the job runs again). */
            if (owner != h->self && !shmq_participant_alive(h, owner))
                /* release: as change_free; a CAS, as its writer may still be publishing (not dead after all). */
                (void)atomic_compare_exchange_strong_explicit(&c->state, &state, 0, memory_order_release,
                                                              memory_order_relaxed);
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        uint64_t want = pass == 0 ? SHMQ_CHANGE_SET : SHMQ_CHANGE_TAKEN;
        for (uint64_t i = 0; i < slots; i++) {
            shmq_unique_change *c = &h->unique_changes[i];
            /* acquire: pairs with the release in defer_change. */
            if (atomic_load_explicit(&c->state, memory_order_acquire) != want)
                continue;
            /* relaxed: published by the state's release store. */
            uint64_t hi = atomic_load_explicit(&c->hi, memory_order_relaxed);
            uint64_t lo = atomic_load_explicit(&c->lo, memory_order_relaxed);
            uint64_t job = atomic_load_explicit(&c->job, memory_order_relaxed);
            if (pass == 0)
                set_locked(h, hi, lo, job);
            else
                drop_locked(h, hi, lo, job);
            change_free(c);
        }
    }
    atomic_store_explicit(&h->jobs->unique_drained, seen, memory_order_relaxed); /* the lock orders it */
}

/* Makes a change without waiting for a holder of the lock: at once if the
 * lock is free (or soon), else through the change list. */
static void change(shmq_handle *h, uint64_t kind, uint64_t hi, uint64_t lo, uint64_t job)
{
    int mine = 0;
    for (unsigned round = 0; round < LOCK_SPINS && !mine; round++) {
        uint32_t expected = 0;
        /* seq_cst: as in table_trylock (an acquire of the previous holder's changes). */
        mine = atomic_compare_exchange_weak_explicit(&h->jobs->unique_lock, &expected, h->self, memory_order_seq_cst,
                                                     memory_order_relaxed);
        if (!mine)
            shmq_cpu_relax();
    }
    if (!mine && !table_trylock(h)) {
        if (defer_change(h, kind, hi, lo, job) == SHMQ_OK) {
            if (table_trylock(h)) { /* its holder let go meanwhile: apply it ourselves */
                apply_changes(h);
                table_unlock(h);
            }
            return;
        }
        /* The list is full: more changes wait than the table holds keys
         * (retried jobs' drops). This one waits for the lock. */
        table_lock(h);
    } else {
        apply_changes(h);
    }
    if (kind == SHMQ_CHANGE_SET)
        set_locked(h, hi, lo, job);
    else
        drop_locked(h, hi, lo, job);
    table_unlock(h);
}

void shmq_unique_set(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id)
{
    change(h, SHMQ_CHANGE_SET, hi, lo, job_id);
}

void shmq_unique_drop(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id)
{
    change(h, SHMQ_CHANGE_DROP, hi, lo, job_id ? job_id : (SHMQ_UNIQUE_CLAIMED | h->self));
}

void shmq_unique_settle(shmq_handle *h)
{
    if (!h->jobs || !changes_waiting(h) || !table_trylock(h))
        return;
    apply_changes(h);
    table_unlock(h);
}

int shmq_unique_release(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    shmq_unique_drop(h, hi, lo, job_id);
    return SHMQ_OK;
}
