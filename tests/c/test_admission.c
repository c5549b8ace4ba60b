/* SPDX-License-Identifier: Apache-2.0 */
/* Admission (csrc/admission.c): concurrency seats taken by many handles at
 * once (threads, each its own participant, as processes are), a seat of a
 * process killed with SIGKILL taken back, rate limits, pause. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"
#include "jobs.h"
#include "tests.h"

enum { SEGMENT = 256 * 1024, THREADS = 6, ROUNDS = 3000, LIMIT = 3 };
static const uint64_t KEY = 0x5eed5eed5eedull, SOLO = 0x50105010ull;

typedef struct admq {
    char *dir;
    test_region r;
    shmq_handle *h;
} admq;

static void admq_open(admq *q)
{
    shmq_params p = logged_params(1, 64, 64, SHMQ_DURABILITY_OS, SEGMENT);
    p.job_slots = 16;
    p.unique_slots = 16;
    q->dir = temp_dir_create();
    shmq_recovery rep;
    q->h = logged_region_create(&q->r, &p, q->dir, &rep);
    CHECK(q->h->jobs != NULL);
}

static void admq_close(admq *q)
{
    shmq_detach(q->h);
    region_destroy(&q->r);
    temp_dir_remove(q->dir);
}

typedef struct seat_runner {
    shmq_handle *h;
    _Atomic int *in_use;       /* runs holding a seat of KEY now */
    _Atomic int *solo_in_use;  /* runs holding the seat of SOLO (limit 1) now */
    int max_seen, solo_max, taken;
} seat_runner;

static void *take_seats(void *arg)
{
    seat_runner *s = arg;
    for (int i = 0; i < ROUNDS; i++) {
        int solo = i % 3 == 0;
        uint64_t key = solo ? SOLO : KEY;
        _Atomic int *count = solo ? s->solo_in_use : s->in_use;
        uint32_t seat;
        int rc = shmq_seat_take(s->h, key, solo ? 1 : LIMIT, &seat);
        CHECK(rc == SHMQ_OK || rc == SHMQ_EFULL);
        if (rc != SHMQ_OK)
            continue;
        s->taken++;
        int now = atomic_fetch_add(count, 1) + 1; /* seq_cst: the test's own count */
        if (solo && now > s->solo_max)
            s->solo_max = now;
        if (!solo && now > s->max_seen)
            s->max_seen = now;
        for (int spin = 0; spin < 200; spin++)
            shmq_cpu_relax();
        atomic_fetch_sub(count, 1);
        CHECK_RC(shmq_seat_give(s->h, key, seat), SHMQ_OK);
    }
    return NULL;
}

void test_admission_seats_race(void)
{
    admq q;
    admq_open(&q);
    _Atomic int in_use = 0, solo_in_use = 0;
    seat_runner s[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        s[i] = (seat_runner){NULL, &in_use, &solo_in_use, 0, 0, 0};
        CHECK_RC(shmq_attach(q.r.base, q.r.size, &s[i].h), SHMQ_OK); /* a participant of its own */
    }
    for (int i = 0; i < THREADS; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, take_seats, &s[i]), 0);
    int max_seen = 0, solo_max = 0, taken = 0;
    for (int i = 0; i < THREADS; i++) {
        CHECK_EQ(pthread_join(t[i], NULL), 0);
        max_seen = s[i].max_seen > max_seen ? s[i].max_seen : max_seen;
        solo_max = s[i].solo_max > solo_max ? s[i].solo_max : solo_max;
        taken += s[i].taken;
    }
    CHECK(max_seen >= 1 && max_seen <= LIMIT);
    CHECK_EQ(solo_max, 1);
    CHECK(taken > THREADS * ROUNDS / 10);
    CHECK_EQ(shmq_seats_held(q.h, KEY, LIMIT), 0);
    CHECK_EQ(shmq_seats_held(q.h, SOLO, 1), 0);
    for (int i = 0; i < THREADS; i++)
        shmq_detach(s[i].h);
    admq_close(&q);
}

