/* SPDX-License-Identifier: Apache-2.0 */
/* Many producers, many consumers, each thread its own handle, a small lane so
 * the ring wraps and both sides wait on full and empty. Every message says
 * who sent it, its sequence number and a checksum; in the end each
 * (producer, seq) must have arrived exactly once. */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>

#include "harness.h"
#include "tests.h"

enum { PRODUCERS = 4, CONSUMERS = 4, MAX_BODY = 100, WIRE = 16, MAX_BATCH = 8 };

typedef struct wire {
    uint32_t producer, seq, checksum, body_length;
} wire;
_Static_assert(sizeof(wire) == WIRE, "wire header");

typedef struct mpmc {
    test_region region;
    uint32_t per_producer;
    uint32_t max_body; /* MAX_BODY, or less where the largest message would not fit in a lane */
    int ordered; /* one lane: each consumer sees each producer's messages in order */
    _Atomic uint64_t received;
    _Atomic uint8_t *seen;
} mpmc;

typedef struct worker {
    mpmc *m;
    uint32_t id;
    pthread_t thread;
    uint64_t messages, claims; /* what this consumer got, and how many via pop_finish */
} worker;

static uint32_t checksum(const wire *w, const uint8_t *body)
{
    return fnv1a(body, w->body_length) ^ (uint32_t)mix64((uint64_t)w->producer << 32 | w->seq);
}

/* Writes message (producer, seq) at dst; returns its length. */
static uint32_t make_message(uint8_t *dst, uint32_t producer, uint32_t seq, uint32_t max_body, uint64_t *rng)
{
    wire w = {producer, seq, 0, rng_below(rng, max_body + 1)};
    uint8_t *body = dst + WIRE;
    for (uint32_t i = 0; i < w.body_length; i++)
        body[i] = (uint8_t)rng_next(rng);
    w.checksum = checksum(&w, body);
    memcpy(dst, &w, WIRE);
    return WIRE + w.body_length;
}

static void *producer_main(void *arg)
{
    worker *self = arg;
    mpmc *m = self->m;
    shmq_handle *h = region_attach(&m->region);
    uint64_t rng = 0xABCDEF + self->id * 7919;
    uint8_t data[MAX_BATCH * (WIRE + MAX_BODY)];
    uint32_t lengths[MAX_BATCH];
    for (uint32_t seq = 0; seq < m->per_producer;) {
        uint32_t mode = rng_below(&rng, 4);
        if (mode == 0) {
            uint32_t length = make_message(data, self->id, seq++, m->max_body, &rng);
            /* header and body as the two pieces of one message */
            CHECK_RC(shmq_push(h, -1, (uint8_t)self->id, 0, (const char *)data, WIRE, (const char *)data + WIRE,
                               length - WIRE, -1),
                     SHMQ_OK);
        } else if (mode == 1) {
            uint32_t length = make_message(data, self->id, seq++, m->max_body, &rng);
            CHECK_RC(shmq_put(h, (uint8_t)self->id, (const char *)data, length, -1), SHMQ_OK);
        } else {
            uint32_t count = 1 + rng_below(&rng, MAX_BATCH), at = 0;
            if (count > m->per_producer - seq)
                count = m->per_producer - seq;
            for (uint32_t i = 0; i < count; i++) {
                lengths[i] = make_message(data + at, self->id, seq++, m->max_body, &rng);
                at += lengths[i];
            }
            uint32_t pushed = 0;
            CHECK_RC(shmq_push_many(h, -1, (const char *)data, lengths, NULL, (uint8_t)self->id, count, -1, &pushed),
                     SHMQ_OK);
            CHECK_EQ(pushed, count);
        }
    }
    shmq_detach(h);
    return NULL;
}

