/* SPDX-License-Identifier: Apache-2.0 */
/* Job control (jobs_cancel.c): cancel of a queued, a scheduled and a
 * running job (cooperative, and with force: a real child process killed);
 * the lease taken over from a child; and the canceller/fetcher handshake
 * under threads (each job either never delivered or seen cancelled by its
 * runner, and no id left in the cancel set). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "jobs.h"
#include "tests.h"

static const int64_t MS = 1000000;
static const int64_t LEASE = 60ll * 1000 * 1000 * 1000;

typedef struct cq {
    char *dir;
    test_region r;
    shmq_handle *h;
} cq;

static void cq_open(cq *q)
{
    shmq_params p = logged_params(2, 256, 64, SHMQ_DURABILITY_OS, 256 * 1024);
    p.job_slots = 64;
    p.unique_slots = 64;
    p.result_slots = 4096;
    p.result_bytes = 64 * 1024;
    p.result_ttl_ns = 600ll * 1000 * 1000 * 1000;
    q->dir = temp_dir_create();
    shmq_recovery rep;
    q->h = logged_region_create(&q->r, &p, q->dir, &rep);
    CHECK(q->h->jobs != NULL);
}

static void cq_close(cq *q)
{
    shmq_detach(q->h);
    region_destroy(&q->r);
    temp_dir_remove(q->dir);
}

static uint64_t enqueue(shmq_handle *h, int64_t not_before)
{
    shmq_enqueue_options o = {.lane = -1, .not_before_ns = not_before};
    uint64_t id = 0;
    CHECK_RC(shmq_enqueue(h, &o, "job", 3, 0, &id), SHMQ_OK);
    return id;
}

static int status_of(shmq_handle *h, uint64_t id)
{
    shmq_result_info info;
    return shmq_job_status(h, id, &info);
}

static int cancel(shmq_handle *h, uint64_t id, int force)
{
    int outcome = -1;
    CHECK_RC(shmq_job_cancel(h, id, force, &outcome), SHMQ_OK);
    return outcome;
}

static int64_t wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void test_cancel_states(void)
{
    cq q;
    cq_open(&q);
    shmq_handle *h = q.h;
    char buf[64];
    shmq_delivery d;

    /* Queued: ends now, is passed by unrun, and its slot in the set is freed. */
    uint64_t queued = enqueue(h, 0);
    uint64_t next = enqueue(h, 0);
    CHECK_EQ(cancel(h, queued, 0), SHMQ_CANCEL_ENDED);
    CHECK_EQ(status_of(h, queued), SHMQ_JOB_CANCELLED);
    CHECK_EQ(cancel(h, queued, 0), SHMQ_CANCEL_NONE); /* once */
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, next);
    CHECK_EQ(atomic_load(&h->jobs->cancel_count), 0);
    CHECK_EQ(status_of(h, queued), SHMQ_JOB_CANCELLED);

    /* Running, cooperative: the holder sees the bit; its failure ends it cancelled, not retried. */
    CHECK_EQ(shmq_job_control(h, &d), 0);
    CHECK_EQ(cancel(h, next, 0), SHMQ_CANCEL_RUNNING);
    CHECK_EQ(shmq_job_control(h, &d), (int)SHMQ_JOBC_CANCEL);
    CHECK_RC(shmq_fail(h, &d, 0, 0, "boom", 4), SHMQ_ECANCELLED);
    CHECK_EQ(status_of(h, next), SHMQ_JOB_CANCELLED);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LEASE, &d), SHMQ_EEMPTY);

    /* Scheduled: ends now, never moved into a lane. */
    uint64_t later = enqueue(h, wall_now() + 50 * MS);
    CHECK_EQ(status_of(h, later), SHMQ_JOB_SCHEDULED);
    CHECK_EQ(cancel(h, later, 0), SHMQ_CANCEL_ENDED);
    CHECK_EQ(status_of(h, later), SHMQ_JOB_CANCELLED);
    sleep_ms(80);
    shmq_jobs_tick(h);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LEASE, &d), SHMQ_EEMPTY);

    /* Progress: the holder's, seen by anyone; -1 once it ended. */
    uint64_t done = enqueue(h, 0);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_EQ(shmq_job_progress(h, done), -1);
    CHECK_RC(shmq_job_progress_set(h, &d, 250000), SHMQ_OK);
    CHECK_EQ(shmq_job_progress(h, done), 250000);
    CHECK_RC(shmq_job_progress_set(h, &d, 1000001), SHMQ_EINVAL);
    CHECK_RC(shmq_ack(h, &d, 0, NULL, 0), SHMQ_OK);
    CHECK_EQ(shmq_job_progress(h, done), -1);
    CHECK_EQ(cancel(h, done, 0), SHMQ_CANCEL_NONE); /* finished: nothing to cancel */
    CHECK_EQ(status_of(h, done), SHMQ_JOB_DONE);

    shmq_job_stats s;
    shmq_job_stats_read(h, -1, &s);
    CHECK_EQ(s.cancelled, 3);
    cq_close(&q);
}

