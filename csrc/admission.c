/* SPDX-License-Identifier: Apache-2.0 */
/* admission.c -- what may start now: pause (of the queue, of a task),
 * concurrency seats (at most n runs per key at once, across processes) and
 * rate limits (GCRA per key). The format and the protocols are in layout.h,
 * "Admission". Nothing here is a lock: a process killed anywhere leaves at
 * most seats that name it, and whoever finds them takes them back. */
#define _GNU_SOURCE
#include <string.h>

#include "jobs.h"

/* ------------------------------------------------------------ pause */

int shmq_pause_set(shmq_handle *h, uint64_t task, const char *name, int paused)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    if (task == 0) {
        /* release: pairs with the acquire in shmq_queue_paused (fetchers). */
        atomic_store_explicit(&h->admission->paused, paused ? 1u : 0u, memory_order_release);
        if (!paused)
            shmq_wake_data(h); /* sleeping fetchers look again */
        return SHMQ_OK;
    }
    if (!paused) {
        for (uint32_t i = 0; i < SHMQ_PAUSE_SLOTS; i++) {
            uint64_t seen = task;
            /* acq_rel: the entry is ours to clear once; pairs with the CAS that set it. */
            if (atomic_compare_exchange_strong_explicit(&h->pauses[i].task, &seen, 0, memory_order_acq_rel,
                                                        memory_order_relaxed))
                /* release: after the entry is cleared; pairs with the acquire in shmq_pause_check. */
                atomic_fetch_sub_explicit(&h->admission->paused_tasks, 1, memory_order_release);
        }
        return SHMQ_OK;
    }
    if (shmq_pause_check(h, task) == 1)
        return SHMQ_OK;
    for (uint32_t i = 0; i < SHMQ_PAUSE_SLOTS; i++) {
        shmq_pause_entry *p = &h->pauses[i];
        uint64_t free_word = 0;
        uint64_t words[7] = {0};
        if (name)
            memcpy(words, name, strnlen(name, sizeof words - 1));
        /* relaxed: a name for people; the entry may be read half-written by a
         * lister, which shows what it saw. */
        for (int w = 0; w < 7; w++)
            atomic_store_explicit(&p->name[w], 0, memory_order_relaxed);
        /* acq_rel: claims the entry; pairs with the acquire loads of checkers. */
        if (!atomic_compare_exchange_strong_explicit(&p->task, &free_word, task, memory_order_acq_rel,
                                                     memory_order_relaxed))
            continue;
        for (int w = 0; w < 7; w++)
            atomic_store_explicit(&p->name[w], words[w], memory_order_relaxed);
        /* release: the entry set before the count; pairs with the acquire in shmq_pause_check. */
        atomic_fetch_add_explicit(&h->admission->paused_tasks, 1, memory_order_release);
        return SHMQ_OK;
    }
    return SHMQ_EADMITFULL;
}

int shmq_pause_check(shmq_handle *h, uint64_t task)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    /* acquire: pairs with the release in shmq_pause_set; 0 is the common case: one load. */
    if (atomic_load_explicit(&h->admission->paused_tasks, memory_order_acquire) == 0 || task == 0)
        return 0;
    for (uint32_t i = 0; i < SHMQ_PAUSE_SLOTS; i++)
        /* acquire: pairs with the CAS that set the entry. */
        if (atomic_load_explicit(&h->pauses[i].task, memory_order_acquire) == task)
            return 1;
    return 0;
}

int shmq_queue_paused(const shmq_handle *h)
{
    /* acquire: pairs with the release store in shmq_pause_set. */
    return h->jobs && atomic_load_explicit(&h->admission->paused, memory_order_acquire) != 0;
}

uint32_t shmq_pause_list(const shmq_handle *h, shmq_pause_info *out, uint32_t capacity)
{
    uint32_t n = 0;
    for (uint32_t i = 0; h->jobs && i < SHMQ_PAUSE_SLOTS && n < capacity; i++) {
        const shmq_pause_entry *p = &h->pauses[i];
        /* acquire: pairs with the CAS that set the entry. */
        uint64_t task = atomic_load_explicit((_Atomic uint64_t *)&p->task, memory_order_acquire);
        if (!task)
            continue;
        uint64_t words[7];
        for (int w = 0; w < 7; w++) /* relaxed: for people (see shmq_pause_set) */
            words[w] = atomic_load_explicit((_Atomic uint64_t *)&p->name[w], memory_order_relaxed);
        out[n].task = task;
        memcpy(out[n].name, words, sizeof out[n].name);
        out[n].name[sizeof out[n].name - 1] = 0;
        n++;
    }
    return n;
}

/* ------------------------------------------------------------ priorities */

void shmq_priority_on(shmq_handle *h, int64_t age_ns)
{
    if (h->jobs && age_ns > 0)
        /* relaxed: a setting read by fetchers as a hint; any value they see is valid. */
        atomic_store_explicit(&h->admission->priority_age_ns, age_ns, memory_order_relaxed);
}

