/* SPDX-License-Identifier: Apache-2.0 */
/* lane_push.c -- producers: claim, copy, publish; and the repair of slots
 * held by consumers that died (found when a producer needs them back). */
#define _GNU_SOURCE
#include <sched.h>

#include "lane.h"


/* Claims `span` slots at the tail: OK and *position, or EFULL with the
 * first position that is not free (*blocker) and how many slots were free
 * from the tail (*room). */
static int claim(shmq_handle *h, lane_ref lane, uint32_t span, uint64_t *position, uint64_t *blocker,
                 uint32_t *room)
{
    for (;;) {
        /* acquire: pairs with advance_hint's release; states are re-read below anyway. */
        uint64_t tail = atomic_load_explicit(&lane.header->tail, memory_order_acquire);
        _Atomic uint64_t *first = state_at(h, lane, tail);
        /* acquire: pairs with the consumer's release in release_span(): its reads
         * of the old message happen before our writes of the new one. */
        uint64_t state = atomic_load_explicit(first, memory_order_acquire);
        uint32_t lap = lap_of(h, tail);
        if (state == free_state(h, tail)) {
            uint32_t i = 1;
            for (; i < span; i++) {
                /* acquire: as for the first slot. */
                if (atomic_load_explicit(state_at(h, lane, tail + i), memory_order_acquire) !=
                    free_state(h, tail + i))
                    break;
            }
            if (i < span) {
                *blocker = tail + i;
                *room = i;
                return SHMQ_EFULL;
            }
            uint64_t mine = shmq_state(lap, SHMQ_SLOT_WRITING, h->self, span);
            /* acq_rel: the claim itself. acquire as above; release publishes our
             * ownership to helpers and repairers that read this state. */
            if (atomic_compare_exchange_strong_explicit(first, &state, mine, memory_order_acq_rel,
                                                        memory_order_acquire)) {
                shmq_fault(h, SHMQ_FAULT_PUSH_AFTER_CLAIM);
                advance_hint(&lane.header->tail, tail, tail + span);
                *position = tail;
                return SHMQ_OK;
            }
            continue;
        }
        uint32_t state_lap = shmq_state_lap(state);
        if (state_lap == lap) { /* claimed in this lap: move the tail past it */
            advance_hint(&lane.header->tail, tail, tail + shmq_state_span(state));
            continue;
        }
        if (shmq_lap_before(state_lap, lap)) { /* last lap's message not released yet */
            *blocker = tail;
            *room = 0;
            return SHMQ_EFULL;
        }
        /* a later lap: our tail was stale; read it again */
    }
}

static void write_message(const shmq_handle *h, lane_ref lane, uint64_t pos, uint8_t tag, uint8_t flags,
                          const uint8_t *first, uint32_t first_length, const uint8_t *second,
                          uint32_t second_length)
{
    shmq_msg_header *mh = header_at(h, lane, pos);
    mh->length = first_length + second_length;
    mh->tag = tag;
    mh->flags = flags;
    mh->reserved = 0;
    ring_write(h, lane, pos, SHMQ_MSG_HEADER_BYTES, first, first_length);
    if (second_length)
        ring_write(h, lane, pos, SHMQ_MSG_HEADER_BYTES + first_length, second, second_length);
}

static inline void publish(const shmq_handle *h, lane_ref lane, uint64_t pos, uint32_t span)
{
    /* release: publishes the header and payload written before; pairs with
     * the acquire load of the state in take(). */
    atomic_store_explicit(state_at(h, lane, pos), shmq_state(lap_of(h, pos), SHMQ_SLOT_READY, h->self, span),
                          memory_order_release);
}

/* A consumer died holding the message whose slots block `blocked` (a
 * position we need in this lap). Find that message's first slot by scanning
 * back through the previous lap, take it over, release it. Returns 1 if
 * something was repaired. */
int shmq_lane_repair_reader(shmq_handle *h, lane_ref lane, uint64_t blocked)
{
    uint64_t slots = h->slot_mask + 1;
    if (blocked < slots)
        return 0;
    uint64_t old = blocked - slots;
    for (uint64_t back = 0; back < SHMQ_MAX_SPAN && back <= old; back++) {
        uint64_t pos = old - back;
        _Atomic uint64_t *first = state_at(h, lane, pos);
        /* acquire: pairs with the release CAS that made it READING. */
        uint64_t state = atomic_load_explicit(first, memory_order_acquire);
        if (shmq_state_lap(state) != lap_of(h, pos))
            return 0; /* released already (or not of that lap): nothing stuck here */
        unsigned kind = shmq_state_kind(state);
        if (kind == SHMQ_SLOT_FREE)
            continue; /* a middle slot of a message: keep looking for its first slot */
        if (kind != SHMQ_SLOT_READING || shmq_state_span(state) <= back ||
            shmq_participant_alive(h, shmq_state_owner(state)))
            return 0; /* not consumed yet, or its reader lives: the lane is merely full */
        uint32_t span = shmq_state_span(state);
        uint64_t mine = shmq_state(lap_of(h, pos), SHMQ_SLOT_READING, h->self, span);
        /* acq_rel: takeover; exactly one repairer wins. */
        if (!atomic_compare_exchange_strong_explicit(first, &state, mine, memory_order_acq_rel,
                                                     memory_order_relaxed))
            return 1;
        shmq_fault(h, SHMQ_FAULT_REPAIR_AFTER_TAKEOVER);
        advance_hint(&lane.header->head, pos, pos + span);
        shmq_lane_release_span(h, lane, pos, span);
        atomic_fetch_add_explicit(&h->header->released_dead_consumer, 1, memory_order_relaxed);
        return 1;
    }
    return 0;
}