/* A child leases the job and sleeps; cancel with force kills it, and the
 * taking back of its lease ends the job cancelled (never run again). */
void test_cancel_force_kills(void)
{
    cq q;
    cq_open(&q);
    shmq_handle *h = q.h;
    uint64_t id = enqueue(h, 0);
    int ready[2];
    CHECK_EQ(pipe(ready), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        shmq_handle *c = logged_attach(&q.r, q.dir);
        char buf[64];
        shmq_delivery d;
        if (shmq_fetch(c, buf, sizeof buf, 1000 * MS, LEASE, &d) != SHMQ_OK || d.job_id != id)
            _exit(3);
        if (write(ready[1], "x", 1) != 1)
            _exit(4);
        for (;;)
            pause(); /* a run that never ends by itself */
    }
    char x;
    CHECK_EQ(read(ready[0], &x, 1), 1);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_RUNNING);
    CHECK_EQ(cancel(h, id, 1), SHMQ_CANCEL_RUNNING);
    int st = 0;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    shmq_jobs_tick(h);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_CANCELLED);
    char buf[64];
    shmq_delivery d;
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 100 * MS, LEASE, &d), SHMQ_EEMPTY);
    close(ready[0]);
    close(ready[1]);
    cq_close(&q);
}

/* The lease of another participant becomes ours; its ack then fails. */
void test_cancel_lease_take(void)
{
    cq q;
    cq_open(&q);
    shmq_handle *h = q.h;
    shmq_handle *other = logged_attach(&q.r, q.dir);
    uint64_t id = enqueue(h, 0);
    char buf[64];
    shmq_delivery d, mine;
    CHECK_RC(shmq_fetch(other, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_RC(shmq_lease_take(h, id, d.entry, d.gen + 1, &mine), SHMQ_ELEASE); /* not that lease */
    CHECK_RC(shmq_lease_take(h, id, d.entry, d.gen, &mine), SHMQ_OK);
    CHECK_EQ(mine.job_id, id);
    CHECK_RC(shmq_ack(other, &d, 0, NULL, 0), SHMQ_ELEASE);
    CHECK_RC(shmq_fail(h, &mine, wall_now(), 0, "timeout", 7), SHMQ_OK);
    shmq_jobs_tick(h);
    CHECK_RC(shmq_fetch(other, buf, sizeof buf, 1000 * MS, LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, id);
    CHECK_EQ(d.attempt, 2);
    CHECK_RC(shmq_ack(other, &d, 0, NULL, 0), SHMQ_OK);
    shmq_detach(other);
    cq_close(&q);
}

/* ------------------------------------------------------------ the handshake under threads */

enum { RACE_JOBS = 2000, RACE_FETCHERS = 2 };

typedef struct race {
    shmq_handle *h;
    _Atomic uint8_t *delivered;   /* per job index: 1 delivered and acked, 2 delivered and seen cancelled */
    _Atomic uint64_t *ids;
    _Atomic int *stop;
} race;

static int index_of(const race *r, uint64_t id)
{
    for (int i = 0; i < RACE_JOBS; i++)
        if (atomic_load(&r->ids[i]) == id)
            return i;
    return -1;
}

static void *race_fetch(void *arg)
{
    race *r = arg;
    char buf[64];
    while (!atomic_load(r->stop)) {
        shmq_delivery d;
        int rc = shmq_fetch(r->h, buf, sizeof buf, 5 * MS, LEASE, &d);
        if (rc == SHMQ_EEMPTY)
            continue;
        CHECK_RC(rc, SHMQ_OK);
        int i = index_of(r, d.job_id);
        for (int look = 0; i < 0 && look < 100000; look++) { /* the producer stores the id after its enqueue */
            sched_yield();
            i = index_of(r, d.job_id);
        }
        CHECK(i >= 0);
        sched_yield(); /* a run: a canceller may come meanwhile */
        if (shmq_job_control(r->h, &d) & SHMQ_JOBC_CANCEL) {
            atomic_store(&r->delivered[i], 2);
            CHECK_RC(shmq_fail(r->h, &d, 0, 0, "stop", 4), SHMQ_ECANCELLED);
        } else {
            atomic_store(&r->delivered[i], 1);
            CHECK_RC(shmq_ack(r->h, &d, 0, NULL, 0), SHMQ_OK);
        }
    }
    return NULL;
}

void test_cancel_race(void)
{
    cq q;
    cq_open(&q);
    static _Atomic uint64_t ids[RACE_JOBS];
    static _Atomic uint8_t delivered[RACE_JOBS];
    static int outcome[RACE_JOBS];
    for (int i = 0; i < RACE_JOBS; i++)
        atomic_store(&delivered[i], 0);
    _Atomic int stop = 0;
    race r[RACE_FETCHERS];
    pthread_t t[RACE_FETCHERS];
    for (int i = 0; i < RACE_JOBS; i++)
        atomic_store(&ids[i], (uint64_t)-1);
    for (int k = 0; k < RACE_FETCHERS; k++) {
        r[k] = (race){.h = logged_attach(&q.r, q.dir), .delivered = delivered, .ids = ids, .stop = &stop};
        CHECK_EQ(pthread_create(&t[k], NULL, race_fetch, &r[k]), 0);
    }
    for (int i = 0; i < RACE_JOBS; i++) {
        uint64_t id = enqueue(q.h, 0);
        atomic_store(&ids[i], id);
        if (i % 3 != 0)
            sched_yield(); /* sometimes before the fetchers take it, sometimes while it runs */
        int rc;
        /* At most SHMQ_CANCEL_SLOTS cancelled jobs wait in the lanes: when the fetchers fall behind (a
         * loaded machine), the canceller waits for them to pass some by, as a caller is told to. */
        for (int wait = 0; (rc = shmq_job_cancel(q.h, id, 0, &outcome[i])) == SHMQ_ECANCELFULL && wait < 10000; wait++)
            sleep_ms(1);
        CHECK_RC(rc, SHMQ_OK);
    }
    for (int spins = 0; spins < 5000; spins++) { /* until every job ended */
        int pending = 0;
        for (int i = 0; i < RACE_JOBS && !pending; i++) {
            int st = status_of(q.h, ids[i]);
            pending = st == SHMQ_JOB_QUEUED || st == SHMQ_JOB_RUNNING;
            if (st == SHMQ_JOB_CANCELLED && outcome[i] == SHMQ_CANCEL_ENDED && atomic_load(&q.h->jobs->cancel_count))
                pending = cancel_slot_of(q.h, ids[i]) >= 0; /* still in a lane: a fetcher passes it by */
        }
        if (!pending)
            break;
        sleep_ms(1);
    }
    atomic_store(&stop, 1);
    for (int k = 0; k < RACE_FETCHERS; k++) {
        CHECK_EQ(pthread_join(t[k], NULL), 0);
        shmq_detach(r[k].h);
    }
    int ended = 0, running = 0;
    for (int i = 0; i < RACE_JOBS; i++) {
        int st = status_of(q.h, ids[i]);
        if (outcome[i] == SHMQ_CANCEL_ENDED) { /* never ran */
            ended++;
            CHECK_EQ(atomic_load(&delivered[i]), 0);
            CHECK_EQ(st, SHMQ_JOB_CANCELLED);
        } else if (outcome[i] == SHMQ_CANCEL_RUNNING) { /* ran, and was told unless it had finished */
            running++;
            CHECK(atomic_load(&delivered[i]) != 0);
            CHECK(st == SHMQ_JOB_CANCELLED || st == SHMQ_JOB_DONE);
            CHECK((st == SHMQ_JOB_CANCELLED) == (atomic_load(&delivered[i]) == 2));
        } else { /* finished before the cancel */
            CHECK_EQ(outcome[i], SHMQ_CANCEL_NONE);
            CHECK_EQ(atomic_load(&delivered[i]), 1);
            CHECK_EQ(st, SHMQ_JOB_DONE);
        }
    }
    CHECK_EQ(atomic_load(&q.h->jobs->cancel_count), 0);
    CHECK(ended > 0);
    cq_close(&q);
}
