/* SPDX-License-Identifier: Apache-2.0 */
/* shmq_job_run_now: a job waiting for its time (a delay, a retry's backoff,
 * on an unordered or an ordered lane) becomes due at once, and a fetcher
 * asleep in another thread gets it; ids that do not wait for a time are
 * refused. Under TSan the call races the fetcher's own tick.
 * shmq_job_delete: a waiting job ends dead, its unique key is free, and an
 * ordered lane it held goes on with its next job. */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "tests.h"

static const int64_t MS = 1000000;
static const int64_t LEASE = 60ll * 1000 * 1000 * 1000;

static int64_t wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct fetcher {
    shmq_handle *h;
    int rc;
    shmq_delivery d;
} fetcher;

static void *fetch_one(void *arg)
{
    fetcher *f = arg;
    static char buf[256];
    f->rc = shmq_fetch(f->h, buf, sizeof buf, 5000 * MS, LEASE, &f->d);
    return NULL;
}

/* Three lanes (the last one ordered) and small job, unique and result tables. */
static shmq_params small_job_params(void)
{
    shmq_params p = logged_params(3, 64, 64, SHMQ_DURABILITY_OS, 256 * 1024);
    p.ordered_lanes = 1; /* lane 2 */
    p.job_slots = 64;
    p.unique_slots = 64;
    p.result_slots = 64;
    p.result_bytes = 64 * 1024;
    p.result_ttl_ns = 600ll * 1000 * 1000 * 1000;
    return p;
}

/* Starts a fetcher on `other`, makes `id` due now, and checks that the
 * fetcher gets it (attempt `attempt`) well before its own time. */
static void run_now_reaches_fetcher(shmq_handle *h, shmq_handle *other, uint64_t id, uint16_t attempt, int line)
{
    fetcher f = {.h = other};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, fetch_one, &f), 0);
    sleep_ms(50); /* it sleeps: nothing is due for a minute */
    int64_t start = now_ns();
    int rc = shmq_job_run_now(h, id);
    if (rc != SHMQ_OK)
        test_fail(__FILE__, line, "shmq_job_run_now(%llu) returned %d (%s)", (unsigned long long)id, rc,
                  shmq_strerror(rc));
    CHECK_EQ(pthread_join(t, NULL), 0);
    if (f.rc != SHMQ_OK || f.d.job_id != id || f.d.attempt != attempt)
        test_fail(__FILE__, line, "after run_now the fetcher got rc %d job %llu attempt %u, expected job %llu attempt %u",
                  f.rc, (unsigned long long)f.d.job_id, f.d.attempt, (unsigned long long)id, attempt);
    if (now_ns() - start > 2000 * MS)
        test_fail(__FILE__, line, "the job came %lld ms after run_now", (long long)((now_ns() - start) / MS));
    CHECK_RC(shmq_job_run_now(h, id), SHMQ_EEMPTY); /* it runs: nothing waits */
    CHECK_RC(shmq_ack(other, &f.d, 0, NULL, 0), SHMQ_OK);
}

void test_jobs_run_now(void)
{
    char *dir = temp_dir_create();
    shmq_params p = small_job_params();
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    shmq_handle *other = logged_attach(&r, dir);
    static const char payload[] = "run me now";
    uint64_t id = 0;

    CHECK_RC(shmq_job_run_now(h, 12345), SHMQ_EEMPTY); /* no such job */

    /* A delayed job, any lane. */
    shmq_enqueue_options o = {.lane = -1, .not_before_ns = wall() + 60000 * MS};
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 0, &id), SHMQ_OK);
    run_now_reaches_fetcher(h, other, id, 1, __LINE__);

    /* A job of an ordered lane waiting for its retry's backoff: it holds the lane's gate. */
    o = (shmq_enqueue_options){.lane = 2};
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 0, &id), SHMQ_OK);
    static char buf[256];
    shmq_delivery d;
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, id);
    CHECK_RC(shmq_fail(h, &d, wall() + 60000 * MS, 0, "later", 5), SHMQ_OK);
    run_now_reaches_fetcher(h, other, id, 2, __LINE__);

    /* A queued job (in a lane) does not wait for a time. */
    o = (shmq_enqueue_options){.lane = -1};
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 0, &id), SHMQ_OK);
    CHECK_RC(shmq_job_run_now(h, id), SHMQ_EEMPTY);

    shmq_detach(other);
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}

void test_jobs_delete_waiting(void)
{
    char *dir = temp_dir_create();
    shmq_params p = small_job_params();
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    static const char payload[] = "delete me";
    static const char why[] = "deleted";
    shmq_result_info info;
    static char buf[256];
    shmq_delivery d;
    uint64_t id = 0, again = 0;

    /* A delayed job with a unique key: dead, and the key is free again. */
    shmq_enqueue_options o = {.lane = -1, .not_before_ns = wall() + 60000 * MS, .unique_hi = 7, .unique_lo = 9};
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 0, &id), SHMQ_OK);
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 0, &again), SHMQ_EDUPLICATE);
    CHECK_RC(shmq_job_delete(h, id, 0, why, sizeof why), SHMQ_OK);
    CHECK_EQ(shmq_job_status(h, id, &info), SHMQ_JOB_DEAD);
    CHECK_RC(shmq_job_delete(h, id, 0, why, sizeof why), SHMQ_EEMPTY);
    CHECK_RC(shmq_job_run_now(h, id), SHMQ_EEMPTY);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LEASE, &d), SHMQ_EEMPTY);
    o.not_before_ns = 0;
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 0, &again), SHMQ_OK); /* not a duplicate */
    CHECK(again != id);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, again);
    CHECK_RC(shmq_ack(h, &d, 0, NULL, 0), SHMQ_OK);

    /* An ordered lane's job waiting for its retry holds the lane; deleted, the next job runs. */
    o = (shmq_enqueue_options){.lane = 2};
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 0, &id), SHMQ_OK);
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 0, &again), SHMQ_OK);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, id);
    CHECK_RC(shmq_fail(h, &d, wall() + 60000 * MS, 0, "later", 5), SHMQ_OK);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LEASE, &d), SHMQ_EEMPTY); /* the group waits for it */
    CHECK_RC(shmq_job_delete(h, id, 0, why, sizeof why), SHMQ_OK);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, again);
    CHECK_RC(shmq_ack(h, &d, 0, NULL, 0), SHMQ_OK);
    shmq_job_stats s;
    shmq_job_stats_read(h, -1, &s);
    CHECK_EQ(s.dead, 2);
    CHECK_EQ(s.waiting, 0);

    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}
