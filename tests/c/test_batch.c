/* SPDX-License-Identifier: Apache-2.0 */
/* push_many / pop_many, and messages too big for the pop buffer (claimed,
 * then finished or abandoned). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include "harness.h"
#include "tests.h"

enum { SLOT = 48, SLOTS = 16 };
/* ONE: the largest payload of a one-slot message; SMALL: a one-slot payload. */
enum { ONE = SLOT - SHMQ_MSG_HEADER_BYTES, SMALL = ONE - 4 };

/* Concatenated pattern messages seq0, seq0+1, ... with the given lengths. */
static void build_batch(uint8_t *data, const uint32_t *lengths, uint32_t count, uint64_t seq0)
{
    for (uint32_t i = 0; i < count; i++) {
        fill_pattern(data, seq0 + i, lengths[i]);
        data += lengths[i];
    }
}

static void pop_expect(shmq_handle *h, uint64_t seq, uint32_t length, uint8_t tag)
{
    static uint8_t buf[4096];
    shmq_message m;
    CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_OK);
    CHECK_EQ(m.length, length);
    CHECK_EQ(m.tag, tag);
    CHECK_EQ(check_pattern(buf, seq, length), 0);
}

void test_batch_push_many(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    static uint8_t data[65536];
    uint32_t lengths[32];
    char tags[32];
    uint32_t pushed = 99;
    shmq_message m;

    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 0, 0, 0, &pushed), SHMQ_OK);
    CHECK_EQ(pushed, 0);
    CHECK(shmq_is_empty(h));

    lengths[0] = 33;
    build_batch(data, lengths, 1, 500);
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 4, 1, 0, &pushed), SHMQ_OK);
    CHECK_EQ(pushed, 1);
    pop_expect(h, 500, 33, 4);

    /* Several messages of several spans, a tag each. */
    const uint32_t sizes[10] = {0, 1, ONE, ONE + 1, 2 * SLOT + ONE, 7, SLOT + ONE, 2, 3, 10}; /* spans 14 */
    uint32_t total_span = 0;
    for (int i = 0; i < 10; i++) {
        lengths[i] = sizes[i];
        tags[i] = (char)(i + 10);
        total_span += span_for(h, sizes[i]);
    }
    CHECK(total_span <= SLOTS);
    build_batch(data, lengths, 10, 1000);
    uint64_t tail = lane_tail(h, 0);
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, tags, 0, 10, 0, &pushed), SHMQ_OK);
    CHECK_EQ(pushed, 10);
    CHECK_EQ(lane_tail(h, 0), tail + total_span);
    for (int i = 0; i < 10; i++)
        pop_expect(h, 1000 + i, sizes[i], (uint8_t)(i + 10));
    CHECK_RC(shmq_pop(h, (char *)data, sizeof data, 0, &m), SHMQ_EEMPTY);

    /* More than fits, timeout 0: what fits goes in, in order, then EFULL. */
    for (int i = 0; i < 20; i++)
        lengths[i] = SMALL;
    build_batch(data, lengths, 20, 2000);
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 1, 20, 0, &pushed), SHMQ_EFULL);
    CHECK_EQ(pushed, SLOTS);
    CHECK(shmq_is_full(h));
    for (int i = 0; i < SLOTS; i++)
        pop_expect(h, 2000 + i, SMALL, 1);

    /* Three-slot messages: 5 fit in 16 slots; the last claim shrinks to what fits. */
    for (int i = 0; i < 8; i++)
        lengths[i] = 3 * SLOT - SHMQ_MSG_HEADER_BYTES;
    build_batch(data, lengths, 8, 3000);
    tail = lane_tail(h, 0);
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 2, 8, 0, &pushed), SHMQ_EFULL);
    CHECK_EQ(pushed, 5);
    CHECK_EQ(lane_tail(h, 0), tail + 15);
    for (int i = 0; i < 5; i++)
        pop_expect(h, 3000 + i, 3 * SLOT - SHMQ_MSG_HEADER_BYTES, 2);

    /* A full lane with a timeout: waits it out, then EFULL with what went in. */
    for (int i = 0; i < 20; i++)
        lengths[i] = 1;
    build_batch(data, lengths, 20, 4000);
    int64_t start = now_ns();
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 3, 20, 50000000, &pushed), SHMQ_EFULL);
    CHECK(now_ns() - start >= 50000000);
    CHECK_EQ(pushed, SLOTS);
    for (int i = 0; i < SLOTS; i++)
        pop_expect(h, 4000 + i, 1, 3);

    /* A message over the limit stops the batch there. */
    uint32_t max = shmq_inline_max(h);
    lengths[0] = 10;
    lengths[1] = max + 1;
    lengths[2] = 10;
    build_batch(data, lengths, 3, 5000);
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 0, 3, 0, &pushed), SHMQ_ETOOBIG);
    CHECK_EQ(pushed, 1);
    pop_expect(h, 5000, 10, 0);
    CHECK(shmq_is_empty(h));

    shmq_counts c;
    shmq_counts_read(h, &c);
    CHECK_EQ(c.pushed, 1 + 10 + SLOTS + 5 + SLOTS + 1);
    CHECK_EQ(c.popped, c.pushed);
    shmq_detach(h);
    region_destroy(&r);
}