static void receive(worker *self, int64_t *last, const uint8_t *data, uint32_t length, uint8_t tag)
{
    mpmc *m = self->m;
    wire w;
    CHECK(length >= WIRE);
    memcpy(&w, data, WIRE);
    CHECK(w.producer < PRODUCERS);
    CHECK_EQ(tag, w.producer);
    CHECK(w.seq < m->per_producer);
    CHECK_EQ(w.body_length, length - WIRE);
    CHECK_EQ(w.checksum, checksum(&w, data + WIRE));
    uint8_t before = atomic_fetch_add(&m->seen[(uint64_t)w.producer * m->per_producer + w.seq], 1);
    if (before != 0)
        test_fail(__FILE__, __LINE__, "producer %u seq %u received twice", w.producer, w.seq);
    if (m->ordered) {
        if ((int64_t)w.seq <= last[w.producer])
            test_fail(__FILE__, __LINE__, "consumer %u: producer %u seq %u after seq %lld", self->id, w.producer,
                      w.seq, (long long)last[w.producer]);
        last[w.producer] = w.seq;
    }
    self->messages++;
    atomic_fetch_add(&m->received, 1);
}

/* shmq_take's alloc for the consumers: their own buffer, or none for
 * messages longer than `limit` (they come back claimed). */
typedef struct take_room {
    uint8_t *buffer;
    uint32_t limit;
    uint32_t calls;
} take_room;

static void *take_alloc(void *ctx, uint32_t length)
{
    take_room *r = ctx;
    r->calls++;
    return length <= r->limit ? r->buffer : NULL;
}

static void *consumer_main(void *arg)
{
    worker *self = arg;
    mpmc *m = self->m;
    shmq_handle *h = region_attach(&m->region);
    uint64_t rng = 0x12345 + self->id * 104729;
    const uint64_t total = (uint64_t)PRODUCERS * m->per_producer;
    const int64_t timeout = 10 * 1000000;
    static _Thread_local uint8_t buf[4096], own[4096];
    uint32_t lengths[16], count;
    uint8_t tags[16];
    int64_t last[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++)
        last[i] = -1;

    while (atomic_load(&m->received) < total) {
        shmq_message msg;
        uint32_t mode = rng_below(&rng, 5);
        int rc;
        if (mode == 4) {
            /* the one-copy path: no wait; longer messages come back claimed */
            take_room room = {own, rng_below(&rng, 2) ? sizeof own : 48, 0};
            int64_t got = shmq_take(h, take_alloc, &room, &msg);
            rc = got < 0 ? (int)got : SHMQ_OK;
            if (got >= 0) {
                CHECK_EQ(room.calls, 1);
                CHECK_EQ((uint64_t)got, ((uint64_t)msg.tag << 32) | msg.length);
                receive(self, last, own, msg.length, msg.tag);
            } else if (rc == SHMQ_ECLAIMED) {
                CHECK(msg.length > room.limit);
                mode = 1; /* finished below, as a claim of shmq_pop */
            } else {
                CHECK_RC(rc, SHMQ_EEMPTY);
                CHECK_EQ(room.calls, 0);
                /* nothing now: wait for data, as shmq._fast's get does */
                rc = shmq_pop(h, (char *)buf, sizeof buf, timeout, &msg);
                if (rc == SHMQ_OK)
                    receive(self, last, buf, msg.length, msg.tag);
            }
        } else if (mode < 2) {
            /* mode 1: a buffer too small for most messages, so they are claimed */
            rc = shmq_pop(h, (char *)buf, mode == 0 ? sizeof buf : 48, timeout, &msg);
            if (rc == SHMQ_OK)
                receive(self, last, buf, msg.length, msg.tag);
        } else {
            uint32_t max_items = 1 + rng_below(&rng, 16);
            rc = shmq_pop_many(h, (char *)buf, mode == 2 ? 256 : sizeof buf, max_items, timeout, lengths, tags,
                               &count, &msg);
            if (rc == SHMQ_OK) {
                CHECK(count >= 1 && count <= max_items);
                for (uint32_t i = 0, at = 0; i < count; at += lengths[i++])
                    receive(self, last, buf + at, lengths[i], tags[i]);
            } else {
                CHECK_EQ(count, 0);
            }
        }
        if (rc == SHMQ_ECLAIMED) {
            CHECK(mode == 1);
            CHECK_RC(shmq_pop_finish(h, &msg, (char *)own), SHMQ_OK);
            receive(self, last, own, msg.length, msg.tag);
            self->claims++;
        } else if (rc != SHMQ_OK) {
            CHECK_RC(rc, SHMQ_EEMPTY);
        }
    }
    shmq_detach(h);
    return NULL;
}

