/* SPDX-License-Identifier: Apache-2.0 */
/* Jobs: enqueue, fetch under a lease, ack, fail (retry or dead), extend;
 * scheduled jobs; leases taken back from hung and dead consumers (real
 * processes killed with SIGKILL, and white-box states as a process killed
 * at a given instruction leaves them); ordered lanes; unique keys; the job
 * table and the results ring; histograms and counters; and many consumers
 * and producers at once. Each queue has a real log in a temporary
 * directory (jobs need one). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"
#include "log.h"
#include "tests.h"

enum { SEGMENT = 256 * 1024, LANES = 3, ORDERED = 2 /* the last lane: ordered */ };
static const int64_t MS = 1000000;
static const int64_t LONG_LEASE = 60ll * 1000 * 1000 * 1000;

/* ------------------------------------------------------------ setup */

typedef struct jobq {
    char *dir;
    test_region r;
    shmq_handle *h;
} jobq;

/* Lanes 0 and 1 take any job, lane 2 is ordered. */
static shmq_params job_params(void)
{
    shmq_params p = logged_params(LANES, 64, 64, SHMQ_DURABILITY_OS, SEGMENT);
    p.ordered_lanes = 1;
    p.job_slots = 64;
    p.unique_slots = 64;
    p.result_slots = 64;
    p.result_bytes = 64 * 1024;
    p.result_ttl_ns = 600ll * 1000 * 1000 * 1000;
    return p;
}

static void jobq_open(jobq *q, const shmq_params *p)
{
    q->dir = temp_dir_create();
    shmq_recovery rep;
    q->h = logged_region_create(&q->r, p, q->dir, &rep);
    CHECK_EQ(rep.live, 0);
    CHECK(q->h->jobs != NULL);
}

static void jobq_close(jobq *q)
{
    shmq_detach(q->h);
    region_destroy(&q->r);
    temp_dir_remove(q->dir);
}

static int64_t wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static shmq_job_stats stats(const shmq_handle *h)
{
    shmq_job_stats s;
    shmq_job_stats_read(h, -1, &s);
    return s;
}

static int status_of(shmq_handle *h, uint64_t id)
{
    shmq_result_info info;
    return shmq_job_status(h, id, &info);
}

static void wait_wall(int64_t until)
{
    while (wall_now() < until)
        sleep_ms(1);
}

/* A job whose payload is fill_pattern(seq) of `length` bytes, tag = seq. */
static uint64_t enqueue_at(int line, shmq_handle *h, shmq_enqueue_options o, uint64_t seq, uint32_t length)
{
    static uint8_t payload[8192];
    CHECK(length <= sizeof payload);
    fill_pattern(payload, seq, length);
    o.tag = (uint8_t)seq;
    uint64_t id = 0;
    int rc = shmq_enqueue(h, &o, (const char *)payload, length, 0, &id);
    if (rc != SHMQ_OK)
        test_fail(__FILE__, line, "shmq_enqueue of job %llu returned %d (%s)", (unsigned long long)seq, rc,
                  shmq_strerror(rc));
    if (id == 0)
        test_fail(__FILE__, line, "shmq_enqueue of job %llu returned job id 0", (unsigned long long)seq);
    return id;
}
#define ENQUEUE(h, o, seq, length) enqueue_at(__LINE__, (h), (o), (seq), (length))

static shmq_enqueue_options to_lane(int lane) { return (shmq_enqueue_options){.lane = lane}; }

/* Fetches (waiting up to `timeout`) and checks that the job is `id` on
 * `attempt`, with the payload of `seq` (`length` bytes). */
static shmq_delivery expect_at(int line, shmq_handle *h, uint64_t id, uint16_t attempt, uint64_t seq,
                               uint32_t length, int64_t timeout)
{
    static char buf[8192];
    shmq_delivery d;
    memset(&d, 0, sizeof d);
    int rc = shmq_fetch(h, buf, sizeof buf, timeout, LONG_LEASE, &d);
    if (rc != SHMQ_OK)
        test_fail(__FILE__, line, "shmq_fetch returned %d (%s), expected job %llu (attempt %u)", rc,
                  shmq_strerror(rc), (unsigned long long)id, attempt);
    if (d.job_id != id || d.attempt != attempt)
        test_fail(__FILE__, line, "fetched job %llu attempt %u, expected job %llu attempt %u",
                  (unsigned long long)d.job_id, d.attempt, (unsigned long long)id, attempt);
    if (d.length != length || d.tag != (uint8_t)seq || check_pattern((const uint8_t *)buf, seq, length) != 0)
        test_fail(__FILE__, line, "job %llu: wrong payload (length %u tag %u)", (unsigned long long)id, d.length,
                  d.tag);
    return d;
}
#define EXPECT(h, id, attempt, seq, length) expect_at(__LINE__, (h), (id), (attempt), (seq), (length), 1000 * MS)

static void expect_empty_at(int line, shmq_handle *h)
{
    static char buf[8192];
    shmq_delivery d;
    int rc = shmq_fetch(h, buf, sizeof buf, 0, LONG_LEASE, &d);
    if (rc != SHMQ_EEMPTY)
        test_fail(__FILE__, line, "shmq_fetch returned %d (%s) with job %llu attempt %u, expected nothing", rc,
                  shmq_strerror(rc), rc == SHMQ_OK || rc == SHMQ_ECLAIMED ? (unsigned long long)d.job_id : 0ull,
                  rc == SHMQ_OK || rc == SHMQ_ECLAIMED ? d.attempt : 0);
}
#define EXPECT_EMPTY(h) expect_empty_at(__LINE__, (h))

static void ack_empty(shmq_handle *h, const shmq_delivery *d) { CHECK_RC(shmq_ack(h, d, 0, NULL, 0), SHMQ_OK); }

/* ------------------------------------------------------------ dead processes */

/* Makes a handle's process look dead to everyone: its participant entry
 * gets the pid of a child that was forked and reaped. */
static void kill_identity(shmq_handle *victim)
{
    atomic_store(&victim->participants[shmq_participant_index(victim)].pid, (uint32_t)dead_pid());
}

enum { CHILD_ATTACH = 10, CHILD_LOG = 11, CHILD_FETCH = 12, CHILD_FAULT_MISSED = 42, CHILD_NOT_KILLED = 43 };

typedef struct child_outcome {
    int status;          /* from waitpid */
    int reported;        /* the child got a job and wrote its delivery */
    shmq_delivery d;
} child_outcome;

/* A consumer process: attaches (with SHMQ_FAULT=`fault` when given, set
 * before attaching), fetches one job, reports it through a pipe and kills
 * itself with SIGKILL without finishing it. With a fault point it should
 * never get to report: the fault kills it inside shmq_fetch. */
static child_outcome consumer_dies(const jobq *q, const char *fault)
{
    int fds[2];
    CHECK_EQ(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (fault)
            setenv("SHMQ_FAULT", fault, 1);
        else
            unsetenv("SHMQ_FAULT");
        shmq_handle *c = NULL;
        if (shmq_attach(q->r.base, q->r.size, &c) != SHMQ_OK)
            _exit(CHILD_ATTACH);
        if (shmq_log_open(c, q->dir) != SHMQ_OK)
            _exit(CHILD_LOG);
        static char buf[8192];
        shmq_delivery d;
        int rc = shmq_fetch(c, buf, sizeof buf, 1000 * MS, LONG_LEASE, &d);
        if (rc != SHMQ_OK && rc != SHMQ_ECLAIMED)
            _exit(CHILD_FETCH);
        if (write(fds[1], &d, sizeof d) != (ssize_t)sizeof d)
            _exit(CHILD_FETCH);
        if (fault)
            _exit(CHILD_FAULT_MISSED);
        kill(getpid(), SIGKILL);
        _exit(CHILD_NOT_KILLED);
    }
    close(fds[1]);
    child_outcome out = {0};
    CHECK_EQ(waitpid(pid, &out.status, 0), pid);
    out.reported = read(fds[0], &out.d, sizeof out.d) == (ssize_t)sizeof out.d;
    close(fds[0]);
    return out;
}

static int killed_by_sigkill(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL; }

/* A consumer_dies() without a fault point: it must have taken a job and died by SIGKILL. */
static void check_died_holding(const child_outcome *c, int line)
{
    if (!killed_by_sigkill(c->status) || !c->reported)
        test_fail(__FILE__, line, "the consumer process did not die holding a job (%s %d, %s)",
                  WIFEXITED(c->status) ? "exit status" : "signal",
                  WIFEXITED(c->status) ? WEXITSTATUS(c->status) : WTERMSIG(c->status),
                  c->reported ? "it reported a job" : "no job reported");
}

/* ------------------------------------------------------------ 1. round trip */

void test_jobs_round_trip(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    int64_t before = wall_now();
    uint64_t id = ENQUEUE(h, to_lane(-1), 7, 100);
    int64_t after = wall_now();
    CHECK_EQ(status_of(h, id), SHMQ_JOB_QUEUED);
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.enqueued, 1);
    CHECK_EQ(s.depth, 1);
    CHECK_EQ(s.started, 0);

    static char buf[256];
    shmq_delivery d;
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LONG_LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, id);
    CHECK_EQ(d.attempt, 1);
    CHECK_EQ(d.tag, 7);
    CHECK_EQ(d.length, 100);
    CHECK(d.lane < LANES - 1); /* any job goes to an unordered lane */
    CHECK_EQ(check_pattern((const uint8_t *)buf, 7, 100), 0);
    CHECK(d.enqueued_ns >= before && d.enqueued_ns <= after);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_RUNNING);
    s = stats(h);
    CHECK_EQ(s.started, 1);
    CHECK_EQ(s.in_flight, 1);
    CHECK_EQ(s.depth, 0);
    CHECK_EQ(s.consumers, 1);
    EXPECT_EMPTY(h);

    static const char result[] = "the result bytes";
    int64_t ack_before = wall_now();
    CHECK_RC(shmq_ack(h, &d, 9, result, sizeof result), SHMQ_OK);
    int64_t ack_after = wall_now();

    shmq_result_info info;
    CHECK_EQ(shmq_job_status(h, id, &info), SHMQ_JOB_DONE);
    CHECK_EQ(info.status, SHMQ_JOB_DONE);
    CHECK_EQ(info.length, sizeof result);
    CHECK_EQ(info.tag, 9);
    CHECK_EQ(info.attempt, 1);
    CHECK(info.finished_ns >= ack_before && info.finished_ns <= ack_after);

    char out[64];
    memset(out, 0, sizeof out);
    CHECK_RC(shmq_result_wait(h, id, 0, out, sizeof out, &info), SHMQ_OK);
    CHECK_EQ(info.status, SHMQ_JOB_DONE);
    CHECK_EQ(info.length, sizeof result);
    CHECK_EQ(info.tag, 9);
    CHECK_EQ(memcmp(out, result, sizeof result), 0);
    /* A buffer too small: ECLAIMED with the length needed. */
    CHECK_RC(shmq_result_wait(h, id, 0, out, 4, &info), SHMQ_ECLAIMED);
    CHECK_EQ(info.length, sizeof result);

    /* The lease is over: a second finish of any kind is refused, and writes no second result. */
    CHECK_RC(shmq_ack(h, &d, 9, result, sizeof result), SHMQ_ELEASE);
    CHECK_RC(shmq_fail(h, &d, -1, 0, "late", 4), SHMQ_ELEASE);
    CHECK_RC(shmq_fail(h, &d, wall_now(), 0, "late", 4), SHMQ_ELEASE);
    CHECK_RC(shmq_extend(h, &d, LONG_LEASE), SHMQ_ELEASE);
    CHECK_RC(shmq_delivery_payload(h, &d, buf), SHMQ_ELEASE);
    CHECK_EQ(atomic_load(&h->jobs->result_seq), 1);
    CHECK_EQ(shmq_job_status(h, id, &info), SHMQ_JOB_DONE);
    CHECK_EQ(info.tag, 9);

    s = stats(h);
    CHECK_EQ(s.done, 1);
    CHECK_EQ(s.failed, 0);
    CHECK_EQ(s.in_flight, 0);
    EXPECT_EMPTY(h);
    /* An id that never was a job. */
    CHECK_EQ(status_of(h, id + 1), SHMQ_JOB_UNKNOWN);
    CHECK_RC(shmq_result_wait(h, id + 1, 0, out, sizeof out, &info), SHMQ_EEMPTY);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 2. payloads larger than the buffer */

