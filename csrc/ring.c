/* SPDX-License-Identifier: Apache-2.0 */
/* ring.c -- the lock-free multi-producer multi-consumer lane (protocol in
 * layout.h): producers claim, write, publish; consumers take, release;
 * the hints, waiting for room, and the repair of claims whose owners died.
 * What a message means (a job, its record in the log) is the callers'
 * business: where the ring must ask (a dead reader's message, an ordered
 * lane's gate) it calls the handle's callbacks (queue.c sets them). */
#define _GNU_SOURCE
#include <sched.h>

#include "ring.h"

/* Claims `span` slots at the tail: OK and *position, or EFULL with the
 * first position that is not free (*blocker) and how many slots were free
 * from the tail (*room). */
static int claim(shmq_handle *h, lane_ref lane, uint32_t span, uint64_t *position, uint64_t *blocker,
                 uint32_t *room)
{
    uint64_t stale_tail = 0, stale_state = 0;
    uint32_t stale_rounds = 0;
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
        /* a later lap: our tail was stale; read it again (unless it is damaged: see STALE_HINT_ROUNDS) */
        if (tail != stale_tail || state != stale_state) {
            stale_tail = tail;
            stale_state = state;
            stale_rounds = 0;
        } else if (++stale_rounds >= STALE_HINT_ROUNDS) {
            *blocker = tail;
            *room = 0;
            return SHMQ_EFULL;
        }
        shmq_cpu_relax();
    }
}

/* Writes a message: `given` is its header (length is the payload's, which
 * for SHMQ_MSG_REF lies in the log while the lane holds the reference). */
void shmq_lane_write_message(const shmq_handle *h, lane_ref lane, uint64_t pos, const shmq_msg_header *given,
                             const uint8_t *first, uint32_t first_length, const uint8_t *second,
                             uint32_t second_length)
{
    *header_at(h, lane, pos) = *given;
    ring_write(h, lane, pos, SHMQ_MSG_HEADER_BYTES, first, first_length);
    if (second_length)
        ring_write(h, lane, pos, SHMQ_MSG_HEADER_BYTES + first_length, second, second_length);
}

void shmq_lane_publish(const shmq_handle *h, lane_ref lane, uint64_t pos, uint32_t span)
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
    uint32_t index = (uint32_t)(((uint8_t *)lane.header - (h->base + h->lanes_offset)) / h->lane_bytes);
    if (shmq_lane_ordered(h, index)) /* its reader holds the gate: the gate's repair puts the job back in place */
        return h->repair_gate ? h->repair_gate(h, index) : 0;
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
        if (h->dead_reader)
            h->dead_reader(h, index, pos);
        shmq_lane_release_span(h, lane, pos, span);
        atomic_fetch_add_explicit(&h->header->released_dead_consumer, 1, memory_order_relaxed);
        return 1;
    }
    return 0;
}

/* Every READING message whose consumer died, in every lane: taken over,
 * put back (with a log) and released. Maintenance calls it; a producer that
 * needs the slots finds them itself (shmq_lane_repair_reader). */
int shmq_lane_redeliver_dead(shmq_handle *h)
{
    int repaired = 0;
    uint64_t slots = h->slot_mask + 1;
    for (uint32_t index = 0; index < h->unordered_lanes; index++) { /* ordered ones: shmq_jobs_repair_gate */
        lane_ref lane = lane_at(h, index);
        for (uint64_t i = 0; i < slots; i++) {
            /* acquire: pairs with the claim; the message is intact while READING. */
            uint64_t state = atomic_load_explicit(&lane.states[i], memory_order_acquire);
            if (shmq_state_kind(state) != SHMQ_SLOT_READING || shmq_participant_alive(h, shmq_state_owner(state)))
                continue;
            uint64_t pos = ((uint64_t)shmq_state_lap(state) << h->slot_shift) | i;
            uint32_t span = shmq_state_span(state);
            uint64_t mine = shmq_state(shmq_state_lap(state), SHMQ_SLOT_READING, h->self, span);
            /* acq_rel: takeover; exactly one repairer wins. */
            if (!atomic_compare_exchange_strong_explicit(&lane.states[i], &state, mine, memory_order_acq_rel,
                                                         memory_order_relaxed))
                continue;
            shmq_fault(h, SHMQ_FAULT_REPAIR_AFTER_TAKEOVER);
            if (h->dead_reader)
                h->dead_reader(h, index, pos);
            shmq_lane_release_span(h, lane, pos, span);
            atomic_fetch_add_explicit(&h->header->released_dead_consumer, 1, memory_order_relaxed);
            wake(&h->header->space_event, &h->header->space_waiters);
            repaired++;
        }
    }
    return repaired;
}

