/* SPDX-License-Identifier: Apache-2.0 */
/* put.c -- the producer's calls: put, push, push_many, enqueue. A logged
 * job's ENQUEUE record is written while its lane claim is held, so a put
 * that times out waiting for room has written nothing; while jobs wait in
 * the log (the backlog), new ones join them there, in order. */
#define _GNU_SOURCE
#include <stdlib.h>

#include "ops.h"

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
    int rc = shmq_lane_claim_wait(h, lane, &span, NULL, timeout_ns, &deadline, &index, &pos);
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
            shmq_lane_write_message(h, lr, pos, &skip, NULL, 0, NULL, 0);
            shmq_lane_publish(h, lr, pos, span);
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
            shmq_lane_write_message(h, lr, pos, &mh, (const uint8_t *)&r, sizeof r, NULL, 0);
        } else {
            shmq_lane_write_message(h, lr, pos, &mh, first, first_length, second, second_length);
        }
    } else {
        shmq_lane_write_message(h, lr, pos, &mh, first, first_length, second, second_length);
    }
    shmq_fault(h, SHMQ_FAULT_PUSH_BEFORE_PUBLISH);
    shmq_lane_publish(h, lr, pos, span);
    if (log) {
        shmq_log_unpin(h);
        count_enqueued(h, index, 1);
    }
    /* relaxed: statistics only. */
    atomic_fetch_add_explicit(&lr.header->pushed, 1, memory_order_relaxed);
    wake(&h->header->data_event, &h->header->data_waiters);
    return SHMQ_OK;
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
            shmq_lane_write_message(h, lane, at, &mh, data, rc == SHMQ_OK ? lengths[i] : 0, NULL, 0);
            if (i == first)
                shmq_fault(h, SHMQ_FAULT_PUSH_MID_COPY);
            data += lengths[i];
            at += span_for(h, lengths[i]);
        }
    }
    shmq_fault(h, SHMQ_FAULT_PUSH_BEFORE_PUBLISH);
    at = pos + span_for(h, lengths[first]);
    for (uint32_t i = first + 1; i < end; i++) {
        shmq_lane_publish(h, lane, at, span_for(h, lengths[i]));
        at += span_for(h, lengths[i]);
    }
    shmq_fault(h, SHMQ_FAULT_PUSH_MID_PUBLISH);
    shmq_lane_publish(h, lane, pos, span_for(h, lengths[first]));
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
        int rc = shmq_lane_claim_wait(h, lane, &span, &fit, timeout_ns, &deadline, &index, &pos);
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
        if (o->task)
            shmq_task_enqueued(h, (int)o->task - 1, 1); /* accepted: counted under its task */
        rc = shmq_log_durable(h, timeout_ns);
    }
    shmq_log_leave(h);
    return rc;
}