void test_admission_dead_holder_seat_back(void)
{
    admq q;
    admq_open(&q);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        shmq_handle *c = NULL;
        uint32_t seat;
        if (shmq_attach(q.r.base, q.r.size, &c) != SHMQ_OK || shmq_seat_take(c, SOLO, 1, &seat) != SHMQ_OK)
            _exit(3);
        raise(SIGKILL); /* holding the only seat */
        _exit(4);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* Killed between its claim and its check of the window: the same. */
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        setenv("SHMQ_FAULT", "seat_claimed", 1);
        shmq_handle *c = NULL;
        uint32_t seat;
        if (shmq_attach(q.r.base, q.r.size, &c) != SHMQ_OK)
            _exit(3);
        shmq_seat_take(c, KEY, 1, &seat);
        _exit(4);
    }
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    uint32_t seat;
    CHECK(shmq_admission_references(q.h, 2) || shmq_admission_references(q.h, 3)); /* the dead still named */
    /* Their holders are dead: the seats are taken back by the next taker. */
    CHECK_RC(shmq_seat_take(q.h, KEY, 1, &seat), SHMQ_OK);
    CHECK_RC(shmq_seat_give(q.h, KEY, seat), SHMQ_OK);
    CHECK_RC(shmq_seat_take(q.h, SOLO, 1, &seat), SHMQ_OK);
    CHECK_EQ(shmq_seats_held(q.h, SOLO, 1), 1);
    shmq_handle *other = NULL;
    CHECK_RC(shmq_attach(q.r.base, q.r.size, &other), SHMQ_OK);
    CHECK_RC(shmq_seat_take(other, SOLO, 1, &seat), SHMQ_EFULL); /* a live holder keeps it */
    CHECK_RC(shmq_seat_give(q.h, SOLO, seat), SHMQ_OK);
    CHECK_RC(shmq_seat_take(other, SOLO, 1, &seat), SHMQ_OK);
    shmq_detach(other);
    admq_close(&q);
}

void test_admission_rate_and_pause(void)
{
    admq q;
    admq_open(&q);
    int64_t wait = -1;
    const int64_t interval = 50ll * 1000 * 1000;
    CHECK_RC(shmq_rate_take(q.h, KEY, interval, &wait), SHMQ_OK);
    CHECK_RC(shmq_rate_take(q.h, KEY, interval, &wait), SHMQ_EFULL);
    CHECK(wait > 0 && wait <= interval);
    CHECK_RC(shmq_rate_take(q.h, SOLO, interval, &wait), SHMQ_OK); /* another key: its own rate */
    CHECK_RC(shmq_rate_take(q.h, 0, interval, &wait), SHMQ_EINVAL);

    CHECK_EQ(shmq_queue_paused(q.h), 0);
    CHECK_RC(shmq_pause_set(q.h, 0, NULL, 1), SHMQ_OK);
    CHECK_EQ(shmq_queue_paused(q.h), 1);
    CHECK_RC(shmq_pause_set(q.h, 0, NULL, 0), SHMQ_OK);
    CHECK_EQ(shmq_queue_paused(q.h), 0);
    CHECK_RC(shmq_pause_set(q.h, KEY, "app.heavy", 1), SHMQ_OK);
    CHECK_RC(shmq_pause_set(q.h, KEY, "app.heavy", 1), SHMQ_OK); /* twice: one entry */
    CHECK_EQ(shmq_pause_check(q.h, KEY), 1);
    CHECK_EQ(shmq_pause_check(q.h, SOLO), 0);
    shmq_pause_info info[4];
    CHECK_EQ(shmq_pause_list(q.h, info, 4), 1);
    CHECK(info[0].task == KEY && strcmp(info[0].name, "app.heavy") == 0);
    CHECK_RC(shmq_pause_set(q.h, KEY, NULL, 0), SHMQ_OK);
    CHECK_EQ(shmq_pause_check(q.h, KEY), 0);
    CHECK_EQ(shmq_pause_list(q.h, info, 4), 0);
    admq_close(&q);
}

/* Two takers of one seat that claim it in two different words of its window
 * (a word before the first one's became free between their looks): the
 * second one to check sees the first and gives its claim back. Made
 * deterministic with the seat_looked stop point: B looks, stops; A takes the
 * seat in the second word; the first word is freed; B goes on and claims it. */
void test_admission_seat_claim_race(void)
{
    admq q;
    admq_open(&q);
    uint32_t seat;
    CHECK_RC(shmq_seat_take(q.h, SOLO, 1, &seat), SHMQ_OK);
    uint32_t first = SHMQ_SEAT_SLOTS;
    for (uint32_t i = 0; i < SHMQ_SEAT_SLOTS; i++)
        if (atomic_load(&q.h->seats[i]) != 0)
            first = i;
    CHECK(first < SHMQ_SEAT_SLOTS);
    uint64_t word = atomic_load(&q.h->seats[first]);
    /* The first word of the window now holds another seat (a live holder: us). */
    atomic_store(&q.h->seats[first], word ^ (2ull << SHMQ_SEAT_OWNER_BITS));
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        setenv("SHMQ_FAULT", "seat_looked:1:stop", 1);
        shmq_handle *b = NULL;
        if (shmq_attach(q.r.base, q.r.size, &b) != SHMQ_OK)
            _exit(3);
        int rc = shmq_seat_take(b, SOLO, 1, &seat);
        _exit(rc == SHMQ_OK ? 10 : rc == SHMQ_EFULL ? 11 : 12);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, WUNTRACED), pid);
    CHECK(WIFSTOPPED(status));
    shmq_handle *a = NULL;
    CHECK_RC(shmq_attach(q.r.base, q.r.size, &a), SHMQ_OK);
    CHECK_RC(shmq_seat_take(a, SOLO, 1, &seat), SHMQ_OK); /* in the second word */
    CHECK(atomic_load(&q.h->seats[(first + 1) % SHMQ_SEAT_SLOTS]) != 0);
    atomic_store(&q.h->seats[first], 0);
    CHECK_EQ(kill(pid, SIGCONT), 0);
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 11); /* B saw A's claim and gave its own back */
    CHECK_EQ(shmq_seats_held(q.h, SOLO, 1), 1);
    shmq_detach(a);
    admq_close(&q);
}

