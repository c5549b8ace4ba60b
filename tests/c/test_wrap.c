/* SPDX-License-Identifier: Apache-2.0 */
/* Wrap-around, white-box: a tiny lane where multi-slot messages straddle the
 * ring end again and again. One thread, so every outcome is predictable:
 * where each message lands, whether a push fits, how many a batch takes. */
#define _GNU_SOURCE
#include <string.h>

#include "harness.h"
#include "tests.h"

enum { MODE_PUSH_MANY = 1, MODE_POP_MANY = 2 };

typedef struct pending {
    uint64_t seq, pos;
    uint32_t span, length;
} pending;

typedef struct wrap_state {
    shmq_handle *h;
    uint64_t slots;
    uint32_t inline_max;
    pending fifo[256]; /* indexed by count mod 256; never more than `slots` live */
    uint64_t first, end; /* live entries: fifo[first..end) */
    uint64_t next_seq, popped, straddles;
    uint64_t rng;
} wrap_state;

static uint32_t length_of(const wrap_state *w, uint64_t seq)
{
    uint64_t r = mix64(seq * 3 + 1);
    /* Half short, half anywhere up to the limit: many messages, many spans. */
    return (uint32_t)((r & 1) ? (r >> 8) % (2 * w->h->slot_bytes) : (r >> 8) % (w->inline_max + 1));
}

static uint64_t used_slots(const wrap_state *w)
{
    return w->first == w->end ? 0 : lane_tail(w->h, 0) - w->fifo[w->first % 256].pos;
}

static void record_push(wrap_state *w, uint64_t pos, uint32_t length)
{
    uint32_t span = span_for(w->h, length);
    w->fifo[w->end++ % 256] = (pending){w->next_seq++, pos, span, length};
    if ((pos & w->h->slot_mask) + span > w->slots)
        w->straddles++;
    CHECK_EQ(lane_state(w->h, 0, pos),
             shmq_state(lap_of(w->h, pos), SHMQ_SLOT_READY, shmq_participant_index(w->h), span));
}

static void push_one(wrap_state *w)
{
    static uint8_t buf[65536];
    uint32_t length = length_of(w, w->next_seq);
    uint32_t span = span_for(w->h, length);
    uint64_t tail = lane_tail(w->h, 0);
    int fits = used_slots(w) + span <= w->slots;
    fill_pattern(buf, w->next_seq, length);
    int rc = shmq_push(w->h, 0, (uint8_t)(w->next_seq * 7), 0, (const char *)buf, length, NULL, 0, 0);
    CHECK_RC(rc, fits ? SHMQ_OK : SHMQ_EFULL);
    if (rc == SHMQ_OK) {
        CHECK_EQ(lane_tail(w->h, 0), tail + span);
        record_push(w, tail, length);
    } else {
        CHECK_EQ(lane_tail(w->h, 0), tail);
    }
}

static void push_batch(wrap_state *w, uint32_t count)
{
    static uint8_t data[65536];
    uint32_t lengths[16];
    char tags[16];
    uint64_t room = w->slots - used_slots(w), at = 0, fit = 0, fit_span = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t seq = w->next_seq + i;
        lengths[i] = length_of(w, seq);
        tags[i] = (char)(seq * 7);
        fill_pattern(data + at, seq, lengths[i]);
        at += lengths[i];
        fit_span += span_for(w->h, lengths[i]);
        if (fit == i && fit_span <= room)
            fit++;
    }
    uint64_t tail = lane_tail(w->h, 0);
    uint32_t pushed = 99;
    int rc = shmq_push_many(w->h, 0, (const char *)data, lengths, tags, 0, count, 0, &pushed);
    /* Takes the longest prefix that fits, then reports full. */
    CHECK_RC(rc, fit == count ? SHMQ_OK : SHMQ_EFULL);
    CHECK_EQ(pushed, fit);
    uint64_t pos = tail;
    for (uint32_t i = 0; i < pushed; i++) {
        record_push(w, pos, lengths[i]);
        pos += span_for(w->h, lengths[i]);
    }
    CHECK_EQ(lane_tail(w->h, 0), pos);
}

static void check_popped(wrap_state *w, const uint8_t *data, uint32_t length, uint8_t tag)
{
    CHECK(w->first < w->end);
    pending p = w->fifo[w->first++ % 256];
    CHECK_EQ(length, p.length);
    CHECK_EQ(tag, (uint8_t)(p.seq * 7));
    uint32_t bad = check_pattern(data, p.seq, length);
    if (bad)
        test_fail(__FILE__, __LINE__, "message %llu (pos %llu, span %u, length %u): byte %u differs",
                  (unsigned long long)p.seq, (unsigned long long)p.pos, p.span, p.length, bad - 1);
    check_released(w->h, 0, p.pos, p.span);
    CHECK(lane_head(w->h, 0) >= p.pos + p.span);
    w->popped++;
}

static void pop_one(wrap_state *w)
{
    static uint8_t buf[65536];
    shmq_message m;
    int rc = shmq_pop(w->h, (char *)buf, sizeof buf, 0, &m);
    CHECK_RC(rc, w->first < w->end ? SHMQ_OK : SHMQ_EEMPTY);
    if (rc == SHMQ_OK) {
        check_popped(w, buf, m.length, m.tag);
        pending p = w->fifo[(w->first - 1) % 256];
        CHECK_EQ(lane_head(w->h, 0), p.pos + p.span);
    }
}

