/* SPDX-License-Identifier: Apache-2.0 */
/* Single-thread basics: regions, round trips at the slot boundaries, empty,
 * full, timeouts, lanes. */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "harness.h"
#include "tests.h"

void test_region_params(void)
{
    shmq_params p = test_params(1, 16, 32);
    CHECK(shmq_region_size(&p) > 0);
    shmq_params bad = p;
    bad.slots_per_lane = 24;
    CHECK_EQ(shmq_region_size(&bad), 0);
    bad = p;
    bad.slot_bytes = 24;
    CHECK_EQ(shmq_region_size(&bad), 0);
    bad = p;
    bad.lane_count = 0;
    CHECK_EQ(shmq_region_size(&bad), 0);
    bad = p;
    bad.participant_capacity = 1;
    CHECK_EQ(shmq_region_size(&bad), 0);

    uint64_t size = shmq_region_size(&p);
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(base != MAP_FAILED);
    shmq_params out;
    uint32_t version = 99;
    shmq_handle *h = NULL;
    CHECK_RC(shmq_region_read(base, size, &out, &version), SHMQ_EUNINIT);
    CHECK_RC(shmq_attach(base, size, &h), SHMQ_EUNINIT);
    CHECK_RC(shmq_region_init(base, size, &bad), SHMQ_EINVAL);
    CHECK_RC(shmq_region_init(base, size - 1, &p), SHMQ_ESIZE);
    CHECK_RC(shmq_region_init(base, size, &p), SHMQ_OK);
    CHECK_RC(shmq_region_read(base, size, &out, &version), SHMQ_OK);
    CHECK_EQ(version, SHMQ_LAYOUT_VERSION);
    CHECK_EQ(out.lane_count, p.lane_count);
    CHECK_EQ(out.slots_per_lane, p.slots_per_lane);
    CHECK_EQ(out.slot_bytes, p.slot_bytes);
    CHECK_EQ(out.max_message_bytes, p.max_message_bytes);
    CHECK_EQ(out.participant_capacity, p.participant_capacity);
    CHECK_RC(shmq_region_read(base, size - 1, &out, &version), SHMQ_ESIZE);

    shmq_region_header *hdr = base;
    hdr->layout_version = SHMQ_LAYOUT_VERSION + 1;
    CHECK_RC(shmq_region_read(base, size, &out, &version), SHMQ_EVERSION);
    hdr->layout_version = SHMQ_LAYOUT_VERSION;
    atomic_store(&hdr->magic, 12345);
    CHECK_RC(shmq_region_read(base, size, &out, &version), SHMQ_ENOTSHMQ);
    atomic_store(&hdr->magic, (uint64_t)SHMQ_MAGIC);

    /* Each handle is its own participant; detach frees the entry. */
    shmq_handle *a = NULL, *b = NULL;
    CHECK_RC(shmq_attach(base, size, &a), SHMQ_OK);
    CHECK_RC(shmq_attach(base, size, &b), SHMQ_OK);
    unsigned ia = shmq_participant_index(a), ib = shmq_participant_index(b);
    CHECK(ia != 0 && ib != 0 && ia != ib);
    CHECK_EQ(atomic_load(&a->participants[ia].pid), getpid());
    CHECK(shmq_participant_alive(a, ib));
    shmq_detach(b);
    CHECK_EQ(atomic_load(&a->participants[ib].pid), 0);
    CHECK(!shmq_participant_alive(a, ib));
    shmq_detach(a);
    CHECK_RC(shmq_unmap(base, size), SHMQ_OK);
}