void test_jobs_claimed_payload(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    static char small[64], big[4096];

    /* By reference (over 256 bytes): the lease is taken, the bytes come second. */
    uint64_t id = ENQUEUE(h, to_lane(0), 1, 1000);
    shmq_delivery d;
    CHECK_RC(shmq_fetch(h, small, sizeof small, 0, LONG_LEASE, &d), SHMQ_ECLAIMED);
    CHECK_EQ(d.job_id, id);
    CHECK_EQ(d.length, 1000);
    CHECK_EQ(d.attempt, 1);
    CHECK_EQ(d.tag, 1);
    CHECK(d.flags & SHMQ_JOBF_REF);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_RUNNING);
    memset(big, 0, sizeof big);
    CHECK_RC(shmq_delivery_payload(h, &d, big), SHMQ_OK);
    CHECK_EQ(check_pattern((const uint8_t *)big, 1, 1000), 0);
    CHECK_RC(shmq_delivery_payload(h, &d, big), SHMQ_OK); /* again: the lease still holds it */
    CHECK_EQ(check_pattern((const uint8_t *)big, 1, 1000), 0);
    ack_empty(h, &d);
    CHECK_RC(shmq_delivery_payload(h, &d, big), SHMQ_ELEASE);

    /* Inline (200 bytes) into a 16-byte buffer. */
    id = ENQUEUE(h, to_lane(0), 2, 200);
    CHECK_RC(shmq_fetch(h, small, 16, 0, LONG_LEASE, &d), SHMQ_ECLAIMED);
    CHECK_EQ(d.job_id, id);
    CHECK_EQ(d.length, 200);
    CHECK(!(d.flags & SHMQ_JOBF_REF));
    memset(big, 0, sizeof big);
    CHECK_RC(shmq_delivery_payload(h, &d, big), SHMQ_OK);
    CHECK_EQ(check_pattern((const uint8_t *)big, 2, 200), 0);
    ack_empty(h, &d);

    /* An exact fit is no claim; a payload of 0 bytes fits anywhere. */
    id = ENQUEUE(h, to_lane(0), 3, 300);
    CHECK_RC(shmq_fetch(h, big, 300, 0, LONG_LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, id);
    CHECK_EQ(check_pattern((const uint8_t *)big, 3, 300), 0);
    ack_empty(h, &d);
    id = ENQUEUE(h, to_lane(0), 4, 0);
    CHECK_RC(shmq_fetch(h, small, 0, 0, LONG_LEASE, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, id);
    CHECK_EQ(d.length, 0);
    ack_empty(h, &d);
    EXPECT_EMPTY(h);
    CHECK_EQ(stats(h).done, 4);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 3. retries and dead jobs */

void test_jobs_retry_and_dead(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    uint64_t id = ENQUEUE(h, to_lane(-1), 5, 40);
    shmq_delivery d1 = EXPECT(h, id, 1, 5, 40);
    int64_t due = wall_now() + 80 * MS;
    CHECK_RC(shmq_fail(h, &d1, due, 3, "boom", 4), SHMQ_OK);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_SCHEDULED);
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.failed, 1);
    CHECK_EQ(s.retried, 1);
    CHECK_EQ(s.dead, 0);
    CHECK_EQ(s.waiting, 1);
    CHECK_EQ(s.in_flight, 0);
    CHECK_EQ(shmq_jobs_next_due(h), due);
    CHECK_RC(shmq_ack(h, &d1, 0, NULL, 0), SHMQ_ELEASE); /* the failed lease is over */
    EXPECT_EMPTY(h);                                     /* not before its time */
    CHECK_EQ(shmq_jobs_tick(h), 0);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_SCHEDULED);

    wait_wall(due);
    CHECK_EQ(shmq_jobs_tick(h), 1); /* due: into a lane */
    CHECK_EQ(status_of(h, id), SHMQ_JOB_QUEUED);
    CHECK_EQ(stats(h).waiting, 0);
    shmq_delivery d2 = EXPECT(h, id, 2, 5, 40);
    CHECK(wall_now() >= due);

    /* Again, with the fetcher asleep when it becomes due: it wakes for it. */
    due = wall_now() + 50 * MS;
    CHECK_RC(shmq_fail(h, &d2, due, 3, "boom", 4), SHMQ_OK);
    shmq_delivery d3 = EXPECT(h, id, 3, 5, 40);
    int64_t late = wall_now() - due;
    CHECK(late >= 0);
    if (late > 500 * MS)
        test_fail(__FILE__, __LINE__, "the retry came %lld ms after its time", (long long)(late / MS));

    /* Dead: the error is its result. */
    static const char error[] = "fatal: no such thing";
    CHECK_RC(shmq_fail(h, &d3, -1, 4, error, sizeof error), SHMQ_OK);
    shmq_result_info info;
    CHECK_EQ(shmq_job_status(h, id, &info), SHMQ_JOB_DEAD);
    CHECK_EQ(info.status, SHMQ_JOB_DEAD);
    CHECK_EQ(info.attempt, 3);
    char out[64];
    memset(out, 0, sizeof out);
    CHECK_RC(shmq_result_wait(h, id, 100 * MS, out, sizeof out, &info), SHMQ_OK);
    CHECK_EQ(info.status, SHMQ_JOB_DEAD);
    CHECK_EQ(info.tag, 4);
    CHECK_EQ(info.length, sizeof error);
    CHECK_EQ(memcmp(out, error, sizeof error), 0);
    s = stats(h);
    CHECK_EQ(s.failed, 3);
    CHECK_EQ(s.retried, 2);
    CHECK_EQ(s.dead, 1);
    CHECK_EQ(s.done, 0);
    CHECK_EQ(s.started, 3);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.in_flight, 0);
    CHECK_RC(shmq_fail(h, &d3, -1, 4, error, sizeof error), SHMQ_ELEASE);
    EXPECT_EMPTY(h);
    CHECK_EQ(shmq_jobs_tick(h), 0);
    EXPECT_EMPTY(h);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 4. delayed jobs */

void test_jobs_delayed(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    int64_t enqueued = wall_now();
    int64_t due = enqueued + 200 * MS;
    shmq_enqueue_options o = {.lane = -1, .not_before_ns = due};
    uint64_t late_id = ENQUEUE(h, o, 1, 50);
    CHECK_EQ(status_of(h, late_id), SHMQ_JOB_SCHEDULED);
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.enqueued, 1);
    CHECK_EQ(s.scheduled, 1);
    CHECK_EQ(s.waiting, 1);
    CHECK_EQ(s.depth, 0);
    CHECK_EQ(s.in_flight, 0);
    CHECK_EQ(shmq_jobs_next_due(h), due);
    EXPECT_EMPTY(h);

    /* A time already past is no delay; neither waits behind the delayed one. */
    o.not_before_ns = wall_now() - 1000 * MS;
    uint64_t past_id = ENQUEUE(h, o, 2, 50);
    uint64_t now_id = ENQUEUE(h, to_lane(-1), 3, 50);
    CHECK_EQ(status_of(h, past_id), SHMQ_JOB_QUEUED);
    s = stats(h);
    CHECK_EQ(s.enqueued, 3);
    CHECK_EQ(s.scheduled, 1);
    CHECK_EQ(s.waiting, 1);
    CHECK_EQ(s.depth, 2);
    static char buf[256];
    shmq_delivery a, b;
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LONG_LEASE, &a), SHMQ_OK);
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LONG_LEASE, &b), SHMQ_OK);
    CHECK((a.job_id == past_id && b.job_id == now_id) || (a.job_id == now_id && b.job_id == past_id));
    ack_empty(h, &a);
    ack_empty(h, &b);
    EXPECT_EMPTY(h);
    CHECK(wall_now() < due); /* (the test's own timing) */
    CHECK_EQ(status_of(h, late_id), SHMQ_JOB_SCHEDULED);

    /* A fetcher waiting for it gets it at its time, not before. */
    shmq_delivery d = EXPECT(h, late_id, 1, 1, 50);
    int64_t got = wall_now();
    CHECK(got >= due);
    if (got - due > 500 * MS)
        test_fail(__FILE__, __LINE__, "the delayed job came %lld ms after its time", (long long)((got - due) / MS));
    CHECK(d.enqueued_ns >= enqueued && d.enqueued_ns < due); /* when it was enqueued, not when it was due */
    s = stats(h);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.in_flight, 1);
    CHECK_EQ(s.scheduled, 1);
    ack_empty(h, &d);
    CHECK_EQ(status_of(h, late_id), SHMQ_JOB_DONE);
    s = stats(h);
    CHECK_EQ(s.done, 3);
    CHECK_EQ(s.started, 3);
    CHECK_EQ(s.in_flight, 0);
    EXPECT_EMPTY(h);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 5. leases */

void test_jobs_lease_expiry(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    static char buf[256];

    uint64_t id = ENQUEUE(h, to_lane(-1), 1, 30);
    shmq_delivery d1;
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, 1 * MS, &d1), SHMQ_OK);
    CHECK_EQ(d1.job_id, id);
    sleep_ms(5);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_RUNNING); /* nobody looked yet */
    shmq_jobs_tick(h);
    CHECK(status_of(h, id) != SHMQ_JOB_RUNNING);
    CHECK_EQ(stats(h).lease_expired, 1);
    CHECK_RC(shmq_extend(h, &d1, LONG_LEASE), SHMQ_ELEASE); /* too late */
    shmq_delivery d2 = EXPECT(h, id, 2, 1, 30);
    CHECK(d2.gen != d1.gen || d2.entry != d1.entry);
    CHECK_RC(shmq_ack(h, &d1, 0, NULL, 0), SHMQ_ELEASE);
    CHECK_RC(shmq_fail(h, &d1, -1, 0, NULL, 0), SHMQ_ELEASE);
    CHECK_RC(shmq_delivery_payload(h, &d1, buf), SHMQ_ELEASE);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_RUNNING); /* the stale calls did not touch the new lease */
    CHECK_RC(shmq_ack(h, &d2, 0, NULL, 0), SHMQ_OK);
    shmq_result_info info;
    CHECK_EQ(shmq_job_status(h, id, &info), SHMQ_JOB_DONE);
    CHECK_EQ(info.attempt, 2);

    /* Extended: the lease outlives its first deadline. */
    id = ENQUEUE(h, to_lane(-1), 2, 30);
    shmq_delivery d;
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, 20 * MS, &d), SHMQ_OK);
    CHECK_EQ(d.job_id, id);
    CHECK_RC(shmq_extend(h, &d, LONG_LEASE), SHMQ_OK);
    sleep_ms(40);
    shmq_jobs_tick(h);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_RUNNING);
    EXPECT_EMPTY(h);
    CHECK_EQ(stats(h).lease_expired, 1);
    /* ... and shortened: it expires. */
    CHECK_RC(shmq_extend(h, &d, 1 * MS), SHMQ_OK);
    sleep_ms(5);
    shmq_jobs_tick(h);
    CHECK_EQ(stats(h).lease_expired, 2);
    shmq_delivery again = EXPECT(h, id, 2, 2, 30);
    CHECK_RC(shmq_ack(h, &d, 0, NULL, 0), SHMQ_ELEASE);
    ack_empty(h, &again);
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.done, 2);
    CHECK_EQ(s.started, 4);
    CHECK_EQ(s.in_flight, 0);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.consumer_died, 0);
    EXPECT_EMPTY(h);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 6. dead consumers */

