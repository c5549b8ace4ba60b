/* SPDX-License-Identifier: Apache-2.0 */
/* Repairs of claims left by dead processes, white-box. A dead process is
 * simulated: a participant entry holding the pid of a child that was forked
 * and reaped, and slot states naming that entry as their owner, exactly as
 * the process would have left them when killed. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests.h"

enum { SLOT = 48, SLOTS = 16 };
static const int64_t MS = 1000000;

static void push_seq_wait(shmq_handle *h, int lane, uint64_t seq, uint32_t length, int64_t timeout)
{
    uint8_t buf[512];
    fill_pattern(buf, seq, length);
    CHECK_RC(shmq_push(h, lane, (uint8_t)seq, 0, (const char *)buf, length, NULL, 0, timeout), SHMQ_OK);
}

static void push_seq(shmq_handle *h, int lane, uint64_t seq, uint32_t length)
{
    push_seq_wait(h, lane, seq, length, 0);
}

static void pop_seq(shmq_handle *h, uint64_t seq, uint32_t length, int64_t timeout)
{
    uint8_t buf[1024];
    shmq_message m;
    CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, timeout, &m), SHMQ_OK);
    CHECK_EQ(m.length, length);
    CHECK_EQ(m.tag, (uint8_t)seq);
    CHECK_EQ(check_pattern(buf, seq, length), 0);
}

static shmq_counts counts(const shmq_handle *h)
{
    shmq_counts c;
    shmq_counts_read(h, &c);
    return c;
}

static uint64_t writing(const shmq_handle *h, uint64_t pos, unsigned owner, uint32_t span)
{
    return shmq_state(lap_of(h, pos), SHMQ_SLOT_WRITING, owner, span);
}

static uint64_t reading(const shmq_handle *h, uint64_t pos, unsigned owner, uint32_t span)
{
    return shmq_state(lap_of(h, pos), SHMQ_SLOT_READING, owner, span);
}

void test_repair_participant_alive(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    uint64_t start = shmq_process_start_time(getpid());
    CHECK(start != 0);
    CHECK(shmq_participant_alive(h, shmq_participant_index(h)));
    CHECK(shmq_participant_alive(h, fake_participant(h, getpid(), start)));
    CHECK(shmq_participant_alive(h, fake_participant(h, getpid(), 0))); /* start time unknown */
    CHECK(!shmq_participant_alive(h, fake_participant(h, getpid(), start + 1))); /* a reused pid */
    CHECK(!shmq_participant_alive(h, fake_participant(h, dead_pid(), 0)));
    CHECK(!shmq_participant_alive(h, 0));
    CHECK(!shmq_participant_alive(h, 63)); /* a free entry */
    CHECK(!shmq_participant_alive(h, 64)); /* past the table */

    /* Killed but not yet reaped: a zombie never writes again. */
    fflush(NULL);
    pid_t zombie = fork();
    CHECK(zombie >= 0);
    if (zombie == 0)
        _exit(0);
    siginfo_t info;
    CHECK_EQ(waitid(P_PID, (id_t)zombie, &info, WEXITED | WNOWAIT), 0);
    CHECK(!shmq_participant_alive(h, fake_participant(h, zombie, shmq_process_start_time(zombie))));
    CHECK_EQ(waitpid(zombie, NULL, 0), zombie);
    shmq_detach(h);
    region_destroy(&r);
}