void test_basic_round_trip(void)
{
    enum { SLOT = 48 };
    test_region r = region_create(1, 16, SLOT);
    shmq_handle *h = region_attach(&r);
    uint32_t max = shmq_inline_max(h);
    CHECK_EQ(max, 8 * SLOT - SHMQ_MSG_HEADER_BYTES); /* half a lane */

    static uint8_t in[4096], out[4096];
    enum { H = SHMQ_MSG_HEADER_BYTES };
    const uint32_t sizes[] = {0, 1, SLOT - H, SLOT - H + 1, 2 * SLOT - H, 2 * SLOT - H + 1, max - 1, max};
    const uint32_t spans[] = {1, 1, 1, 2, 2, 3, 8, 8};
    uint64_t pos = 0;
    for (int round = 0; round < 3; round++) { /* rounds 2 and 3 wrap the ring */
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            uint64_t seq = round * 100 + i;
            fill_pattern(in, seq, sizes[i]);
            CHECK_RC(shmq_push(h, -1, (uint8_t)seq, 0, (const char *)in, sizes[i], NULL, 0, 0), SHMQ_OK);
            CHECK_EQ(lane_tail(h, 0), pos + spans[i]);
            CHECK_EQ(lane_state(h, 0, pos),
                     shmq_state(lap_of(h, pos), SHMQ_SLOT_READY, shmq_participant_index(h), spans[i]));
            CHECK(!shmq_is_empty(h));
            memset(out, 0xEE, sizeof out);
            shmq_message m;
            CHECK_RC(shmq_pop(h, (char *)out, sizeof out, 0, &m), SHMQ_OK);
            CHECK_EQ(m.length, sizes[i]);
            CHECK_EQ(m.tag, (uint8_t)seq);
            CHECK_EQ(check_pattern(out, seq, sizes[i]), 0);
            CHECK_EQ(out[sizes[i]], 0xEE); /* nothing past the message */
            CHECK_EQ(lane_head(h, 0), pos + spans[i]);
            check_released(h, 0, pos, spans[i]);
            CHECK(shmq_is_empty(h));
            pos += spans[i];
        }
    }

    /* Two pieces are one message. */
    fill_pattern(in, 7, 100);
    CHECK_RC(shmq_push(h, -1, 3, 0, (const char *)in, 30, (const char *)in + 30, 70, 0), SHMQ_OK);
    shmq_message m;
    CHECK_RC(shmq_pop(h, (char *)out, sizeof out, 0, &m), SHMQ_OK);
    CHECK_EQ(m.length, 100);
    CHECK_EQ(check_pattern(out, 7, 100), 0);

    /* The fast paths. */
    CHECK_RC(shmq_put(h, 9, (const char *)in, 10, 0), SHMQ_OK);
    CHECK_EQ(shmq_get(h, (char *)out, sizeof out, 0, &m), ((int64_t)9 << 32) | 10);
    CHECK_EQ(check_pattern(out, 7, 10), 0);

    CHECK_RC(shmq_push(h, -1, 0, 0, (const char *)in, max + 1, NULL, 0, 0), SHMQ_ETOOBIG);
    CHECK_RC(shmq_push(h, -1, 0, 0, (const char *)in, max, (const char *)in, 1, 0), SHMQ_ETOOBIG);
    CHECK_RC(shmq_put(h, 0, (const char *)in, max + 1, -1), SHMQ_ETOOBIG);
    CHECK(shmq_is_empty(h));

    shmq_counts c;
    shmq_counts_read(h, &c);
    CHECK_EQ(c.pushed, 3 * 8 + 2);
    CHECK_EQ(c.popped, 3 * 8 + 2);
    CHECK_EQ(c.dropped_dead_producer + c.released_dead_consumer + c.dropped_corrupt, 0);
    shmq_detach(h);
    region_destroy(&r);
}

void test_basic_empty_full(void)
{
    /* ONE: the largest payload that fits in one slot. */
    enum { SLOT = 48, ONE = SLOT - SHMQ_MSG_HEADER_BYTES, SMALL = ONE - 4 };
    test_region r = region_create(1, 16, SLOT);
    shmq_handle *h = region_attach(&r);
    char buf[512];
    uint32_t lengths[4], count = 99;
    uint8_t tags[4];
    shmq_message m;

    CHECK(shmq_is_empty(h));
    CHECK(!shmq_is_full(h));
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    CHECK_RC(shmq_pop_many(h, buf, sizeof buf, 4, 0, lengths, tags, &count, &m), SHMQ_EEMPTY);
    CHECK_EQ(count, 0);

    for (uint64_t i = 0; i < 16; i++) {
        fill_pattern((uint8_t *)buf, i, SMALL);
        CHECK_RC(shmq_push(h, -1, 0, 0, buf, SMALL, NULL, 0, 0), SHMQ_OK);
    }
    CHECK(shmq_is_full(h));
    CHECK_RC(shmq_push(h, -1, 0, 0, buf, 0, NULL, 0, 0), SHMQ_EFULL);
    uint32_t pushed = 99, zero = 0;
    CHECK_RC(shmq_push_many(h, -1, buf, &zero, NULL, 0, 1, 0, &pushed), SHMQ_EFULL);
    CHECK_EQ(pushed, 0);

    /* One slot free, at the ring's start: a one-slot message fits, a two-slot one does not. */
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_OK);
    CHECK_EQ(check_pattern((uint8_t *)buf, 0, SMALL), 0);
    CHECK(!shmq_is_full(h));
    CHECK_RC(shmq_push(h, -1, 0, 0, buf, ONE + 1, NULL, 0, 0), SHMQ_EFULL);
    fill_pattern((uint8_t *)buf, 16, ONE);
    CHECK_RC(shmq_push(h, -1, 0, 0, buf, ONE, NULL, 0, 0), SHMQ_OK);
    CHECK(shmq_is_full(h));

    for (uint64_t i = 1; i <= 16; i++) {
        CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_OK);
        CHECK_EQ(m.length, i == 16 ? ONE : SMALL);
        CHECK_EQ(check_pattern((uint8_t *)buf, i, m.length), 0);
    }
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    CHECK(shmq_is_empty(h));
    shmq_detach(h);
    region_destroy(&r);
}