static void looked(shmq_handle *h, uint32_t lane, int64_t now)
{
    /* relaxed: a time for the aging rule; a stale one only shifts a choice. */
    atomic_store_explicit(&lane_header(h, lane)->looked_ns, now, memory_order_relaxed);
}

/* A fetch round of a prioritized queue (see "Priorities" in layout.h). */
int shmq_admission_fetch_round(shmq_handle *h, int64_t age_ns, fetch_args *a,
                               int (*take)(shmq_handle *h, uint32_t lane, fetch_args *a))
{
    int64_t now = shmq_now_ns();
    uint32_t lanes = h->lane_count;
    /* relaxed: this handle's own note. Back from idle (every lane was empty,
     * and that was more than a step ago, or never looked at), the lanes'
     * times say nothing about waiting: every lane counts as just looked at. */
    int64_t idle = atomic_load_explicit(&h->idle_since_ns, memory_order_relaxed);
    if (idle != 0 && now - idle > age_ns)
        for (uint32_t lane = 0; lane < lanes; lane++)
            looked(h, lane, now);
    int rc = SHMQ_EEMPTY;
    for (uint32_t band = lanes; band-- > 1 && rc == SHMQ_EEMPTY;) { /* aged lanes first, the lowest band first */
        /* relaxed: see looked(). */
        int64_t seen = atomic_load_explicit(&lane_header(h, band)->looked_ns, memory_order_relaxed);
        if (now - seen > (int64_t)band * age_ns) {
            rc = take(h, band, a);
            looked(h, band, now);
        }
    }
    for (uint32_t lane = 0; lane < lanes && rc == SHMQ_EEMPTY; lane++) {
        rc = take(h, lane, a);
        looked(h, lane, now);
    }
    /* relaxed: see above; the first empty round keeps its time. */
    if (rc != SHMQ_EEMPTY)
        atomic_store_explicit(&h->idle_since_ns, 0, memory_order_relaxed);
    else if (idle == 0 || now - idle > age_ns)
        atomic_store_explicit(&h->idle_since_ns, now, memory_order_relaxed);
    return rc;
}

/* ------------------------------------------------------------ seats */

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull; /* splitmix64 */
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The 51-bit tag of seat `seat` of `key` (never 0). */
static uint64_t seat_tag(uint64_t key, uint32_t seat) { return (mix64(key ^ mix64(seat)) >> 13) | 1u; }
static uint64_t seat_word_tag(uint64_t w) { return w >> SHMQ_SEAT_OWNER_BITS; }
static unsigned seat_word_owner(uint64_t w) { return (unsigned)(w & ((1u << SHMQ_SEAT_OWNER_BITS) - 1)); }
static uint32_t seat_at(uint64_t tag, uint32_t i) { return (uint32_t)((tag + i) % SHMQ_SEAT_SLOTS); }

/* A seat word under a dead owner is freed; 1 if `w` (at index `at`) is held by a live one. */
static int seat_held(shmq_handle *h, uint32_t at, uint64_t w)
{
    unsigned owner = seat_word_owner(w);
    if (owner == h->self || shmq_participant_alive(h, owner))
        return 1;
    /* seq_cst: as every seat CAS (see layout.h); fails harmlessly if it changed. */
    atomic_compare_exchange_strong(&h->seats[at], &w, 0);
    return 0;
}

/* 1 taken, 0 busy, SHMQ_EADMITFULL: no free word in its window. */
static int seat_take_one(shmq_handle *h, uint64_t tag)
{
    for (uint32_t i = 0; i < SHMQ_SEAT_WINDOW; i++) {
        uint32_t at = seat_at(tag, i);
        uint64_t w = atomic_load(&h->seats[at]); /* seq_cst: see layout.h */
        if (w && seat_word_tag(w) == tag && seat_held(h, at, w))
            return 0;
    }
    shmq_fault(h, SHMQ_FAULT_SEAT_LOOKED);
    uint64_t mine = tag << SHMQ_SEAT_OWNER_BITS | h->self;
    for (uint32_t i = 0; i < SHMQ_SEAT_WINDOW; i++) {
        uint32_t at = seat_at(tag, i);
        uint64_t zero = 0;
        /* seq_cst: our claim, then the reads below; pairs with the same pair in
         * a rival claimant: one of us sees the other's claim. */
        if (!atomic_compare_exchange_strong(&h->seats[at], &zero, mine))
            continue;
        shmq_fault(h, SHMQ_FAULT_SEAT_CLAIMED);
        for (uint32_t j = 0; j < SHMQ_SEAT_WINDOW; j++) {
            uint32_t other = seat_at(tag, j);
            if (other == at)
                continue;
            uint64_t w = atomic_load(&h->seats[other]); /* seq_cst: see above */
            if (w && seat_word_tag(w) == tag && seat_held(h, other, w)) {
                atomic_compare_exchange_strong(&h->seats[at], &mine, 0); /* seq_cst: give it back */
                return 0;
            }
        }
        return 1;
    }
    return SHMQ_EADMITFULL;
}