/* A real process fetches a job and is killed -9 holding it. */
void test_jobs_dead_consumer(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    uint64_t id = ENQUEUE(h, to_lane(-1), 1, 60);
    uint64_t big = ENQUEUE(h, to_lane(-1), 2, 700); /* by reference */
    child_outcome c = consumer_dies(&q, NULL);
    check_died_holding(&c, __LINE__);
    CHECK_EQ(c.d.attempt, 1);
    CHECK(c.d.job_id == id || c.d.job_id == big);
    uint64_t taken = c.d.job_id, other = taken == id ? big : id;
    uint64_t taken_seq = taken == id ? 1 : 2, other_seq = 3 - taken_seq;
    uint32_t taken_len = taken == id ? 60 : 700, other_len = taken == id ? 700 : 60;
    CHECK_EQ(status_of(h, taken), SHMQ_JOB_RUNNING);
    CHECK_EQ(stats(h).in_flight, 1);
    CHECK_EQ(stats(h).consumers, 0); /* the dead one is not counted */

    /* The other job is untouched; the dead one's comes back after a tick. */
    shmq_delivery o = EXPECT(h, other, 1, other_seq, other_len);
    ack_empty(h, &o);
    shmq_jobs_tick(h);
    CHECK_EQ(stats(h).consumer_died, 1);
    CHECK(status_of(h, taken) == SHMQ_JOB_SCHEDULED || status_of(h, taken) == SHMQ_JOB_QUEUED);
    shmq_delivery d = EXPECT(h, taken, 2, taken_seq, taken_len);
    ack_empty(h, &d);
    shmq_result_info info;
    CHECK_EQ(shmq_job_status(h, taken, &info), SHMQ_JOB_DONE);
    CHECK_EQ(info.attempt, 2);

    /* Nothing else comes back, whoever looks again. */
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK);
    shmq_jobs_tick(h);
    EXPECT_EMPTY(h);
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.done, 2);
    CHECK_EQ(s.started, 3);
    CHECK_EQ(s.consumer_died, 1);
    CHECK_EQ(s.lease_expired, 0);
    CHECK_EQ(s.in_flight, 0);
    CHECK_EQ(s.waiting, 0);
    jobq_close(&q);
}

/* A fetcher asleep on an empty queue while a tick takes a dead consumer's
 * job back: the job is due at once, so the fetcher should get it at once,
 * not when its own timeout ends. */
typedef struct sleeper {
    shmq_handle *h;
    int rc;
    shmq_delivery d;
    int64_t returned;
} sleeper;

static void *sleeper_fetch(void *arg)
{
    sleeper *s = arg;
    static char buf[256];
    s->rc = shmq_fetch(s->h, buf, sizeof buf, 1000 * MS, LONG_LEASE, &s->d);
    s->returned = now_ns();
    return NULL;
}

void test_jobs_tick_wakes_fetcher(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    shmq_handle *doomed = logged_attach(&q.r, q.dir);
    shmq_handle *waiter = logged_attach(&q.r, q.dir);

    uint64_t id = ENQUEUE(h, to_lane(-1), 1, 20);
    shmq_delivery lost = EXPECT(doomed, id, 1, 1, 20);
    (void)lost;
    kill_identity(doomed);

    sleeper s = {.h = waiter};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, sleeper_fetch, &s), 0);
    sleep_ms(100); /* it sleeps: the queue is empty, nothing is scheduled */
    int64_t tick = now_ns();
    shmq_jobs_tick(h); /* takes the lease back: the job may run again now */
    CHECK_EQ(pthread_join(t, NULL), 0);
    if (s.rc != SHMQ_OK)
        test_fail(__FILE__, __LINE__,
                  "a fetcher asleep while shmq_jobs_tick took a dead consumer's job back got %d (%s) %lld ms "
                  "after the tick, not the job",
                  s.rc, shmq_strerror(s.rc), (long long)((s.returned - tick) / MS));
    CHECK_EQ(s.d.job_id, id);
    CHECK_EQ(s.d.attempt, 2);
    if (s.returned - tick > 300 * MS)
        test_fail(__FILE__, __LINE__, "the job came %lld ms after the tick took it back",
                  (long long)((s.returned - tick) / MS));
    ack_empty(waiter, &s.d);
    shmq_detach(waiter);
    shmq_detach(doomed);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 7. ordered lanes */

void test_jobs_ordered_lane(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *a = q.h;
    shmq_handle *b = logged_attach(&q.r, q.dir);
    shmq_enqueue_options o = to_lane(ORDERED);

    uint64_t j1 = ENQUEUE(a, o, 1, 20), j2 = ENQUEUE(a, o, 2, 400), j3 = ENQUEUE(a, o, 3, 20);
    CHECK(j1 < j2 && j2 < j3);
    shmq_delivery d1 = EXPECT(a, j1, 1, 1, 20);
    CHECK_EQ(d1.lane, ORDERED);
    CHECK(d1.flags & SHMQ_JOBF_ORDERED);
    EXPECT_EMPTY(b); /* one job of the lane at a time */
    EXPECT_EMPTY(a);
    CHECK_EQ(status_of(a, j2), SHMQ_JOB_QUEUED);
    /* Other lanes are not held up. */
    uint64_t u = ENQUEUE(a, to_lane(-1), 9, 20);
    shmq_delivery du = EXPECT(b, u, 1, 9, 20);
    ack_empty(b, &du);
    EXPECT_EMPTY(b);

    ack_empty(a, &d1);
    shmq_delivery d2 = EXPECT(b, j2, 1, 2, 400);
    EXPECT_EMPTY(a);

    /* A retry keeps the lane: j3 does not start before j2 is over. */
    int64_t due = wall_now() + 60 * MS;
    CHECK_RC(shmq_fail(b, &d2, due, 0, "again", 5), SHMQ_OK);
    CHECK_EQ(status_of(a, j2), SHMQ_JOB_SCHEDULED);
    EXPECT_EMPTY(a);
    EXPECT_EMPTY(b);
    CHECK_EQ(status_of(a, j3), SHMQ_JOB_QUEUED);
    d2 = EXPECT(a, j2, 2, 2, 400); /* waits for it */
    CHECK(wall_now() >= due);
    EXPECT_EMPTY(b);
    ack_empty(a, &d2);
    shmq_delivery d3 = EXPECT(b, j3, 1, 3, 20);
    ack_empty(b, &d3);
    EXPECT_EMPTY(a);

    /* A dead job opens the lane. */
    uint64_t j4 = ENQUEUE(a, o, 4, 20), j5 = ENQUEUE(a, o, 5, 20);
    shmq_delivery d4 = EXPECT(a, j4, 1, 4, 20);
    EXPECT_EMPTY(b);
    CHECK_RC(shmq_fail(a, &d4, -1, 0, "no", 2), SHMQ_OK);
    CHECK_EQ(status_of(a, j4), SHMQ_JOB_DEAD);
    shmq_delivery d5 = EXPECT(b, j5, 1, 5, 20);
    ack_empty(b, &d5);

    /* A consumer process killed holding the lane's job: the same job comes
     * back first, then the rest in order. */
    uint64_t j6 = ENQUEUE(a, o, 6, 20), j7 = ENQUEUE(a, o, 7, 300), j8 = ENQUEUE(a, o, 8, 20);
    child_outcome c = consumer_dies(&q, NULL);
    check_died_holding(&c, __LINE__);
    CHECK_EQ(c.d.job_id, j6);
    CHECK_EQ(c.d.lane, ORDERED);
    EXPECT_EMPTY(a); /* the dead hold the lane until someone looks */
    shmq_jobs_tick(a);
    shmq_delivery d6 = EXPECT(b, j6, 2, 6, 20);
    EXPECT_EMPTY(a);
    ack_empty(b, &d6);
    shmq_delivery d7 = EXPECT(a, j7, 1, 7, 300);
    ack_empty(a, &d7);
    shmq_delivery d8 = EXPECT(a, j8, 1, 8, 20);
    ack_empty(a, &d8);
    CHECK_RC(shmq_log_maintain(a), SHMQ_OK);
    shmq_jobs_tick(a);
    EXPECT_EMPTY(a);
    EXPECT_EMPTY(b);
    shmq_job_stats s = stats(a);
    CHECK_EQ(s.done, 8); /* u, j1 j2 j3 j5 j6 j7 j8 */
    CHECK_EQ(s.dead, 1);
    CHECK_EQ(s.consumer_died, 1);
    CHECK_EQ(s.in_flight, 0);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(atomic_load(&lane_at(a, ORDERED).header->gate), 0);
    shmq_detach(b);
    jobq_close(&q);
}

/* Three jobs in the ordered lane; the first is taken by `take` (a process,
 * or a simulation of one, that dies holding it). Then: the lane stays held
 * until a tick, the first job comes back once with attempt 2, then the
 * others in order, and nothing more. */
static void ordered_recovers(jobq *q, const uint64_t ids[3], const char *what)
{
    shmq_handle *h = q->h;
    EXPECT_EMPTY(h);
    shmq_jobs_tick(h);
    shmq_delivery d = expect_at(__LINE__, h, ids[0], 2, 1, 20, 1000 * MS);
    EXPECT_EMPTY(h);
    ack_empty(h, &d);
    d = EXPECT(h, ids[1], 1, 2, 20);
    ack_empty(h, &d);
    d = EXPECT(h, ids[2], 1, 3, 20);
    ack_empty(h, &d);
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK);
    shmq_jobs_tick(h);
    EXPECT_EMPTY(h);
    for (int i = 0; i < 3; i++) {
        shmq_result_info info;
        CHECK_EQ(shmq_job_status(h, ids[i], &info), SHMQ_JOB_DONE);
        CHECK_EQ(info.attempt, i == 0 ? 2 : 1);
    }
    if (shmq_jobs_live(h) != 0)
        test_fail(__FILE__, __LINE__, "%s: %llu job entries still in use", what,
                  (unsigned long long)shmq_jobs_live(h));
    CHECK_EQ(atomic_load(&lane_at(h, ORDERED).header->gate), 0);
    CHECK(shmq_is_empty(h));
}

/* Real processes killed inside shmq_fetch by SHMQ_FAULT. */
void test_jobs_ordered_fault_points(void)
{
    static const char *const points[] = {"fetch_after_take", "fetch_after_lease"};
    int missed = 0;
    for (int i = 0; i < 2; i++) {
        jobq q;
        shmq_params p = job_params();
        jobq_open(&q, &p);
        shmq_enqueue_options o = to_lane(ORDERED);
        uint64_t ids[3];
        for (int k = 0; k < 3; k++)
            ids[k] = ENQUEUE(q.h, o, (uint64_t)k + 1, 20);
        child_outcome c = consumer_dies(&q, points[i]);
        if (!killed_by_sigkill(c.status)) {
            fprintf(stderr, "SHMQ_FAULT=%s: the consumer was not killed inside shmq_fetch (%s %d%s)\n", points[i],
                    WIFEXITED(c.status) ? "exit status" : "signal",
                    WIFEXITED(c.status) ? WEXITSTATUS(c.status) : WTERMSIG(c.status),
                    c.reported ? "; it returned from shmq_fetch with the job" : "");
            missed++;
        } else {
            CHECK(!c.reported);
        }
        ordered_recovers(&q, ids, points[i]);
        jobq_close(&q);
    }
    if (missed)
        test_fail(__FILE__, __LINE__, "%d of 2 fault points did not fire (is the name known to fault.c?)", missed);
}

/* The same two windows, white-box: the states a consumer killed there
 * leaves, made by hand under a participant that is then made dead. */