typedef struct delayed_op {
    test_region *region;
    int delay_ms;
    int push; /* 1: push one message; 0: pop one */
} delayed_op;

static void *delayed_thread(void *arg)
{
    delayed_op *op = arg;
    shmq_handle *h = region_attach(op->region);
    char buf[64] = "late";
    shmq_message m;
    sleep_ms(op->delay_ms);
    if (op->push)
        CHECK_RC(shmq_push(h, -1, 1, 0, buf, 4, NULL, 0, 0), SHMQ_OK);
    else
        CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_OK);
    shmq_detach(h);
    return NULL;
}

void test_basic_timeouts(void)
{
    const int64_t ms = 1000000, timeout = 50 * ms, upper = 5000 * ms;
    /* Slots with room for the header and an 8-byte payload: one message a slot. */
    test_region r = region_create(1, 8, SHMQ_MSG_HEADER_BYTES + 8);
    shmq_handle *h = region_attach(&r);
    char buf[256];
    uint32_t lengths[4], count;
    uint8_t tags[4];
    shmq_message m;

    int64_t start = now_ns();
    CHECK_RC(shmq_pop(h, buf, sizeof buf, timeout, &m), SHMQ_EEMPTY);
    int64_t elapsed = now_ns() - start;
    CHECK(elapsed >= timeout && elapsed < upper);

    start = now_ns();
    CHECK_RC(shmq_pop_many(h, buf, sizeof buf, 4, timeout, lengths, tags, &count, &m), SHMQ_EEMPTY);
    elapsed = now_ns() - start;
    CHECK(elapsed >= timeout && elapsed < upper);

    /* A sleeping consumer is woken by a push. */
    delayed_op op = {&r, 30, 1};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, delayed_thread, &op), 0);
    CHECK_RC(shmq_pop(h, buf, sizeof buf, -1, &m), SHMQ_OK);
    CHECK_EQ(m.length, 4);
    CHECK(memcmp(buf, "late", 4) == 0);
    CHECK_EQ(pthread_join(t, NULL), 0);

    for (int i = 0; i < 8; i++)
        CHECK_RC(shmq_push(h, -1, 0, 0, buf, 8, NULL, 0, 0), SHMQ_OK);
    start = now_ns();
    CHECK_RC(shmq_push(h, -1, 0, 0, buf, 8, NULL, 0, timeout), SHMQ_EFULL);
    elapsed = now_ns() - start;
    CHECK(elapsed >= timeout && elapsed < upper);

    /* A sleeping producer is woken by a pop. */
    op = (delayed_op){&r, 30, 0};
    CHECK_EQ(pthread_create(&t, NULL, delayed_thread, &op), 0);
    CHECK_RC(shmq_push(h, -1, 0, 0, buf, 8, NULL, 0, -1), SHMQ_OK);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK(shmq_is_full(h));
    shmq_detach(h);
    region_destroy(&r);
}