/* A producer died between its claim and its publish: a consumer skips it. */
void test_repair_dead_writer(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    unsigned dead = fake_participant(h, dead_pid(), 0);

    /* Died after moving the tail. */
    lane_set_state(h, 0, 0, writing(h, 0, dead, 3));
    lane_set_hints(h, 0, 0, 3);
    push_seq(h, -1, 1, 10);
    CHECK_EQ(lane_tail(h, 0), 4);
    int64_t start = now_ns();
    pop_seq(h, 1, 10, 5000 * MS);
    CHECK(now_ns() - start < 2000 * MS);
    check_released(h, 0, 0, 3);
    CHECK_EQ(lane_head(h, 0), 4);
    CHECK_EQ(counts(h).dropped_dead_producer, 1);

    /* Died right after the claim, before moving the tail: producers step over it. */
    lane_set_state(h, 0, 4, writing(h, 4, dead, 2));
    push_seq(h, -1, 2, 40);
    CHECK_EQ(lane_tail(h, 0), 8);
    pop_seq(h, 2, 40, 5000 * MS);
    check_released(h, 0, 4, 2);
    CHECK_EQ(counts(h).dropped_dead_producer, 2);

    /* A claim across the ring's end (positions 14..17 are slots 14, 15, 0, 1). */
    lane_reset_at(h, 0, 14);
    lane_set_state(h, 0, 14, writing(h, 14, dead, 4));
    lane_set_hints(h, 0, 14, 18);
    push_seq(h, -1, 3, 0);
    pop_seq(h, 3, 0, 5000 * MS);
    check_released(h, 0, 14, 4);
    CHECK_EQ(lane_head(h, 0), 19);
    CHECK_EQ(lane_tail(h, 0), 19);

    shmq_counts c = counts(h);
    CHECK_EQ(c.dropped_dead_producer, 3);
    CHECK_EQ(c.released_dead_consumer + c.dropped_corrupt, 0);
    shmq_message m;
    CHECK_RC(shmq_pop(h, (char *)&c, sizeof c, 0, &m), SHMQ_EEMPTY);
    shmq_detach(h);
    region_destroy(&r);
}

/* A batch producer died mid-publish: its later messages are READY, the first
 * slot still WRITING with the whole span. The whole batch is dropped. */
void test_repair_dead_batch_writer(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    unsigned dead = fake_participant(h, dead_pid(), 0);
    uint8_t data[256];
    uint32_t lengths[3] = {10, 40, 10}, pushed; /* spans 1, 2, 1 */
    fill_pattern(data, 9, 60);
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 0, 3, 0, &pushed), SHMQ_OK);
    CHECK_EQ(lane_state(h, 0, 1), shmq_state(0, SHMQ_SLOT_READY, shmq_participant_index(h), 2));
    lane_set_state(h, 0, 0, writing(h, 0, dead, 4));
    push_seq(h, -1, 4, 20);
    pop_seq(h, 4, 20, 5000 * MS);
    check_released(h, 0, 0, 4);
    shmq_message m;
    CHECK_RC(shmq_pop(h, (char *)data, sizeof data, 0, &m), SHMQ_EEMPTY);
    CHECK_EQ(counts(h).dropped_dead_producer, 1);
    shmq_detach(h);
    region_destroy(&r);
}

typedef struct sleeper {
    test_region *region;
    int64_t timeout;
    uint64_t seq;
    uint32_t length;
    _Atomic int done;
} sleeper;

static void *sleeper_main(void *arg)
{
    sleeper *s = arg;
    shmq_handle *h = region_attach(s->region);
    pop_seq(h, s->seq, s->length, s->timeout);
    atomic_store(&s->done, 1);
    shmq_detach(h);
    return NULL;
}

/* Consumers already asleep when the dead claim shows up still get past it. */
void test_repair_wakes_sleeper(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    pid_t gone = dead_pid();
    unsigned dead = fake_participant(h, gone, 0);

    /* Asleep on an empty lane; a dead claim then a message arrive. */
    sleeper s = {&r, 10000 * MS, 5, 30, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, sleeper_main, &s), 0);
    sleep_ms(50);
    CHECK(!atomic_load(&s.done));
    lane_set_state(h, 0, 0, writing(h, 0, dead, 2));
    lane_set_hints(h, 0, 0, 2);
    push_seq(h, -1, 5, 30);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(counts(h).dropped_dead_producer, 1);

    /* Asleep behind a live writer that then dies: the owner is re-checked
     * while sleeping, not only on a wake-up. */
    unsigned dying = fake_participant(h, getpid(), 0);
    lane_set_state(h, 0, 3, writing(h, 3, dying, 1));
    lane_set_hints(h, 0, 3, 4);
    push_seq(h, -1, 6, 1);
    s = (sleeper){&r, 10000 * MS, 6, 1, 0};
    CHECK_EQ(pthread_create(&t, NULL, sleeper_main, &s), 0);
    sleep_ms(100);
    CHECK(!atomic_load(&s.done));
    CHECK_EQ(counts(h).dropped_dead_producer, 1);
    int64_t died = now_ns();
    atomic_store(&h->participants[dying].pid, (uint32_t)gone);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK(now_ns() - died < 5000 * MS);
    CHECK_EQ(counts(h).dropped_dead_producer, 2);
    check_released(h, 0, 3, 1);
    shmq_detach(h);
    region_destroy(&r);
}

