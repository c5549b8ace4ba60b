/* SPDX-License-Identifier: Apache-2.0 */
/* tasks.c -- per-task counters and histograms: the table of task slots
 * (layout.h, "Tasks"), found by a hash of the task's name. */
#define _GNU_SOURCE
#include <string.h>

#include "jobs.h"

/* FNV-1a, 63 bits, never 0. */
static uint64_t name_key(const char *name, uint32_t length)
{
    uint64_t x = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < length; i++)
        x = (x ^ (uint8_t)name[i]) * 0x100000001b3ull;
    x &= ~SHMQ_TASK_CLAIM;
    return x ? x : 1;
}

static int same_name(const shmq_task_entry *t, const char *name, uint32_t length)
{
    uint32_t n = length < SHMQ_TASK_NAME_BYTES ? length : SHMQ_TASK_NAME_BYTES;
    return memcmp(t->name, name, n) == 0 && (n == SHMQ_TASK_NAME_BYTES || t->name[n] == 0);
}

/* Slot `i` for `key`: 1 it is (or now is) that name's, 0 another's. */
static int take(shmq_task_entry *t, uint64_t key, const char *name, uint32_t length)
{
    /* acquire: pairs with the release below, so a published name is whole. */
    uint64_t k = atomic_load_explicit(&t->key, memory_order_acquire);
    if (k == 0) {
        /* acquire on failure: another's key, whose name we may compare (its release store). */
        if (atomic_compare_exchange_strong_explicit(&t->key, &k, key | SHMQ_TASK_CLAIM, memory_order_acquire,
                                                    memory_order_acquire)) {
            memcpy(t->name, name, length < SHMQ_TASK_NAME_BYTES ? length : SHMQ_TASK_NAME_BYTES);
            /* release: the name before the key; pairs with the acquire loads here and in shmq_task_read. */
            atomic_store_explicit(&t->key, key, memory_order_release);
            return 1;
        }
    }
    if (k == (key | SHMQ_TASK_CLAIM))
        return 1; /* its name is being written: the counters are the name's already */
    return k == key && same_name(t, name, length);
}

int shmq_task_slot(shmq_handle *h, const char *name, uint32_t length)
{
    if (!h->jobs)
        return SHMQ_ENOLOG;
    shmq_task_entry *tasks = h->tasks;
    uint64_t key = name_key(name, length);
    uint32_t n = SHMQ_TASK_SLOTS - 1;
    for (uint32_t i = 0, k = (uint32_t)(key % n); i < n; i++, k = k + 1 == n ? 0 : k + 1)
        if (take(&tasks[k], key, name, length))
            return (int)k;
    take(&tasks[n], name_key("*", 1), "*", 1); /* the table is full: the others' slot */
    return (int)n;
}

static shmq_task_entry *slot_at(const shmq_handle *h, int slot)
{
    return h->jobs && slot >= 0 && slot < SHMQ_TASK_SLOTS ? &h->tasks[slot] : NULL;
}

int shmq_task_enqueued(shmq_handle *h, int slot, uint32_t count)
{
    shmq_task_entry *t = slot_at(h, slot);
    if (!t)
        return h->jobs ? SHMQ_EINVAL : SHMQ_ENOLOG;
    /* relaxed: a counter. */
    atomic_fetch_add_explicit(&t->enqueued, count, memory_order_relaxed);
    return SHMQ_OK;
}

int shmq_task_bind(shmq_handle *h, const shmq_delivery *d, int slot)
{
    if (!slot_at(h, slot) || d->entry >= h->job_slots)
        return h->jobs ? SHMQ_EINVAL : SHMQ_ENOLOG;
    shmq_job_entry *e = entry_at(h, d->entry);
    /* relaxed: only whether the lease is still ours. Were it taken back
     * right after, the job is the same job, so its task is too. */
    if (atomic_load_explicit(&e->state, memory_order_relaxed) !=
        shmq_job_state(SHMQ_JOB_RUNNING_KIND, h->self, d->gen))
        return SHMQ_ELEASE;
    /* relaxed: read back by the finish of this lease, in this thread or after its CAS. */
    atomic_store_explicit(&e->task, (uint32_t)slot + 1u, memory_order_relaxed);
    return SHMQ_OK;
}

static void hist_add(shmq_task_entry *t, int which, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    /* relaxed: statistics; each bucket is a counter on its own. */
    atomic_fetch_add_explicit(&t->hist[which][shmq_histogram_bucket_of((uint64_t)ns)], 1, memory_order_relaxed);
    int64_t max = atomic_load_explicit(&t->hist_max[which], memory_order_relaxed);
    while (ns > max && !atomic_compare_exchange_weak_explicit(&t->hist_max[which], &max, ns, memory_order_relaxed,
                                                              memory_order_relaxed)) {
    }
}

/* The finish of a lease (or of a waiting job, run_ns < 0) bound to a task:
 * counters is a mask of 1 << SHMQ_TASK_*. */
void shmq_task_finished(shmq_handle *h, const shmq_job_entry *e, unsigned counters, int64_t run_ns)
{
    /* relaxed: written by the lease's owner (shmq_task_bind), read by it. */
    uint32_t bound = atomic_load_explicit(&e->task, memory_order_relaxed);
    if (bound == 0 || bound > SHMQ_TASK_SLOTS)
        return;
    shmq_task_entry *t = &h->tasks[bound - 1];
    /* relaxed: counters. */
    for (int i = 0; i < SHMQ_TASK_COUNTERS; i++)
        if (counters & (1u << i))
            atomic_fetch_add_explicit(&t->counts[i], 1, memory_order_relaxed);
    if (run_ns >= 0) {
        if (e->wait_ns >= 0)
            hist_add(t, SHMQ_HIST_WAIT, e->wait_ns);
        hist_add(t, SHMQ_HIST_RUN, run_ns);
    }
}

int shmq_task_read(const shmq_handle *h, int slot, shmq_task_stats *s, uint64_t *wait_buckets, uint64_t *run_buckets)
{
    *s = (shmq_task_stats){0};
    const shmq_task_entry *t = slot_at(h, slot);
    if (!t)
        return h->jobs ? SHMQ_EINVAL : SHMQ_ENOLOG;
    /* acquire: pairs with the release in take(): the name is whole. */
    uint64_t key = atomic_load_explicit(&t->key, memory_order_acquire);
    if (key == 0 || (key & SHMQ_TASK_CLAIM))
        return 0;
    memcpy(s->name, t->name, SHMQ_TASK_NAME_BYTES);
    for (int i = 0; i < SHMQ_TASK_COUNTERS; i++)
        /* relaxed: statistics. */
        s->counts[i] = atomic_load_explicit(&t->counts[i], memory_order_relaxed);
    s->counts[SHMQ_TASK_ENQUEUED] = atomic_load_explicit(&t->enqueued, memory_order_relaxed);
    s->wait_max_ns = atomic_load_explicit(&t->hist_max[SHMQ_HIST_WAIT], memory_order_relaxed);
    s->run_max_ns = atomic_load_explicit(&t->hist_max[SHMQ_HIST_RUN], memory_order_relaxed);
    for (uint32_t b = 0; b < SHMQ_HIST_BUCKETS; b++) {
        wait_buckets[b] = atomic_load_explicit(&t->hist[SHMQ_HIST_WAIT][b], memory_order_relaxed);
        run_buckets[b] = atomic_load_explicit(&t->hist[SHMQ_HIST_RUN][b], memory_order_relaxed);
    }
    return 1;
}