void test_basic_lanes(void)
{
    test_region r = region_create(3, 8, SHMQ_MSG_HEADER_BYTES + 8); /* a 1-byte message takes one slot */
    shmq_handle *h = region_attach(&r);
    char buf[256];
    uint32_t pushed, length = 1;
    shmq_message m;

    CHECK_RC(shmq_push(h, 3, 0, 0, buf, 1, NULL, 0, 0), SHMQ_EINVAL);
    CHECK_RC(shmq_push_many(h, 3, buf, &length, NULL, 0, 1, 0, &pushed), SHMQ_EINVAL);

    /* An explicit lane fills alone; -1 takes the others. */
    for (int i = 0; i < 8; i++)
        CHECK_RC(shmq_push(h, 1, 0, 0, buf, 1, NULL, 0, 0), SHMQ_OK);
    CHECK_RC(shmq_push(h, 1, 0, 0, buf, 1, NULL, 0, 0), SHMQ_EFULL);
    CHECK_EQ(lane_tail(h, 1), 8);
    CHECK_EQ(lane_tail(h, 0) + lane_tail(h, 2), 0);
    CHECK(!shmq_is_full(h));
    for (int i = 0; i < 16; i++)
        CHECK_RC(shmq_push(h, -1, 0, 0, buf, 1, NULL, 0, 0), SHMQ_OK);
    CHECK(shmq_is_full(h));
    CHECK_RC(shmq_push(h, -1, 0, 0, buf, 1, NULL, 0, 0), SHMQ_EFULL);
    CHECK_EQ(lane_tail(h, 0), 8);
    CHECK_EQ(lane_tail(h, 2), 8);

    int popped = 0;
    while (shmq_pop(h, buf, sizeof buf, 0, &m) == SHMQ_OK)
        popped++;
    CHECK_EQ(popped, 24);
    CHECK(shmq_is_empty(h));
    shmq_detach(h);
    region_destroy(&r);
}

/* The flags of a put are the caller's, except the bits the core gives a
 * meaning (SHMQ_MSG_REF, SHMQ_MSG_SKIP): a put that sets them is refused, or
 * its message arrives like any other. Never dropped, never read as a log
 * reference on a queue without a log. */
void test_basic_core_flags(void)
{
    test_region r = region_create(1, 16, 32);
    shmq_handle *h = region_attach(&r);
    const uint8_t core[] = {SHMQ_MSG_SKIP, SHMQ_MSG_REF};
    char buf[64];
    for (size_t i = 0; i < sizeof core; i++) {
        fill_pattern((uint8_t *)buf, i, 10);
        int rc = shmq_push(h, -1, 7, core[i], buf, 10, NULL, 0, 0);
        if (rc != SHMQ_OK) {
            CHECK_RC(rc, SHMQ_EINVAL);
            continue;
        }
        shmq_message m;
        memset(buf, 0, sizeof buf);
        CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_OK);
        CHECK_EQ(m.length, 10);
        CHECK_EQ(m.tag, 7);
        CHECK_EQ(check_pattern((uint8_t *)buf, i, 10), 0);
    }
    shmq_counts c;
    shmq_counts_read(h, &c);
    CHECK_EQ(c.dropped_corrupt, 0);
    CHECK(shmq_is_empty(h));
    shmq_detach(h);
    region_destroy(&r);
}

/* A header that a stray write changed is refused before anything past it is
 * used, and the problem names the field; a lane hint that garbage put a lap
 * behind its slots makes push and pop report full / empty, never spin. */
void test_region_damage(void)
{
    shmq_params p = test_params(2, 16, 48);
    test_region r = region_create_with(&p);
    shmq_region_header *hdr = r.base;
    shmq_params out;
    uint32_t version;
    char text[256];
    struct {
        uint64_t *field;
        uint64_t garbage;
        const char *name;
    } cases[] = {
        {&hdr->lanes_offset, hdr->lanes_offset + 64, "lanes_offset"},
        {&hdr->lane_bytes, UINT64_MAX / 2, "lane_bytes"},
        {&hdr->jobs_offset, 1ull << 40, "jobs_offset"},
        {&hdr->region_bytes, hdr->region_bytes * 2, "region_bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t saved = *cases[i].field;
        *cases[i].field = cases[i].garbage;
        CHECK_RC(shmq_region_read(r.base, r.size, &out, &version), SHMQ_ENOTSHMQ);
        CHECK_RC(shmq_region_problem(r.base, r.size, text, sizeof text), SHMQ_ENOTSHMQ);
        CHECK(strstr(text, cases[i].name) != NULL);
        shmq_handle *none = NULL;
        CHECK_RC(shmq_attach(r.base, r.size, &none), SHMQ_ENOTSHMQ);
        *cases[i].field = saved;
    }
    hdr->participant_capacity = SHMQ_MAX_PARTICIPANTS + 2;
    CHECK_RC(shmq_region_problem(r.base, r.size, text, sizeof text), SHMQ_ENOTSHMQ);
    CHECK(strstr(text, "participant_capacity") != NULL);
    hdr->participant_capacity = p.participant_capacity;
    CHECK_RC(shmq_region_problem(r.base, r.size - 64, text, sizeof text), SHMQ_ESIZE);
    CHECK_RC(shmq_region_problem(r.base, r.size, text, sizeof text), SHMQ_OK);
    CHECK_EQ(text[0], '\0');

    /* One lap through lane 0, then its hints thrown back a lap. */
    shmq_handle *h = region_attach(&r);
    CHECK_EQ(shmq_region_live_participants(r.base, r.size), 1);
    char buf[64] = {0};
    shmq_message m;
    for (int i = 0; i < 16; i++) {
        CHECK_RC(shmq_push(h, 0, 0, 0, buf, 8, NULL, 0, 0), SHMQ_OK);
        CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_OK);
    }
    shmq_lane_header *lane = (shmq_lane_header *)((uint8_t *)r.base + hdr->lanes_offset);
    atomic_store(&lane->tail, 0);
    atomic_store(&lane->head, 0);
    int64_t start = shmq_now_ns();
    CHECK_RC(shmq_push(h, 0, 0, 0, buf, 8, NULL, 0, 20 * 1000 * 1000), SHMQ_EFULL);
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 20 * 1000 * 1000, &m), SHMQ_EEMPTY);
    CHECK(shmq_now_ns() - start < 10ll * 1000 * 1000 * 1000); /* bounded by the timeouts, not a spin for ever */
    CHECK_RC(shmq_push(h, 1, 0, 0, buf, 8, NULL, 0, 0), SHMQ_OK); /* the other lane is unharmed */
    shmq_detach(h);
    region_destroy(&r);
}