/* Claims of live owners are waited for, never taken over. */
void test_repair_live_owners_kept(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r), *other = region_attach(&r);
    unsigned live = shmq_participant_index(other);
    uint8_t buf[1024];
    shmq_message m;

    /* A live writer at the head: consumers wait, then time out. */
    lane_set_state(h, 0, 0, writing(h, 0, live, 1));
    lane_set_hints(h, 0, 0, 1);
    push_seq(h, -1, 1, 10);
    int64_t start = now_ns();
    CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 100 * MS, &m), SHMQ_EEMPTY);
    CHECK(now_ns() - start >= 100 * MS);
    CHECK_EQ(lane_state(h, 0, 0), writing(h, 0, live, 1));
    CHECK_EQ(shmq_repair(h), 0);
    /* It publishes at last: both messages arrive in order. */
    enum { ONE = SLOT - SHMQ_MSG_HEADER_BYTES }; /* fills its one slot */
    fill_pattern(buf, 0, ONE);
    shmq_msg_header *mh = header_at(h, lane_at(h, 0), 0);
    *mh = (shmq_msg_header){.length = ONE, .tag = 0};
    ring_write(h, lane_at(h, 0), 0, SHMQ_MSG_HEADER_BYTES, buf, ONE);
    lane_set_state(h, 0, 0, shmq_state(0, SHMQ_SLOT_READY, live, 1));
    pop_seq(h, 0, ONE, 0);
    pop_seq(h, 1, 10, 0);

    /* A live reader holds the oldest message of a full lane: producers wait. */
    push_seq(h, -1, 2, 100);
    CHECK_RC(shmq_pop(other, (char *)buf, 16, 0, &m), SHMQ_ECLAIMED);
    uint64_t held = m.position;
    for (uint64_t i = 0; i < SLOTS - m.span; i++)
        push_seq(h, -1, 10 + i, 1);
    start = now_ns();
    CHECK_RC(shmq_push(h, -1, 0, 0, (const char *)buf, 1, NULL, 0, 100 * MS), SHMQ_EFULL);
    CHECK(now_ns() - start >= 100 * MS);
    CHECK_EQ(lane_state(h, 0, held), reading(h, held, live, m.span));
    CHECK_EQ(shmq_repair(h), 0);
    CHECK_RC(shmq_pop_finish(other, &m, (char *)buf), SHMQ_OK);
    CHECK_EQ(check_pattern(buf, 2, 100), 0);
    CHECK_RC(shmq_push(h, -1, 0, 0, (const char *)buf, 1, NULL, 0, 0), SHMQ_OK);

    shmq_counts c = counts(h);
    CHECK_EQ(c.dropped_dead_producer + c.released_dead_consumer + c.dropped_corrupt, 0);
    shmq_detach(other);
    shmq_detach(h);
    region_destroy(&r);
}

/* Fills lane 0 behind a message at `pos` of `span` slots whose reader died
 * holding it; returns how many one-slot messages (seq from seq0) were pushed. */
static uint32_t fill_behind(shmq_handle *h, uint64_t pos, uint32_t span, uint64_t seq0)
{
    uint32_t pushed = 0;
    for (uint64_t at = pos + span; at < pos + SLOTS; at++)
        push_seq(h, 0, seq0 + pushed++, 5);
    CHECK(shmq_is_full(h));
    CHECK_RC(shmq_push(h, 0, 0, 0, "x", 1, NULL, 0, 0), SHMQ_EFULL); /* timeout 0 never repairs */
    return pushed;
}