typedef struct blocked_push {
    test_region *region;
    uint32_t count;
    _Atomic int done;
    int rc;
    uint32_t pushed;
} blocked_push;

static void *blocked_push_thread(void *arg)
{
    blocked_push *b = arg;
    shmq_handle *h = region_attach(b->region);
    static uint8_t data[4096];
    uint32_t lengths[64];
    for (uint32_t i = 0; i < b->count; i++)
        lengths[i] = SMALL;
    build_batch(data, lengths, b->count, 7000);
    b->rc = shmq_push_many(h, -1, (const char *)data, lengths, NULL, 6, b->count, -1, &b->pushed);
    atomic_store(&b->done, 1);
    shmq_detach(h);
    return NULL;
}

/* More than capacity, no timeout: push_many puts in what fits, waits for
 * room, and returns only when all went in. */
void test_batch_push_many_blocks(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    blocked_push b = {.region = &r, .count = 40};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, blocked_push_thread, &b), 0);

    shmq_counts c;
    int64_t give_up = now_ns() + 10000000000;
    do {
        sleep_ms(1);
        shmq_counts_read(h, &c);
    } while (c.pushed < SLOTS && now_ns() < give_up);
    CHECK_EQ(c.pushed, SLOTS);
    sleep_ms(20);
    shmq_counts_read(h, &c);
    CHECK_EQ(c.pushed, SLOTS);
    CHECK(!atomic_load(&b.done));

    static uint8_t buf[4096];
    for (uint32_t i = 0; i < b.count; i++) {
        shmq_message m;
        CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 10000000000, &m), SHMQ_OK);
        CHECK_EQ(m.length, SMALL);
        CHECK_EQ(m.tag, 6);
        CHECK_EQ(check_pattern(buf, 7000 + i, SMALL), 0);
    }
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_RC(b.rc, SHMQ_OK);
    CHECK_EQ(b.pushed, b.count);
    CHECK(shmq_is_empty(h));
    shmq_detach(h);
    region_destroy(&r);
}

