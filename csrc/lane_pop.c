/* SPDX-License-Identifier: Apache-2.0 */
/* lane_pop.c -- consumers: take, copy, release; and the repair of claims left
 * by producers that died (found when a consumer waits behind them). */
#define _GNU_SOURCE
#include <sched.h>

#include "lane.h"
#include "log.h"
#include "ops.h"

enum { TAKE_OK = 0, TAKE_EMPTY, TAKE_BUSY, TAKE_NO_FIT, TAKE_BIG };

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

static int take(shmq_handle *h, lane_ref lane, uint64_t room, shmq_message *msg, uint64_t *busy)
{
    return take_at(h, lane, room, msg, busy, 0);
}

/* Copies a taken message's payload: from the ring, or from its log record. */
static int copy_payload(shmq_handle *h, lane_ref lane, const shmq_message *msg, uint8_t *out)
{
    if (!(msg->flags & SHMQ_MSG_REF)) {
        ring_read(h, lane, msg->position, SHMQ_MSG_HEADER_BYTES, out, msg->length);
        return SHMQ_OK;
    }
    shmq_msg_ref ref;
    ring_read(h, lane, msg->position, SHMQ_MSG_HEADER_BYTES, &ref, sizeof ref);
    shmq_log_enter(h);
    int rc = shmq_log_read_payload(h, ref.record, ref.offset, out, msg->length);
    shmq_log_leave(h);
    return rc;
}

/* Releases the slots of taken messages, then acknowledges their jobs (the
 * DONE records are written lazily: see shmq_log_ack). A consumer killed
 * before the release leaves READING slots, and the job is put back. */
static void finish_taken(shmq_handle *h, lane_ref lane, const uint64_t *positions, const uint32_t *spans,
                         uint64_t *job_ids, uint32_t count)
{
    if (count == 0)
        return;
    for (uint32_t i = 0; i < count; i++)
        shmq_lane_release_span(h, lane, positions[i], spans[i]);
    if (h->log_on)
        shmq_log_ack(h, job_ids, count);
}

/* A producer died between claiming and publishing the head message. Its put
 * never returned, so the span is dropped: take it over, move both hints past
 * it (the producer may have died before moving the tail), release it. */
static int repair_dead_writer(shmq_handle *h, lane_ref lane, uint64_t pos, uint64_t state)
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

typedef struct pop_batch {
    uint8_t *buffer;
    uint64_t capacity, used;
    uint32_t max_items, count;
    uint32_t *lengths;
    uint8_t *tags;
    shmq_message *claimed;
    shmq_message first;  /* the first message taken (for shmq_pop) */
    /* the first lane found blocked behind a message being written */
    int busy_lane;
    uint64_t busy_state;
    uint64_t busy_position;
} pop_batch;

/* Takes what it can from one lane into the batch. Returns TAKE_NO_FIT when
 * the batch is done (buffer full, or a message that needs its own buffer was
 * claimed: *claimed, SHMQ_ECLAIMED when it is the only one), else
 * TAKE_OK/EMPTY/BUSY. */
enum { FINISH_CHUNK = 64 };
static int take_from_lane(shmq_handle *h, uint32_t index, pop_batch *b)
{
    lane_ref lane = lane_at(h, index);
    uint32_t taken = 0, held = 0;
    uint64_t positions[FINISH_CHUNK], job_ids[FINISH_CHUNK];
    uint32_t spans[FINISH_CHUNK];
    int rc = TAKE_EMPTY;
    while (b->count < b->max_items) {
        shmq_message msg;
        uint64_t busy = 0;
        rc = take(h, lane, b->capacity - b->used, &msg, &busy);
        if (rc == TAKE_NO_FIT && b->count == 0) {
            /* Too big for the shared buffer: claim it for a buffer of its own. */
            rc = take(h, lane, UINT64_MAX, &msg, &busy);
            if (rc == TAKE_BIG)
                rc = TAKE_OK;
            if (rc == TAKE_OK) {
                msg.lane = index;
                *b->claimed = msg;
                taken++;
                rc = TAKE_NO_FIT;
            }
        }
        if (rc == TAKE_BIG) { /* claimed; it ends the batch and goes to a buffer of its own */
            msg.lane = index;
            *b->claimed = msg;
            taken++;
            rc = TAKE_NO_FIT;
        }
        if (rc == TAKE_BUSY && b->busy_lane < 0) {
            b->busy_lane = (int)index;
            b->busy_state = busy;
            b->busy_position = msg.position;
        }
        if (rc != TAKE_OK)
            break;
        if (copy_payload(h, lane, &msg, b->buffer + b->used) != SHMQ_OK) {
            /* its record is unreadable: counted, and its job stays in the log */
            shmq_lane_release_span(h, lane, msg.position, msg.span);
            atomic_fetch_add_explicit(&h->header->dropped_corrupt, 1, memory_order_relaxed);
            continue;
        }
        shmq_fault(h, SHMQ_FAULT_POP_MID_COPY);
        if (b->count == 0) {
            b->first = msg;
            b->first.lane = index;
        }
        b->lengths[b->count] = msg.length;
        b->tags[b->count] = msg.tag;
        b->used += msg.length;
        b->count++;
        taken++;
        positions[held] = msg.position;
        spans[held] = msg.span;
        job_ids[held] = msg.job_id;
        if (++held == FINISH_CHUNK) {
            finish_taken(h, lane, positions, spans, job_ids, held);
            held = 0;
        }
    }
    if (held)
        finish_taken(h, lane, positions, spans, job_ids, held);
    if (taken)
        atomic_fetch_add_explicit(&lane.header->popped, taken, memory_order_relaxed); /* statistics */
    return rc;
}