/* A consumer died holding a message: a producer that needs its slots takes
 * them back. */
void test_repair_dead_reader(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    unsigned dead = fake_participant(h, dead_pid(), 0);

    /* Died after its claim and moving the head, before releasing. */
    push_seq(h, -1, 1, 40); /* span 2 at 0 */
    lane_set_state(h, 0, 0, reading(h, 0, dead, 2));
    lane_set_hints(h, 0, 2, 2);
    uint32_t filled = fill_behind(h, 0, 2, 100);
    int64_t start = now_ns();
    push_seq_wait(h, 0, 99, 5, 5000 * MS);
    CHECK(now_ns() - start < 2000 * MS);
    CHECK_EQ(counts(h).released_dead_consumer, 1);
    CHECK_EQ(lane_tail(h, 0), 17);
    for (uint32_t i = 0; i < filled; i++)
        pop_seq(h, 100 + i, 5, 0);
    pop_seq(h, 99, 5, 0);
    CHECK(shmq_is_empty(h));

    /* Died mid-release (its second slot already free) and before moving the
     * head: consumers step over it, producers take it back. */
    lane_reset_at(h, 0, 21);
    push_seq(h, -1, 2, 80); /* span 3 at 21..23 */
    lane_set_state(h, 0, 21, reading(h, 21, dead, 3));
    lane_set_state(h, 0, 22, free_state(h, 22 + SLOTS));
    filled = fill_behind(h, 21, 3, 200);
    push_seq_wait(h, 0, 98, 5, 5000 * MS);
    CHECK_EQ(counts(h).released_dead_consumer, 2);
    check_released(h, 0, 22, 2); /* its first slot holds the new message now */
    for (uint32_t i = 0; i < filled; i++)
        pop_seq(h, 200 + i, 5, 0);
    pop_seq(h, 98, 5, 0);
    CHECK(shmq_is_empty(h));
    CHECK_EQ(counts(h).dropped_dead_producer, 0);
    shmq_detach(h);
    region_destroy(&r);
}

/* The repairer finds the message's first slot from any slot it blocks. */
void test_repair_reader_scan_back(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    unsigned dead = fake_participant(h, dead_pid(), 0);
    lane_ref lane = lane_at(h, 0);

    push_seq(h, -1, 1, 80); /* span 3 at 0..2 */
    lane_set_state(h, 0, 0, reading(h, 0, dead, 3));
    lane_set_hints(h, 0, 3, 3);
    CHECK_EQ(shmq_lane_repair_reader(h, lane, 2), 0); /* no previous lap yet */
    CHECK_EQ(shmq_lane_repair_reader(h, lane, SLOTS + 3), 0); /* past the message */
    CHECK_EQ(lane_state(h, 0, 0), reading(h, 0, dead, 3));
    CHECK_EQ(shmq_lane_repair_reader(h, lane, SLOTS + 2), 1); /* from its last slot */
    check_released(h, 0, 0, 3);
    CHECK_EQ(counts(h).released_dead_consumer, 1);
    CHECK_EQ(shmq_lane_repair_reader(h, lane, SLOTS), 0); /* released already */

    /* Not repaired: an unread message, and one held by a live reader. */
    push_seq(h, -1, 2, 80); /* span 3 at 3..5 */
    CHECK_EQ(shmq_lane_repair_reader(h, lane, SLOTS + 4), 0);
    lane_set_state(h, 0, 3, reading(h, 3, shmq_participant_index(h), 3));
    CHECK_EQ(shmq_lane_repair_reader(h, lane, SLOTS + 5), 0);
    CHECK_EQ(counts(h).released_dead_consumer, 1);
    shmq_detach(h);
    region_destroy(&r);
}

typedef struct racer {
    test_region *region;
    pthread_barrier_t *start;
    int pop; /* 1: pop with a timeout; 0: push one message */
    int rc;
} racer;