void test_jobs_ordered_dead_states(void)
{
    /* Killed after taking the head message, before its lease: gate CLAIM(it),
     * head READING(it), an entry FILLING(it). */
    {
        jobq q;
        shmq_params p = job_params();
        jobq_open(&q, &p);
        shmq_handle *h = q.h;
        uint64_t ids[3];
        for (int k = 0; k < 3; k++)
            ids[k] = ENQUEUE(h, to_lane(ORDERED), (uint64_t)k + 1, 20);
        shmq_handle *doomed = logged_attach(&q.r, q.dir);
        unsigned me = shmq_participant_index(doomed);
        uint64_t open = 0;
        CHECK(atomic_compare_exchange_strong(&lane_at(h, ORDERED).header->gate, &open, SHMQ_GATE_CLAIM | me));
        uint32_t entry = UINT32_MAX;
        for (uint32_t i = 0; i < h->job_slots && entry == UINT32_MAX; i++) {
            uint64_t s = atomic_load(&h->entries[i].state);
            if (shmq_job_kind(s) == SHMQ_JOB_FREE &&
                atomic_compare_exchange_strong(&h->entries[i].state, &s, shmq_job_state(SHMQ_JOB_FILLING, me, s)))
                entry = i;
        }
        CHECK(entry != UINT32_MAX);
        shmq_taken t;
        uint64_t head = lane_head(h, ORDERED);
        CHECK_RC(shmq_lane_take(doomed, ORDERED, &t), SHMQ_OK);
        CHECK_EQ(t.msg.job_id, ids[0]);
        CHECK_EQ(shmq_state_kind(lane_state(h, ORDERED, head)), SHMQ_SLOT_READING);
        kill_identity(doomed);
        ordered_recovers(&q, ids, "dead after take");
        shmq_detach(doomed);
        jobq_close(&q);
    }
    /* Killed after its lease was published, before the head's slots were
     * released: gate = entry + 1, entry RUNNING(it), head READING(it). */
    {
        jobq q;
        shmq_params p = job_params();
        jobq_open(&q, &p);
        shmq_handle *h = q.h;
        uint64_t ids[3];
        for (int k = 0; k < 3; k++)
            ids[k] = ENQUEUE(h, to_lane(ORDERED), (uint64_t)k + 1, 20);
        shmq_handle *doomed = logged_attach(&q.r, q.dir);
        uint64_t head = lane_head(h, ORDERED);
        uint64_t ready = lane_state(h, ORDERED, head);
        CHECK_EQ(shmq_state_kind(ready), SHMQ_SLOT_READY);
        shmq_delivery d = EXPECT(doomed, ids[0], 1, 1, 20);
        CHECK_EQ(atomic_load(&lane_at(h, ORDERED).header->gate), (uint64_t)d.entry + 1);
        /* Undo the release, as if the process had died just before it. */
        lane_set_state(h, ORDERED, head,
                       shmq_state(lap_of(h, head), SHMQ_SLOT_READING, shmq_participant_index(doomed),
                                  shmq_state_span(ready)));
        lane_set_hints(h, ORDERED, head, lane_tail(h, ORDERED));
        kill_identity(doomed);
        ordered_recovers(&q, ids, "dead after lease");
        CHECK_EQ(lane_state(h, ORDERED, head), free_state(h, head + h->slot_mask + 1));
        shmq_detach(doomed);
        jobq_close(&q);
    }
}

/* The ring asks the job layer to repair an ordered lane's gate through the
 * handle's repair_gate callback (set by shmq_attach): shmq_repair alone, with
 * no tick, opens a gate a dead consumer claimed and puts its head message
 * back, READY with attempt 2. */
void test_jobs_repair_reaches_the_gate(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    uint64_t ids[3];
    for (int k = 0; k < 3; k++)
        ids[k] = ENQUEUE(h, to_lane(ORDERED), (uint64_t)k + 1, 20);
    shmq_handle *doomed = logged_attach(&q.r, q.dir);
    unsigned me = shmq_participant_index(doomed);
    uint64_t open = 0;
    CHECK(atomic_compare_exchange_strong(&lane_at(h, ORDERED).header->gate, &open, SHMQ_GATE_CLAIM | me));
    shmq_taken t;
    uint64_t head = lane_head(h, ORDERED);
    CHECK_RC(shmq_lane_take(doomed, ORDERED, &t), SHMQ_OK);
    CHECK_EQ(t.msg.job_id, ids[0]);
    kill_identity(doomed);
    EXPECT_EMPTY(h); /* the gate is shut: the lane waits for a repair */
    if (shmq_repair(h) < 1)
        test_fail(__FILE__, __LINE__, "shmq_repair left the ordered lane's gate to the tick (gate %llx)",
                  (unsigned long long)atomic_load(&lane_at(h, ORDERED).header->gate));
    CHECK_EQ(atomic_load(&lane_at(h, ORDERED).header->gate), 0);
    CHECK_EQ(shmq_state_kind(lane_state(h, ORDERED, head)), SHMQ_SLOT_READY);
    shmq_delivery d = expect_at(__LINE__, h, ids[0], 2, 1, 20, 1000 * MS);
    ack_empty(h, &d);
    d = EXPECT(h, ids[1], 1, 2, 20);
    ack_empty(h, &d);
    d = EXPECT(h, ids[2], 1, 3, 20);
    ack_empty(h, &d);
    shmq_detach(doomed);
    jobq_close(&q);
}

/* A dead consumer's lease names its participant entry: registration does not
 * hand that entry to a newcomer while the lease is there (participant.c asks
 * the job tables through the handle's references callback), and does once
 * the tick has taken the lease back. */
void test_jobs_lease_keeps_participant_entry(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    uint64_t id = ENQUEUE(h, to_lane(0), 1, 20);
    shmq_handle *doomed = logged_attach(&q.r, q.dir);
    unsigned me = shmq_participant_index(doomed);
    shmq_delivery d = EXPECT(doomed, id, 1, 1, 20);
    (void)d;
    kill_identity(doomed);
    enum { MAX = 128 };
    shmq_handle *others[MAX];
    int n = 0, rc = SHMQ_OK;
    while (n < MAX && (rc = shmq_attach(q.r.base, q.r.size, &others[n])) == SHMQ_OK) {
        if (shmq_participant_index(others[n]) == me)
            test_fail(__FILE__, __LINE__, "participant entry %u went to a newcomer while a lease names it", me);
        n++;
    }
    CHECK_RC(rc, SHMQ_EPARTICIPANTS);
    CHECK_EQ(shmq_jobs_tick(h), 1); /* the dead consumer's lease: taken back */
    shmq_handle *late = NULL;
    CHECK_RC(shmq_attach(q.r.base, q.r.size, &late), SHMQ_OK);
    CHECK_EQ(shmq_participant_index(late), me);
    shmq_detach(late);
    while (n > 0)
        shmq_detach(others[--n]);
    d = EXPECT(h, id, 2, 1, 20);
    ack_empty(h, &d);
    shmq_detach(doomed);
    jobq_close(&q);
}

/* A consumer hangs in the second window (lease published, head slot not
 * released) past its lease: the lease is taken back and its job runs and
 * ends elsewhere. Then the hung process is killed. Its slot must not keep
 * the lane shut: the next jobs of the lane run. */
void test_jobs_ordered_hung_then_dead(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    uint64_t ids[3];
    for (int k = 0; k < 3; k++)
        ids[k] = ENQUEUE(h, to_lane(ORDERED), (uint64_t)k + 1, 20);
    shmq_handle *hung = logged_attach(&q.r, q.dir);
    uint64_t head = lane_head(h, ORDERED);
    uint64_t ready = lane_state(h, ORDERED, head);
    static char buf[256];
    shmq_delivery lost;
    CHECK_RC(shmq_fetch(hung, buf, sizeof buf, 0, 1 * MS, &lost), SHMQ_OK);
    CHECK_EQ(lost.job_id, ids[0]);
    lane_set_state(h, ORDERED, head,
                   shmq_state(lap_of(h, head), SHMQ_SLOT_READING, shmq_participant_index(hung),
                              shmq_state_span(ready)));
    lane_set_hints(h, ORDERED, head, lane_tail(h, ORDERED));
    sleep_ms(5);
    shmq_jobs_tick(h); /* the lease expired: taken back; its process lives, so its slot stays */
    CHECK_EQ(stats(h).lease_expired, 1);
    shmq_delivery d = EXPECT(h, ids[0], 2, 1, 20);
    ack_empty(h, &d);
    kill_identity(hung);
    shmq_jobs_tick(h);
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK);
    CHECK(shmq_repair(h) >= 0); /* every repair there is, explicitly */
    static char fetched[256];
    shmq_delivery next;
    int rc = shmq_fetch(h, fetched, sizeof fetched, 200 * MS, LONG_LEASE, &next);
    if (rc != SHMQ_OK)
        test_fail(__FILE__, __LINE__,
                  "the ordered lane stays shut (fetch: %s): its head slot is still READING by the dead "
                  "process (state 0x%llx), the gate is %llu",
                  shmq_strerror(rc), (unsigned long long)lane_state(h, ORDERED, head),
                  (unsigned long long)atomic_load(&lane_at(h, ORDERED).header->gate));
    CHECK_EQ(next.job_id, ids[1]);
    CHECK_EQ(next.attempt, 1);
    ack_empty(h, &next);
    d = EXPECT(h, ids[2], 1, 3, 20);
    ack_empty(h, &d);
    EXPECT_EMPTY(h);
    shmq_detach(hung);
    jobq_close(&q);
}

/* Unordered lanes, real processes killed inside shmq_fetch. What the
 * maintenance loop runs (shmq_log_maintain: the lanes' dead readers, then a
 * tick; and ticks from fetchers) brings the job back exactly once. */
static void unordered_child_dies(jobq *q, const char *point)
{
    child_outcome c = consumer_dies(q, point);
    if (!killed_by_sigkill(c.status))
        test_fail(__FILE__, __LINE__, "SHMQ_FAULT=%s did not kill the consumer inside shmq_fetch", point);
    CHECK(!c.reported);
}

static void expect_nothing_more(jobq *q, uint64_t id, int line)
{
    shmq_handle *h = q->h;
    atomic_store(&h->header->maintained_ns, 0); /* the dead readers' pass is due again */
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK);
    shmq_jobs_tick(h);
    static char buf[256];
    shmq_delivery again;
    int rc = shmq_fetch(h, buf, sizeof buf, 50 * MS, LONG_LEASE, &again);
    if (rc == SHMQ_OK || rc == SHMQ_ECLAIMED)
        test_fail(__FILE__, line,
                  "job %llu, done on attempt 2, was delivered again (job %llu attempt %u) once the dead "
                  "consumer's lane slot was repaired",
                  (unsigned long long)id, (unsigned long long)again.job_id, again.attempt);
    CHECK_RC(rc, SHMQ_EEMPTY);
    shmq_result_info info;
    CHECK_EQ(shmq_job_status(h, id, &info), SHMQ_JOB_DONE);
    CHECK_EQ(info.attempt, 2);
    CHECK_EQ(stats(h).done, 1);
    CHECK_EQ(shmq_jobs_live(h), 0);
}

/* Killed after taking the message, before the lease: only the lane slot has the job. */
void test_jobs_unordered_dead_after_take(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    uint64_t id = ENQUEUE(h, to_lane(0), 1, 20);
    unordered_child_dies(&q, "fetch_after_take");
    shmq_jobs_tick(h); /* frees the half-made entry */
    CHECK_EQ(shmq_jobs_live(h), 0);
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK); /* puts the dead reader's job back */
    shmq_delivery d = EXPECT(h, id, 2, 1, 20);
    ack_empty(h, &d);
    expect_nothing_more(&q, id, __LINE__);
    jobq_close(&q);
}

/* Killed after its lease was published, before the lane slot was released:
 * the lease and the slot both name the job. A tick takes the lease back
 * first (as a fetcher's tick may, before maintenance looks at the lanes);
 * the job runs and is done; then the slot is repaired. */
void test_jobs_unordered_dead_after_lease(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    uint64_t id = ENQUEUE(h, to_lane(0), 1, 20);
    unordered_child_dies(&q, "fetch_after_lease");
    shmq_jobs_tick(h); /* takes the lease back */
    shmq_delivery d = EXPECT(h, id, 2, 1, 20);
    ack_empty(h, &d);
    expect_nothing_more(&q, id, __LINE__);
    jobq_close(&q);
}

/* The other order: maintenance sees the slot while the lease still holds the job. */
void test_jobs_unordered_dead_after_lease_maintained(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    uint64_t id = ENQUEUE(h, to_lane(0), 1, 20);
    unordered_child_dies(&q, "fetch_after_lease");
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK); /* the slot goes (the lease has the job), then a tick */
    shmq_jobs_tick(h);
    shmq_delivery d = EXPECT(h, id, 2, 1, 20);
    ack_empty(h, &d);
    expect_nothing_more(&q, id, __LINE__);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 8. unique keys */