/* One pass over the lanes, from a rotating start. */
static int pop_round(shmq_handle *h, pop_batch *b)
{
    /* relaxed: any rotation is correct; with one lane there is nothing to rotate. */
    uint32_t lanes = h->unordered_lanes; /* ordered lanes are for shmq_fetch: one job of a group at a time */
    uint32_t start = lanes == 1 ? 0 : atomic_fetch_add_explicit(&h->pop_cursor, 1, memory_order_relaxed);
    for (uint32_t i = 0; i < lanes && b->count < b->max_items; i++) {
        if (take_from_lane(h, (start + i) % lanes, b) == TAKE_NO_FIT) {
            if (b->count == 0 && b->claimed->span)
                return SHMQ_ECLAIMED;
            break;
        }
    }
    if (b->count == 0)
        return SHMQ_EEMPTY;
    wake(&h->header->space_event, &h->header->space_waiters);
    return SHMQ_OK;
}

static int pop_many(shmq_handle *h, char *buffer, uint32_t capacity, uint32_t max_items, int64_t timeout_ns,
                    uint32_t *lengths, uint8_t *tags, uint32_t *count, shmq_message *claimed, shmq_message *first);

int shmq_pop_many(shmq_handle *h, char *buffer, uint32_t capacity, uint32_t max_items, int64_t timeout_ns,
                  uint32_t *lengths /* OUT */, uint8_t *tags /* OUT */, uint32_t *count /* OUT */,
                  shmq_message *claimed /* OUT */)
{
    return pop_many(h, buffer, capacity, max_items, timeout_ns, lengths, tags, count, claimed, NULL);
}

static int pop_many(shmq_handle *h, char *buffer, uint32_t capacity, uint32_t max_items, int64_t timeout_ns,
                    uint32_t *lengths, uint8_t *tags, uint32_t *count, shmq_message *claimed, shmq_message *first)
{
    *count = 0;
    claimed->span = 0; /* set when a claimed message ends the batch: see shmq_pop_finish */
    if (max_items == 0)
        return SHMQ_EINVAL;
    pop_batch b = {(uint8_t *)buffer, capacity, 0, max_items, 0, lengths, tags, claimed, {0}, -1, 0, 0};
    shmq_region_header *hdr = h->header;
    int64_t deadline = 0;
    for (unsigned round = 0;; round++) {
        b.busy_lane = -1;
        int rc = pop_round(h, &b);
        *count = b.count;
        if (rc != SHMQ_EEMPTY) {
            if (first)
                *first = b.first;
            return rc;
        }
        if (shmq_log_spilling(h) && shmq_backlog_feed(h, 256) > 0)
            continue; /* jobs waited in the log: moved into the lanes now */
        if (round == 0)
            shmq_log_ack_flush(h); /* nothing to take: a good moment to write the acks */
        if (timeout_ns == 0)
            return SHMQ_EEMPTY;
        if (round < SPIN_ROUNDS) {
            shmq_cpu_relax();
            continue;
        }
        if (round < SPIN_ROUNDS + YIELD_ROUNDS) {
            sched_yield();
            continue;
        }
        if (b.busy_lane >= 0 &&
            repair_dead_writer(h, lane_at(h, (uint32_t)b.busy_lane), b.busy_position, b.busy_state)) {
            round = 0;
            continue;
        }
        if (deadline == 0)
            deadline = shmq_deadline(timeout_ns);
        /* relaxed: only a value for the futex to compare; states are re-read
         * with acquire loads after waking. */
        uint32_t seen = atomic_load_explicit(&hdr->data_event, memory_order_relaxed);
        shmq_sleep_begin(h, &hdr->data_waiters, SHMQ_SLEEP_DATA);
        /* seq_cst: orders our waiters increment before the re-check below;
         * pairs with the fence in wake(): one side always sees the other. */
        atomic_thread_fence(memory_order_seq_cst);
        rc = pop_round(h, &b);
        *count = b.count;
        if (rc != SHMQ_EEMPTY) {
            shmq_sleep_end(h, &hdr->data_waiters, SHMQ_SLEEP_DATA);
            if (first)
                *first = b.first;
            return rc;
        }
        /* Behind a live writer: re-check it now and then, in case it dies. */
        rc = shmq_futex_wait(&hdr->data_event, seen, deadline, b.busy_lane >= 0 ? SHMQ_OWNER_RECHECK_NS : -1);
        shmq_sleep_end(h, &hdr->data_waiters, SHMQ_SLEEP_DATA);
        if (rc != SHMQ_OK)
            return rc; /* EINTR, or EEMPTY at the deadline */
        round = SPIN_ROUNDS / 2; /* woken: spin a little before sleeping again */
    }
}