/* One attempt over the lanes (`lane` < 0: all, starting at a rotating one).
 * On EFULL, *lane_index and *blocker say where the first one stopped. */
static int claim_any(shmq_handle *h, int lane, uint32_t span, uint32_t *lane_index, uint64_t *position,
                     uint64_t *blocker, uint32_t *room)
{
    uint32_t count = lane < 0 ? h->lane_count : 1;
    /* relaxed: any rotation is correct; with one lane there is nothing to rotate. */
    uint32_t start = lane >= 0            ? (uint32_t)lane
                     : h->lane_count == 1 ? 0
                                          : atomic_fetch_add_explicit(&h->push_cursor, 1, memory_order_relaxed);
    uint32_t best_room = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t index = (start + i) % h->lane_count;
        uint64_t stop;
        uint32_t free_slots;
        if (claim(h, lane_at(h, index), span, position, &stop, &free_slots) == SHMQ_OK) {
            *lane_index = index;
            return SHMQ_OK;
        }
        if (i == 0 || free_slots > best_room) {
            *lane_index = index;
            *blocker = stop;
            best_room = free_slots;
        }
    }
    *room = best_room;
    return SHMQ_EFULL;
}

/* The largest span of whole messages, from the start of a batch, that fits
 * in `room` slots (0: not even the first). */
typedef struct batch_fit {
    const shmq_handle *h;
    const uint32_t *lengths;
    uint32_t count;
} batch_fit;

static uint32_t fit_whole_messages(const batch_fit *fit, uint32_t room)
{
    uint32_t span = 0;
    for (uint32_t i = 0; i < fit->count; i++) {
        uint32_t next = span_for(fit->h, fit->lengths[i]);
        if (span + next > room)
            break;
        span += next;
    }
    return span;
}

/* Claims a span, waiting per the deadline. With `fit`, a full lane with some
 * room left lowers *span to the whole messages that fit (put_many takes what
 * fits rather than waiting for room for all). */
static int claim_wait(shmq_handle *h, int lane, uint32_t *span, const batch_fit *fit, int64_t timeout_ns,
                      int64_t *deadline, uint32_t *lane_index, uint64_t *position)
{
    shmq_region_header *hdr = h->header;
    for (unsigned round = 0;; round++) {
        uint64_t blocker = 0;
        uint32_t room = 0;
        if (claim_any(h, lane, *span, lane_index, position, &blocker, &room) == SHMQ_OK)
            return SHMQ_OK;
        if (fit && room > 0) {
            uint32_t smaller = fit_whole_messages(fit, room);
            if (smaller > 0 && smaller < *span) {
                *span = smaller;
                continue;
            }
        }
        if (timeout_ns == 0)
            return SHMQ_EFULL;
        if (round < SPIN_ROUNDS) {
            shmq_cpu_relax();
            continue;
        }
        if (round < SPIN_ROUNDS + YIELD_ROUNDS) {
            sched_yield();
            continue;
        }
        if (shmq_lane_repair_reader(h, lane_at(h, *lane_index), blocker)) {
            round = 0;
            continue;
        }
        if (*deadline == 0)
            *deadline = shmq_deadline(timeout_ns);
        /* relaxed: only a value for the futex to compare; the states are
         * re-read with acquire loads after waking. */
        uint32_t seen = atomic_load_explicit(&hdr->space_event, memory_order_relaxed);
        shmq_sleep_begin(h, &hdr->space_waiters, SHMQ_SLEEP_SPACE);
        /* seq_cst: orders our waiters increment before the re-check below;
         * pairs with the fence in wake(): one side always sees the other. */
        atomic_thread_fence(memory_order_seq_cst);
        if (claim_any(h, lane, *span, lane_index, position, &blocker, &room) == SHMQ_OK) {
            shmq_sleep_end(h, &hdr->space_waiters, SHMQ_SLEEP_SPACE);
            return SHMQ_OK;
        }
        int rc = shmq_futex_wait(&hdr->space_event, seen, *deadline, SHMQ_FULL_RECHECK_NS);
        shmq_sleep_end(h, &hdr->space_waiters, SHMQ_SLEEP_SPACE);
        if (rc == SHMQ_EINTR)
            return SHMQ_EINTR;
        if (rc == SHMQ_EEMPTY)
            return SHMQ_EFULL;
        round = SPIN_ROUNDS / 2; /* woken: spin a little before sleeping again */
    }
}