static void *racer_main(void *arg)
{
    racer *x = arg;
    shmq_handle *h = region_attach(x->region);
    uint8_t buf[256];
    shmq_message m;
    pthread_barrier_wait(x->start);
    if (x->pop)
        x->rc = shmq_pop(h, (char *)buf, sizeof buf, 100 * MS, &m);
    else
        x->rc = shmq_push(h, 0, 0, 0, "race", 4, NULL, 0, 5000 * MS);
    shmq_detach(h);
    return NULL;
}

static void race(test_region *r, int pop, int *rc0, int *rc1)
{
    pthread_barrier_t start;
    CHECK_EQ(pthread_barrier_init(&start, NULL, 2), 0);
    racer x[2] = {{r, &start, pop, 99}, {r, &start, pop, 99}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, racer_main, &x[i]), 0);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&start);
    *rc0 = x[0].rc;
    *rc1 = x[1].rc;
}

/* Two repairers of the same dead claim: exactly one takes it over. */
void test_repair_races(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    unsigned dead = fake_participant(h, dead_pid(), 0);
    enum { ROUNDS = 8 };
    for (int round = 0; round < ROUNDS; round++) {
        /* Two consumers behind one dead writer and one message. */
        uint64_t pos = lane_tail(h, 0);
        lane_set_state(h, 0, pos, writing(h, pos, dead, 2));
        lane_set_hints(h, 0, pos, pos + 2);
        push_seq(h, -1, round, 10);
        int a, b;
        race(&r, 1, &a, &b);
        CHECK((a == SHMQ_OK && b == SHMQ_EEMPTY) || (a == SHMQ_EEMPTY && b == SHMQ_OK));
        CHECK_EQ(counts(h).dropped_dead_producer, round + 1);
        check_released(h, 0, pos, 2);

        /* Two producers blocked by one dead reader's two slots. */
        pos = lane_tail(h, 0);
        push_seq(h, 0, 50, 40); /* span 2 */
        lane_set_state(h, 0, pos, reading(h, pos, dead, 2));
        lane_set_hints(h, 0, pos + 2, pos + 2);
        uint32_t filled = fill_behind(h, pos, 2, 100);
        race(&r, 0, &a, &b);
        CHECK_RC(a, SHMQ_OK);
        CHECK_RC(b, SHMQ_OK);
        CHECK_EQ(counts(h).released_dead_consumer, round + 1);
        for (uint32_t i = 0; i < filled; i++)
            pop_seq(h, 100 + i, 5, 0);
        for (int i = 0; i < 2; i++) {
            uint8_t buf[64];
            shmq_message m;
            CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_OK);
            CHECK(m.length == 4 && memcmp(buf, "race", 4) == 0);
        }
        CHECK(shmq_is_empty(h));
    }
    shmq_detach(h);
    region_destroy(&r);
}

