/* SPDX-License-Identifier: Apache-2.0 */
/* ring.h -- the ring layer: the lock-free multi-producer multi-consumer
 * lane (ring.c) and the helpers its callers share. It knows nothing of the
 * log or the jobs. The protocol is specified in layout.h.
 *
 * Producers: claim (CAS a FREE slot to WRITING), copy, publish (store READY).
 * Consumers: take (CAS READY to READING), copy, release (store FREE, next lap).
 * Waiting: spin, yield, then sleep on a futex word that is bumped only when
 * someone sleeps. Repairs of dead owners happen on the slow path only. */
#ifndef SHMQ_RING_H
#define SHMQ_RING_H

#include <string.h>

#include "core.h"

enum {
    SPIN_ROUNDS = 64,        /* busy re-checks before yielding the CPU */
    YIELD_ROUNDS = 4,        /* sched_yield re-checks before sleeping */
};
/* Sleeping behind another process's claim re-checks its owner this often. */
static const int64_t SHMQ_OWNER_RECHECK_NS = 20 * 1000 * 1000;
/* A producer sleeping on a full lane re-checks for dead consumers this often. */
static const int64_t SHMQ_FULL_RECHECK_NS = 100 * 1000 * 1000;
/* A hint (tail or head) whose slot holds a later lap is stale: others move
 * it on at once (every claimer and taker advances the hint past its own
 * span right after its CAS). One that stays put this many re-reads, with
 * its slot unchanged, is damaged (a stray write into the region): the lane
 * is then reported full or empty instead of spun on for ever. */
enum { STALE_HINT_ROUNDS = 1024 };

typedef struct lane_ref {
    shmq_lane_header *header;
    _Atomic uint64_t *states;
    uint8_t *data;
} lane_ref;

static inline lane_ref lane_at(const shmq_handle *h, uint32_t index)
{
    uint8_t *base = h->base + h->lanes_offset + (uint64_t)index * h->lane_bytes;
    return (lane_ref){(shmq_lane_header *)base, (_Atomic uint64_t *)(base + SHMQ_LANE_STATES_OFFSET),
                      base + h->data_offset};
}

static inline uint32_t lap_of(const shmq_handle *h, uint64_t pos) { return (uint32_t)(pos >> h->slot_shift); }
static inline _Atomic uint64_t *state_at(const shmq_handle *h, lane_ref lane, uint64_t pos)
{
    return &lane.states[pos & h->slot_mask];
}
static inline uint64_t free_state(const shmq_handle *h, uint64_t pos)
{
    return shmq_state(lap_of(h, pos), SHMQ_SLOT_FREE, 0, 0);
}
static inline uint32_t span_for(const shmq_handle *h, uint64_t length)
{
    return (uint32_t)((SHMQ_MSG_HEADER_BYTES + length + h->slot_bytes - 1) / h->slot_bytes);
}

/* Copies into / out of the ring at byte `offset` of the message at `pos`,
 * in two pieces where it wraps past the last slot. */
static inline void ring_write(const shmq_handle *h, lane_ref lane, uint64_t pos, uint64_t offset, const void *src,
                       uint64_t n)
{
    uint64_t at = ((pos & h->slot_mask) * h->slot_bytes + offset) % h->ring_bytes;
    uint64_t first = n < h->ring_bytes - at ? n : h->ring_bytes - at;
    memcpy(lane.data + at, src, first);
    if (first < n)
        memcpy(lane.data, (const uint8_t *)src + first, n - first);
}

static inline void ring_read(const shmq_handle *h, lane_ref lane, uint64_t pos, uint64_t offset, void *dst, uint64_t n)
{
    uint64_t at = ((pos & h->slot_mask) * h->slot_bytes + offset) % h->ring_bytes;
    uint64_t first = n < h->ring_bytes - at ? n : h->ring_bytes - at;
    memcpy(dst, lane.data + at, first);
    if (first < n)
        memcpy((uint8_t *)dst + first, lane.data, n - first);
}

static inline shmq_msg_header *header_at(const shmq_handle *h, lane_ref lane, uint64_t pos)
{
    return (shmq_msg_header *)(lane.data + (pos & h->slot_mask) * h->slot_bytes);
}