/* One attempt over the lanes (`lane` < 0: all, starting at a rotating one).
 * On EFULL, *lane_index and *blocker say where the first one stopped. */
static int claim_any(shmq_handle *h, int lane, uint32_t span, uint32_t *lane_index, uint64_t *position,
                     uint64_t *blocker, uint32_t *room)
{
    /* lane < 0: any unordered lane (ordered ones take only the jobs of their groups) */
    uint32_t lanes = h->unordered_lanes, count = lane < 0 ? lanes : 1;
    /* relaxed: any rotation is correct; with one lane there is nothing to rotate. */
    uint32_t start = lane >= 0    ? (uint32_t)lane
                     : lanes == 1 ? 0
                                  : atomic_fetch_add_explicit(&h->push_cursor, 1, memory_order_relaxed);
    uint32_t best_room = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t index = lane >= 0 ? (uint32_t)lane : (start + i) % lanes;
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
 * in `room` slots (0: not even the first). batch_fit: ring.h. */
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
int shmq_lane_claim_wait(shmq_handle *h, int lane, uint32_t *span, const batch_fit *fit, int64_t timeout_ns,
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

/* Claims room for a message with header `mh` and its bytes, waiting per the
 * timeout; writes and publishes it. A job's record is the caller's
 * (put.c writes it while it holds the claim, through the calls above). */
int shmq_lane_push_message(shmq_handle *h, int lane, const shmq_msg_header *mh, const uint8_t *first,
                           uint32_t first_length, const uint8_t *second, uint32_t second_length,
                           int64_t timeout_ns)
{
    uint32_t span = span_for(h, (uint64_t)first_length + second_length);
    int64_t deadline = 0;
    uint32_t index;
    uint64_t pos;
    int rc = shmq_lane_claim_wait(h, lane, &span, NULL, timeout_ns, &deadline, &index, &pos);
    if (rc != SHMQ_OK)
        return rc;
    lane_ref lr = lane_at(h, index);
    shmq_lane_write_message(h, lr, pos, mh, first, first_length, second, second_length);
    shmq_fault(h, SHMQ_FAULT_PUSH_BEFORE_PUBLISH);
    shmq_lane_publish(h, lr, pos, span);
    /* relaxed: statistics only. */
    atomic_fetch_add_explicit(&lr.header->pushed, 1, memory_order_relaxed);
    wake(&h->header->data_event, &h->header->data_waiters);
    return SHMQ_OK;
}

/* Pushes a job whose record is already in the log: its payload inline
 * (`payload`), or a reference to (record, offset) when `payload` is NULL. */
int shmq_lane_push_job(shmq_handle *h, int lane, const shmq_msg_header *mh, const uint8_t *payload,
                       uint64_t record, uint32_t offset, int64_t timeout_ns)
{
    if (payload)
        return shmq_lane_push_message(h, lane, mh, payload, mh->length, NULL, 0, timeout_ns);
    shmq_msg_header ref_mh = *mh;
    ref_mh.flags |= SHMQ_MSG_REF;
    shmq_msg_ref r = {.record = record, .offset = offset, .reserved = 0};
    return shmq_lane_push_message(h, lane, &ref_mh, (const uint8_t *)&r, sizeof r, NULL, 0, timeout_ns);
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

/* Payload bytes a span can hold at most: a bound known from the state word
 * alone, so we decide whether a message fits before we claim it. */
static inline uint64_t span_capacity(const shmq_handle *h, uint32_t span)
{
    return (uint64_t)span * h->slot_bytes - SHMQ_MSG_HEADER_BYTES;
}

void shmq_lane_release_span(shmq_handle *h, lane_ref lane, uint64_t pos, uint32_t span)
{
    for (uint32_t i = 1; i < span; i++) {
        /* release: our reads of this slot happen before a producer's next
         * writes to it; pairs with the acquire loads in claim(). */
        atomic_store_explicit(state_at(h, lane, pos + i), shmq_state(lap_of(h, pos + i) + 1, SHMQ_SLOT_FREE, 0, 0),
                              memory_order_release);
        if (i == 1)
            shmq_fault(h, SHMQ_FAULT_POP_MID_RELEASE);
    }
    /* release: as above. The first slot goes last: a producer that sees it
     * free sees the rest of the span free too. */
    atomic_store_explicit(state_at(h, lane, pos), shmq_state(lap_of(h, pos) + 1, SHMQ_SLOT_FREE, 0, 0),
                          memory_order_release);
}

/* Claims the message at the head if its payload can fit in `room` bytes.
 * TAKE_BUSY: the head message is still being written; *busy is its state.
 * In an ordered lane (`ordered`; the caller holds its gate) `head` moves
 * only when the message is released (shmq_lane_finish), so a message taken
 * by a consumer that died is found again at the head. */
static int take_at(shmq_handle *h, lane_ref lane, uint64_t room, shmq_message *msg, uint64_t *busy, int ordered)
{
    uint64_t stale_head = 0, stale_state = 0;
    uint32_t stale_rounds = 0;
    for (;;) {
        /* acquire: pairs with advance_hint's release. */
        uint64_t head = atomic_load_explicit(&lane.header->head, memory_order_acquire);
        _Atomic uint64_t *first = state_at(h, lane, head);
        /* acquire: pairs with the release in publish(): once READY is seen,
         * the header and payload written before it are visible. */
        uint64_t state = atomic_load_explicit(first, memory_order_acquire);
        uint32_t lap = lap_of(h, head), state_lap = shmq_state_lap(state);
        if (state_lap != lap) {
            if (shmq_lap_before(state_lap, lap))
                return TAKE_EMPTY; /* the slot still holds last lap's message: nothing new here */
            if (ordered) /* released by a gate holder that died before moving head: one slot on */
                advance_hint(&lane.header->head, head, head + 1);
            /* a later lap: our head was stale (unless it is damaged: see STALE_HINT_ROUNDS) */
            if (head != stale_head || state != stale_state) {
                stale_head = head;
                stale_state = state;
                stale_rounds = 0;
            } else if (++stale_rounds >= STALE_HINT_ROUNDS) {
                return TAKE_EMPTY;
            }
            shmq_cpu_relax();
            continue;
        }
        uint32_t span = shmq_state_span(state);
        switch (shmq_state_kind(state)) {
        case SHMQ_SLOT_FREE:
            return TAKE_EMPTY;
        case SHMQ_SLOT_WRITING:
            msg->position = head;
            *busy = state;
            return TAKE_BUSY;
        case SHMQ_SLOT_READING:
            if (ordered)
                return TAKE_EMPTY; /* the gate holder's message (or a dead one's: see shmq_jobs_repair_gate) */
            advance_hint(&lane.header->head, head, head + span);
            continue;
        default: /* READY */
            break;
        }
        if (span_capacity(h, span) > room)
            return TAKE_NO_FIT;
        uint64_t mine = shmq_state(lap, SHMQ_SLOT_READING, h->self, span);
        /* acquire on success: as the load above. The CAS is the claim; exactly
         * one consumer wins it. */
        if (!atomic_compare_exchange_strong_explicit(first, &state, mine, memory_order_acquire,
                                                     memory_order_relaxed))
            continue;
        shmq_fault(h, SHMQ_FAULT_POP_AFTER_CLAIM);
        if (!ordered)
            advance_hint(&lane.header->head, head, head + span);
        const shmq_msg_header *mh = header_at(h, lane, head);
        if (mh->flags & SHMQ_MSG_SKIP) { /* a claim whose log record failed: nothing to deliver */
            shmq_lane_release_span(h, lane, head, span);
            if (ordered)
                advance_hint(&lane.header->head, head, head + span);
            continue;
        }
        uint64_t carried = (mh->flags & SHMQ_MSG_REF) ? SHMQ_MSG_REF_BYTES : mh->length;
        if (carried > span_capacity(h, span) || span_for(h, carried) != span) {
            /* Impossible for a message written by this code: drop it, count it. */
            shmq_lane_release_span(h, lane, head, span);
            if (ordered)
                advance_hint(&lane.header->head, head, head + span);
            atomic_fetch_add_explicit(&h->header->dropped_corrupt, 1, memory_order_relaxed);
            continue;
        }
        msg->position = head;
        msg->span = span;
        msg->length = mh->length;
        msg->tag = mh->tag;
        msg->flags = mh->flags;
        msg->attempt = mh->attempt;
        msg->job_id = mh->job_id;
        /* A payload in the log may be larger than the room left. */
        return (mh->flags & SHMQ_MSG_REF) && mh->length > room ? TAKE_BIG : TAKE_OK;
    }
}

int shmq_lane_take_fit(shmq_handle *h, lane_ref lane, uint64_t room, shmq_message *msg, uint64_t *busy)
{
    return take_at(h, lane, room, msg, busy, 0);
}

/* A producer died between claiming and publishing the head message. Its put
 * never returned, so the span is dropped: take it over, move both hints past
 * it (the producer may have died before moving the tail), release it. */
int shmq_lane_repair_dead_writer(shmq_handle *h, lane_ref lane, uint64_t pos, uint64_t state)
{
    if (shmq_participant_alive(h, shmq_state_owner(state)))
        return 0;
    uint32_t span = shmq_state_span(state);
    uint64_t mine = shmq_state(lap_of(h, pos), SHMQ_SLOT_READING, h->self, span);
    /* acq_rel: takeover; exactly one repairer wins. */
    if (!atomic_compare_exchange_strong_explicit(state_at(h, lane, pos), &state, mine, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return 1;
    shmq_fault(h, SHMQ_FAULT_REPAIR_AFTER_TAKEOVER);
    advance_hint(&lane.header->tail, pos, pos + span);
    advance_hint(&lane.header->head, pos, pos + span);
    shmq_lane_release_span(h, lane, pos, span);
    atomic_fetch_add_explicit(&h->header->dropped_dead_producer, 1, memory_order_relaxed); /* statistics */
    wake(&h->header->space_event, &h->header->space_waiters);
    return 1;
}

int shmq_is_empty(const shmq_handle *h)
{
    for (uint32_t i = 0; i < h->lane_count; i++) {
        lane_ref lane = lane_at(h, i);
        /* acquire: as in take(); a snapshot. */
        uint64_t head = atomic_load_explicit(&lane.header->head, memory_order_acquire);
        uint64_t state = atomic_load_explicit(state_at(h, lane, head), memory_order_acquire);
        if (shmq_state_lap(state) == lap_of(h, head) && shmq_state_kind(state) != SHMQ_SLOT_FREE)
            return 0;
    }
    return 1;
}

/* Repairs whatever dead processes left at every head and tail, and in the
 * waiters counters, now. */
int shmq_repair(shmq_handle *h)
{
    int repaired = shmq_sweep_sleepers(h);
    for (uint32_t i = 0; i < h->lane_count; i++) {
        lane_ref lane = lane_at(h, i);
        shmq_message msg;
        uint64_t busy;
        if (take_at(h, lane, 0, &msg, &busy, shmq_lane_ordered(h, i)) == TAKE_BUSY)
            repaired += shmq_lane_repair_dead_writer(h, lane, msg.position, busy);
        if (shmq_lane_ordered(h, i)) {
            if (h->repair_gate)
                repaired += h->repair_gate(h, i);
            continue;
        }
        uint64_t tail = atomic_load_explicit(&lane.header->tail, memory_order_acquire);
        for (uint64_t pos = tail; pos < tail + h->max_span; pos++) {
            uint64_t state = atomic_load_explicit(state_at(h, lane, pos), memory_order_acquire);
            if (state != free_state(h, pos)) {
                repaired += shmq_lane_repair_reader(h, lane, pos);
                break;
            }
        }
    }
    return repaired;
}

void shmq_counts_read(const shmq_handle *h, shmq_counts *counts /* OUT */)
{
    *counts = (shmq_counts){0};
    for (uint32_t i = 0; i < h->lane_count; i++) {
        lane_ref lane = lane_at(h, i);
        /* relaxed: statistics. */
        counts->pushed += atomic_load_explicit(&lane.header->pushed, memory_order_relaxed);
        counts->popped += atomic_load_explicit(&lane.header->popped, memory_order_relaxed);
    }
    counts->dropped_dead_producer = atomic_load_explicit(&h->header->dropped_dead_producer, memory_order_relaxed);
    counts->released_dead_consumer = atomic_load_explicit(&h->header->released_dead_consumer, memory_order_relaxed);
    counts->dropped_corrupt = atomic_load_explicit(&h->header->dropped_corrupt, memory_order_relaxed);
    counts->data_waiters = atomic_load_explicit(&h->header->data_waiters, memory_order_relaxed);
    counts->space_waiters = atomic_load_explicit(&h->header->space_waiters, memory_order_relaxed);
}

/* ------------------------------------------------------------ for jobs.c */

/* Takes the head message of `lane` (any size): SHMQ_OK, SHMQ_EEMPTY, or
 * SHMQ_EFULL when the head is being written (t->msg.position and the
 * state in t->record name the writer, for shmq_lane_repair_writer). An
 * ordered lane's caller holds its gate. */
int shmq_lane_take(shmq_handle *h, uint32_t index, shmq_taken *t)
{
    lane_ref lane = lane_at(h, index);
    uint64_t busy = 0;
    int rc = take_at(h, lane, UINT64_MAX, &t->msg, &busy, shmq_lane_ordered(h, index));
    if (rc == TAKE_BUSY) {
        t->record = busy;
        return SHMQ_EFULL;
    }
    if (rc != TAKE_OK && rc != TAKE_BIG)
        return SHMQ_EEMPTY;
    t->msg.lane = index;
    const shmq_msg_header *mh = header_at(h, lane, t->msg.position);
    t->enqueued_ns = mh->enqueued_ns;
    t->record = 0;
    t->offset = 0;
    if (t->msg.flags & SHMQ_MSG_REF) {
        shmq_msg_ref ref;
        ring_read(h, lane, t->msg.position, SHMQ_MSG_HEADER_BYTES, &ref, sizeof ref);
        t->record = ref.record;
        t->offset = ref.offset;
    }
    return SHMQ_OK;
}

/* A producer died while writing the head message of `index` (seen by
 * shmq_lane_take as SHMQ_EFULL): drops it. Returns 1 if it did. */
int shmq_lane_repair_writer(shmq_handle *h, uint32_t index, const shmq_taken *t)
{
    return shmq_lane_repair_dead_writer(h, lane_at(h, index), t->msg.position, t->record);
}

/* Marks a taken message as leased: a repairer that finds its consumer dead
 * leaves the job to the lease (see shmq_backlog_redeliver in backlog.c). We hold the
 * slot (READING), so the header is ours to write; a repairer reads it only
 * after its takeover CAS, once we are dead. */
void shmq_lane_mark_leased(shmq_handle *h, const shmq_taken *t)
{
    /* relaxed: a lone byte; a status look (in_lanes, jobs_info.c) reads it while we hold the slot. */
    __atomic_fetch_or(&header_at(h, lane_at(h, t->msg.lane), t->msg.position)->flags, SHMQ_MSG_LEASED,
                      __ATOMIC_RELAXED);
}

/* Releases a taken message's slots (no DONE: the job's lease holds it now). */
void shmq_lane_finish(shmq_handle *h, const shmq_taken *t)
{
    lane_ref lane = lane_at(h, t->msg.lane);
    shmq_lane_release_span(h, lane, t->msg.position, t->msg.span);
    if (shmq_lane_ordered(h, t->msg.lane))
        advance_hint(&lane.header->head, t->msg.position, t->msg.position + t->msg.span);
    atomic_fetch_add_explicit(&lane.header->popped, 1, memory_order_relaxed); /* statistics */
    wake(&h->header->space_event, &h->header->space_waiters);
}

/* Is the head of `index` a published message? A look, not a claim. */
int shmq_lane_ready(const shmq_handle *h, uint32_t index)
{
    lane_ref lane = lane_at(h, index);
    /* acquire: as in take(); a snapshot. */
    uint64_t head = atomic_load_explicit(&lane.header->head, memory_order_acquire);
    uint64_t state = atomic_load_explicit(state_at(h, lane, head), memory_order_acquire);
    return shmq_state_lap(state) == lap_of(h, head) && shmq_state_kind(state) == SHMQ_SLOT_READY;
}

/* Is the head of `index` being written (WRITING)? Then *t names the writer's
 * claim for shmq_lane_repair_writer, as shmq_lane_take's SHMQ_EFULL does. */
int shmq_lane_busy(const shmq_handle *h, uint32_t index, shmq_taken *t)
{
    lane_ref lane = lane_at(h, index);
    /* acquire: as in take(); a look. */
    uint64_t head = atomic_load_explicit(&lane.header->head, memory_order_acquire);
    uint64_t state = atomic_load_explicit(state_at(h, lane, head), memory_order_acquire);
    if (shmq_state_lap(state) != lap_of(h, head) || shmq_state_kind(state) != SHMQ_SLOT_WRITING)
        return 0;
    t->msg.position = head;
    t->record = state;
    return 1;
}

/* Puts the message a dead consumer took from the head of an ordered lane
 * back, READY with attempt + 1 (the lane's order is kept: it is still the
 * head). Returns 1 if it did. */
int shmq_lane_untake_dead(shmq_handle *h, uint32_t index, unsigned owner)
{
    lane_ref lane = lane_at(h, index);
    /* acquire: as in take(). */
    uint64_t head = atomic_load_explicit(&lane.header->head, memory_order_acquire);
    _Atomic uint64_t *first = state_at(h, lane, head);
    uint64_t state = atomic_load_explicit(first, memory_order_acquire);
    if (shmq_state_lap(state) != lap_of(h, head) || shmq_state_kind(state) != SHMQ_SLOT_READING ||
        shmq_state_owner(state) != owner)
        return 0;
    uint32_t span = shmq_state_span(state);
    uint64_t mine = shmq_state(lap_of(h, head), SHMQ_SLOT_READING, h->self, span);
    /* acq_rel: takeover; exactly one repairer wins. */
    if (!atomic_compare_exchange_strong_explicit(first, &state, mine, memory_order_acq_rel, memory_order_relaxed))
        return 0;
    header_at(h, lane, head)->attempt++;
    /* release: the new attempt is visible to whoever takes it. */
    atomic_store_explicit(first, shmq_state(lap_of(h, head), SHMQ_SLOT_READY, h->self, span), memory_order_release);
    wake(&h->header->data_event, &h->header->data_waiters);
    return 1;
}

/* Releases the READING head of an ordered lane whose taker (`owner`, or
 * any dead one for 0) died after its job's lease was published (the lease
 * has the job). */
int shmq_lane_release_dead_head(shmq_handle *h, uint32_t index, unsigned owner)
{
    lane_ref lane = lane_at(h, index);
    /* acquire: as in take(). */
    uint64_t head = atomic_load_explicit(&lane.header->head, memory_order_acquire);
    _Atomic uint64_t *first = state_at(h, lane, head);
    uint64_t state = atomic_load_explicit(first, memory_order_acquire);
    if (shmq_state_lap(state) != lap_of(h, head) || shmq_state_kind(state) != SHMQ_SLOT_READING)
        return 0;
    unsigned taker = shmq_state_owner(state);
    if (owner ? taker != owner : (taker == h->self || shmq_participant_alive(h, taker)))
        return 0;
    uint32_t span = shmq_state_span(state);
    uint64_t mine = shmq_state(lap_of(h, head), SHMQ_SLOT_READING, h->self, span);
    /* acq_rel: takeover; exactly one repairer wins. */
    if (!atomic_compare_exchange_strong_explicit(first, &state, mine, memory_order_acq_rel, memory_order_relaxed))
        return 0;
    shmq_lane_release_span(h, lane, head, span);
    advance_hint(&lane.header->head, head, head + span);
    wake(&h->header->space_event, &h->header->space_waiters);
    return 1;
}

void shmq_wake_data(shmq_handle *h) { wake(&h->header->data_event, &h->header->data_waiters); }

void shmq_lane_info_read(const shmq_handle *h, uint32_t index, shmq_lane_info *info /* OUT */)
{
    *info = (shmq_lane_info){0};
    if (index >= h->lane_count)
        return;
    lane_ref lane = lane_at(h, index);
    /* relaxed: a snapshot for people. */
    info->head = atomic_load_explicit(&lane.header->head, memory_order_relaxed);
    info->tail = atomic_load_explicit(&lane.header->tail, memory_order_relaxed);
    info->pushed = atomic_load_explicit(&lane.header->pushed, memory_order_relaxed);
    info->popped = atomic_load_explicit(&lane.header->popped, memory_order_relaxed);
    info->gate = atomic_load_explicit(&lane.header->gate, memory_order_relaxed);
    info->gate_due_ns = atomic_load_explicit(&lane.header->gate_due, memory_order_relaxed);
    info->gate_since_ns = atomic_load_explicit(&lane.header->gate_since, memory_order_relaxed); /* relaxed: a look */
    info->ordered = (uint32_t)shmq_lane_ordered(h, index);
}
