/* SPDX-License-Identifier: Apache-2.0 */
/* backlog.c -- the backlog: jobs that wait in the log (SPILLED ENQUEUE
 * records, in log order) while the lanes are full, fed into the lanes by
 * one feeder at a time; redelivery, through the backlog, of a message whose
 * consumer died; and the end of recovery, which feeds the live
 * backlog before it declares the log ready. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static int feeder_take(shmq_handle *h)
{
    uint32_t expected = 0;
    /* acquire: the previous feeder's cursor and pushes are visible to us. */
    if (atomic_compare_exchange_strong_explicit(&h->header->feeder, &expected, h->self, memory_order_acquire,
                                                memory_order_relaxed))
        return 1;
    if (expected != h->self && !shmq_participant_alive(h, expected) &&
        atomic_compare_exchange_strong_explicit(&h->header->feeder, &expected, h->self, memory_order_acquire,
                                                memory_order_relaxed))
        return 1; /* the feeder died; at worst its last record is pushed twice */
    return 0;
}

/* Pushes one ENQUEUE record of the backlog into a lane, now or never:
 * SHMQ_EFULL when the lanes have no room. */
static int feed_record(shmq_handle *h, uint64_t position, const shmq_record_header *rec, uint16_t attempt,
                       int64_t not_before_ns)
{
    const shmq_enqueue_body *body = (const shmq_enqueue_body *)(rec + 1);
    if (h->jobs && not_before_ns > shmq_wall_ns()) /* a delayed job, or a retry's backoff: it waits in the table */
        return shmq_jobs_schedule(h, rec, position, attempt, not_before_ns);
    uint32_t offset = (uint32_t)(sizeof *rec + sizeof *body) + body->group_bytes + body->unique_bytes;
    shmq_msg_header mh = {.length = body->payload_bytes, .tag = body->tag, .flags = 0,
                          .attempt = attempt, .job_id = rec->job_id, .enqueued_ns = body->enqueued_ns};
    int lane = body->lane < h->lane_count ? (int)body->lane : -1;
    if (h->jobs && body->unique_bytes == SHMQ_UNIQUE_KEY_BYTES) {
        /* Its key is held while it waits (recovered jobs take theirs again). */
        uint64_t key[2];
        memcpy(key, (const uint8_t *)(body + 1) + body->group_bytes, sizeof key);
        shmq_unique_set(h, key[0], key[1], rec->job_id);
        mh.flags = SHMQ_MSG_UNIQUE | ((body->flags & SHMQ_ENQ_UNIQUE_FINISH) ? SHMQ_MSG_UNIQUE_FINISH : 0);
    }
    if (body->payload_bytes <= h->inline_ref_min && !(mh.flags & SHMQ_MSG_UNIQUE))
        return shmq_lane_push_job(h, lane, &mh, (const uint8_t *)rec + offset, 0, 0, 0);
    return shmq_lane_push_job(h, lane, &mh, NULL, position, offset, 0);
}

/* Moves up to `budget` backlog jobs into the lanes, in log order; clears
 * SPILL when it catches up with the tail. Returns how many it moved. */