static uint64_t enqueue_key(shmq_handle *h, uint64_t hi, uint64_t lo, int until_finish, int64_t not_before,
                            uint64_t seq, int expect_rc, uint64_t expect_id, int line)
{
    shmq_enqueue_options o = {.lane = -1, .unique_hi = hi, .unique_lo = lo,
                              .unique_until_finish = (uint8_t)until_finish, .not_before_ns = not_before,
                              .tag = (uint8_t)seq};
    uint8_t payload[32];
    fill_pattern(payload, seq, sizeof payload);
    uint64_t id = 12345;
    int rc = shmq_enqueue(h, &o, (const char *)payload, sizeof payload, 2000 * MS, &id);
    if (rc != expect_rc)
        test_fail(__FILE__, line, "shmq_enqueue with key (%llx, %llx) returned %d (%s), expected %d (%s)",
                  (unsigned long long)hi, (unsigned long long)lo, rc, shmq_strerror(rc), expect_rc,
                  shmq_strerror(expect_rc));
    if (expect_rc == SHMQ_OK && id == 0)
        test_fail(__FILE__, line, "job id 0");
    if (expect_rc == SHMQ_EDUPLICATE && id != expect_id)
        test_fail(__FILE__, line, "duplicate of key (%llx, %llx) names job %llu, expected %llu",
                  (unsigned long long)hi, (unsigned long long)lo, (unsigned long long)id,
                  (unsigned long long)expect_id);
    if (expect_rc != SHMQ_OK && expect_rc != SHMQ_EDUPLICATE && id != 0)
        test_fail(__FILE__, line, "a refused enqueue returned job id %llu", (unsigned long long)id);
    return id;
}
#define KEY_OK(h, hi, lo, uf, seq) enqueue_key((h), (hi), (lo), (uf), 0, (seq), SHMQ_OK, 0, __LINE__)
#define KEY_DUP(h, hi, lo, uf, id) enqueue_key((h), (hi), (lo), (uf), 0, 999, SHMQ_EDUPLICATE, (id), __LINE__)

/* Fetches `n` jobs (any order) into d[], by job id order of ids[]. */
static void fetch_these(shmq_handle *h, const uint64_t *ids, uint32_t n, shmq_delivery *d)
{
    static char buf[256];
    for (uint32_t k = 0; k < n; k++) {
        shmq_delivery x;
        CHECK_RC(shmq_fetch(h, buf, sizeof buf, 1000 * MS, LONG_LEASE, &x), SHMQ_OK);
        uint32_t i = 0;
        while (i < n && ids[i] != x.job_id)
            i++;
        if (i == n)
            test_fail(__FILE__, __LINE__, "fetched job %llu, not one expected", (unsigned long long)x.job_id);
        d[i] = x;
    }
}

void test_jobs_unique_keys(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    /* Until it starts. */
    uint64_t id1 = KEY_OK(h, 0x1111, 0x2222, 0, 1);
    KEY_DUP(h, 0x1111, 0x2222, 0, id1);
    KEY_DUP(h, 0x1111, 0x2222, 1, id1);
    uint64_t other = KEY_OK(h, 0x1111, 0x2223, 0, 2); /* another key */
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.enqueued, 2);
    CHECK_EQ(s.deduplicated, 2);
    CHECK_EQ(s.unique_keys, 2);
    uint64_t two[2] = {id1, other};
    shmq_delivery d[4];
    fetch_these(h, two, 2, d);
    CHECK_EQ(stats(h).unique_keys, 0); /* both started */
    uint64_t id2 = KEY_OK(h, 0x1111, 0x2222, 0, 3);
    CHECK(id2 != id1);
    ack_empty(h, &d[0]);
    ack_empty(h, &d[1]);
    KEY_DUP(h, 0x1111, 0x2222, 0, id2);
    shmq_delivery x = EXPECT(h, id2, 1, 3, 32);
    ack_empty(h, &x);

    /* Until it ends: held while it runs and while a retry waits; a dead job frees it. */
    uint64_t id3 = KEY_OK(h, 0x3333, 0x4444, 1, 4);
    x = EXPECT(h, id3, 1, 4, 32);
    KEY_DUP(h, 0x3333, 0x4444, 1, id3);
    CHECK_RC(shmq_fail(h, &x, wall_now() + 20 * MS, 0, NULL, 0), SHMQ_OK);
    KEY_DUP(h, 0x3333, 0x4444, 0, id3);
    x = EXPECT(h, id3, 2, 4, 32);
    KEY_DUP(h, 0x3333, 0x4444, 1, id3);
    ack_empty(h, &x);
    CHECK_EQ(stats(h).unique_keys, 0);
    uint64_t id4 = KEY_OK(h, 0x3333, 0x4444, 1, 5);
    x = EXPECT(h, id4, 1, 5, 32);
    KEY_DUP(h, 0x3333, 0x4444, 1, id4);
    CHECK_RC(shmq_fail(h, &x, -1, 0, "dead", 4), SHMQ_OK);
    uint64_t id5 = KEY_OK(h, 0x3333, 0x4444, 1, 6);
    x = EXPECT(h, id5, 1, 6, 32);
    ack_empty(h, &x);

    /* A delayed job holds its key while it waits. */
    int64_t due = wall_now() + 40 * MS;
    uint64_t id6 = enqueue_key(h, 0x5555, 0x6666, 0, due, 7, SHMQ_OK, 0, __LINE__);
    KEY_DUP(h, 0x5555, 0x6666, 0, id6);
    x = EXPECT(h, id6, 1, 7, 32);
    uint64_t id7 = KEY_OK(h, 0x5555, 0x6666, 0, 8);
    ack_empty(h, &x);
    x = EXPECT(h, id7, 1, 8, 32);
    ack_empty(h, &x);

    /* One chain wrapping past the table's end (64 entries: homes 62, 62, 63, 0),
     * emptied from its middle and its start; every other key stays found. */
    uint64_t keys[4] = {64 * 1 + 62, 64 * 2 + 62, 64 * 3 + 63, 64 * 4 + 0};
    uint64_t ids[4];
    for (int i = 0; i < 4; i++)
        ids[i] = KEY_OK(h, keys[i], 7, 1, 10 + (uint64_t)i);
    CHECK_EQ(stats(h).unique_keys, 4);
    fetch_these(h, ids, 4, d);
    for (int i = 0; i < 4; i++)
        KEY_DUP(h, keys[i], 7, 1, ids[i]);
    int order[4] = {1, 0, 3, 2};
    for (int k = 0; k < 4; k++) {
        ack_empty(h, &d[order[k]]);
        for (int i = 0; i < 4; i++) {
            int gone = 0;
            for (int m = 0; m <= k; m++)
                gone |= order[m] == i;
            if (!gone)
                KEY_DUP(h, keys[i], 7, 1, ids[i]);
        }
        CHECK_EQ(stats(h).unique_keys, 3 - (uint64_t)k);
    }
    for (int i = 0; i < 4; i++)
        ids[i] = KEY_OK(h, keys[i], 7, 0, 20 + (uint64_t)i);
    fetch_these(h, ids, 4, d);
    for (int i = 0; i < 4; i++)
        ack_empty(h, &d[i]);
    CHECK_EQ(stats(h).unique_keys, 0);
    EXPECT_EMPTY(h);
    jobq_close(&q);
}

void test_jobs_unique_full(void)
{
    jobq q;
    shmq_params p = job_params();
    p.unique_slots = 4; /* three keys: one entry stays empty */
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    uint64_t ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = KEY_OK(h, 100 + (uint64_t)i, 1, 1, (uint64_t)i + 1);
    shmq_log_stats before;
    shmq_log_stats_read(h, &before);
    enqueue_key(h, 200, 1, 1, 0, 9, SHMQ_EUNIQUEFULL, 0, __LINE__);
    enqueue_key(h, 201, 1, 0, wall_now() + 1000 * MS, 9, SHMQ_EUNIQUEFULL, 0, __LINE__);
    KEY_DUP(h, 101, 1, 1, ids[1]); /* held keys are still found */
    shmq_log_stats after;
    shmq_log_stats_read(h, &after);
    CHECK_EQ(after.tail, before.tail); /* nothing written for them */
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.enqueued, 3);
    CHECK_EQ(s.unique_keys, 3);
    CHECK_EQ(s.depth, 3);
    CHECK_EQ(s.waiting, 0);
    shmq_delivery d[3];
    fetch_these(h, ids, 3, d);
    enqueue_key(h, 200, 1, 1, 0, 9, SHMQ_EUNIQUEFULL, 0, __LINE__); /* until they finish */
    ack_empty(h, &d[1]);
    uint64_t late = KEY_OK(h, 200, 1, 1, 4);
    ack_empty(h, &d[0]);
    ack_empty(h, &d[2]);
    shmq_delivery x = EXPECT(h, late, 1, 4, 32);
    ack_empty(h, &x);
    CHECK_EQ(stats(h).unique_keys, 0);
    jobq_close(&q);
}

/* Claims of other producers: a live one's is waited for, a dead one's taken over. */
typedef struct claim_setter {
    shmq_handle *owner;
    uint64_t hi, lo, job;
    pid_t dead;     /* nonzero: make the owner dead instead of setting the job */
} claim_setter;

static void *set_claim_later(void *arg)
{
    claim_setter *c = arg;
    sleep_ms(30);
    if (c->dead)
        atomic_store(&c->owner->participants[shmq_participant_index(c->owner)].pid, (uint32_t)c->dead);
    else
        shmq_unique_set(c->owner, c->hi, c->lo, c->job);
    return NULL;
}

void test_jobs_unique_claims(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    shmq_handle *other = logged_attach(&q.r, q.dir);
    uint64_t existing = 0;

    /* A dead producer's claim (it died between claiming and writing its job). */
    shmq_handle *doomed = logged_attach(&q.r, q.dir);
    CHECK_RC(shmq_unique_claim(doomed, 0xD1, 0xD2, &existing), SHMQ_OK);
    CHECK_EQ(stats(h).unique_keys, 1);
    kill_identity(doomed);
    uint64_t id = KEY_OK(h, 0xD1, 0xD2, 0, 1);
    CHECK_EQ(stats(h).unique_keys, 1);
    KEY_DUP(h, 0xD1, 0xD2, 0, id);
    shmq_delivery x = EXPECT(h, id, 1, 1, 32);
    ack_empty(h, &x);
    CHECK_EQ(stats(h).unique_keys, 0);

    /* A live producer's claim: we wait for its job id, and get it as the duplicate. */
    CHECK_RC(shmq_unique_claim(other, 0xE1, 0xE2, &existing), SHMQ_OK);
    claim_setter set = {.owner = other, .hi = 0xE1, .lo = 0xE2, .job = 4242};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, set_claim_later, &set), 0);
    int64_t start = now_ns();
    KEY_DUP(h, 0xE1, 0xE2, 0, 4242);
    CHECK(now_ns() - start >= 20 * MS);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_RC(shmq_unique_release(h, 0xE1, 0xE2, 4242), SHMQ_OK);
    CHECK_EQ(stats(h).unique_keys, 0);

    /* A live producer's claim whose process then dies: taken over. */
    shmq_handle *doomed2 = logged_attach(&q.r, q.dir);
    CHECK_RC(shmq_unique_claim(doomed2, 0xF1, 0xF2, &existing), SHMQ_OK);
    claim_setter die = {.owner = doomed2, .dead = dead_pid()};
    CHECK_EQ(pthread_create(&t, NULL, set_claim_later, &die), 0);
    id = KEY_OK(h, 0xF1, 0xF2, 1, 2);
    CHECK_EQ(pthread_join(t, NULL), 0);
    KEY_DUP(h, 0xF1, 0xF2, 1, id);
    x = EXPECT(h, id, 1, 2, 32);
    ack_empty(h, &x);
    CHECK_EQ(stats(h).unique_keys, 0);

    shmq_detach(doomed2);
    shmq_detach(doomed);
    shmq_detach(other);
    jobq_close(&q);
}