/* Priorities: bands are lanes, lane 0 first; a lane left waiting for its
 * band's age goes first. Then consumers in threads drain a prioritized queue
 * that producers fill (TSan checks the lanes' looked_ns and the rounds). */
static uint64_t enqueue_to(shmq_handle *h, int lane)
{
    shmq_enqueue_options o = {.lane = lane};
    uint64_t id = 0;
    char payload[8] = "job";
    CHECK_RC(shmq_enqueue(h, &o, payload, sizeof payload, 10ll * 1000 * 1000 * 1000, &id), SHMQ_OK);
    return id;
}

static uint32_t fetch_lane_of(shmq_handle *h)
{
    static char buf[256];
    shmq_delivery d;
    CHECK_RC(shmq_fetch(h, buf, sizeof buf, 0, 60ll * 1000 * 1000 * 1000, &d), SHMQ_OK);
    CHECK_RC(shmq_ack(h, &d, 0, NULL, 0), SHMQ_OK);
    return d.lane;
}

typedef struct prio_worker {
    shmq_handle *h;
    _Atomic int *left;
    int producer;
} prio_worker;

static void *prio_run(void *arg)
{
    prio_worker *w = arg;
    static _Thread_local char buf[256];
    for (int i = 0; w->producer && i < 300; i++)
        enqueue_to(w->h, i % 3);
    while (!w->producer && atomic_load(w->left) > 0) {
        shmq_delivery d;
        int rc = shmq_fetch(w->h, buf, sizeof buf, 5ll * 1000 * 1000, 60ll * 1000 * 1000 * 1000, &d);
        if (rc == SHMQ_OK) {
            CHECK_RC(shmq_ack(w->h, &d, 0, NULL, 0), SHMQ_OK);
            atomic_fetch_sub(w->left, 1);
        } else {
            CHECK(rc == SHMQ_EEMPTY);
        }
    }
    return NULL;
}

void test_admission_priority_bands(void)
{
    admq q;
    shmq_params p = logged_params(3, 64, 64, SHMQ_DURABILITY_OS, SEGMENT);
    p.job_slots = 64;
    p.unique_slots = 16;
    q.dir = temp_dir_create();
    shmq_recovery rep;
    q.h = logged_region_create(&q.r, &p, q.dir, &rep);
    const int64_t age = 100ll * 1000 * 1000;
    shmq_priority_on(q.h, age);
    enqueue_to(q.h, 2);
    enqueue_to(q.h, 1);
    enqueue_to(q.h, 0);
    enqueue_to(q.h, 0);
    CHECK_EQ(fetch_lane_of(q.h), 0);
    CHECK_EQ(fetch_lane_of(q.h), 0);
    CHECK_EQ(fetch_lane_of(q.h), 1);
    CHECK_EQ(fetch_lane_of(q.h), 2);
    /* Band 0 always has a job; band 2's waits 2 ages at most, band 1's one. */
    enqueue_to(q.h, 2);
    enqueue_to(q.h, 1);
    enqueue_to(q.h, 0);
    CHECK_EQ(fetch_lane_of(q.h), 0);
    enqueue_to(q.h, 0);
    struct timespec pause = {0, 250 * 1000 * 1000};
    nanosleep(&pause, NULL);
    CHECK_EQ(fetch_lane_of(q.h), 2); /* aged past 2 x 100 ms: first */
    CHECK_EQ(fetch_lane_of(q.h), 1);
    CHECK_EQ(fetch_lane_of(q.h), 0);

    _Atomic int left = 600;
    prio_worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (prio_worker){NULL, &left, i < 2};
        CHECK_RC(shmq_attach(q.r.base, q.r.size, &w[i].h), SHMQ_OK);
        CHECK_RC(shmq_log_open(w[i].h, q.dir), SHMQ_OK);
    }
    for (int i = 0; i < 4; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, prio_run, &w[i]), 0);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    CHECK_EQ(atomic_load(&left), 0);
    for (int i = 0; i < 4; i++)
        shmq_detach(w[i].h);
    admq_close(&q);
}
