/* SPDX-License-Identifier: Apache-2.0 */
/* get.c -- the consumer's calls without jobs: pop, pop_many, get, and the
 * two-step pop of a message larger than the caller's buffer. A message
 * whose payload lies in the log is read from its record; taken jobs are
 * acknowledged lazily (DONE records, shmq_log_ack). */
#define _GNU_SOURCE
#include <sched.h>

#include "ops.h"

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
        rc = shmq_lane_take_fit(h, lane, b->capacity - b->used, &msg, &busy);
        if (rc == TAKE_NO_FIT && b->count == 0) {
            /* Too big for the shared buffer: claim it for a buffer of its own. */
            rc = shmq_lane_take_fit(h, lane, UINT64_MAX, &msg, &busy);
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
            shmq_lane_repair_dead_writer(h, lane_at(h, (uint32_t)b.busy_lane), b.busy_position, b.busy_state)) {
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

/* One message of one lane into room alloc() makes: 1 taken, 0 none, or
 * SHMQ_ECLAIMED (alloc failed; the claim is in *message). */
static int take_one_into(shmq_handle *h, uint32_t index, shmq_alloc_fn alloc, void *ctx, shmq_message *message)
{
    lane_ref lane = lane_at(h, index);
    for (;;) {
        uint64_t busy = 0;
        shmq_message msg;
        int rc = shmq_lane_take_fit(h, lane, UINT64_MAX, &msg, &busy);
        if (rc != TAKE_OK && rc != TAKE_BIG) /* TAKE_BIG: a payload in the log; no room limit here */
            return 0;
        msg.lane = index;
        /* counted when taken, as take_from_lane counts a claim (relaxed: statistics) */
        atomic_fetch_add_explicit(&lane.header->popped, 1, memory_order_relaxed);
        uint8_t *out = alloc(ctx, msg.length);
        if (!out) {
            *message = msg; /* still held (READING): shmq_pop_finish or shmq_pop_abandon */
            return SHMQ_ECLAIMED;
        }
        if (copy_payload(h, lane, &msg, out) != SHMQ_OK) {
            /* as in take_from_lane: counted, and its job stays in the log */
            shmq_lane_release_span(h, lane, msg.position, msg.span);
            atomic_fetch_add_explicit(&h->header->dropped_corrupt, 1, memory_order_relaxed); /* statistics */
            continue;
        }
        shmq_fault(h, SHMQ_FAULT_POP_MID_COPY);
        uint64_t job_id = msg.job_id;
        finish_taken(h, lane, &msg.position, &msg.span, &job_id, 1);
        *message = msg;
        return 1;
    }
}

int64_t shmq_take(shmq_handle *h, shmq_alloc_fn alloc, void *ctx, shmq_message *message /* OUT */)
{
    message->span = 0;
    uint32_t lanes = h->unordered_lanes; /* as pop_round: ordered lanes are for shmq_fetch */
    /* relaxed: any rotation is correct; with one lane there is nothing to rotate. */
    uint32_t start = lanes == 1 ? 0 : atomic_fetch_add_explicit(&h->pop_cursor, 1, memory_order_relaxed);
    for (uint32_t i = 0; i < lanes; i++) {
        int rc = take_one_into(h, (start + i) % lanes, alloc, ctx, message);
        if (rc == 0)
            continue;
        if (rc < 0)
            return rc;
        wake(&h->header->space_event, &h->header->space_waiters);
        return ((int64_t)message->tag << 32) | message->length;
    }
    return SHMQ_EEMPTY;
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