/* Moves a hint (tail or head) from `from` to `to`; losing the race is fine:
 * whoever won moved it at least as far. release: a process that reads the new
 * hint also sees the claim it was moved over; pairs with the acquire loads of
 * the hint in claim() and take(). */
static inline void advance_hint(_Atomic uint64_t *hint, uint64_t from, uint64_t to)
{
    atomic_compare_exchange_strong_explicit(hint, &from, to, memory_order_release, memory_order_relaxed);
}

/* Wakes sleepers on `event` if any. The seq_cst fence orders our publish (or
 * release) before the load of `waiters`; it pairs with the fence after the
 * sleeper's increment of `waiters` in wait_prepare(): one of the two sides
 * always sees the other, so no wake-up is lost. */
static inline void wake(_Atomic uint32_t *event, _Atomic uint32_t *waiters)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(waiters, memory_order_relaxed) == 0)
        return;
    atomic_fetch_add_explicit(event, 1, memory_order_relaxed);
    shmq_futex_wake_all(event);
}

void shmq_lane_release_span(shmq_handle *h, lane_ref lane, uint64_t pos, uint32_t span);
int shmq_lane_repair_reader(shmq_handle *h, lane_ref lane, uint64_t blocked);

/* Producers (put.c composes these with the log while it holds a claim). */
typedef struct batch_fit { /* the whole messages, from the start of a batch, that fit in a room */
    const shmq_handle *h;
    const uint32_t *lengths;
    uint32_t count;
} batch_fit;
int shmq_lane_claim_wait(shmq_handle *h, int lane, uint32_t *span, const batch_fit *fit, int64_t timeout_ns,
                         int64_t *deadline, uint32_t *lane_index, uint64_t *position);
void shmq_lane_write_message(const shmq_handle *h, lane_ref lane, uint64_t pos, const shmq_msg_header *given,
                             const uint8_t *first, uint32_t first_length, const uint8_t *second,
                             uint32_t second_length);
void shmq_lane_publish(const shmq_handle *h, lane_ref lane, uint64_t pos, uint32_t span);

/* Every message of a dead reader, taken over and released (maintain.c). */
int shmq_lane_redeliver_dead(shmq_handle *h);

/* Consumers (get.c). */
enum { TAKE_OK = 0, TAKE_EMPTY, TAKE_BUSY, TAKE_NO_FIT, TAKE_BIG };
int shmq_lane_take_fit(shmq_handle *h, lane_ref lane, uint64_t room, shmq_message *msg, uint64_t *busy);
int shmq_lane_repair_dead_writer(shmq_handle *h, lane_ref lane, uint64_t pos, uint64_t state);

/* Whole messages and the head, for the job layer and the feeder. */
int shmq_lane_push_message(shmq_handle *h, int lane, const shmq_msg_header *mh, const uint8_t *first,
                           uint32_t first_length, const uint8_t *second, uint32_t second_length,
                           int64_t timeout_ns);
int shmq_lane_push_job(shmq_handle *h, int lane, const shmq_msg_header *mh, const uint8_t *payload,
                       uint64_t record, uint32_t offset, int64_t timeout_ns);

typedef struct shmq_taken {
    shmq_message msg;
    int64_t enqueued_ns;
    uint64_t record;            /* SHMQ_MSG_REF: the record holding the payload */
    uint32_t offset;
} shmq_taken;
int shmq_lane_take(shmq_handle *h, uint32_t lane, shmq_taken *out);
void shmq_lane_finish(shmq_handle *h, const shmq_taken *t);
void shmq_lane_mark_leased(shmq_handle *h, const shmq_taken *t);
int shmq_lane_repair_writer(shmq_handle *h, uint32_t lane, const shmq_taken *t);
int shmq_lane_ready(const shmq_handle *h, uint32_t lane);
int shmq_lane_busy(const shmq_handle *h, uint32_t lane, shmq_taken *t);
int shmq_lane_untake_dead(shmq_handle *h, uint32_t lane, unsigned owner);
int shmq_lane_release_dead_head(shmq_handle *h, uint32_t lane, unsigned owner);
void shmq_wake_data(shmq_handle *h);

#endif /* SHMQ_RING_H */