/* Fails, naming them, if keys are still held: every job has ended. */
static void check_no_keys_left(shmq_handle *h, int line)
{
    uint32_t held = 0;
    for (uint32_t i = 0; i < h->unique_slots; i++) {
        uint64_t job = atomic_load(&h->unique[i].job);
        if (job == 0)
            continue;
        if (held++ < 5) {
            shmq_result_info info;
            int st = shmq_job_status(h, job, &info);
            uint64_t hi = h->unique[i].hi, lo = h->unique[i].lo, dup = 0;
            shmq_enqueue_options o = {.lane = -1, .unique_hi = hi, .unique_lo = lo};
            int rc = (job & SHMQ_UNIQUE_CLAIMED) ? SHMQ_OK : shmq_enqueue(h, &o, "x", 1, 0, &dup);
            fprintf(stderr, "key (%llx, %llx) held by job %llu%s, whose status is %d; enqueue with it: %s (job %llu)\n",
                    (unsigned long long)hi, (unsigned long long)lo, (unsigned long long)(job & ~SHMQ_UNIQUE_CLAIMED),
                    (job & SHMQ_UNIQUE_CLAIMED) ? " (a claim)" : "", st, shmq_strerror(rc),
                    (unsigned long long)dup);
        }
    }
    uint64_t count = stats(h).unique_keys;
    if (held || count)
        test_fail(__FILE__, line, "%u unique keys still held (count %llu) after every job ended", held,
                  (unsigned long long)count);
}

/* A consumer takes each unique job as soon as it is in its lane, racing the
 * producer that is still inside shmq_enqueue: every key must be free once its
 * job has started (until_finish 0) or ended (1). */
enum { RACE_JOBS = 1000, RACE_CONSUMERS = 2, RACE_ROUNDS = 40 };

typedef struct race_consumer {
    shmq_handle *h;
    _Atomic uint32_t *taken;
    uint32_t until;
} race_consumer;

static void *race_consume(void *arg)
{
    race_consumer *c = arg;
    char buf[256];
    while (atomic_load(c->taken) < c->until) {
        shmq_delivery d;
        int rc = shmq_fetch(c->h, buf, sizeof buf, 20 * MS, LONG_LEASE, &d);
        if (rc == SHMQ_EEMPTY)
            continue;
        CHECK_RC(rc, SHMQ_OK);
        CHECK_RC(shmq_ack(c->h, &d, 0, NULL, 0), SHMQ_OK);
        atomic_fetch_add(c->taken, 1);
    }
    return NULL;
}

/* Rounds of RACE_JOBS keyed jobs until a key is left behind (the race is
 * a matter of timing: most rounds of a broken build show it, and each
 * takes a few tens of milliseconds), or RACE_ROUNDS or about 1.5 s pass. */
void test_jobs_unique_key_race(void)
{
    jobq q;
    shmq_params p = job_params();
    p.unique_slots = 4096;
    p.result_slots = 4096;
    p.result_bytes = 4096;
    p.slots_per_lane = 1024;
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    _Atomic uint32_t taken = 0;
    race_consumer c[RACE_CONSUMERS];
    for (int i = 0; i < RACE_CONSUMERS; i++) {
        c[i] = (race_consumer){.h = logged_attach(&q.r, q.dir), .taken = &taken};
    }
    int64_t start = now_ns();
    for (uint32_t round = 0; round < RACE_ROUNDS && now_ns() - start < 1500 * MS; round++) {
        pthread_t t[RACE_CONSUMERS];
        for (int i = 0; i < RACE_CONSUMERS; i++) {
            c[i].until = (round + 1) * RACE_JOBS;
            CHECK_EQ(pthread_create(&t[i], NULL, race_consume, &c[i]), 0);
        }
        for (uint32_t i = 0; i < RACE_JOBS; i++) {
            uint32_t n = round * RACE_JOBS + i;
            KEY_OK(h, 0x5000 + n, 0x77, (int)(n & 1), n);
            if (i % 2 == 0) /* now and then a consumer asleep: woken by the publish, it may run first */
                while (atomic_load(&taken) < n + 1)
                    sched_yield();
        }
        for (int i = 0; i < RACE_CONSUMERS; i++)
            CHECK_EQ(pthread_join(t[i], NULL), 0);
        CHECK_EQ(stats(h).done, (round + 1) * RACE_JOBS);
        check_no_keys_left(h, __LINE__);
    }
    for (int i = 0; i < RACE_CONSUMERS; i++)
        shmq_detach(c[i].h);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 9. the job table */

void test_jobs_table_full(void)
{
    enum { SLOTS = 16 };
    jobq q;
    shmq_params p = job_params();
    p.job_slots = SLOTS;
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    uint64_t now_id = ENQUEUE(h, to_lane(-1), 100, 20);
    int64_t due = wall_now() + 150 * MS;
    shmq_enqueue_options o = {.lane = -1, .not_before_ns = due};
    uint64_t ids[SLOTS + 1];
    for (int i = 0; i < SLOTS; i++)
        ids[i] = ENQUEUE(h, o, (uint64_t)i + 1, 20);
    shmq_log_stats before;
    shmq_log_stats_read(h, &before);
    uint64_t id = 777;
    CHECK_RC(shmq_enqueue(h, &o, "x", 1, 0, &id), SHMQ_EJOBSFULL);
    CHECK_EQ(id, 0);
    o.unique_hi = 0xAB;
    o.unique_lo = 0xCD;
    CHECK_RC(shmq_enqueue(h, &o, "x", 1, 0, &id), SHMQ_EJOBSFULL);
    CHECK_RC(shmq_enqueue(h, &o, "x", 1, 0, &id), SHMQ_EJOBSFULL); /* not EDUPLICATE: no key was kept */
    shmq_log_stats after;
    shmq_log_stats_read(h, &after);
    CHECK_EQ(after.tail, before.tail);
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.enqueued, SLOTS + 1);
    CHECK_EQ(s.scheduled, SLOTS);
    CHECK_EQ(s.waiting, SLOTS);
    CHECK_EQ(s.unique_keys, 0);
    CHECK_EQ(s.depth, 1);
    for (int i = 0; i < SLOTS; i++)
        CHECK_EQ(status_of(h, ids[i]), SHMQ_JOB_SCHEDULED);

    /* No entry for a lease either: the job stays in its lane. */
    static char buf[256];
    shmq_delivery d;
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LONG_LEASE, &d), SHMQ_EJOBSFULL);
    CHECK_EQ(status_of(h, now_id), SHMQ_JOB_QUEUED);
    CHECK_EQ(stats(h).depth, 1);
    CHECK_EQ(stats(h).started, 0);

    /* Due: they go to the lanes, which frees the table. */
    wait_wall(due);
    CHECK_EQ(shmq_jobs_tick(h), SLOTS);
    CHECK_EQ(stats(h).waiting, 0);
    ids[SLOTS] = now_id;
    uint8_t done[SLOTS + 1] = {0};
    for (int k = 0; k <= SLOTS; k++) {
        CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, LONG_LEASE, &d), SHMQ_OK);
        int i = 0;
        while (i <= SLOTS && ids[i] != d.job_id)
            i++;
        CHECK(i <= SLOTS);
        CHECK_EQ(done[i], 0);
        done[i] = 1;
        CHECK_EQ(d.attempt, 1);
        CHECK_EQ(check_pattern((const uint8_t *)buf, i == SLOTS ? 100 : (uint64_t)i + 1, 20), 0);
        ack_empty(h, &d);
    }
    EXPECT_EMPTY(h);
    s = stats(h);
    CHECK_EQ(s.done, SLOTS + 1);
    CHECK_EQ(s.in_flight, 0);
    CHECK_EQ(shmq_jobs_live(h), 0);
    /* The table takes as many again. */
    o.unique_hi = o.unique_lo = 0;
    o.not_before_ns = wall_now() + 1000 * MS;
    for (int i = 0; i < SLOTS; i++)
        ENQUEUE(h, o, 50, 20);
    CHECK_RC(shmq_enqueue(h, &o, "x", 1, 0, &id), SHMQ_EJOBSFULL);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 10. results */

static void ack_with_pattern(shmq_handle *h, const shmq_delivery *d, uint64_t seq, uint32_t length)
{
    static uint8_t result[1024];
    fill_pattern(result, seq, length);
    CHECK_RC(shmq_ack(h, d, (uint8_t)seq, (const char *)result, length), SHMQ_OK);
}

typedef struct late_waiter {
    shmq_handle *h;
    uint64_t job_id;
    int rc;
    int64_t took_ns;
} late_waiter;

static void *late_wait(void *arg)
{
    late_waiter *w = arg;
    static char out[64];
    shmq_result_info info;
    int64_t t0 = now_ns();
    w->rc = shmq_result_wait(w->h, w->job_id, 5000 * MS, out, sizeof out, &info);
    w->took_ns = now_ns() - t0;
    return NULL;
}

/* A result writer that stalls with its ring entry odd (a stopped process)
 * while many more results are published after it: a waiter that looked at
 * the ring meanwhile still finds the entry once it is published, at once,
 * not at its timeout. */
void test_jobs_result_published_late(void)
{
    enum { LATER = 100 };
    jobq q;
    shmq_params p = job_params();
    p.result_slots = 256;
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    const uint64_t held = 424242;
    /* The stalled writer: an entry claimed and marked odd, as in shmq_result_put. */
    uint64_t n = atomic_fetch_add(&h->jobs->result_seq, 1);
    shmq_result_entry *e = &h->results[n % h->result_slots];
    atomic_store(&e->seq, 2 * n + 1);
    for (uint64_t i = 0; i < LATER; i++)
        shmq_result_put(h, 1000 + i, SHMQ_JOB_DONE, 1, 0, NULL, 0, 1);
    late_waiter w = {.h = logged_attach(&q.r, q.dir), .job_id = held};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, late_wait, &w), 0);
    int64_t deadline = now_ns() + 5000 * MS;
    while (atomic_load(&h->jobs->result_waiters) == 0) /* it looked, found nothing, and sleeps */
        CHECK(now_ns() < deadline);
    /* The writer runs again: its fields, the even seq, the wake (as shmq_result_put). */
    e->job_id = held;
    e->finished_ns = wall_now();
    e->arena_pos = 0;
    e->length = 0;
    e->attempt = 1;
    e->tag = 7;
    e->status = SHMQ_JOB_DONE;
    e->run_ns = 1;
    atomic_store(&e->seq, 2 * n + 2);
    atomic_fetch_add(&h->jobs->result_event, 1);
    shmq_futex_wake_all(&h->jobs->result_event);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_RC(w.rc, SHMQ_OK);
    CHECK(w.took_ns < 2000 * MS); /* found when published, not at the timeout */
    shmq_detach(w.h);
    jobq_close(&q);
}

void test_jobs_results_ring(void)
{
    enum { JOBS = 8, RESULT = 200 };
    jobq q;
    shmq_params p = job_params();
    p.result_slots = 4;
    p.result_bytes = 1024;
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    uint64_t ids[JOBS];
    for (int i = 0; i < JOBS; i++) {
        ids[i] = ENQUEUE(h, to_lane(0), (uint64_t)i, 10);
        shmq_delivery d = EXPECT(h, ids[i], 1, (uint64_t)i, 10);
        ack_with_pattern(h, &d, 1000 + (uint64_t)i, RESULT);
        if (i == 4) /* the fifth result pushed out the first */
            CHECK_EQ(status_of(h, ids[0]), SHMQ_JOB_UNKNOWN);
        if (i == 3)
            CHECK_EQ(status_of(h, ids[0]), SHMQ_JOB_DONE);
    }
    static char out[1024];
    shmq_result_info info;
    for (int i = 0; i < JOBS; i++) {
        if (i < JOBS - 4) {
            CHECK_EQ(status_of(h, ids[i]), SHMQ_JOB_UNKNOWN);
            CHECK_RC(shmq_result_wait(h, ids[i], 0, out, sizeof out, &info), SHMQ_EEMPTY);
            continue;
        }
        CHECK_EQ(status_of(h, ids[i]), SHMQ_JOB_DONE);
        memset(out, 0, sizeof out);
        CHECK_RC(shmq_result_wait(h, ids[i], 0, out, sizeof out, &info), SHMQ_OK);
        CHECK_EQ(info.status, SHMQ_JOB_DONE);
        CHECK_EQ(info.length, RESULT);
        CHECK_EQ(info.tag, (uint8_t)(1000 + i));
        if (check_pattern((const uint8_t *)out, 1000 + (uint64_t)i, RESULT) != 0)
            test_fail(__FILE__, __LINE__, "result of job %d (of %d) has wrong bytes", i, JOBS);
    }

    /* Too large to keep (over a quarter of the arena): the outcome is kept, not the bytes. */
    uint64_t big = ENQUEUE(h, to_lane(0), 50, 10);
    shmq_delivery d = EXPECT(h, big, 1, 50, 10);
    ack_with_pattern(h, &d, 60, 300);
    CHECK_RC(shmq_result_wait(h, big, 0, out, sizeof out, &info), SHMQ_OK);
    CHECK_EQ(info.status, SHMQ_JOB_DONE);
    CHECK_EQ(info.length, 0);
    /* The three results before it are intact. */
    for (int i = JOBS - 3; i < JOBS; i++) {
        CHECK_RC(shmq_result_wait(h, ids[i], 0, out, sizeof out, &info), SHMQ_OK);
        CHECK_EQ(info.length, RESULT);
        CHECK_EQ(check_pattern((const uint8_t *)out, 1000 + (uint64_t)i, RESULT), 0);
    }
    jobq_close(&q);
}