int shmq_backlog_feed(shmq_handle *h, uint32_t budget)
{
    shmq_region_header *hdr = h->header;
    if (!shmq_log_spilling(h) || !feeder_take(h))
        return 0;
    shmq_log_enter(h);
    int fed = 0;
    /* Records skipped (pads, holes, acks) count too, so that one call is
     * bounded even when a stray write threw the tail far ahead of the log. */
    uint64_t steps = 0, max_steps = (uint64_t)budget * 1024u + 1024u;
    for (;;) {
        if (++steps > max_steps)
            break;
        /* acquire: pairs with the cursor's release CAS (the pushes before it)
         * and with reservations (a record below the tail is reserved). */
        uint64_t cursor = atomic_load_explicit(&hdr->feed_cursor, memory_order_acquire);
        uint64_t tail_word = atomic_load_explicit(&hdr->log_tail, memory_order_acquire);
        uint64_t tail = tail_word & ~SHMQ_TAIL_SPILL;
        if (cursor >= tail) {
            if (!(tail_word & SHMQ_TAIL_SPILL))
                break;
            /* acq_rel: clears SPILL only if no one reserved since we read the
             * tail; a later reservation sees no SPILL and pushes itself. */
            if (atomic_compare_exchange_strong_explicit(&hdr->log_tail, &tail_word, tail, memory_order_acq_rel,
                                                        memory_order_relaxed))
                break;
            continue;
        }
        if ((uint32_t)fed >= budget)
            break;
        int err = 0;
        shmq_record_header *rec = shmq_record_at(h, cursor, 0, &err);
        if (!rec)
            break; /* its segment is missing (a disk error left a hole): maintenance reports it */
        if (shmq_segment_cover(h, cursor, 8, 0) != 0) {
            /* Past the file's end: a writer reserved it and could not grow
             * the file (disk full). While the tail is in this segment a later
             * writer grows it (then it is a hole); once past, and after
             * SHMQ_HOLE_WAIT_NS for a writer between its reservation and its
             * growth (as for a hole), nothing will be written there: go on
             * at the next segment. */
            uint64_t end = (cursor / h->segment_bytes + 1) * h->segment_bytes;
            int64_t now = shmq_now_ns();
            if (h->hole_position != cursor) {
                h->hole_position = cursor;
                h->hole_seen_ns = now;
            }
            if (tail < end || now - h->hole_seen_ns < SHMQ_HOLE_WAIT_NS)
                break;
            /* release: as below. */
            atomic_compare_exchange_strong_explicit(&hdr->feed_cursor, &cursor, end, memory_order_release,
                                                    memory_order_relaxed);
            continue;
        }
        /* acquire: pairs with the publish CAS; the body is visible. */
        uint64_t word = atomic_load_explicit(&rec->word, memory_order_acquire);
        unsigned type = shmq_word_type(word);
        if (type == SHMQ_REC_NONE || type == SHMQ_REC_PENDING) {
            if (shmq_log_fill_hole(h, rec, cursor, tail, 0))
                continue;
            break; /* a live writer is still on it */
        }
        uint32_t length = shmq_word_length(word);
        if (length < 8 || length % 8 || cursor % h->segment_bytes + length > h->segment_bytes) {
            /* cannot be: skip to the next segment rather than stop the backlog */
            length = (uint32_t)(h->segment_bytes - cursor % h->segment_bytes);
        } else if (type == SHMQ_REC_ENQUEUE && (((shmq_enqueue_body *)(rec + 1))->flags & SHMQ_ENQ_SPILLED)) {
            const shmq_enqueue_body *body = (const shmq_enqueue_body *)(rec + 1);
            if (feed_record(h, cursor, rec, body->attempt, body->not_before_ns) != SHMQ_OK)
                break; /* lanes full: the rest waits */
            atomic_fetch_add_explicit(&hdr->fed, 1, memory_order_relaxed); /* statistics (qsize) */
            shmq_fault(h, SHMQ_FAULT_FEED_AFTER_PUSH);
            fed++;
        }
        /* release: the push above happens before the cursor passes it. */
        atomic_compare_exchange_strong_explicit(&hdr->feed_cursor, &cursor, cursor + length, memory_order_release,
                                                memory_order_relaxed);
    }
    shmq_log_leave(h);
    /* release: pairs with feeder_take's acquire. */
    atomic_store_explicit(&hdr->feeder, 0, memory_order_release);
    return fed;
}

/* A consumer died holding the message at `pos` of unordered lane `index`
 * (we hold it now; the ring calls this through h->dead_reader): with a
 * log, the job goes back as a copy (attempt + 1) through the backlog, so
 * it runs again; its consumer may or may not have finished it. */
void shmq_backlog_redeliver(shmq_handle *h, uint32_t index, uint64_t pos)
{
    lane_ref lane = lane_at(h, index);
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

int shmq_log_recover(shmq_handle *h, shmq_recovery *report /* OUT */)
{
    shmq_put_back *put_back = NULL;
    uint64_t put_back_count = 0;
    int status = shmq_log_recover_records(h, report, &put_back, &put_back_count);
    int64_t started = shmq_now_ns();
    /* Recovered in place: the live jobs go into the lanes (or the job table)
     * from their records where they lie, in the order they were enqueued. */
    shmq_log_enter(h);
    for (uint64_t i = 0; i < put_back_count && status == SHMQ_OK; i++) {
        int err = 0;
        shmq_record_header *rec = shmq_record_at(h, put_back[i].position, 0, &err);
        if (!rec)
            status = shmq_log_fail(h, err);
        else if (feed_record(h, put_back[i].position, rec, put_back[i].attempt, put_back[i].not_before_ns) != SHMQ_OK)
            status = shmq_log_fail(h, ENOSPC); /* no room in the lanes, none on disk for the backlog */
    }
    shmq_log_leave(h);
    free(put_back);
    if (status != SHMQ_OK)
        return status;
    if (report->live)
        shmq_backlog_feed(h, UINT32_MAX);
    /* release: everything recovery wrote is visible to whoever sees READY. */
    atomic_fetch_or_explicit(&h->header->log_flags, SHMQ_LOG_READY, memory_order_release);
    report->elapsed_ns += shmq_now_ns() - started;
    return status;
}