int shmq_seat_take(shmq_handle *h, uint64_t key, uint32_t limit, uint32_t *seat /* OUT */)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    if (limit == 0 || limit > SHMQ_SEAT_SLOTS / 2 || h->self == 0)
        return SHMQ_EINVAL;
    int full = 0;
    /* Start at a seat of our own, so that many takers do not all race for seat 0. */
    uint32_t first = (h->self * 2654435761u) % limit;
    for (uint32_t k = 0; k < limit; k++) {
        uint32_t s = (first + k) % limit;
        int rc = seat_take_one(h, seat_tag(key, s));
        if (rc == 1) {
            *seat = s;
            return SHMQ_OK;
        }
        full |= rc == SHMQ_EADMITFULL;
    }
    return full ? SHMQ_EADMITFULL : SHMQ_EFULL;
}

int shmq_seat_give(shmq_handle *h, uint64_t key, uint32_t seat)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    uint64_t tag = seat_tag(key, seat);
    for (uint32_t i = 0; i < SHMQ_SEAT_WINDOW; i++) {
        uint64_t mine = tag << SHMQ_SEAT_OWNER_BITS | h->self;
        /* seq_cst: as every seat CAS; the next taker's window read sees it free. */
        if (atomic_compare_exchange_strong(&h->seats[seat_at(tag, i)], &mine, 0))
            return SHMQ_OK;
    }
    return SHMQ_EINVAL; /* not held by this process */
}

uint32_t shmq_seats_held(shmq_handle *h, uint64_t key, uint32_t limit)
{
    uint32_t held = 0;
    for (uint32_t s = 0; h->jobs && s < limit && s < SHMQ_SEAT_SLOTS; s++) {
        uint64_t tag = seat_tag(key, s);
        for (uint32_t i = 0; i < SHMQ_SEAT_WINDOW; i++) {
            uint32_t at = seat_at(tag, i);
            uint64_t w = atomic_load(&h->seats[at]); /* seq_cst: see layout.h */
            if (w && seat_word_tag(w) == tag && seat_held(h, at, w)) {
                held++;
                break;
            }
        }
    }
    return held;
}

int shmq_admission_references(const shmq_handle *h, unsigned index)
{
    for (uint32_t i = 0; h->jobs && i < SHMQ_SEAT_SLOTS; i++) {
        /* relaxed: a snapshot, as index_referenced's. */
        uint64_t w = atomic_load_explicit(&h->seats[i], memory_order_relaxed);
        if (w && seat_word_owner(w) == index)
            return 1;
    }
    return 0;
}

/* ------------------------------------------------------------ rates */

static shmq_rate_entry *rate_entry(shmq_handle *h, uint64_t key)
{
    for (uint32_t i = 0; i < SHMQ_RATE_SLOTS; i++) {
        shmq_rate_entry *r = &h->rates[(key + i) % SHMQ_RATE_SLOTS];
        /* acquire: pairs with the CAS below; keys are never removed, so the
         * first entry holding the key or 0 along the probe is the key's. */
        uint64_t seen = atomic_load_explicit(&r->key, memory_order_acquire);
        if (seen == key)
            return r;
        if (seen)
            continue;
        /* acq_rel: sets the key once; a loser finds the winner's key here. */
        if (atomic_compare_exchange_strong_explicit(&r->key, &seen, key, memory_order_acq_rel, memory_order_acquire)
            || seen == key)
            return r;
    }
    return NULL;
}

int shmq_rate_take(shmq_handle *h, uint64_t key, int64_t interval_ns, int64_t *wait_ns /* OUT */)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    if (key == 0 || interval_ns <= 0)
        return SHMQ_EINVAL;
    shmq_rate_entry *r = rate_entry(h, key);
    if (!r)
        return SHMQ_EADMITFULL;
    int64_t now = shmq_now_ns();
    /* relaxed: the CAS below decides; the word carries no other data. */
    int64_t tat = atomic_load_explicit(&r->tat, memory_order_relaxed);
    for (;;) {
        if (tat > now) {
            *wait_ns = tat - now;
            return SHMQ_EFULL;
        }
        /* relaxed: one word, nothing else published with it. */
        if (atomic_compare_exchange_weak_explicit(&r->tat, &tat, now + interval_ns, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *wait_ns = 0;
            return SHMQ_OK;
        }
    }
}

uint64_t shmq_admission_held(const shmq_handle *h)
{
    /* relaxed: a statistic. */
    return h->jobs ? atomic_load_explicit(&h->admission->held, memory_order_relaxed) : 0;
}