static void mpmc_run(uint32_t lanes, uint32_t slots, uint32_t slot_bytes, uint32_t per_producer)
{
    mpmc *m = calloc(1, sizeof *m);
    CHECK(m != NULL);
    m->region = region_create(lanes, slots, slot_bytes);
    m->per_producer = per_producer;
    shmq_handle *probe = region_attach(&m->region);
    uint32_t inline_max = shmq_inline_max(probe);
    shmq_detach(probe);
    CHECK(inline_max > WIRE);
    m->max_body = inline_max - WIRE < MAX_BODY ? inline_max - WIRE : MAX_BODY;
    m->ordered = lanes == 1;
    m->seen = calloc((size_t)PRODUCERS * per_producer, 1);
    CHECK(m->seen != NULL);

    worker producers[PRODUCERS], consumers[CONSUMERS];
    for (uint32_t i = 0; i < CONSUMERS; i++) {
        consumers[i] = (worker){.m = m, .id = i};
        CHECK_EQ(pthread_create(&consumers[i].thread, NULL, consumer_main, &consumers[i]), 0);
    }
    for (uint32_t i = 0; i < PRODUCERS; i++) {
        producers[i] = (worker){.m = m, .id = i};
        CHECK_EQ(pthread_create(&producers[i].thread, NULL, producer_main, &producers[i]), 0);
    }
    for (uint32_t i = 0; i < PRODUCERS; i++)
        CHECK_EQ(pthread_join(producers[i].thread, NULL), 0);
    uint64_t claims = 0, by_consumers = 0;
    for (uint32_t i = 0; i < CONSUMERS; i++) {
        CHECK_EQ(pthread_join(consumers[i].thread, NULL), 0);
        claims += consumers[i].claims;
        by_consumers += consumers[i].messages;
    }

    const uint64_t total = (uint64_t)PRODUCERS * per_producer;
    CHECK_EQ(by_consumers, total);
    CHECK(claims > 0);
    for (uint64_t i = 0; i < total; i++)
        if (atomic_load(&m->seen[i]) != 1)
            test_fail(__FILE__, __LINE__, "producer %llu seq %llu received %u times",
                      (unsigned long long)(i / per_producer), (unsigned long long)(i % per_producer),
                      atomic_load(&m->seen[i]));

    shmq_handle *h = region_attach(&m->region);
    shmq_counts c;
    shmq_counts_read(h, &c);
    CHECK_EQ(c.pushed, total);
    CHECK_EQ(c.popped, total);
    CHECK_EQ(c.dropped_dead_producer + c.released_dead_consumer + c.dropped_corrupt, 0);
    CHECK(shmq_is_empty(h));
    for (uint32_t lane = 0; lane < lanes; lane++)
        CHECK_EQ(lane_head(h, lane), lane_tail(h, lane));
    CHECK_EQ(atomic_load(&h->header->data_waiters), 0);
    CHECK_EQ(atomic_load(&h->header->space_waiters), 0);
    shmq_detach(h);
    free(m->seen);
    region_destroy(&m->region);
    free(m);
}

void test_mpmc_one_lane(void) { mpmc_run(1, 64, 32, 25000); }

void test_mpmc_three_lanes(void) { mpmc_run(3, 64, 32, 25000); }

/* Lanes of 16 slots that one batch can half fill: mostly full, always waiting.
 * The largest message fills half a lane (max_body). */
void test_mpmc_tiny_lanes(void) { mpmc_run(2, 16, 32, 10000); }