/* shmq_take's alloc in test_basic_take: room in `buffer` up to `limit` bytes. */
typedef struct take_room {
    uint8_t *buffer;
    uint32_t limit;
    uint32_t calls;
    uint32_t asked;
} take_room;

static void *take_alloc(void *ctx, uint32_t length)
{
    take_room *r = ctx;
    r->calls++;
    r->asked = length;
    return length <= r->limit ? r->buffer : NULL;
}

/* The one-copy path: nothing there, a message into room its caller makes, a
 * refused room (the claim stays held for shmq_pop_finish or _abandon). */
void test_basic_take(void)
{
    test_region r = region_create(2, 16, 48);
    shmq_handle *h = region_attach(&r);
    static uint8_t room_bytes[4096], own[4096];
    take_room room = {room_bytes, sizeof room_bytes, 0, 0};
    shmq_message msg;
    CHECK_RC(shmq_take(h, take_alloc, &room, &msg), SHMQ_EEMPTY);
    CHECK_EQ(room.calls, 0);

    const char small[] = "one copy", large[] = "a message longer than the room its caller makes";
    CHECK_RC(shmq_put(h, 7, small, sizeof small, 0), SHMQ_OK);
    int64_t got = shmq_take(h, take_alloc, &room, &msg);
    CHECK_EQ(got, ((int64_t)7 << 32) | sizeof small);
    CHECK_EQ(room.calls, 1);
    CHECK_EQ(room.asked, sizeof small);
    CHECK(memcmp(room_bytes, small, sizeof small) == 0);
    CHECK_RC(shmq_take(h, take_alloc, &room, &msg), SHMQ_EEMPTY);

    /* Refused room: claimed, then finished into a buffer of the caller's own. */
    room = (take_room){room_bytes, 16, 0, 0};
    CHECK_RC(shmq_put(h, 9, large, sizeof large, 0), SHMQ_OK);
    CHECK_RC(shmq_take(h, take_alloc, &room, &msg), SHMQ_ECLAIMED);
    CHECK_EQ(msg.length, sizeof large);
    CHECK_EQ(msg.tag, 9);
    CHECK_RC(shmq_pop_finish(h, &msg, (char *)own), SHMQ_OK);
    CHECK(memcmp(own, large, sizeof large) == 0);
    CHECK(shmq_is_empty(h));

    /* Refused and abandoned: the slot is free again for producers. */
    CHECK_RC(shmq_put(h, 9, large, sizeof large, 0), SHMQ_OK);
    CHECK_RC(shmq_take(h, take_alloc, &room, &msg), SHMQ_ECLAIMED);
    shmq_pop_abandon(h, &msg);
    CHECK(shmq_is_empty(h));
    shmq_counts c;
    shmq_counts_read(h, &c);
    CHECK_EQ(c.pushed, 3);
    CHECK_EQ(c.popped, 3); /* counted when taken, as shmq_pop counts a claim */
    shmq_detach(h);
    region_destroy(&r);
}