static void pop_batch(wrap_state *w, uint32_t max_items, uint32_t capacity)
{
    static uint8_t buf[65536], own[65536];
    uint32_t lengths[16], count = 99;
    uint8_t tags[16];
    shmq_message claimed;
    /* Predict: whole messages while their span's capacity fits what is left. */
    uint32_t expect = 0;
    uint64_t used = 0;
    for (uint64_t i = w->first; i < w->end && expect < max_items; i++) {
        pending p = w->fifo[i % 256];
        if ((uint64_t)p.span * w->h->slot_bytes - SHMQ_MSG_HEADER_BYTES > capacity - used)
            break;
        used += p.length;
        expect++;
    }
    int rc = shmq_pop_many(w->h, (char *)buf, capacity, max_items, 0, lengths, tags, &count, &claimed);
    if (w->first == w->end) {
        CHECK_RC(rc, SHMQ_EEMPTY);
        CHECK_EQ(count, 0);
        return;
    }
    if (expect == 0) {
        CHECK_RC(rc, SHMQ_ECLAIMED);
        CHECK_EQ(count, 0);
        pending p = w->fifo[w->first % 256];
        CHECK_EQ(claimed.position, p.pos);
        CHECK_EQ(claimed.span, p.span);
        CHECK_EQ(claimed.lane, 0);
        CHECK_EQ(lane_state(w->h, 0, p.pos),
                 shmq_state(lap_of(w->h, p.pos), SHMQ_SLOT_READING, shmq_participant_index(w->h), p.span));
        CHECK_RC(shmq_pop_finish(w->h, &claimed, (char *)own), SHMQ_OK);
        check_popped(w, own, claimed.length, claimed.tag);
        CHECK_EQ(lane_head(w->h, 0), p.pos + p.span);
        return;
    }
    CHECK_RC(rc, SHMQ_OK);
    CHECK_EQ(count, expect);
    uint64_t at = 0;
    for (uint32_t i = 0; i < count; i++) {
        check_popped(w, buf + at, lengths[i], tags[i]);
        at += lengths[i];
    }
    CHECK(at <= capacity);
    pending last = w->fifo[(w->first - 1) % 256];
    CHECK_EQ(lane_head(w->h, 0), last.pos + last.span);
}

static void wrap_run(uint32_t slots, uint32_t slot_bytes, uint64_t start, uint64_t messages, int mode)
{
    test_region r = region_create(1, slots, slot_bytes);
    wrap_state *w = calloc(1, sizeof *w);
    CHECK(w != NULL);
    w->h = region_attach(&r);
    w->slots = slots;
    w->inline_max = shmq_inline_max(w->h);
    w->rng = start ^ slots ^ (uint64_t)mode << 40;
    if (start)
        lane_reset_at(w->h, 0, start);

    while (w->popped < messages) {
        /* Drift between nearly empty and nearly full. */
        int push = rng_below(&w->rng, 100) < (used_slots(w) < slots / 2 ? 65 : 40);
        uint32_t burst = 1 + rng_below(&w->rng, 6);
        if (push) {
            if ((mode & MODE_PUSH_MANY) && rng_below(&w->rng, 2))
                push_batch(w, burst);
            else
                for (uint32_t i = 0; i < burst; i++)
                    push_one(w);
        } else {
            if ((mode & MODE_POP_MANY) && rng_below(&w->rng, 2))
                pop_batch(w, burst, rng_below(&w->rng, 3 * w->inline_max));
            else
                for (uint32_t i = 0; i < burst; i++)
                    pop_one(w);
        }
    }
    while (w->first < w->end)
        pop_one(w);
    pop_one(w); /* empty now */

    CHECK(w->straddles > messages / 20);
    shmq_counts c;
    shmq_counts_read(w->h, &c);
    CHECK_EQ(c.pushed, w->next_seq);
    CHECK_EQ(c.popped, w->next_seq);
    CHECK_EQ(c.dropped_dead_producer + c.released_dead_consumer + c.dropped_corrupt, 0);
    CHECK_EQ(lane_head(w->h, 0), lane_tail(w->h, 0));
    CHECK(lane_tail(w->h, 0) - start > 4 * messages / 3); /* many laps went by */
    shmq_detach(w->h);
    free(w);
    region_destroy(&r);
}

void test_wrap_single(void) { wrap_run(8, 16, 0, 120000, 0); }

void test_wrap_batches(void) { wrap_run(16, 16, 0, 120000, MODE_PUSH_MANY | MODE_POP_MANY); }

/* Laps are 32 bits in the state word: start just before lap 2^32 so the lane
 * runs across the point where the lap wraps to 0 (positions stay 64-bit). */
void test_wrap_lap_overflow(void)
{
    wrap_run(8, 16, (uint64_t)(UINT32_MAX - 2) << 3, 30000, MODE_PUSH_MANY | MODE_POP_MANY);
    wrap_run(16, 32, ((uint64_t)UINT32_MAX << 4) + 5, 30000, 0);
}
