/* SPDX-License-Identifier: Apache-2.0 */
/* Per-task counters: threads on their own handles claim task slots for
 * the same names at once (one slot per name, its name whole), enqueue,
 * fetch, bind and finish jobs; every job is counted under its task, and
 * the wait/run histograms hold one value per finished attempt. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "tests.h"

#define T_THREADS 4
#define T_NAMES 6
#define T_JOBS 300 /* per thread */

static const int64_t MS = 1000000;
static const int64_t LEASE = 60ll * 1000 * 1000 * 1000;

typedef struct t_worker {
    pthread_t thread;
    shmq_handle *h;
    int id;
    int slots[T_NAMES];
    uint32_t failed;
} t_worker;

static void name_of(int i, char *out, size_t size) { snprintf(out, size, "tasks.name_%d_%s", i, "padding-to-be-long"); }

static void *t_run(void *arg)
{
    t_worker *w = arg;
    char name[64], buf[64];
    for (int i = 0; i < T_NAMES; i++) {
        name_of(i, name, sizeof name);
        w->slots[i] = shmq_task_slot(w->h, name, (uint32_t)strlen(name));
    }
    shmq_enqueue_options o = {.lane = -1};
    for (int j = 0; j < T_JOBS; j++) {
        int task = (j + w->id) % T_NAMES;
        uint64_t id;
        /* Odd jobs name their task in the options and the delivery, even ones by the calls. */
        o.task = j % 2 ? (uint32_t)w->slots[task] + 1 : 0;
        if (shmq_enqueue(w->h, &o, (const char *)&task, sizeof task, 5000 * MS, &id) != SHMQ_OK ||
            (j % 2 == 0 && shmq_task_enqueued(w->h, w->slots[task], 1) != SHMQ_OK)) {
            w->failed++;
            continue;
        }
        shmq_delivery d;
        if (shmq_fetch(w->h, buf, sizeof buf, 5000 * MS, LEASE, &d) != SHMQ_OK) {
            w->failed++;
            continue;
        }
        int got;
        memcpy(&got, buf, sizeof got);
        if (d.task != 0)
            w->failed++; /* a fetch names no task */
        if (got % 2)
            d.task = (uint32_t)w->slots[got] + 1;
        else if (shmq_task_bind(w->h, &d, w->slots[got]) != SHMQ_OK)
            w->failed++;
        if (shmq_ack(w->h, &d, 0, NULL, 0) != SHMQ_OK)
            w->failed++;
    }
    return NULL;
}

void test_tasks_counted(void)
{
    char *dir = temp_dir_create();
    shmq_params p = logged_params(2, 256, 64, SHMQ_DURABILITY_OS, 1024 * 1024);
    p.job_slots = 64;
    p.unique_slots = 64;
    p.result_slots = 4096; /* more than the jobs: no slot of the ring is written twice */
    p.result_bytes = 64 * 1024;
    p.result_ttl_ns = 600ll * 1000 * 1000 * 1000;
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);

    t_worker w[T_THREADS];
    for (int i = 0; i < T_THREADS; i++) {
        w[i] = (t_worker){.h = logged_attach(&r, dir), .id = i};
        CHECK_EQ(pthread_create(&w[i].thread, NULL, t_run, &w[i]), 0);
    }
    for (int i = 0; i < T_THREADS; i++)
        CHECK_EQ(pthread_join(w[i].thread, NULL), 0);

    static uint64_t wait[SHMQ_HIST_BUCKETS], run[SHMQ_HIST_BUCKETS];
    shmq_task_stats s;
    uint64_t total = 0;
    for (int i = 0; i < T_NAMES; i++) {
        for (int k = 1; k < T_THREADS; k++)
            CHECK_EQ(w[k].slots[i], w[0].slots[i]); /* one slot per name, whoever claimed it */
        CHECK(w[0].slots[i] >= 0 && w[0].slots[i] < SHMQ_TASK_SLOTS - 1);
        CHECK_EQ(shmq_task_read(h, w[0].slots[i], &s, wait, run), 1);
        char name[64];
        name_of(i, name, sizeof name);
        CHECK_EQ(strncmp(s.name, name, 56), 0); /* cut at 56 bytes, whole up to there */
        CHECK_EQ(s.counts[SHMQ_TASK_ENQUEUED], (uint64_t)T_JOBS * T_THREADS / T_NAMES);
        CHECK_EQ(s.counts[SHMQ_TASK_DONE], (uint64_t)T_JOBS * T_THREADS / T_NAMES);
        uint64_t waits = 0, runs = 0;
        for (int b = 0; b < SHMQ_HIST_BUCKETS; b++) {
            waits += wait[b];
            runs += run[b];
        }
        CHECK_EQ(waits, s.counts[SHMQ_TASK_DONE]);
        CHECK_EQ(runs, s.counts[SHMQ_TASK_DONE]);
        total += s.counts[SHMQ_TASK_DONE];
    }
    for (int i = 0; i < T_THREADS; i++)
        CHECK_EQ(w[i].failed, 0);
    CHECK_EQ(total, (uint64_t)T_JOBS * T_THREADS);

    /* A retry counts failed and retried; a delete of the waiting retry, dead. */
    shmq_enqueue_options o = {.lane = -1};
    uint64_t id;
    shmq_delivery d;
    char buf[64];
    int slot = w[0].slots[0];
    CHECK_RC(shmq_enqueue(h, &o, "x", 1, 0, &id), SHMQ_OK);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_RC(shmq_task_bind(h, &d, slot), SHMQ_OK);
    CHECK_RC(shmq_fail(h, &d, INT64_MAX / 2, 0, "later", 5), SHMQ_OK);
    CHECK_RC(shmq_task_bind(h, &d, slot), SHMQ_ELEASE); /* not ours any more */
    CHECK_RC(shmq_job_delete(h, id, 0, "gone", 4), SHMQ_OK);
    CHECK_EQ(shmq_task_read(h, slot, &s, wait, run), 1);
    CHECK_EQ(s.counts[SHMQ_TASK_FAILED], 1);
    CHECK_EQ(s.counts[SHMQ_TASK_RETRIED], 1);
    CHECK_EQ(s.counts[SHMQ_TASK_DEAD], 1);
    CHECK_RC(shmq_task_bind(h, &d, SHMQ_TASK_SLOTS), SHMQ_EINVAL);

    for (int i = 0; i < T_THREADS; i++)
        shmq_detach(w[i].h);
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}
