/* SPDX-License-Identifier: Apache-2.0 */
/* test_stall.c -- roles taken over from a live holder that makes no
 * progress. The holder is a forked process that stops itself (SIGSTOP)
 * inside its window; threads of this process, each with its own handle,
 * must get through within a bound while it is stopped, and go on while it
 * wakes up late and finishes what it was doing. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "harness.h"
#include "jobs.h"
#include "tests.h"

enum { STALL_SEGMENT = 64 * 1024, THREADS = 2, LENGTH = 100 };
static const uint64_t HOLDER_SEQ = 1000000;

/* A message: its seq, then the seq's pattern. */
static void make_message(uint8_t *data, uint64_t seq)
{
    memcpy(data, &seq, sizeof seq);
    fill_pattern(data + sizeof seq, seq, LENGTH - sizeof seq);
}

static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' ? close_paren[2] : '?';
}

static void wait_stopped(pid_t pid)
{
    int64_t deadline = now_ns() + 10 * 1000000000ll;
    while (proc_state(pid) != 'T' && proc_state(pid) != 't') {
        CHECK(now_ns() < deadline); /* the holder never reached its stop point */
        int status;
        CHECK_EQ(waitpid(pid, &status, WNOHANG), 0); /* it ended instead */
        sleep_ms(1);
    }
}

/* A forked holder: attaches its own handle, parks itself at `point` with
 * SIGSTOP, and after SIGCONT does what it was doing and exits 0. */
static pid_t start_holder(const test_region *r, const char *dir, int point, int make_ahead)
{
    pid_t child = fork();
    CHECK(child >= 0);
    if (child)
        return child;
    alarm(20); /* a hang is a failure, not a stalled run */
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test leaves no stopped holder behind */
    shmq_handle *c = logged_attach(r, dir);
    c->fault_point = point;
    c->fault_countdown = -1; /* stop, not kill, at the first hit */
    uint8_t data[LENGTH];
    make_message(data, HOLDER_SEQ);
    int rc = make_ahead ? shmq_log_maintain(c)
                        : shmq_push(c, -1, 0, 0, (const char *)data, LENGTH, NULL, 0, -1);
    shmq_detach(c);
    _exit(rc == SHMQ_OK ? 0 : 1);
}

typedef struct putter {
    const test_region *r;
    const char *dir;
    uint64_t first, count;
    int64_t slowest_ns;
} putter;

static void *put_run(void *arg)
{
    putter *w = arg;
    shmq_handle *h = logged_attach(w->r, w->dir);
    uint8_t data[LENGTH];
    for (uint64_t seq = w->first; seq < w->first + w->count; seq++) {
        make_message(data, seq);
        int64_t t0 = now_ns();
        CHECK_RC(shmq_push(h, -1, 0, 0, (const char *)data, LENGTH, NULL, 0, 2 * 1000000000ll), SHMQ_OK);
        int64_t took = now_ns() - t0;
        if (took > w->slowest_ns)
            w->slowest_ns = took;
    }
    shmq_detach(h);
    return NULL;
}