void test_batch_pop_many(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r);
    static uint8_t data[4096], buf[4096];
    uint32_t lengths[32], out_lengths[32], count = 99, pushed;
    uint8_t out_tags[32];
    shmq_message claimed;

    CHECK_RC(shmq_pop_many(h, (char *)buf, sizeof buf, 0, 0, out_lengths, out_tags, &count, &claimed),
             SHMQ_EINVAL);

    /* max_items is respected. */
    for (int i = 0; i < 10; i++)
        lengths[i] = SMALL;
    build_batch(data, lengths, 10, 100);
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 8, 10, 0, &pushed), SHMQ_OK);
    const uint32_t takes[] = {3, 3, 1, 10};
    const uint32_t expect[] = {3, 3, 1, 3};
    uint64_t seq = 100;
    for (int round = 0; round < 4; round++) {
        CHECK_RC(shmq_pop_many(h, (char *)buf, sizeof buf, takes[round], 0, out_lengths, out_tags, &count,
                               &claimed),
                 SHMQ_OK);
        CHECK_EQ(count, expect[round]);
        for (uint32_t i = 0; i < count; i++) {
            CHECK_EQ(out_lengths[i], SMALL);
            CHECK_EQ(out_tags[i], 8);
            CHECK_EQ(check_pattern(buf + SMALL * i, seq++, SMALL), 0);
        }
    }
    CHECK_RC(shmq_pop_many(h, (char *)buf, sizeof buf, 5, 0, out_lengths, out_tags, &count, &claimed),
             SHMQ_EEMPTY);
    CHECK_EQ(count, 0);

    /* The buffer is respected: a message is taken only if its span's room
     * (ONE bytes) is left, so 2 * SMALL + 10 bytes take two SMALL messages,
     * and SMALL + ONE - 1 (room for the bytes of two, not for the second's
     * span) one. */
    for (int i = 0; i < 6; i++)
        lengths[i] = SMALL;
    build_batch(data, lengths, 6, 200);
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 9, 6, 0, &pushed), SHMQ_OK);
    memset(buf, 0xEE, sizeof buf);
    CHECK_RC(shmq_pop_many(h, (char *)buf, 2 * SMALL + 10, 10, 0, out_lengths, out_tags, &count, &claimed),
             SHMQ_OK);
    CHECK_EQ(count, 2);
    CHECK_EQ(check_pattern(buf, 200, SMALL), 0);
    CHECK_EQ(check_pattern(buf + SMALL, 201, SMALL), 0);
    CHECK_EQ(buf[2 * SMALL], 0xEE);
    _Static_assert(SMALL + ONE - 1 >= 2 * SMALL, "the buffer holds the bytes of two messages");
    CHECK_RC(shmq_pop_many(h, (char *)buf, SMALL + ONE - 1, 10, 0, out_lengths, out_tags, &count, &claimed),
             SHMQ_OK);
    CHECK_EQ(count, 1);
    CHECK_EQ(check_pattern(buf, 202, SMALL), 0);
    CHECK_RC(shmq_pop_many(h, (char *)buf, sizeof buf, 10, 0, out_lengths, out_tags, &count, &claimed), SHMQ_OK);
    CHECK_EQ(count, 3);
    for (uint32_t i = 0; i < 3; i++)
        CHECK_EQ(check_pattern(buf + SMALL * i, 203 + i, SMALL), 0);
    shmq_detach(h);
    region_destroy(&r);

    /* One call takes from every lane. */
    r = region_create(3, SLOTS, SLOT);
    h = region_attach(&r);
    for (int lane = 0; lane < 3; lane++)
        for (int i = 0; i < 4; i++)
            CHECK_RC(shmq_push(h, lane, (uint8_t)lane, 0, (const char *)data, 5, NULL, 0, 0), SHMQ_OK);
    CHECK_RC(shmq_pop_many(h, (char *)buf, sizeof buf, 32, 0, out_lengths, out_tags, &count, &claimed), SHMQ_OK);
    CHECK_EQ(count, 12);
    uint32_t per_lane[3] = {0};
    for (uint32_t i = 0; i < count; i++)
        per_lane[out_tags[i]]++;
    CHECK(per_lane[0] == 4 && per_lane[1] == 4 && per_lane[2] == 4);
    CHECK(shmq_is_empty(h));
    shmq_detach(h);
    region_destroy(&r);
}