void test_jobs_results_expire(void)
{
    jobq q;
    shmq_params p = job_params();
    p.result_ttl_ns = 50 * MS;
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    uint64_t id = ENQUEUE(h, to_lane(0), 1, 10);
    shmq_delivery d = EXPECT(h, id, 1, 1, 10);
    ack_with_pattern(h, &d, 2, 16);
    static char out[64];
    shmq_result_info info;
    CHECK_EQ(status_of(h, id), SHMQ_JOB_DONE);
    CHECK_RC(shmq_result_wait(h, id, 0, out, sizeof out, &info), SHMQ_OK);
    sleep_ms(80);
    CHECK_EQ(status_of(h, id), SHMQ_JOB_UNKNOWN);
    CHECK_RC(shmq_result_wait(h, id, 0, out, sizeof out, &info), SHMQ_EEMPTY);
    jobq_close(&q);
}

typedef struct late_acker {
    shmq_handle *h;
    shmq_delivery d;
    int64_t acking; /* monotonic, just before the ack */
} late_acker;

static void *ack_later(void *arg)
{
    late_acker *a = arg;
    sleep_ms(50);
    a->acking = now_ns();
    static const char result[] = "late result";
    CHECK_RC(shmq_ack(a->h, &a->d, 3, result, sizeof result), SHMQ_OK);
    return NULL;
}

void test_jobs_result_wait_wakes(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    shmq_handle *worker = logged_attach(&q.r, q.dir);
    uint64_t id = ENQUEUE(h, to_lane(0), 1, 10);
    late_acker a = {.h = worker};
    a.d = EXPECT(worker, id, 1, 1, 10);
    pthread_t t;
    int64_t start = now_ns();
    CHECK_EQ(pthread_create(&t, NULL, ack_later, &a), 0);
    static char out[64];
    shmq_result_info info;
    CHECK_RC(shmq_result_wait(h, id, 5000 * MS, out, sizeof out, &info), SHMQ_OK);
    int64_t returned = now_ns();
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(info.status, SHMQ_JOB_DONE);
    CHECK_EQ(info.tag, 3);
    CHECK_EQ(strcmp(out, "late result"), 0);
    CHECK(returned - start >= 40 * MS);
    if (returned - a.acking > 30 * MS)
        test_fail(__FILE__, __LINE__, "shmq_result_wait returned %lld ms after the ack: not woken by it",
                  (long long)((returned - a.acking) / MS));
    /* A wait that ends at its deadline. */
    uint64_t never = ENQUEUE(h, to_lane(0), 2, 10);
    start = now_ns();
    CHECK_RC(shmq_result_wait(h, never, 30 * MS, out, sizeof out, &info), SHMQ_EEMPTY);
    CHECK(now_ns() - start >= 30 * MS);
    CHECK(now_ns() - start < 1000 * MS);
    shmq_detach(worker);
    jobq_close(&q);
}

/* ------------------------------------------------------------ 11. histograms and counters */

void test_jobs_histogram_buckets(void)
{
    for (uint32_t b = 0; b < 4; b++)
        CHECK_EQ(shmq_histogram_bucket_low(b), b);
    /* Values up to 2^64 - 1 fall in buckets 0..251; the floors of 252..255
     * (2^64 and up) do not fit in 64 bits, but may not fall below them. */
    for (uint32_t b = 1; b < SHMQ_HIST_BUCKETS; b++) {
        uint64_t low = shmq_histogram_bucket_low(b - 1), high = shmq_histogram_bucket_low(b);
        if (b < 252 ? high <= low : high < low)
            test_fail(__FILE__, __LINE__, "bucket_low(%u) = %llu is %s bucket_low(%u) = %llu", b,
                      (unsigned long long)high, b < 252 ? "not above" : "below", b - 1, (unsigned long long)low);
        if (b >= 5 && b < 252 && (double)high / (double)low > 1.25 + 1e-12)
            test_fail(__FILE__, __LINE__, "buckets %u and %u are more than 25%% apart", b - 1, b);
    }
    CHECK_EQ(shmq_histogram_bucket_low(251), 7ull << 61); /* the bucket of UINT64_MAX */
    CHECK_EQ(shmq_histogram_bucket_low(SHMQ_HIST_BUCKETS), UINT64_MAX);
    /* Four buckets per power of two: 2^k starts a bucket. */
    for (uint32_t k = 2; k < 62; k++)
        CHECK_EQ(shmq_histogram_bucket_low(4 * (k - 1)), 1ull << k);
}

static uint32_t bucket_of_value(uint64_t v)
{
    uint32_t b = 0;
    while (b + 1 < SHMQ_HIST_BUCKETS && shmq_histogram_bucket_low(b + 1) <= v)
        b++;
    return b;
}

/* The one bucket that grew between two reads (fails if not exactly one count). */
static uint32_t grown_bucket(const uint64_t *before, const uint64_t *after, int line)
{
    uint32_t found = UINT32_MAX;
    uint64_t total = 0;
    for (uint32_t b = 0; b < SHMQ_HIST_BUCKETS; b++) {
        total += after[b] - before[b];
        if (after[b] != before[b])
            found = b;
    }
    if (total != 1)
        test_fail(__FILE__, line, "the histogram grew by %llu counts, expected 1", (unsigned long long)total);
    return found;
}

void test_jobs_histogram_recording(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;
    static uint64_t before[SHMQ_HIST_BUCKETS], after[SHMQ_HIST_BUCKETS];
    static const uint32_t targets[] = {100, 101, 130, 163, 200, 233, 244};

    /* Wait times: the enqueue time in the lane's message is set back by a
     * value in the middle of a chosen bucket (wide enough that the test's
     * own microseconds do not matter). */
    for (uint32_t k = 0; k < sizeof targets / sizeof targets[0]; k++) {
        uint32_t b = targets[k];
        uint64_t low = shmq_histogram_bucket_low(b), next = shmq_histogram_bucket_low(b + 1);
        int64_t wait = (int64_t)(low + (next - low) / 2);
        uint64_t id = ENQUEUE(h, to_lane(0), k, 10);
        uint64_t head = lane_head(h, 0);
        shmq_msg_header *mh = header_at(h, lane_at(h, 0), head);
        CHECK_EQ(mh->job_id, id);
        mh->enqueued_ns = wall_now() - wait;
        shmq_histogram_read(h, SHMQ_HIST_WAIT, before);
        shmq_delivery d = EXPECT(h, id, 1, k, 10);
        shmq_histogram_read(h, SHMQ_HIST_WAIT, after);
        uint32_t got = grown_bucket(before, after, __LINE__);
        if (got != b)
            test_fail(__FILE__, __LINE__, "a wait of %lld ns went to bucket %u, expected %u [%llu, %llu)",
                      (long long)wait, got, b, (unsigned long long)low, (unsigned long long)next);
        CHECK(stats(h).wait_max_ns >= wait);
        shmq_histogram_read(h, SHMQ_HIST_RUN, before);
        /* Run time: the lease's start set back the same way. */
        h->entries[d.entry].started_ns = now_ns() - wait;
        ack_empty(h, &d);
        shmq_histogram_read(h, SHMQ_HIST_RUN, after);
        got = grown_bucket(before, after, __LINE__);
        if (got != b)
            test_fail(__FILE__, __LINE__, "a run of %lld ns went to bucket %u, expected %u", (long long)wait, got,
                      b);
        CHECK(stats(h).run_max_ns >= wait);
    }

    /* A real run of about 20 ms lands in the bucket that brackets it. */
    uint64_t id = ENQUEUE(h, to_lane(0), 50, 10);
    shmq_histogram_read(h, SHMQ_HIST_RUN, before);
    int64_t t0 = now_ns();
    shmq_delivery d = EXPECT(h, id, 1, 50, 10);
    int64_t t1 = now_ns();
    sleep_ms(20);
    int64_t t2 = now_ns();
    ack_empty(h, &d);
    int64_t t3 = now_ns();
    shmq_histogram_read(h, SHMQ_HIST_RUN, after);
    uint32_t got = grown_bucket(before, after, __LINE__);
    /* the run lies in [t2 - t1, t3 - t0] */
    CHECK(got >= bucket_of_value((uint64_t)(t2 - t1)));
    CHECK(got <= bucket_of_value((uint64_t)(t3 - t0)));
    jobq_close(&q);
}

void test_jobs_stats_counters(void)
{
    jobq q;
    shmq_params p = job_params();
    jobq_open(&q, &p);
    shmq_handle *h = q.h;

    uint64_t a = ENQUEUE(h, to_lane(0), 1, 10);
    uint64_t b = ENQUEUE(h, to_lane(0), 2, 10);
    uint64_t c = ENQUEUE(h, to_lane(1), 3, 10);
    uint64_t dd = ENQUEUE(h, to_lane(ORDERED), 4, 10);
    uint64_t e = KEY_OK(h, 0xEE, 0xEE, 0, 5);
    KEY_DUP(h, 0xEE, 0xEE, 0, e);
    int64_t due = wall_now() + 300 * MS;
    shmq_enqueue_options later = {.lane = 1, .not_before_ns = due};
    uint64_t f = ENQUEUE(h, later, 6, 10);
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.enqueued, 6);
    CHECK_EQ(s.deduplicated, 1);
    CHECK_EQ(s.scheduled, 1);
    CHECK_EQ(s.depth, 5);
    CHECK_EQ(s.waiting, 1);
    CHECK_EQ(s.unique_keys, 1);
    shmq_job_stats l0, l1, l;
    shmq_job_stats_read(h, 0, &l0);
    shmq_job_stats_read(h, 1, &l1);
    CHECK_EQ(l0.enqueued + l1.enqueued, 5); /* a, b, c, f, and e (in lane 0 or 1) */
    CHECK(l0.enqueued >= 2 && l1.enqueued >= 2);
    shmq_job_stats_read(h, ORDERED, &l);
    CHECK_EQ(l.enqueued, 1);
    CHECK_EQ(l.depth, 1);

    uint64_t ids[5] = {a, b, c, dd, e};
    shmq_delivery d[5];
    fetch_these(h, ids, 5, d);
    ack_empty(h, &d[0]);                                      /* a: done */
    CHECK_RC(shmq_fail(h, &d[1], wall_now(), 0, NULL, 0), SHMQ_OK); /* b: retried */
    CHECK_RC(shmq_fail(h, &d[2], -1, 0, "x", 1), SHMQ_OK);    /* c: dead */
    ack_empty(h, &d[3]);
    ack_empty(h, &d[4]);
    shmq_delivery x = EXPECT(h, b, 2, 2, 10);
    ack_empty(h, &x);
    x = expect_at(__LINE__, h, f, 1, 6, 10, 1000 * MS);
    ack_empty(h, &x);

    s = stats(h);
    CHECK_EQ(s.enqueued, 6);
    CHECK_EQ(s.deduplicated, 1);
    CHECK_EQ(s.scheduled, 1);
    CHECK_EQ(s.started, 7);
    CHECK_EQ(s.done, 5);
    CHECK_EQ(s.failed, 2);
    CHECK_EQ(s.retried, 1);
    CHECK_EQ(s.dead, 1);
    CHECK_EQ(s.lease_expired, 0);
    CHECK_EQ(s.consumer_died, 0);
    CHECK_EQ(s.depth, 0);
    CHECK_EQ(s.in_flight, 0);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.unique_keys, 0);
    CHECK_EQ(s.consumers, 1);
    shmq_job_stats_read(h, ORDERED, &l);
    CHECK_EQ(l.started, 1);
    CHECK_EQ(l.done, 1);
    shmq_job_stats_read(h, 1, &l);
    CHECK_EQ(l.dead, 1); /* c ran in lane 1 */
    CHECK_EQ(l.failed, 1);
    uint64_t wait[SHMQ_HIST_BUCKETS], run[SHMQ_HIST_BUCKETS];
    shmq_histogram_read(h, SHMQ_HIST_WAIT, wait);
    shmq_histogram_read(h, SHMQ_HIST_RUN, run);
    uint64_t waits = 0, runs = 0;
    for (uint32_t i = 0; i < SHMQ_HIST_BUCKETS; i++) {
        waits += wait[i];
        runs += run[i];
    }
    CHECK_EQ(waits, 7); /* one per start */
    CHECK_EQ(runs, 7);  /* one per finish, failures too */
    jobq_close(&q);
}