/* shmq_repair fixes both kinds at once, without waiting. */
void test_repair_explicit(void)
{
    test_region r = region_create(2, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    unsigned dead = fake_participant(h, dead_pid(), 0);

    lane_set_state(h, 0, 0, writing(h, 0, dead, 2));
    lane_set_hints(h, 0, 0, 2);
    push_seq(h, 0, 1, 10);

    push_seq(h, 1, 2, 40);
    lane_set_state(h, 1, 0, reading(h, 0, dead, 2));
    lane_set_hints(h, 1, 2, 2);
    for (int i = 2; i < SLOTS; i++)
        push_seq(h, 1, 100 + i, 5);
    CHECK_RC(shmq_push(h, 1, 0, 0, "x", 1, NULL, 0, 0), SHMQ_EFULL);

    CHECK_EQ(shmq_repair(h), 2);
    shmq_counts c = counts(h);
    CHECK_EQ(c.dropped_dead_producer, 1);
    CHECK_EQ(c.released_dead_consumer, 1);
    check_released(h, 0, 0, 2);
    check_released(h, 1, 0, 2);
    CHECK_EQ(shmq_repair(h), 0);
    CHECK_RC(shmq_push(h, 1, 0, 0, "x", 1, NULL, 0, 0), SHMQ_OK);
    CHECK_RC(shmq_push(h, 1, 0, 0, "x", 1, NULL, 0, 0), SHMQ_OK);
    CHECK_RC(shmq_push(h, 1, 0, 0, "x", 1, NULL, 0, 0), SHMQ_EFULL);
    uint8_t buf[256];
    shmq_message m;
    int left = 1 + SLOTS; /* lane 0: one; lane 1: full */
    while (shmq_pop(h, (char *)buf, sizeof buf, 0, &m) == SHMQ_OK)
        left--;
    CHECK_EQ(left, 0);

    /* A writer that died before moving the tail, nothing behind it: the
     * repair moves the tail too, or producers would find a slot of a later
     * lap at the tail forever. */
    uint64_t pos = lane_tail(h, 0);
    lane_set_state(h, 0, pos, writing(h, pos, dead, 3));
    CHECK_EQ(shmq_repair(h), 1);
    CHECK_EQ(lane_tail(h, 0), pos + 3);
    CHECK_EQ(lane_head(h, 0), pos + 3);
    check_released(h, 0, pos, 3);
    push_seq(h, 0, 3, 10);
    pop_seq(h, 3, 10, 0);
    CHECK_EQ(counts(h).dropped_dead_producer, 2);
    shmq_detach(h);
    region_destroy(&r);
}

typedef struct release_watch {
    shmq_handle *h;
    _Atomic uint64_t pos;     /* the message about to be popped; UINT64_MAX: none yet */
    _Atomic uint64_t polling; /* the message the watcher is spinning on */
    _Atomic int stop;
    uint64_t released_seen, torn;
} release_watch;

static int released(const shmq_handle *h, uint64_t pos)
{
    uint32_t next = lap_of(h, pos) + 1;
    return !shmq_lap_before(shmq_state_lap(lane_state(h, 0, pos)), next);
}

static void *release_watcher(void *arg)
{
    release_watch *w = arg;
    uint64_t done = UINT64_MAX;
    while (!atomic_load(&w->stop)) {
        uint64_t pos = atomic_load(&w->pos);
        if (pos == UINT64_MAX || pos == done) {
            sched_yield(); /* two cores, maybe busy: let the consumer run */
            continue;
        }
        atomic_store(&w->polling, pos);
        for (int spin = 0; !released(w->h, pos); spin++) {
            if (atomic_load(&w->stop))
                return NULL;
            if (spin > 100)
                sched_yield();
        }
        /* The first slot is free: every other slot of the span must be too. */
        w->released_seen++;
        for (uint64_t i = 1; i < 64; i++)
            if (!released(w->h, pos + i)) {
                w->torn++;
                break;
            }
        done = pos;
    }
    return NULL;
}

/* A consumer killed mid-release must leave the first slot READING: the
 * repairer finds the message from that slot only. So the first slot is
 * released last, and whoever sees it free sees the whole span free. */
void test_repair_release_order(void)
{
    test_region r = region_create(1, 128, 16);
    shmq_handle *h = region_attach(&r);
    release_watch w = {.h = h, .pos = UINT64_MAX, .polling = UINT64_MAX};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, release_watcher, &w), 0);
    uint32_t length = shmq_inline_max(h); /* 64 slots */
    static uint8_t buf[2048];
    /* 20,000 rounds, or as many as 10 s allow on a loaded machine (1,000 at least). */
    int64_t until = now_ns() + 10 * 1000000000LL;
    int rounds = 0;
    for (; rounds < 20000 && (rounds < 1000 || now_ns() < until); rounds++) {
        uint64_t pos = lane_tail(h, 0);
        CHECK_RC(shmq_push(h, 0, 0, 0, (const char *)buf, length, NULL, 0, 0), SHMQ_OK);
        atomic_store(&w.pos, pos);
        for (int spin = 0; atomic_load(&w.polling) != pos; spin++)
            if (spin > 100)
                sched_yield();
        shmq_message m;
        CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_OK);
        CHECK_EQ(m.length, length);
    }
    atomic_store(&w.stop, 1);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(w.torn, 0);
    CHECK_EQ(w.released_seen, (uint64_t)rounds);
    shmq_detach(h);
    region_destroy(&r);
}