int shmq_pop(shmq_handle *h, char *buffer, uint32_t capacity, int64_t timeout_ns,
             shmq_message *message /* OUT */)
{
    uint32_t length, count;
    uint8_t tag;
    shmq_message first;
    int rc = pop_many(h, buffer, capacity, 1, timeout_ns, &length, &tag, &count, message, &first);
    if (rc == SHMQ_OK) {
        *message = first;
        message->length = length;
        message->tag = tag;
    }
    return rc;
}

int64_t shmq_get(shmq_handle *h, char *buffer, uint32_t capacity, int64_t timeout_ns,
                 shmq_message *message /* OUT */)
{
    int rc = shmq_pop(h, buffer, capacity, timeout_ns, message);
    return rc == SHMQ_OK ? ((int64_t)message->tag << 32) | message->length : rc;
}

/* Is `message` a claim this handle holds? Guards against a stale or forged one. */
static int holds(const shmq_handle *h, const shmq_message *message)
{
    if (message->lane >= h->lane_count)
        return 0;
    lane_ref lane = lane_at(h, message->lane);
    uint64_t expected = shmq_state(lap_of(h, message->position), SHMQ_SLOT_READING, h->self, message->span);
    /* acquire: pairs with our own claim; a plain check of ownership. */
    return atomic_load_explicit(state_at(h, lane, message->position), memory_order_acquire) == expected;
}

int shmq_pop_finish(shmq_handle *h, const shmq_message *message, char *buffer)
{
    if (!holds(h, message))
        return SHMQ_EINVAL;
    lane_ref lane = lane_at(h, message->lane);
    int rc = copy_payload(h, lane, message, (uint8_t *)buffer);
    if (rc != SHMQ_OK) {
        shmq_lane_release_span(h, lane, message->position, message->span);
        return rc;
    }
    shmq_fault(h, SHMQ_FAULT_POP_MID_COPY);
    uint64_t job_id = message->job_id;
    finish_taken(h, lane, &message->position, &message->span, &job_id, 1);
    wake(&h->header->space_event, &h->header->space_waiters);
    return SHMQ_OK;
}

void shmq_pop_abandon(shmq_handle *h, const shmq_message *message)
{
    if (!holds(h, message))
        return;
    lane_ref lane = lane_at(h, message->lane);
    shmq_lane_release_span(h, lane, message->position, message->span);
    wake(&h->header->space_event, &h->header->space_waiters);
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
            repaired += repair_dead_writer(h, lane, msg.position, busy);
        if (shmq_lane_ordered(h, i)) {
            if (h->jobs)
                repaired += shmq_jobs_repair_gate(h, i);
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
    return repair_dead_writer(h, lane_at(h, index), t->msg.position, t->record);
}

int shmq_lane_read_payload(shmq_handle *h, const shmq_taken *t, uint8_t *out, uint32_t length)
{
    shmq_message msg = t->msg;
    msg.length = length < msg.length ? length : msg.length;
    return copy_payload(h, lane_at(h, t->msg.lane), &msg, out);
}

/* Marks a taken message as leased: a repairer that finds its consumer dead
 * leaves the job to the lease (see redeliver in lane_push.c). We hold the
 * slot (READING), so the header is ours to write; a repairer reads it only
 * after its takeover CAS, once we are dead. */
void shmq_lane_mark_leased(shmq_handle *h, const shmq_taken *t)
{
    header_at(h, lane_at(h, t->msg.lane), t->msg.position)->flags |= SHMQ_MSG_LEASED;
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
    info->ordered = (uint32_t)shmq_lane_ordered(h, index);
}