void test_batch_claimed(void)
{
    test_region r = region_create(1, SLOTS, SLOT);
    shmq_handle *h = region_attach(&r), *other = region_attach(&r);
    static uint8_t data[4096], buf[4096], own[4096];
    uint32_t out_lengths[8], count = 99;
    uint8_t out_tags[8];
    shmq_message m, claimed;
    unsigned self = shmq_participant_index(h);
    enum { BIG_SPAN = (200 + SHMQ_MSG_HEADER_BYTES + SLOT - 1) / SLOT };

    /* Bigger than the buffer: claimed, then copied by pop_finish. Flags
     * other than the core's own (bits 0-4: SHMQ_MSG_REF ... SHMQ_MSG_LEASED) pass through. */
    fill_pattern(data, 1, 200);
    CHECK_RC(shmq_push(h, -1, 5, 0x60, (const char *)data, 200, NULL, 0, 0), SHMQ_OK);
    CHECK_RC(shmq_pop(h, (char *)buf, 64, 0, &m), SHMQ_ECLAIMED);
    CHECK_EQ(m.length, 200);
    CHECK_EQ(m.span, BIG_SPAN);
    CHECK_EQ(m.lane, 0);
    CHECK_EQ(m.position, 0);
    CHECK_EQ(m.tag, 5);
    CHECK_EQ(m.flags, 0x60);
    CHECK_EQ(lane_state(h, 0, 0), shmq_state(0, SHMQ_SLOT_READING, self, BIG_SPAN));
    CHECK_RC(shmq_pop(other, (char *)buf, sizeof buf, 0, &claimed), SHMQ_EEMPTY);
    /* Only the claim's holder may finish or abandon it. */
    CHECK_RC(shmq_pop_finish(other, &m, (char *)own), SHMQ_EINVAL);
    shmq_pop_abandon(other, &m);
    CHECK_EQ(lane_state(h, 0, 0), shmq_state(0, SHMQ_SLOT_READING, self, BIG_SPAN));
    shmq_message forged = m;
    forged.lane = 1;
    CHECK_RC(shmq_pop_finish(h, &forged, (char *)own), SHMQ_EINVAL);
    forged = m;
    forged.span = BIG_SPAN - 1;
    CHECK_RC(shmq_pop_finish(h, &forged, (char *)own), SHMQ_EINVAL);
    memset(own, 0xEE, sizeof own);
    CHECK_RC(shmq_pop_finish(h, &m, (char *)own), SHMQ_OK);
    CHECK_EQ(check_pattern(own, 1, 200), 0);
    CHECK_EQ(own[200], 0xEE);
    check_released(h, 0, 0, BIG_SPAN);
    CHECK_RC(shmq_pop_finish(h, &m, (char *)own), SHMQ_EINVAL);
    CHECK(shmq_is_empty(h));

    /* A batch stops before a message that does not fit; the next call claims it. */
    uint32_t lengths[3] = {10, 200, 10};
    build_batch(data, lengths, 3, 10);
    uint32_t pushed;
    CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, 7, 3, 0, &pushed), SHMQ_OK);
    uint64_t big_pos = lane_tail(h, 0) - 1 - BIG_SPAN;
    CHECK_RC(shmq_pop_many(h, (char *)buf, 64, 8, 0, out_lengths, out_tags, &count, &claimed), SHMQ_OK);
    CHECK_EQ(count, 1);
    CHECK_EQ(check_pattern(buf, 10, 10), 0);
    CHECK_RC(shmq_pop_many(h, (char *)buf, 64, 8, 0, out_lengths, out_tags, &count, &claimed), SHMQ_ECLAIMED);
    CHECK_EQ(count, 0);
    CHECK_EQ(claimed.length, 200);
    CHECK_EQ(claimed.position, big_pos);
    CHECK_EQ(claimed.tag, 7);
    /* Abandoned: released unread, and the next message follows. */
    shmq_pop_abandon(h, &claimed);
    check_released(h, 0, big_pos, BIG_SPAN);
    pop_expect(h, 12, 10, 7);
    CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_EEMPTY);

    /* shmq_get reports the claim the same way. */
    fill_pattern(data, 20, 100);
    CHECK_RC(shmq_put(h, 1, (const char *)data, 100, 0), SHMQ_OK);
    CHECK_EQ(shmq_get(h, (char *)buf, 16, 0, &m), SHMQ_ECLAIMED);
    CHECK_RC(shmq_pop_finish(h, &m, (char *)own), SHMQ_OK);
    CHECK_EQ(check_pattern(own, 20, 100), 0);

    /* A buffer as long as the message but shorter than its span's room: the
     * message arrives either way (copied, or claimed and finished). */
    fill_pattern(data, 30, 10);
    CHECK_RC(shmq_put(h, 1, (const char *)data, 10, 0), SHMQ_OK);
    int rc = shmq_pop(h, (char *)buf, 10, 0, &m);
    if (rc == SHMQ_ECLAIMED) {
        CHECK_RC(shmq_pop_finish(h, &m, (char *)buf), SHMQ_OK);
    } else {
        CHECK_RC(rc, SHMQ_OK);
    }
    CHECK_EQ(m.length, 10);
    CHECK_EQ(check_pattern(buf, 30, 10), 0);

    /* Every slot is usable again. */
    for (int i = 0; i < SLOTS; i++)
        CHECK_RC(shmq_put(h, 0, (const char *)data, 1, 0), SHMQ_OK);
    CHECK(shmq_is_full(h));
    shmq_counts c;
    shmq_counts_read(h, &c);
    CHECK_EQ(c.pushed, 1 + 3 + 1 + 1 + SLOTS);
    CHECK_EQ(c.popped, 1 + 3 + 1 + 1);
    shmq_detach(other);
    shmq_detach(h);
    region_destroy(&r);
}