/* ------------------------------------------------------------ 12. many at once */

enum {
    C_PRODUCERS = 2,
    C_CONSUMERS = 4,
    C_PER_PRODUCER = 2500,
    C_JOBS = C_PRODUCERS * C_PER_PRODUCER,
    C_LANES = 6,
    C_ORDERED = 2, /* lanes 4 and 5 */
    C_SHARED_KEYS = 4,
};

typedef struct c_job {
    uint32_t producer, index, lane, ordinal;
    uint64_t check;
} c_job;

typedef struct c_run {
    jobq q;
    _Atomic uint32_t done[C_JOBS];     /* acks per job */
    _Atomic uint32_t busy[C_LANES];    /* ordered lanes: the job running now (index + 1) */
    _Atomic uint32_t next[C_LANES][C_PRODUCERS]; /* ordered lanes: the next ordinal to finish */
    uint64_t ids[C_JOBS];              /* 0: not accepted (a duplicate) */
    uint32_t ordered_count[C_LANES][C_PRODUCERS];
    _Atomic uint32_t accepted, finished, producers_left;
    _Atomic uint32_t retries, duplicates;
} c_run;

typedef struct c_worker {
    c_run *run;
    uint32_t id;
    shmq_handle *h;
    pthread_t thread;
} c_worker;

static uint64_t c_check(uint32_t index) { return mix64(0xC0DE0000ull + index); }

static void *c_produce(void *arg)
{
    c_worker *w = arg;
    c_run *run = w->run;
    uint64_t rng = w->id * 7919 + 1;
    static _Thread_local uint8_t payload[600];
    for (uint32_t i = 0; i < C_PER_PRODUCER; i++) {
        uint32_t index = w->id * C_PER_PRODUCER + i;
        shmq_enqueue_options o = {.lane = -1, .tag = (uint8_t)index};
        c_job job = {.producer = w->id, .index = index, .lane = UINT32_MAX, .check = c_check(index)};
        uint32_t kind = rng_below(&rng, 10);
        if (kind < 3) { /* ordered */
            uint32_t lane = C_LANES - C_ORDERED + rng_below(&rng, C_ORDERED);
            o.lane = (int)lane;
            job.lane = lane;
            job.ordinal = run->ordered_count[lane][w->id]++;
        } else if (kind < 5) { /* unique key of its own */
            o.unique_hi = 0x1000000 + index;
            o.unique_lo = 77;
            o.unique_until_finish = (uint8_t)(kind == 4);
        } else if (kind == 5) { /* a key both producers use */
            o.unique_hi = 0xC0FFEE;
            o.unique_lo = rng_below(&rng, C_SHARED_KEYS) + 1;
        } else if (kind == 6) { /* delayed a little */
            o.not_before_ns = wall_now() + (int64_t)rng_below(&rng, 5) * MS;
        }
        uint32_t length = sizeof job + (rng_below(&rng, 4) == 0 ? 400 : rng_below(&rng, 100));
        memcpy(payload, &job, sizeof job);
        fill_pattern(payload + sizeof job, index, length - (uint32_t)sizeof job);
        for (;;) {
            uint64_t id = 0;
            int rc = shmq_enqueue(w->h, &o, (const char *)payload, length, 5000 * MS, &id);
            if (rc == SHMQ_EJOBSFULL) { /* the table is busy with delayed jobs: later */
                sleep_ms(1);
                continue;
            }
            if (rc == SHMQ_EDUPLICATE) {
                CHECK(kind == 5);
                CHECK(id != 0);
                atomic_fetch_add(&run->duplicates, 1);
                break;
            }
            CHECK_RC(rc, SHMQ_OK);
            CHECK(id != 0);
            run->ids[index] = id;
            atomic_fetch_add(&run->accepted, 1);
            break;
        }
    }
    atomic_fetch_sub(&run->producers_left, 1);
    return NULL;
}

static void *c_consume(void *arg)
{
    c_worker *w = arg;
    c_run *run = w->run;
    static _Thread_local char buf[1024];
    for (;;) {
        if (atomic_load(&run->producers_left) == 0 && atomic_load(&run->finished) == atomic_load(&run->accepted))
            break;
        shmq_delivery d;
        int rc = shmq_fetch(w->h, buf, 128, 10 * MS, LONG_LEASE, &d);
        if (rc == SHMQ_EEMPTY)
            continue;
        if (rc == SHMQ_EJOBSFULL) { /* every entry leased or waiting: the ticks free them */
            sleep_ms(1);
            continue;
        }
        if (rc == SHMQ_ECLAIMED) {
            CHECK(d.length > 128 && d.length <= sizeof buf);
            CHECK_RC(shmq_delivery_payload(w->h, &d, buf), SHMQ_OK);
        } else {
            CHECK_RC(rc, SHMQ_OK);
        }
        c_job job;
        CHECK(d.length >= sizeof job);
        memcpy(&job, buf, sizeof job);
        CHECK(job.index < C_JOBS);
        CHECK_EQ(job.check, c_check(job.index));
        CHECK_EQ(d.tag, (uint8_t)job.index);
        CHECK_EQ(check_pattern((const uint8_t *)buf + sizeof job, job.index, d.length - (uint32_t)sizeof job), 0);
        int ordered = job.lane != UINT32_MAX;
        if (ordered) {
            CHECK_EQ(d.lane, job.lane);
            uint32_t was = atomic_exchange(&run->busy[job.lane], job.index + 1);
            if (was != 0)
                test_fail(__FILE__, __LINE__, "ordered lane %u: job %u started while job %u ran", job.lane,
                          job.index, was - 1);
            uint32_t next = atomic_load(&run->next[job.lane][job.producer]);
            if (job.ordinal != next)
                test_fail(__FILE__, __LINE__, "ordered lane %u: producer %u's job #%u started before #%u ended",
                          job.lane, job.producer, job.ordinal, next);
        } else {
            CHECK(d.lane < C_LANES - C_ORDERED);
        }
        if (job.index % 5 == 0 && d.attempt == 1) {
            atomic_fetch_add(&run->retries, 1);
            if (ordered)
                atomic_store(&run->busy[job.lane], 0);
            CHECK_RC(shmq_fail(w->h, &d, wall_now() + 1 * MS, 0, "retry", 5), SHMQ_OK);
            continue;
        }
        CHECK_EQ(d.attempt, job.index % 5 == 0 ? 2 : 1);
        uint32_t before = atomic_fetch_add(&run->done[job.index], 1);
        if (before != 0)
            test_fail(__FILE__, __LINE__, "job %u finished twice", job.index);
        if (ordered) {
            atomic_store(&run->next[job.lane][job.producer], job.ordinal + 1);
            atomic_store(&run->busy[job.lane], 0);
        }
        uint64_t result = job.index;
        CHECK_RC(shmq_ack(w->h, &d, 1, (const char *)&result, sizeof result), SHMQ_OK);
        atomic_fetch_add(&run->finished, 1);
    }
    return NULL;
}

void test_jobs_concurrent(void)
{
    static c_run run;
    memset(&run, 0, sizeof run);
    shmq_params p = logged_params(C_LANES, 256, 64, SHMQ_DURABILITY_OS, 1024 * 1024);
    p.ordered_lanes = C_ORDERED;
    p.job_slots = 256;
    p.unique_slots = 4096;
    p.result_slots = 8192;
    p.result_bytes = 128 * 1024;
    p.result_ttl_ns = 600ll * 1000 * 1000 * 1000;
    jobq_open(&run.q, &p);
    atomic_store(&run.producers_left, C_PRODUCERS);

    c_worker producers[C_PRODUCERS], consumers[C_CONSUMERS];
    for (uint32_t i = 0; i < C_CONSUMERS; i++) {
        consumers[i] = (c_worker){.run = &run, .id = i, .h = logged_attach(&run.q.r, run.q.dir)};
        CHECK_EQ(pthread_create(&consumers[i].thread, NULL, c_consume, &consumers[i]), 0);
    }
    for (uint32_t i = 0; i < C_PRODUCERS; i++) {
        producers[i] = (c_worker){.run = &run, .id = i, .h = logged_attach(&run.q.r, run.q.dir)};
        CHECK_EQ(pthread_create(&producers[i].thread, NULL, c_produce, &producers[i]), 0);
    }
    for (uint32_t i = 0; i < C_PRODUCERS; i++)
        CHECK_EQ(pthread_join(producers[i].thread, NULL), 0);
    for (uint32_t i = 0; i < C_CONSUMERS; i++)
        CHECK_EQ(pthread_join(consumers[i].thread, NULL), 0);

    shmq_handle *h = run.q.h;
    uint32_t accepted = atomic_load(&run.accepted);
    CHECK_EQ(accepted + atomic_load(&run.duplicates), C_JOBS);
    CHECK_EQ(atomic_load(&run.finished), accepted);
    for (uint32_t i = 0; i < C_JOBS; i++) {
        if (run.ids[i] == 0) {
            CHECK_EQ(atomic_load(&run.done[i]), 0);
            continue;
        }
        if (atomic_load(&run.done[i]) != 1)
            test_fail(__FILE__, __LINE__, "job %u (id %llu) finished %u times", i, (unsigned long long)run.ids[i],
                      atomic_load(&run.done[i]));
        static char out[16];
        shmq_result_info info;
        CHECK_RC(shmq_result_wait(h, run.ids[i], 0, out, sizeof out, &info), SHMQ_OK);
        CHECK_EQ(info.status, SHMQ_JOB_DONE);
        uint64_t result;
        memcpy(&result, out, sizeof result);
        CHECK_EQ(result, i);
        CHECK_EQ(info.attempt, i % 5 == 0 ? 2 : 1);
    }
    for (uint32_t lane = C_LANES - C_ORDERED; lane < C_LANES; lane++)
        for (uint32_t k = 0; k < C_PRODUCERS; k++)
            CHECK_EQ(atomic_load(&run.next[lane][k]), run.ordered_count[lane][k]);
    EXPECT_EMPTY(h);
    shmq_job_stats s = stats(h);
    CHECK_EQ(s.enqueued, accepted);
    CHECK_EQ(s.done, accepted);
    CHECK_EQ(s.retried, atomic_load(&run.retries));
    CHECK_EQ(s.deduplicated, atomic_load(&run.duplicates));
    CHECK_EQ(s.in_flight, 0);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.depth, 0);
    for (uint32_t i = 0; i < C_CONSUMERS; i++)
        shmq_detach(consumers[i].h);
    for (uint32_t i = 0; i < C_PRODUCERS; i++)
        shmq_detach(producers[i].h);
    check_no_keys_left(h, __LINE__); /* last: see test_jobs_unique_key_race */
    jobq_close(&run.q);
}