int shmq_push(shmq_handle *h, int lane, uint8_t tag, uint8_t flags, const char *first, uint32_t first_length,
              const char *second, uint32_t second_length, int64_t timeout_ns)
{
    uint64_t length = (uint64_t)first_length + second_length;
    if (lane >= (int)h->lane_count)
        return SHMQ_EINVAL;
    if (length > shmq_inline_max(h))
        return SHMQ_ETOOBIG;
    uint32_t span = span_for(h, length);
    int64_t deadline = 0;
    uint32_t index;
    uint64_t pos;
    int rc = claim_wait(h, lane, &span, NULL, timeout_ns, &deadline, &index, &pos);
    if (rc != SHMQ_OK)
        return rc;
    lane_ref ref = lane_at(h, index);
    write_message(h, ref, pos, tag, flags, (const uint8_t *)first, first_length, (const uint8_t *)second,
                  second_length);
    shmq_fault(h, SHMQ_FAULT_PUSH_BEFORE_PUBLISH);
    publish(h, ref, pos, span);
    /* relaxed: statistics only. */
    atomic_fetch_add_explicit(&ref.header->pushed, 1, memory_order_relaxed);
    wake(&h->header->data_event, &h->header->data_waiters);
    return SHMQ_OK;
}

int shmq_put(shmq_handle *h, uint8_t tag, const char *data, uint32_t length, int64_t timeout_ns)
{
    return shmq_push(h, -1, tag, 0, data, length, NULL, 0, timeout_ns);
}

/* Writes messages [first, end) into a claimed span, then publishes the later
 * ones first and the first one last: consumers cannot pass a first slot that
 * is still WRITING, so they never see half a batch. */
static void write_batch(shmq_handle *h, lane_ref lane, uint64_t pos, const uint8_t *data, const uint32_t *lengths,
                        const uint8_t *tags, uint8_t tag, uint32_t first, uint32_t end)
{
    uint64_t at = pos;
    for (uint32_t i = first; i < end; i++) {
        write_message(h, lane, at, tags ? tags[i] : tag, 0, data, lengths[i], NULL, 0);
        if (i == first)
            shmq_fault(h, SHMQ_FAULT_PUSH_MID_COPY);
        data += lengths[i];
        at += span_for(h, lengths[i]);
    }
    shmq_fault(h, SHMQ_FAULT_PUSH_BEFORE_PUBLISH);
    at = pos + span_for(h, lengths[first]);
    for (uint32_t i = first + 1; i < end; i++) {
        publish(h, lane, at, span_for(h, lengths[i]));
        at += span_for(h, lengths[i]);
    }
    shmq_fault(h, SHMQ_FAULT_PUSH_MID_PUBLISH);
    publish(h, lane, pos, span_for(h, lengths[first]));
}

int shmq_push_many(shmq_handle *h, int lane, const char *data, const uint32_t *lengths, const char *tags,
                   uint8_t tag, uint32_t count, int64_t timeout_ns, uint32_t *pushed /* OUT */)
{
    *pushed = 0;
    if (lane >= (int)h->lane_count)
        return SHMQ_EINVAL;
    uint32_t inline_max = shmq_inline_max(h);
    int64_t deadline = 0;
    uint32_t done = 0;
    while (done < count) {
        /* As many whole messages as one claim may cover. */
        uint32_t end = done, span = 0;
        while (end < count && lengths[end] <= inline_max && span + span_for(h, lengths[end]) <= h->max_span)
            span += span_for(h, lengths[end++]);
        if (end == done)
            return SHMQ_ETOOBIG;
        batch_fit fit = {h, lengths + done, end - done};
        uint32_t index;
        uint64_t pos;
        int rc = claim_wait(h, lane, &span, &fit, timeout_ns, &deadline, &index, &pos);
        if (rc != SHMQ_OK)
            return rc;
        for (uint32_t covered = 0, i = done; i < end; i++) { /* the claim may have shrunk */
            covered += span_for(h, lengths[i]);
            if (covered == span) {
                end = i + 1;
                break;
            }
        }
        lane_ref ref = lane_at(h, index);
        write_batch(h, ref, pos, (const uint8_t *)data, lengths, (const uint8_t *)tags, tag, done, end);
        for (uint32_t i = done; i < end; i++)
            data += lengths[i];
        /* relaxed: statistics only. */
        atomic_fetch_add_explicit(&ref.header->pushed, end - done, memory_order_relaxed);
        wake(&h->header->data_event, &h->header->data_waiters);
        done = end;
        *pushed = done;
    }
    return SHMQ_OK;
}

int shmq_is_full(const shmq_handle *h)
{
    for (uint32_t i = 0; i < h->lane_count; i++) {
        lane_ref lane = lane_at(h, i);
        /* acquire: as in claim(); a snapshot. */
        uint64_t tail = atomic_load_explicit(&lane.header->tail, memory_order_acquire);
        if (atomic_load_explicit(state_at(h, lane, tail), memory_order_acquire) == free_state(h, tail))
            return 0;
    }
    return 1;
}