typedef struct publish_watch {
    shmq_handle *h;
    uint32_t count;           /* one-slot messages per batch */
    _Atomic uint64_t pos;     /* the batch about to be pushed; UINT64_MAX: none yet */
    _Atomic uint64_t polling; /* the batch the watcher is spinning on */
    _Atomic int stop;
    uint64_t published_seen, torn;
} publish_watch;

/* Is the message at `pos` published (or gone past) in the lap of `pos`? */
static int published(const shmq_handle *h, uint64_t pos)
{
    uint64_t s = lane_state(h, 0, pos);
    uint32_t own = lap_of(h, pos), lap = shmq_state_lap(s);
    if (lap != own)
        return shmq_lap_before(own, lap);
    return shmq_state_kind(s) == SHMQ_SLOT_READY || shmq_state_kind(s) == SHMQ_SLOT_READING;
}

static void *publish_watcher(void *arg)
{
    publish_watch *w = arg;
    uint64_t done = UINT64_MAX;
    while (!atomic_load(&w->stop)) {
        uint64_t pos = atomic_load(&w->pos);
        if (pos == UINT64_MAX || pos == done) {
            sched_yield(); /* two cores, maybe busy: let the producer run */
            continue;
        }
        atomic_store(&w->polling, pos);
        for (int spin = 0; !published(w->h, pos); spin++) {
            if (atomic_load(&w->stop))
                return NULL;
            if (spin > 100)
                sched_yield();
        }
        /* The first message is out: so is the rest of its batch. */
        w->published_seen++;
        for (uint32_t i = 1; i < w->count; i++)
            if (!published(w->h, pos + i)) {
                w->torn++;
                break;
            }
        done = pos;
    }
    return NULL;
}

/* A producer killed mid-publish must leave the batch's first slot WRITING
 * (covering the whole claim) so a consumer drops the batch whole: the first
 * message is published last, and whoever sees it sees the batch. */
void test_batch_publish_order(void)
{
    test_region r = region_create(1, 64, SLOT);
    shmq_handle *h = region_attach(&r);
    publish_watch w = {.h = h, .count = 31, .pos = UINT64_MAX, .polling = UINT64_MAX};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, publish_watcher, &w), 0);
    static uint8_t data[1024], buf[4096];
    uint32_t lengths[31], out_lengths[31], count, pushed;
    uint8_t tags[31];
    for (uint32_t i = 0; i < w.count; i++)
        lengths[i] = 8; /* one slot each: the batch is one claim of 31 slots */
    /* 10,000 rounds, or as many as 10 s allow on a loaded machine (1,000 at least). */
    int64_t until = now_ns() + 10 * 1000000000LL;
    int rounds = 0;
    for (; rounds < 10000 && (rounds < 1000 || now_ns() < until); rounds++) {
        uint64_t pos = lane_tail(h, 0);
        atomic_store(&w.pos, pos);
        for (int spin = 0; atomic_load(&w.polling) != pos; spin++)
            if (spin > 100)
                sched_yield();
        CHECK_RC(shmq_push_many(h, 0, (const char *)data, lengths, NULL, 0, w.count, 0, &pushed), SHMQ_OK);
        CHECK_EQ(lane_tail(h, 0), pos + w.count);
        shmq_message claimed;
        CHECK_RC(shmq_pop_many(h, (char *)buf, sizeof buf, w.count, 0, out_lengths, tags, &count, &claimed),
                 SHMQ_OK);
        CHECK_EQ(count, w.count);
    }
    atomic_store(&w.stop, 1);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(w.torn, 0);
    CHECK_EQ(w.published_seen, (uint64_t)rounds);
    shmq_detach(h);
    region_destroy(&r);
}
