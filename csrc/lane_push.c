/* SPDX-License-Identifier: Apache-2.0 */
/* lane_push.c -- producers: claim, copy, publish; and the repair of slots
 * held by consumers that died (found when a producer needs them back). */
#define _GNU_SOURCE
#include <sched.h>

#include <stdlib.h>

#include "lane.h"
#include "log.h"
#include "ops.h"


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
static void write_message(const shmq_handle *h, lane_ref lane, uint64_t pos, const shmq_msg_header *given,
                          const uint8_t *first, uint32_t first_length, const uint8_t *second,
                          uint32_t second_length)
{
    *header_at(h, lane, pos) = *given;
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

/* A consumer died holding the message at `pos` (we hold it now): with a
 * log, the job goes back as a copy (attempt + 1) through the backlog, so
 * it runs again; its consumer may or may not have finished it. */
static void redeliver(shmq_handle *h, lane_ref lane, uint64_t pos)
{
    if (!h->log_on)
        return; /* no log: the message had been handed over; it is dropped */
    shmq_msg_header mh = *header_at(h, lane, pos);
    if (mh.job_id == 0 || (mh.flags & SHMQ_MSG_SKIP))
        return;
    if ((mh.flags & SHMQ_MSG_LEASED) || (h->jobs && shmq_jobs_holds(h, mh.job_id)))
        return; /* its consumer leased it before dying: the lease puts it back (or did already) */
    shmq_log_enter(h);
    /* The payload: from the ring (in up to two pieces where it wraps), or
     * from the record a reference names. */
    const uint8_t *first = NULL, *second = NULL;
    uint32_t first_length = 0, second_length = 0;
    if (mh.flags & SHMQ_MSG_REF) {
        shmq_msg_ref ref;
        ring_read(h, lane, pos, SHMQ_MSG_HEADER_BYTES, &ref, sizeof ref);
        int err = 0;
        shmq_record_header *rec = shmq_record_at(h, ref.record, 0, &err);
        if (!rec) {
            shmq_log_fail(h, err);
            shmq_log_leave(h);
            return;
        }
        first = (const uint8_t *)rec + ref.offset;
        first_length = mh.length;
    } else {
        uint64_t at = ((pos & h->slot_mask) * h->slot_bytes + SHMQ_MSG_HEADER_BYTES) % h->ring_bytes;
        first = lane.data + at;
        first_length = mh.length < h->ring_bytes - at ? mh.length : (uint32_t)(h->ring_bytes - at);
        second = lane.data;
        second_length = mh.length - first_length;
    }
    shmq_enqueue_args args = {.job_id = mh.job_id, .attempt = (uint16_t)(mh.attempt + 1), .tag = mh.tag,
                              .flags = SHMQ_ENQ_COPY, .enqueued_ns = mh.enqueued_ns, .first = first,
                              .first_length = first_length, .second = second, .second_length = second_length};
    uint64_t key[2];
    if ((mh.flags & SHMQ_MSG_UNIQUE) && (mh.flags & SHMQ_MSG_REF) && first) {
        /* The copy keeps the job's unique key (its reference points past it). */
        memcpy(key, first - SHMQ_UNIQUE_KEY_BYTES, sizeof key);
        args.unique = (const uint8_t *)key;
        if (mh.flags & SHMQ_MSG_UNIQUE_FINISH)
            args.flags |= SHMQ_ENQ_UNIQUE_FINISH;
    }
    for (int tries = 0; tries < 8; tries++) {
        shmq_log_spill_begin(h);
        uint64_t position;
        int spilling = 0;
        if (shmq_log_enqueue(h, &args, &position, &spilling) != SHMQ_OK)
            break; /* the log refuses (disk full): the job stays in the log only */
        if (spilling) { /* the feeder moves it; else the backlog emptied meanwhile: again */
            atomic_fetch_add_explicit(&h->header->redelivered, 1, memory_order_relaxed); /* statistics */
            break;
        }
    }
    shmq_log_leave(h);
}

/* A consumer died holding the message whose slots block `blocked` (a
 * position we need in this lap). Find that message's first slot by scanning
 * back through the previous lap, take it over, release it. Returns 1 if
 * something was repaired. */
int shmq_lane_repair_reader(shmq_handle *h, lane_ref lane, uint64_t blocked)
{
    uint32_t index = (uint32_t)(((uint8_t *)lane.header - (h->base + h->lanes_offset)) / h->lane_bytes);
    if (shmq_lane_ordered(h, index)) /* its reader holds the gate: the gate's repair puts the job back in place */
        return h->jobs ? shmq_jobs_repair_gate(h, index) : 0;
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
        redeliver(h, lane, pos);
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
            redeliver(h, lane, pos);
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

/* Counts an accepted job in its lane's metrics (relaxed: statistics). */
static inline void count_enqueued(shmq_handle *h, uint32_t lane, uint64_t n)
{
    if (h->metrics)
        atomic_fetch_add_explicit(&h->metrics[lane].enqueued, n, memory_order_relaxed);
}

/* Claims room for a message with header `mh` and its bytes, waiting per the
 * timeout; writes and publishes it. With `log` (the record's fields), the
 * job's ENQUEUE record is written while the claim is held (so a put that
 * times out waiting for room has written nothing), and the message carries
 * the record's job id (also stored in *job_id). */
static int push_one(shmq_handle *h, int lane, shmq_msg_header mh, const uint8_t *first, uint32_t first_length,
                    const uint8_t *second, uint32_t second_length, int64_t timeout_ns, const shmq_enqueue_args *log,
                    uint64_t *job_id)
{
    /* Unique jobs travel by reference: the consumer reads the key from the record. */
    int ref = log && (mh.length > h->inline_ref_min || (mh.flags & SHMQ_MSG_UNIQUE));
    uint32_t span = span_for(h, ref ? SHMQ_MSG_REF_BYTES : (uint64_t)first_length + second_length);
    int64_t deadline = 0;
    uint32_t index;
    uint64_t pos;
    int rc = claim_wait(h, lane, &span, NULL, timeout_ns, &deadline, &index, &pos);
    if (rc != SHMQ_OK)
        return rc;
    lane_ref lr = lane_at(h, index);
    if (log) {
        /* Pinned from before the record exists until the lane holds it:
         * retention sees the job in one place or the other. */
        shmq_log_pin(h);
        shmq_enqueue_args args = *log;
        args.flags |= SHMQ_ENQ_LANED;
        args.first = first;
        args.first_length = first_length;
        args.second = second;
        args.second_length = second_length;
        if (!args.enqueued_ns)
            args.enqueued_ns = shmq_wall_ns();
        uint64_t record;
        int spilling;
        rc = shmq_log_enqueue(h, &args, &record, &spilling);
        if (rc != SHMQ_OK) { /* the claim must still be published: as a message consumers skip */
            shmq_msg_header skip = {.length = 0, .flags = SHMQ_MSG_SKIP};
            write_message(h, lr, pos, &skip, NULL, 0, NULL, 0);
            publish(h, lr, pos, span);
            shmq_log_unpin(h);
            return rc;
        }
        shmq_fault(h, SHMQ_FAULT_LOG_BEFORE_PUSH);
        mh.job_id = record;
        mh.enqueued_ns = args.enqueued_ns;
        if (job_id)
            *job_id = record;
        if (args.unique && h->jobs) /* the key names the job before a consumer can take it (and free the key) */
            shmq_unique_set(h, ((const uint64_t *)args.unique)[0], ((const uint64_t *)args.unique)[1], record);
        if (ref) {
            uint32_t offset = SHMQ_ENQUEUE_FIXED + (args.unique ? SHMQ_UNIQUE_KEY_BYTES : 0);
            shmq_msg_ref r = {.record = record, .offset = offset, .reserved = 0};
            mh.flags |= SHMQ_MSG_REF;
            write_message(h, lr, pos, &mh, (const uint8_t *)&r, sizeof r, NULL, 0);
        } else {
            write_message(h, lr, pos, &mh, first, first_length, second, second_length);
        }
    } else {
        write_message(h, lr, pos, &mh, first, first_length, second, second_length);
    }
    shmq_fault(h, SHMQ_FAULT_PUSH_BEFORE_PUBLISH);
    publish(h, lr, pos, span);
    if (log) {
        shmq_log_unpin(h);
        count_enqueued(h, index, 1);
    }
    /* relaxed: statistics only. */
    atomic_fetch_add_explicit(&lr.header->pushed, 1, memory_order_relaxed);
    wake(&h->header->data_event, &h->header->data_waiters);
    return SHMQ_OK;
}

int shmq_lane_push_message(shmq_handle *h, int lane, const shmq_msg_header *mh, const uint8_t *first,
                           uint32_t first_length, const uint8_t *second, uint32_t second_length,
                           int64_t timeout_ns)
{
    return push_one(h, lane, *mh, first, first_length, second, second_length, timeout_ns, NULL, NULL);
}

/* Pushes a job whose record is already in the log: its payload inline
 * (`payload`), or a reference to (record, offset) when `payload` is NULL. */
int shmq_lane_push_job(shmq_handle *h, int lane, const shmq_msg_header *mh, const uint8_t *payload,
                       uint64_t record, uint32_t offset, int64_t timeout_ns)
{
    if (payload)
        return push_one(h, lane, *mh, payload, mh->length, NULL, 0, timeout_ns, NULL, NULL);
    shmq_msg_header ref_mh = *mh;
    ref_mh.flags |= SHMQ_MSG_REF;
    shmq_msg_ref r = {.record = record, .offset = offset, .reserved = 0};
    return push_one(h, lane, ref_mh, (const uint8_t *)&r, sizeof r, NULL, 0, timeout_ns, NULL, NULL);
}

/* While spilling: the job waits in the log and the feeder moves it. */
static int put_spilled(shmq_handle *h, int lane, shmq_msg_header mh, const uint8_t *first, uint32_t first_length,
                       const uint8_t *second, uint32_t second_length, int64_t timeout_ns,
                       const shmq_enqueue_args *log, uint64_t *job_id)
{
    shmq_enqueue_args args = log ? *log : (shmq_enqueue_args){.tag = mh.tag};
    args.first = first;
    args.first_length = first_length;
    args.second = second;
    args.second_length = second_length;
    if (!args.enqueued_ns)
        args.enqueued_ns = shmq_wall_ns();
    if (lane >= 0)
        args.lane_plus1 = (uint32_t)lane + 1;
    uint64_t record;
    int spilling;
    int rc = shmq_log_enqueue(h, &args, &record, &spilling);
    if (rc != SHMQ_OK)
        return rc;
    if (job_id)
        *job_id = record;
    count_enqueued(h, lane >= 0 ? (uint32_t)lane : 0, 1);
    if (spilling) {
        shmq_backlog_feed(h, 64);
        return SHMQ_OK;
    }
    /* The backlog emptied between our look and our reservation: no one
     * feeds this record, we push it. (A feeder sets the key itself.) */
    mh.job_id = record;
    mh.enqueued_ns = args.enqueued_ns;
    if (args.unique && h->jobs)
        shmq_unique_set(h, ((const uint64_t *)args.unique)[0], ((const uint64_t *)args.unique)[1], record);
    if (mh.length > h->inline_ref_min || (mh.flags & SHMQ_MSG_UNIQUE)) {
        uint32_t offset = SHMQ_ENQUEUE_FIXED + (args.unique ? SHMQ_UNIQUE_KEY_BYTES : 0);
        rc = shmq_lane_push_job(h, lane, &mh, NULL, record, offset, timeout_ns);
    } else {
        rc = push_one(h, lane, mh, first, first_length, second, second_length, timeout_ns, NULL, NULL);
    }
    if (rc != SHMQ_OK) {
        shmq_log_done(h, &record, 1); /* not accepted after all: the record must not come back */
        if (args.unique && h->jobs) /* nor its key */
            shmq_unique_drop(h, ((const uint64_t *)args.unique)[0], ((const uint64_t *)args.unique)[1], record);
    }
    return rc;
}

/* A logged put: into a lane; or into the backlog while spilling, or when
 * the lanes are full and the queue throttles open loop (a put never waits). */
static int push_logged(shmq_handle *h, int lane, shmq_msg_header mh, const uint8_t *first, uint32_t first_length,
                       const uint8_t *second, uint32_t second_length, int64_t timeout_ns,
                       const shmq_enqueue_args *log, uint64_t *job_id)
{
    if (shmq_log_spilling(h))
        return put_spilled(h, lane, mh, first, first_length, second, second_length, timeout_ns, log, job_id);
    if (!shmq_throttle_open(h))
        return push_one(h, lane, mh, first, first_length, second, second_length, timeout_ns, log, job_id);
    int rc = push_one(h, lane, mh, first, first_length, second, second_length, 0, log, job_id);
    if (rc != SHMQ_EFULL)
        return rc;
    shmq_log_spill_begin(h); /* the lanes are full: from here on jobs wait in the log, in order */
    return put_spilled(h, lane, mh, first, first_length, second, second_length, timeout_ns, log, job_id);
}

int shmq_push(shmq_handle *h, int lane, uint8_t tag, uint8_t flags, const char *first, uint32_t first_length,
              const char *second, uint32_t second_length, int64_t timeout_ns)
{
    uint64_t length = (uint64_t)first_length + second_length;
    if (lane >= (int)h->lane_count || (flags & (SHMQ_MSG_REF | SHMQ_MSG_SKIP | SHMQ_MSG_UNIQUE | SHMQ_MSG_UNIQUE_FINISH | SHMQ_MSG_LEASED)))
        return SHMQ_EINVAL; /* those flags are the core's own */
    shmq_msg_header mh = {.length = (uint32_t)length, .tag = tag, .flags = flags, .attempt = 1, .job_id = 0};
    if (!h->log_on) {
        if (length > shmq_inline_max(h))
            return SHMQ_ETOOBIG;
        return push_one(h, lane, mh, (const uint8_t *)first, first_length, (const uint8_t *)second, second_length,
                        timeout_ns, NULL, NULL);
    }
    if (length > h->header->max_message_bytes)
        return SHMQ_ETOOBIG;
    shmq_log_enter(h);
    shmq_enqueue_args args = {.tag = tag};
    int rc = shmq_throttle_admit(h, 1, length, timeout_ns);
    if (rc == SHMQ_OK)
        rc = push_logged(h, lane, mh, (const uint8_t *)first, first_length, (const uint8_t *)second, second_length,
                         timeout_ns, &args, NULL);
    if (rc == SHMQ_OK)
        rc = shmq_log_durable(h, timeout_ns);
    shmq_log_leave(h);
    return rc;
}

int shmq_put(shmq_handle *h, uint8_t tag, const char *data, uint32_t length, int64_t timeout_ns)
{
    return shmq_push(h, -1, tag, 0, data, length, NULL, 0, timeout_ns);
}

/* Writes messages [first, end) into a claimed span (logging each first, if
 * the queue has a log), then publishes the later ones first and the first
 * one last: consumers cannot pass a first slot that is still WRITING, so
 * they never see half a batch. A log failure at message k publishes k and
 * later ones as messages consumers skip, and returns the error with *written = k. */
static int write_batch(shmq_handle *h, lane_ref lane, uint64_t pos, const uint8_t *data, const uint32_t *lengths,
                       const uint8_t *tags, uint8_t tag, uint32_t first, uint32_t end, uint32_t *written)
{
    enum { CHUNK = 64 }; /* records logged with one reservation */
    uint64_t at = pos, job_ids[CHUNK];
    int64_t now = h->log_on ? shmq_wall_ns() : 0;
    int rc = SHMQ_OK;
    *written = end;
    for (uint32_t chunk = first; chunk < end; chunk += CHUNK) {
        uint32_t n = end - chunk < CHUNK ? end - chunk : CHUNK;
        if (h->log_on && rc == SHMQ_OK) {
            rc = shmq_log_enqueue_batch(h, data, lengths + chunk, tags ? tags + chunk : NULL, tag, n, job_ids);
            if (rc != SHMQ_OK)
                *written = chunk;
            else if (chunk == first)
                shmq_fault(h, SHMQ_FAULT_LOG_BEFORE_PUSH);
        }
        for (uint32_t k = 0; k < n; k++) {
            uint32_t i = chunk + k;
            shmq_msg_header mh = {.length = lengths[i], .tag = tags ? tags[i] : tag, .flags = 0, .attempt = 1,
                                  .job_id = h->log_on && rc == SHMQ_OK ? job_ids[k] : 0,
                                  .enqueued_ns = h->log_on ? now : 0};
            if (rc != SHMQ_OK)
                mh.flags = SHMQ_MSG_SKIP; /* not logged: consumers skip it */
            write_message(h, lane, at, &mh, data, rc == SHMQ_OK ? lengths[i] : 0, NULL, 0);
            if (i == first)
                shmq_fault(h, SHMQ_FAULT_PUSH_MID_COPY);
            data += lengths[i];
            at += span_for(h, lengths[i]);
        }
    }
    shmq_fault(h, SHMQ_FAULT_PUSH_BEFORE_PUBLISH);
    at = pos + span_for(h, lengths[first]);
    for (uint32_t i = first + 1; i < end; i++) {
        publish(h, lane, at, span_for(h, lengths[i]));
        at += span_for(h, lengths[i]);
    }
    shmq_fault(h, SHMQ_FAULT_PUSH_MID_PUBLISH);
    publish(h, lane, pos, span_for(h, lengths[first]));
    return rc;
}

static int push_many(shmq_handle *h, int lane, const char *data, const uint32_t *lengths, const char *tags,
                     uint8_t tag, uint32_t count, int64_t timeout_ns, uint32_t *pushed /* OUT */)
{
    uint32_t inline_max = h->log_on ? h->inline_ref_min : shmq_inline_max(h);
    int64_t deadline = 0;
    uint32_t done = 0;
    while (done < count) {
        /* As many whole messages as one claim may cover. */
        uint32_t end = done, span = 0;
        while (end < count && lengths[end] <= inline_max && span + span_for(h, lengths[end]) <= h->max_span)
            span += span_for(h, lengths[end++]);
        if (end == done) {
            if (!h->log_on || lengths[done] > h->header->max_message_bytes)
                return SHMQ_ETOOBIG;
            /* Larger than a lane takes inline: alone, as a reference to its record. */
            shmq_msg_header mh = {.length = lengths[done], .tag = tags ? (uint8_t)tags[done] : tag, .attempt = 1};
            shmq_enqueue_args args = {.tag = mh.tag};
            int rc = push_one(h, lane, mh, (const uint8_t *)data, lengths[done], NULL, 0, timeout_ns, &args, NULL);
            if (rc != SHMQ_OK)
                return rc;
            data += lengths[done++];
            *pushed = done;
            continue;
        }
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
        uint32_t written;
        if (h->log_on)
            shmq_log_pin(h); /* as in push_one */
        rc = write_batch(h, ref, pos, (const uint8_t *)data, lengths, (const uint8_t *)tags, tag, done, end,
                         &written);
        if (h->log_on)
            shmq_log_unpin(h);
        for (uint32_t i = done; i < end; i++)
            data += lengths[i];
        /* relaxed: statistics only. */
        atomic_fetch_add_explicit(&ref.header->pushed, end - done, memory_order_relaxed);
        if (h->log_on)
            count_enqueued(h, index, written - done);
        wake(&h->header->data_event, &h->header->data_waiters);
        *pushed = written;
        if (rc != SHMQ_OK)
            return rc;
        done = end;
    }
    return SHMQ_OK;
}

int shmq_push_many(shmq_handle *h, int lane, const char *data, const uint32_t *lengths, const char *tags,
                   uint8_t tag, uint32_t count, int64_t timeout_ns, uint32_t *pushed /* OUT */)
{
    *pushed = 0;
    if (lane >= (int)h->lane_count)
        return SHMQ_EINVAL;
    if (!h->log_on)
        return push_many(h, lane, data, lengths, tags, tag, count, timeout_ns, pushed);
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < count; i++)
        bytes += lengths[i];
    shmq_log_enter(h);
    int rc = shmq_throttle_admit(h, count, bytes, timeout_ns);
    if (rc == SHMQ_OK && !shmq_log_spilling(h)) {
        rc = push_many(h, lane, data, lengths, tags, tag, count, shmq_throttle_open(h) ? 0 : timeout_ns, pushed);
        if (rc == SHMQ_EFULL && shmq_throttle_open(h))
            shmq_log_spill_begin(h); /* open loop: the rest waits in the log */
    }
    if ((rc == SHMQ_OK || rc == SHMQ_EFULL) && *pushed < count && shmq_log_spilling(h)) {
        /* While spilling every job waits in the log; the feeder moves them. */
        rc = SHMQ_OK;
        for (uint32_t i = 0; i < *pushed; i++)
            data += lengths[i];
        for (uint32_t i = *pushed; i < count && rc == SHMQ_OK; i++) {
            shmq_msg_header mh = {.length = lengths[i], .tag = tags ? (uint8_t)tags[i] : tag, .attempt = 1};
            rc = put_spilled(h, lane, mh, (const uint8_t *)data, lengths[i], NULL, 0, timeout_ns, NULL, NULL);
            if (rc == SHMQ_OK)
                *pushed = i + 1;
            data += lengths[i];
        }
    }
    if (*pushed) {
        int durable = shmq_log_durable(h, timeout_ns);
        if (rc == SHMQ_OK)
            rc = durable;
    }
    shmq_log_leave(h);
    return rc;
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

/* A job with options: a lane (ordered, for a group), a unique key, a time
 * before which it must not run. See shmq_api.h. */
int shmq_enqueue(shmq_handle *h, const shmq_enqueue_options *o, const char *data, uint32_t length,
                 int64_t timeout_ns, uint64_t *job_id /* OUT */)
{
    *job_id = 0;
    if (!h->jobs)
        return SHMQ_ENOLOG;
    if (o->lane >= (int)h->lane_count)
        return SHMQ_EINVAL;
    if (length > h->header->max_message_bytes)
        return SHMQ_ETOOBIG;
    int unique = o->unique_hi || o->unique_lo;
    uint64_t key[2] = {o->unique_hi, o->unique_lo};
    shmq_log_enter(h);
    int rc = SHMQ_OK;
    if (unique) {
        /* Held locks are waited for up to the timeout, but never less than a
         * healthy holder can take (preempted, say): only a stopped one fails us. */
        int64_t lock_ns = timeout_ns < 0 || timeout_ns > SHMQ_STALL_NS ? timeout_ns : SHMQ_STALL_NS;
        rc = shmq_unique_claim_until(h, key[0], key[1], job_id, shmq_deadline(lock_ns));
        if (rc != SHMQ_OK) {
            if (rc == SHMQ_EDUPLICATE) /* relaxed: statistics */
                atomic_fetch_add_explicit(&h->metrics[o->lane >= 0 ? o->lane : 0].deduplicated, 1,
                                          memory_order_relaxed);
            shmq_log_leave(h);
            return rc;
        }
        shmq_fault(h, SHMQ_FAULT_UNIQUE_CLAIMED);
    }
    shmq_enqueue_args args = {.tag = o->tag,
                              .attempt = o->attempt ? o->attempt : 1,
                              .flags = (uint8_t)(unique && o->unique_until_finish ? SHMQ_ENQ_UNIQUE_FINISH : 0),
                              .enqueued_ns = shmq_wall_ns(),
                              .not_before_ns = o->not_before_ns,
                              .lane_plus1 = o->lane >= 0 ? (uint32_t)o->lane + 1 : 0,
                              .unique = unique ? (const uint8_t *)key : NULL};
    uint64_t id = 0;
    rc = shmq_throttle_admit(h, 1, length, timeout_ns);
    if (rc != SHMQ_OK) {
        /* not admitted: nothing written */
    } else if (o->not_before_ns > args.enqueued_ns) {
        rc = shmq_jobs_schedule_new(h, &args, (const uint8_t *)data, length, &id);
    } else {
        shmq_msg_header mh = {.length = length, .tag = o->tag, .attempt = args.attempt};
        if (unique)
            mh.flags = SHMQ_MSG_UNIQUE | (o->unique_until_finish ? SHMQ_MSG_UNIQUE_FINISH : 0);
        rc = push_logged(h, o->lane, mh, (const uint8_t *)data, length, NULL, 0, timeout_ns, &args, &id);
    }
    /* On success the key already names the job: set before the job became
     * visible (push_one, put_spilled, the feeder, shmq_jobs_schedule_new), since
     * a consumer may take it, and free the key, at once. */
    if (unique && rc != SHMQ_OK)
        shmq_unique_drop(h, key[0], key[1], 0); /* our claim: the job was not accepted */
    if (rc == SHMQ_OK) {
        *job_id = id;
        rc = shmq_log_durable(h, timeout_ns);
    }
    shmq_log_leave(h);
    return rc;
}