/* Runs THREADS putters of `count` messages each from `first` on; returns the slowest put. */
static int64_t put_threads(const test_region *r, const char *dir, uint64_t first, uint64_t count)
{
    pthread_t threads[THREADS];
    putter work[THREADS];
    int64_t slowest = 0;
    for (int i = 0; i < THREADS; i++) {
        work[i] = (putter){.r = r, .dir = dir, .first = first + i * count, .count = count};
        CHECK_EQ(pthread_create(&threads[i], NULL, put_run, &work[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK_EQ(pthread_join(threads[i], NULL), 0);
        if (work[i].slowest_ns > slowest)
            slowest = work[i].slowest_ns;
    }
    return slowest;
}

/* Every message put, once: seqs [0, count), and the holder's if it put one. */
static void check_each_once(shmq_handle *h, uint64_t count, int with_holder)
{
    uint8_t *seen = calloc(count, 1), buf[4096];
    int holder = 0;
    shmq_message m;
    uint64_t got = 0;
    int rc;
    while ((rc = shmq_pop(h, (char *)buf, sizeof buf, 0, &m)) == SHMQ_OK) {
        CHECK_EQ(m.length, LENGTH);
        uint64_t seq;
        memcpy(&seq, buf, sizeof seq);
        CHECK_EQ(check_pattern(buf + sizeof seq, seq, LENGTH - sizeof seq), 0);
        if (seq == HOLDER_SEQ) {
            holder++;
            continue;
        }
        CHECK(seq < count);
        CHECK_EQ(seen[seq], 0);
        seen[seq] = 1;
        got++;
    }
    CHECK_RC(rc, SHMQ_EEMPTY);
    CHECK_EQ(got, count);
    CHECK_EQ(holder, with_holder);
    free(seen);
}

/* The flusher stopped with the role, its fdatasync not begun: the other
 * sync writers take the role over; the late flusher, woken, finishes its
 * flush while they flush too, and nothing moves back. */
void test_stall_flusher_taken_over(void)
{
    enum { EACH = 60 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 1024, 128, SHMQ_DURABILITY_SYNC, STALL_SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    pid_t holder = start_holder(&r, dir, SHMQ_FAULT_FLUSH_HELD, 0);
    wait_stopped(holder);
    CHECK(atomic_load(&h->header->flusher) != 0);
    int64_t slowest = put_threads(&r, dir, 0, EACH);
    CHECK(proc_state(holder) == 'T' || proc_state(holder) == 't');
    CHECK(slowest < 1500 * 1000000ll); /* a take-over, not a wait for the holder */
    /* Wake it while others flush: two flushers at once for a while. */
    CHECK_EQ(kill(holder, SIGCONT), 0);
    put_threads(&r, dir, THREADS * EACH, EACH);
    int status = 0;
    CHECK_EQ(waitpid(holder, &status, 0), holder);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    shmq_region_header *hdr = h->header;
    CHECK_EQ(atomic_load(&hdr->flusher), 0);
    CHECK_EQ(atomic_load(&hdr->flush_done), atomic_load(&hdr->flush_started));
    CHECK_EQ(atomic_load(&hdr->flushed_tail), atomic_load(&hdr->log_tail) & ~SHMQ_TAIL_SPILL);
    check_each_once(h, 2 * THREADS * EACH, 1);
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}

static int temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strncmp(e->d_name, "tmp.", 4) == 0;
    closedir(d);
    return n;
}

/* The maker of the next segment stopped with the claim: writers that need
 * the segment make it themselves; the late maker finds it made, uses it,
 * and leaves no file of its own behind. */
void test_stall_segment_maker_taken_over(void)
{
    enum { EACH = 400 }; /* 2 x 400 x ~180 bytes: past two more segments */
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 4096, 128, SHMQ_DURABILITY_OS, STALL_SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    /* The tail into the last segment made, so the next one is still to make. */
    uint64_t filler = 0;
    uint8_t data[LENGTH];
    shmq_log_stats st;
    for (;;) {
        shmq_log_stats_read(h, &st);
        if (st.tail / STALL_SEGMENT + 1 >= st.segments_made)
            break;
        make_message(data, 2000000 + filler++);
        CHECK_RC(shmq_push(h, -1, 0, 0, (const char *)data, LENGTH, NULL, 0, 0), SHMQ_OK);
    }
    uint8_t buf[4096];
    shmq_message m;
    for (uint64_t i = 0; i < filler; i++)
        CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_OK);
    uint64_t start_tail = st.tail;
    pid_t holder = start_holder(&r, dir, SHMQ_FAULT_SEGMENT_CLAIMED, 1);
    wait_stopped(holder);
    CHECK(atomic_load(&h->header->segment_claim) != 0);
    int64_t slowest = put_threads(&r, dir, 0, EACH);
    CHECK(proc_state(holder) == 'T' || proc_state(holder) == 't');
    CHECK(slowest < 1500 * 1000000ll);
    shmq_log_stats_read(h, &st);
    CHECK(st.tail / STALL_SEGMENT >= start_tail / STALL_SEGMENT + 2);
    CHECK_EQ(kill(holder, SIGCONT), 0);
    int status = 0;
    CHECK_EQ(waitpid(holder, &status, 0), holder);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_EQ(atomic_load(&h->header->segment_claim), 0);
    CHECK_EQ(temp_files(dir), 0);
    check_each_once(h, THREADS * EACH, 0);
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}

static shmq_log_stats log_stats(const shmq_handle *h)
{
    shmq_log_stats st;
    shmq_log_stats_read(h, &st);
    return st;
}

/* A writer stopped with its log record half written (PENDING, its own)
 * while jobs spill: the feeder pads over the record after SHMQ_HOLE_WAIT_NS
 * although its writer lives, and feeds the jobs behind it; the late writer's
 * publish fails and it writes the record again further on: once, in full. */
void test_stall_log_writer_voided(void)
{
    enum { EACH = 100 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 1024, 128, SHMQ_DURABILITY_OS, STALL_SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    shmq_log_spill_begin(h); /* from here on every put waits in the log for the feeder */
    pid_t holder = start_holder(&r, dir, SHMQ_FAULT_LOG_MID_RECORD, 0);
    wait_stopped(holder);
    uint64_t holes = log_stats(h).holes_filled;
    int64_t t0 = now_ns();
    put_threads(&r, dir, 0, EACH);
    uint8_t *seen = calloc(THREADS * EACH, 1), buf[4096];
    shmq_message m;
    for (uint64_t got = 0; got < THREADS * EACH;) {
        int rc = shmq_pop(h, (char *)buf, sizeof buf, 10 * 1000000ll, &m);
        CHECK(now_ns() - t0 < 1500 * 1000000ll); /* held up past the hole's bound */
        if (rc == SHMQ_EEMPTY)
            continue;
        CHECK_RC(rc, SHMQ_OK);
        uint64_t seq;
        memcpy(&seq, buf, sizeof seq);
        CHECK(seq < THREADS * EACH); /* the holder's record is not published yet */
        CHECK_EQ(seen[seq], 0);
        seen[seq] = 1;
        got++;
    }
    free(seen);
    CHECK(proc_state(holder) == 'T' || proc_state(holder) == 't');
    CHECK_EQ(log_stats(h).holes_filled, holes + 1);
    CHECK_EQ(kill(holder, SIGCONT), 0);
    int status = 0;
    CHECK_EQ(waitpid(holder, &status, 0), holder);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    int64_t give_up = now_ns() + 5 * 1000000000ll;
    int rc;
    while ((rc = shmq_pop(h, (char *)buf, sizeof buf, 10 * 1000000ll, &m)) == SHMQ_EEMPTY)
        CHECK(now_ns() < give_up);
    CHECK_RC(rc, SHMQ_OK);
    CHECK_EQ(m.length, LENGTH);
    uint64_t seq;
    memcpy(&seq, buf, sizeof seq);
    CHECK_EQ(seq, HOLDER_SEQ);
    CHECK_EQ(check_pattern(buf + sizeof seq, seq, LENGTH - sizeof seq), 0);
    CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    CHECK_EQ(log_stats(h).spilled, log_stats(h).fed); /* the voided record was not counted */
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ unique-key changes */

enum { KEYS = 40, RELEASERS = 2 };

static shmq_params unique_params(void)
{
    shmq_params p = logged_params(1, 256, 64, SHMQ_DURABILITY_OS, STALL_SEGMENT);
    p.job_slots = 64;
    p.unique_slots = 64;
    return p;
}

static uint64_t unique_keys_held(const shmq_handle *h)
{
    shmq_job_stats s;
    shmq_job_stats_read(h, -1, &s);
    return s.unique_keys;
}

/* A unique job (key (hi, k), held until it finishes for odd k); the
 * enqueue's status. */
static int enqueue_unique(shmq_handle *h, uint64_t hi, uint64_t k, int64_t timeout_ns)
{
    shmq_enqueue_options o = {.lane = -1, .unique_hi = hi, .unique_lo = k, .unique_until_finish = (uint8_t)(k & 1),
                              .tag = (uint8_t)k};
    uint64_t id = 0;
    return shmq_enqueue(h, &o, (const char *)&k, sizeof k, timeout_ns, &id);
}

typedef struct releaser {
    const test_region *r;
    const char *dir;
    _Atomic uint32_t *finished; /* jobs fetched and finished, by all releasers */
    uint32_t total;
    int pause_ms;               /* between a fetch and its finish */
    int64_t slowest_ns;         /* the slowest fetch or finish */
} releaser;

/* Fetches unique jobs and finishes them (tag % 4 == 3: a dead letter, else
 * an ack) until `total` are finished; each call must not wait for the lock. */
static void *release_run(void *arg)
{
    releaser *w = arg;
    shmq_handle *h = logged_attach(w->r, w->dir);
    char buf[64];
    int64_t give_up = now_ns() + 20 * 1000000000ll;
    while (atomic_load(w->finished) < w->total) {
        CHECK(now_ns() < give_up);
        shmq_delivery d;
        int64_t t0 = now_ns();
        int rc = shmq_fetch(h, buf, sizeof buf, 20 * 1000000ll, 60 * 1000000000ll, &d);
        if (rc == SHMQ_EEMPTY)
            continue;
        CHECK_RC(rc, SHMQ_OK);
        if (w->pause_ms) {
            w->slowest_ns = now_ns() - t0 > w->slowest_ns ? now_ns() - t0 : w->slowest_ns;
            sleep_ms(w->pause_ms);
            t0 = now_ns();
        }
        rc = d.tag % 4 == 3 ? shmq_fail(h, &d, -1, 0, "poison", 6) : shmq_ack(h, &d, 0, NULL, 0);
        CHECK_RC(rc, SHMQ_OK);
        int64_t took = now_ns() - t0;
        if (took > w->slowest_ns)
            w->slowest_ns = took;
        atomic_fetch_add(w->finished, 1);
    }
    shmq_detach(h);
    return NULL;
}

static int64_t release_threads(const test_region *r, const char *dir, uint32_t total, int pause_ms)
{
    _Atomic uint32_t finished = 0;
    pthread_t threads[RELEASERS];
    releaser work[RELEASERS];
    for (int i = 0; i < RELEASERS; i++) {
        work[i] = (releaser){.r = r, .dir = dir, .finished = &finished, .total = total, .pause_ms = pause_ms};
        CHECK_EQ(pthread_create(&threads[i], NULL, release_run, &work[i]), 0);
    }
    int64_t slowest = 0;
    for (int i = 0; i < RELEASERS; i++) {
        CHECK_EQ(pthread_join(threads[i], NULL), 0);
        if (work[i].slowest_ns > slowest)
            slowest = work[i].slowest_ns;
    }
    CHECK_EQ(atomic_load(&finished), total);
    return slowest;
}

/* Each key enqueues again (it was freed) and is then held once (not twice). */
static void check_keys_free(shmq_handle *h, uint64_t hi, uint64_t also_held)
{
    for (uint64_t k = 0; k < KEYS; k++)
        CHECK_RC(enqueue_unique(h, hi, k, 1000000000ll), SHMQ_OK);
    shmq_unique_settle(h);
    CHECK_EQ(unique_keys_held(h), KEYS + also_held);
    for (uint64_t k = 0; k < KEYS; k++)
        CHECK_RC(enqueue_unique(h, hi, k, 1000000000ll), SHMQ_EDUPLICATE);
}

/* A stopped process holds the unique-key table's lock: consumers still
 * fetch and finish unique jobs without waiting (the keys' releases wait in
 * the change list); claims wait, and fail at their deadline. Once the
 * holder runs again (its unlock applies them), or dies (the next taker
 * does), every key is free, once. */
void test_stall_unique_lock_holder(void)
{
    for (int end = 0; end < 2; end++) { /* 0: SIGCONT, 1: SIGKILL */
        char *dir = temp_dir_create();
        shmq_params p = unique_params();
        test_region r;
        shmq_recovery rep;
        shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
        const uint64_t hi = 0xC0 + (uint64_t)end;
        for (uint64_t k = 0; k < KEYS; k++)
            CHECK_RC(enqueue_unique(h, hi, k, 0), SHMQ_OK);
        pid_t holder = fork();
        CHECK(holder >= 0);
        if (holder == 0) {
            alarm(20);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            shmq_handle *c = logged_attach(&r, dir);
            c->fault_point = SHMQ_FAULT_UNIQUE_LOCKED;
            c->fault_countdown = -1; /* stops with the lock, before its claim */
            int rc = enqueue_unique(c, 0xD0, 1, -1);
            shmq_detach(c);
            _exit(rc == SHMQ_OK ? 0 : 1);
        }
        wait_stopped(holder);
        int64_t slowest = release_threads(&r, dir, KEYS, 0);
        CHECK(proc_state(holder) == 'T' || proc_state(holder) == 't');
        CHECK(slowest < 1000 * 1000000ll); /* not a wait for the holder */
        CHECK_EQ(unique_keys_held(h), KEYS); /* not freed early: the releases wait */
        uint32_t waiting = 0;
        for (uint32_t i = 0; i < h->unique_slots; i++)
            waiting += atomic_load(&h->unique_changes[i].state) == SHMQ_CHANGE_DROP;
        CHECK_EQ(waiting, KEYS);
        int64_t t0 = now_ns();
        CHECK_RC(enqueue_unique(h, hi, 0, 300 * 1000000ll), SHMQ_ELOCKED); /* claims wait, up to their time */
        CHECK(now_ns() - t0 >= 250 * 1000000ll);
        int status = 0;
        if (end == 0) {
            CHECK_EQ(kill(holder, SIGCONT), 0);
            CHECK_EQ(waitpid(holder, &status, 0), holder);
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
            CHECK_EQ(unique_keys_held(h), 1); /* its own key; its unlock applied the rest */
        } else {
            CHECK_EQ(kill(holder, SIGKILL), 0);
            CHECK_EQ(waitpid(holder, &status, 0), holder);
            shmq_unique_settle(h); /* the maintenance pass takes the dead holder's lock over */
            CHECK_EQ(unique_keys_held(h), 0);
        }
        CHECK_EQ(atomic_load(&h->jobs->unique_lock), 0);
        check_keys_free(h, hi, (uint64_t)(end == 0));
        shmq_detach(h);
        region_destroy(&r);
        temp_dir_remove(dir);
    }
}

/* The same in one process, where the sanitizers see both sides: a thread
 * holds the lock for a while again and again, as a preempted or stopped
 * holder would, and lets go the way a holder does (store 0, then apply what
 * waits); a producer claims keys meanwhile; two consumers free keys. Every
 * key ends free, once. */
typedef struct blocker {
    const test_region *r;
    const char *dir;
    _Atomic int *stop;
    _Atomic uint32_t holds;
} blocker;

static void *block_run(void *arg)
{
    blocker *b = arg;
    shmq_handle *h = logged_attach(b->r, b->dir);
    while (!atomic_load(b->stop)) {
        uint32_t expected = 0;
        if (atomic_compare_exchange_strong(&h->jobs->unique_lock, &expected, h->self)) {
            atomic_fetch_add(&b->holds, 1);
            sleep_ms(3);
            atomic_store(&h->jobs->unique_lock, 0); /* as table_unlock: let go, then apply */
            shmq_unique_settle(h);
        }
        struct timespec gap = {0, 100 * 1000}; /* room for the producer's claims */
        nanosleep(&gap, NULL);
    }
    shmq_detach(h);
    return NULL;
}

typedef struct producer {
    const test_region *r;
    const char *dir;
    uint32_t enqueued, locked;
} producer;

static void *produce_run(void *arg)
{
    producer *w = arg;
    shmq_handle *h = logged_attach(w->r, w->dir);
    for (uint64_t k = 0; k < KEYS; k++) {
        for (;;) {
            int rc = enqueue_unique(h, 0xE0, k, 20 * 1000000ll);
            if (rc == SHMQ_OK)
                break;
            CHECK_RC(rc, SHMQ_ELOCKED); /* a held lock, past a healthy hold: try again */
            w->locked++;
        }
        w->enqueued++;
    }
    shmq_detach(h);
    return NULL;
}

void test_stall_unique_changes_race(void)
{
    char *dir = temp_dir_create();
    shmq_params p = unique_params();
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    uint32_t deferred_before = atomic_load(&h->jobs->unique_deferred);
    for (int round = 0; round < 3; round++) {
        _Atomic int stop = 0;
        blocker b = {.r = &r, .dir = dir, .stop = &stop};
        producer w = {.r = &r, .dir = dir};
        pthread_t bt, pt;
        CHECK_EQ(pthread_create(&bt, NULL, block_run, &b), 0);
        while (atomic_load(&b.holds) == 0) /* the others start while the lock is held */
            sched_yield();
        CHECK_EQ(pthread_create(&pt, NULL, produce_run, &w), 0);
        int64_t slowest = release_threads(&r, dir, KEYS, 1); /* a finish lands in a hold more often */
        CHECK_EQ(pthread_join(pt, NULL), 0);
        atomic_store(&stop, 1);
        CHECK_EQ(pthread_join(bt, NULL), 0);
        CHECK_EQ(w.enqueued, KEYS);
        CHECK(slowest < 1000 * 1000000ll);
        shmq_unique_settle(h);
        CHECK_EQ(unique_keys_held(h), 0);
        check_keys_free(h, 0xE0, 0);
        /* Drain them for the next round. */
        int64_t give_up = now_ns() + 10 * 1000000000ll;
        for (uint32_t n = 0; n < KEYS;) {
            CHECK(now_ns() < give_up);
            char buf[64];
            shmq_delivery d;
            int rc = shmq_fetch(h, buf, sizeof buf, 20 * 1000000ll, 60 * 1000000000ll, &d);
            if (rc == SHMQ_EEMPTY)
                continue;
            CHECK_RC(rc, SHMQ_OK);
            CHECK_RC(shmq_ack(h, &d, 0, NULL, 0), SHMQ_OK);
            n++;
        }
        shmq_unique_settle(h);
        CHECK_EQ(unique_keys_held(h), 0);
    }
    CHECK(atomic_load(&h->jobs->unique_deferred) != deferred_before); /* the list was used */
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}
