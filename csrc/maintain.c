/* SPDX-License-Identifier: Apache-2.0 */
/* maintain.c -- the maintenance pass and what it composes: the log's
 * upkeep, redelivery of dead consumers' messages, the backlog, the jobs'
 * tick, and retention (the low-water mark from lanes, pins, the backlog
 * and the job table; checkpoints that copy the few live jobs pinning old
 * segments to the tail); and the snapshot at a clean shutdown. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops.h"

static const int64_t RETAIN_EVERY_NS = 500 * 1000 * 1000;
static const int64_t REDELIVER_EVERY_NS = 200 * 1000 * 1000;

static int maintainer_take(shmq_handle *h)
{
    uint32_t expected = 0;
    /* acquire: the previous maintainer's work is visible to us. */
    if (atomic_compare_exchange_strong_explicit(&h->header->maintainer, &expected, h->self, memory_order_acquire,
                                                memory_order_relaxed))
        return 1;
    return expected != h->self && !shmq_participant_alive(h, expected) &&
           atomic_compare_exchange_strong_explicit(&h->header->maintainer, &expected, h->self,
                                                   memory_order_acquire, memory_order_relaxed);
}

static void maintainer_give(shmq_handle *h)
{
    /* release: pairs with maintainer_take's acquire. */
    atomic_store_explicit(&h->header->maintainer, 0, memory_order_release);
}

/* A message in a lane, as retention sees it. */
typedef struct lane_job {
    uint64_t job_id;
    uint64_t needs;     /* the lowest log position it needs */
    int ref;            /* its payload is in the log */
} lane_job;

/* Reads the message whose first slot state is `state` at slot `i` of a lane,
 * if it is one (READY, or READING: being taken). A torn read only yields an
 * older job's values, which are safe to keep (see the checkpoint). */
static int lane_job_at(const shmq_handle *h, lane_ref lane, uint64_t i, uint64_t state, lane_job *out)
{
    unsigned kind = shmq_state_kind(state);
    if (kind != SHMQ_SLOT_READY && kind != SHMQ_SLOT_READING)
        return 0;
    const shmq_msg_header *mh = (const shmq_msg_header *)(lane.data + i * h->slot_bytes);
    if (mh->flags & SHMQ_MSG_SKIP || mh->job_id == 0)
        return 0;
    out->job_id = mh->job_id;
    out->ref = (mh->flags & SHMQ_MSG_REF) != 0;
    out->needs = mh->job_id;
    if (out->ref) {
        shmq_msg_ref ref;
        memcpy(&ref, (const uint8_t *)mh + SHMQ_MSG_HEADER_BYTES, sizeof ref);
        out->needs = ref.record;
    }
    return 1;
}

/* The lowest position any live job needs, and (for a checkpoint) how many
 * inline lane messages below `target` there are and their bytes. */
static uint64_t low_water(shmq_handle *h, uint64_t target, uint64_t *below, uint64_t *below_bytes)
{
    shmq_region_header *hdr = h->header;
    /* seq_cst: the tail first, then the pins (see shmq_log_pin). */
    uint64_t tail_word = atomic_load_explicit(&hdr->log_tail, memory_order_seq_cst);
    uint64_t low = tail_word & ~SHMQ_TAIL_SPILL;
    for (unsigned i = 1; i < h->participant_capacity; i++) {
        uint64_t pin = atomic_load_explicit(&h->participants[i].pin, memory_order_seq_cst);
        if (!pin)
            continue;
        if (!shmq_participant_alive(h, i)) {
            /* relaxed: a dead process's pin; its records are in the lanes or not at all. */
            atomic_compare_exchange_strong_explicit(&h->participants[i].pin, &pin, 0, memory_order_relaxed,
                                                    memory_order_relaxed);
            continue;
        }
        if (pin - 1 < low)
            low = pin - 1;
    }
    if (tail_word & SHMQ_TAIL_SPILL) {
        /* acquire: pairs with the feeder's release of the cursor. */
        uint64_t cursor = atomic_load_explicit(&hdr->feed_cursor, memory_order_acquire);
        if (cursor < low)
            low = cursor;
    }
    /* acquire: pairs with checkpoint()'s release of the floor; begin was stored before it. */
    uint64_t floor = atomic_load_explicit(&hdr->checkpoint_floor, memory_order_acquire);
    uint64_t copies = atomic_load_explicit(&hdr->checkpoint_begin, memory_order_relaxed);
    *below = *below_bytes = 0;
    uint64_t slots = h->slot_mask + 1;
    for (uint32_t index = 0; index < h->lane_count; index++) {
        lane_ref lane = lane_at(h, index);
        for (uint64_t i = 0; i < slots; i++) {
            /* acquire: pairs with publish(); the header was written before. */
            uint64_t state = atomic_load_explicit(&lane.states[i], memory_order_acquire);
            lane_job job;
            if (!lane_job_at(h, lane, i, state, &job))
                continue;
            if (!job.ref && job.job_id < floor)
                job.needs = copies; /* its latest copy is from the last checkpoint (or the snapshot) */
            if (job.needs < low)
                low = job.needs;
            if (!job.ref && job.job_id < target) {
                (*below)++;
                *below_bytes += ((const shmq_msg_header *)(lane.data + i * h->slot_bytes))->length + 64u;
            }
        }
    }
    return shmq_jobs_low_water(h, low); /* jobs out of the lanes: leased, or waiting for a time */
}

/* Copies the inline lane messages with ids below `target` to the tail,
 * between CHECKPOINT markers; then the floor rises to `target`. */
static int checkpoint(shmq_handle *h, uint64_t target)
{
    shmq_region_header *hdr = h->header;
    shmq_checkpoint_body mark = {0};
    part parts[1] = {{&mark, sizeof mark}};
    uint64_t begin, position;
    int spilling;
    int rc = shmq_log_append(h, SHMQ_REC_CHECKPOINT_BEGIN, 0, parts, 1, &begin, &spilling);
    uint64_t copies = 0;
    uint64_t slots = h->slot_mask + 1;
    for (uint32_t index = 0; index < h->lane_count && rc == SHMQ_OK; index++) {
        lane_ref lane = lane_at(h, index);
        for (uint64_t i = 0; i < slots && rc == SHMQ_OK; i++) {
            /* acquire: pairs with publish(); see lane_job_at for torn reads. */
            uint64_t state = atomic_load_explicit(&lane.states[i], memory_order_acquire);
            lane_job job;
            /* Every inline job below the target, also ones copied before:
             * their older copies may lie below the target too. */
            if (!lane_job_at(h, lane, i, state, &job) || job.ref || job.job_id >= target)
                continue;
            /* A copy of what the slot holds now. If a consumer takes the job
             * meanwhile, its DONE comes after our BEGIN and cancels this copy
             * at recovery; a copy never replaces an original that exists. */
            const shmq_msg_header *mh = (const shmq_msg_header *)(lane.data + i * h->slot_bytes);
            uint64_t at = i * h->slot_bytes + SHMQ_MSG_HEADER_BYTES;
            uint32_t length = mh->length;
            if (length > h->ring_bytes)
                continue;
            uint32_t first = length < h->ring_bytes - at ? length : (uint32_t)(h->ring_bytes - at);
            shmq_enqueue_args args = {.job_id = job.job_id, .attempt = mh->attempt, .tag = mh->tag,
                                      .flags = SHMQ_ENQ_COPY | SHMQ_ENQ_LANED, .enqueued_ns = mh->enqueued_ns,
                                      .lane_plus1 = shmq_lane_ordered(h, index) ? index + 1 : 0, /* a group's lane */
                                      .first = lane.data + at, .first_length = first, .second = lane.data,
                                      .second_length = length - first};
            rc = shmq_log_enqueue(h, &args, &position, &spilling);
            copies++;
            if (copies == 1)
                shmq_fault(h, SHMQ_FAULT_CHECKPOINT_MID);
        }
    }
    if (rc == SHMQ_OK)
        rc = shmq_jobs_checkpoint(h, target, &copies); /* jobs waiting for a time, in the table */
    if (rc == SHMQ_OK) {
        mark = (shmq_checkpoint_body){.floor = target, .begin = begin, .count = copies, .reserved = 0};
        rc = shmq_log_append(h, SHMQ_REC_CHECKPOINT_END, 0, parts, 1, &position, &spilling);
    }
    if (rc == SHMQ_OK && h->durability >= SHMQ_DURABILITY_OS)
        rc = shmq_log_sync(h); /* the copies are on disk before their originals may go */
    if (rc == SHMQ_OK) {
        atomic_store_explicit(&hdr->checkpoint_begin, begin, memory_order_relaxed); /* published by the release below */
        /* release: the copies and their begin are visible before anyone
         * deletes below the floor. */
        atomic_store_explicit(&hdr->checkpoint_floor, target, memory_order_release);
        atomic_fetch_add_explicit(&hdr->checkpoints, 1, memory_order_relaxed); /* statistics */
    }
    return rc;
}

static int retain(shmq_handle *h)
{
    uint64_t S = h->segment_bytes;
    /* relaxed: where a checkpoint would cut; low_water reads the tail properly. */
    uint64_t tail = atomic_load_explicit(&h->header->log_tail, memory_order_relaxed) & ~SHMQ_TAIL_SPILL;
    uint64_t target = tail / S > 0 ? (tail / S - 1) * S : 0; /* keep the last full segment and the current one */
    uint64_t below, below_bytes;
    uint64_t low = low_water(h, target, &below, &below_bytes);
    shmq_log_delete_below(h, low);
    int rc = SHMQ_OK;
    /* Few live jobs pin segments before `target`: copy them forward. */
    if (target > 0 && low < target && below_bytes + shmq_jobs_below(h, target) <= S / 4) {
        rc = checkpoint(h, target);
        if (rc == SHMQ_OK)
            shmq_log_delete_below(h, low_water(h, target, &below, &below_bytes));
    }
    return rc;
}

int shmq_log_maintain(shmq_handle *h)
{
    if (!h->log_on)
        return SHMQ_OK;
    shmq_log_ack_flush(h);
    shmq_log_enter(h);
    shmq_region_header *hdr = h->header;
    int rc = shmq_log_upkeep(h);
    shmq_unique_settle(h); /* unique-key changes whose writers found the table's lock held */
    int64_t now = shmq_now_ns();
    if (maintainer_take(h)) {
        /* relaxed: a time stamp; the maintainer role orders the work. */
        if (now - atomic_load_explicit(&hdr->maintained_ns, memory_order_relaxed) >= REDELIVER_EVERY_NS) {
            atomic_store_explicit(&hdr->maintained_ns, now, memory_order_relaxed); /* a time stamp only */
            shmq_lane_redeliver_dead(h);
        }
        shmq_backlog_feed(h, 4096);
        shmq_jobs_tick(h); /* leases of dead or hung consumers; due jobs into the lanes */
        if (now - h->last_retention_ns >= RETAIN_EVERY_NS) {
            h->last_retention_ns = now;
            int retained = retain(h);
            if (rc == SHMQ_OK)
                rc = retained;
        }
        maintainer_give(h);
    } else {
        shmq_backlog_feed(h, 4096);
    }
    shmq_log_leave(h);
    shmq_log_retire_below_base(h);
    return rc;
}

/* ------------------------------------------------------------ snapshot */

/* At a clean shutdown (the caller is the last handle, holding the queue's
 * lock): writes every live job to `snapshot`, then deletes the segments
 * (but those whose records lane messages still refer to), so the next
 * start reads one file. Skipped while jobs wait in the log. */
int shmq_log_snapshot(shmq_handle *h)
{
    if (!h->log_on || shmq_log_spilling(h))
        return SHMQ_OK;
    if (h->jobs && (shmq_jobs_live(h) || shmq_jobs_cancels_pending(h)))
        return SHMQ_OK; /* jobs wait in the table (scheduled, or to run again), or cancelled ones in the
                         * lanes (their DEAD records are in the log): the log keeps them */
    shmq_log_ack_flush(h); /* before the segments go: a DONE after the snapshot would only be noise */
    shmq_region_header *hdr = h->header;
    uint64_t S = h->segment_bytes;
    uint64_t slots = h->slot_mask + 1;
    uint64_t records_bytes = 0, jobs = 0, keep = UINT64_MAX;
    for (uint32_t index = 0; index < h->lane_count; index++) {
        lane_ref lane = lane_at(h, index);
        for (uint64_t i = 0; i < slots; i++) {
            lane_job job;
            /* acquire: pairs with publish(); the last handle: states are still. */
            if (!lane_job_at(h, lane, i, atomic_load_explicit(&lane.states[i], memory_order_acquire), &job))
                continue;
            if (job.ref && job.needs < keep)
                keep = job.needs; /* the lane still reads this record: its segment stays */
            const shmq_msg_header *mh = (const shmq_msg_header *)(lane.data + i * h->slot_bytes);
            uint32_t keyed = job.ref && (mh->flags & SHMQ_MSG_UNIQUE) ? SHMQ_UNIQUE_KEY_BYTES : 0;
            records_bytes += (SHMQ_ENQUEUE_FIXED + keyed + mh->length + 7) & ~7ull;
            jobs++;
        }
    }
    /* acquire: every record reserved so far lies below it (we are the last handle). */
    uint64_t tail = atomic_load_explicit(&hdr->log_tail, memory_order_acquire) & ~SHMQ_TAIL_SPILL;
    uint64_t covered = (tail + S - 1) / S * S; /* the next log starts in a fresh segment */
    /* One writer (the last handle, under the queue's lock): a snapshot.tmp
     * left by a crash is removed, and the new one made with O_EXCL, so no
     * file or link found there is ever written through. */
    unlinkat(h->log_dirfd, "snapshot.tmp", 0);
    int fd = openat(h->log_dirfd, "snapshot.tmp", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return shmq_log_fail(h, errno);
    int err = fchmod(fd, 0600) == 0 ? 0 : errno;
    shmq_segment_header sh;
    shmq_segment_header_fill(&sh, SHMQ_SNAPSHOT_MAGIC, records_bytes, jobs, covered, h->durability); /* index: its job count */
    uint8_t page[SHMQ_SEGMENT_HEADER_BYTES] = {0};
    memcpy(page, &sh, sizeof sh);
    if (!err && write(fd, page, sizeof page) != (ssize_t)sizeof page)
        err = errno ? errno : EIO;
    /* Records, numbered by their offset in the snapshot. */
    uint8_t *buffer = NULL;
    size_t buffer_size = 0;
    uint64_t offset = 0;
    for (uint32_t index = 0; index < h->lane_count && !err; index++) {
        lane_ref lane = lane_at(h, index);
        for (uint64_t i = 0; i < slots && !err; i++) {
            lane_job job;
            /* acquire: pairs with publish(); the last handle: states are still. */
            if (!lane_job_at(h, lane, i, atomic_load_explicit(&lane.states[i], memory_order_acquire), &job))
                continue;
            const shmq_msg_header *mh = (const shmq_msg_header *)(lane.data + i * h->slot_bytes);
            uint32_t keyed = job.ref && (mh->flags & SHMQ_MSG_UNIQUE) ? SHMQ_UNIQUE_KEY_BYTES : 0;
            uint32_t length = (uint32_t)((SHMQ_ENQUEUE_FIXED + keyed + mh->length + 7) & ~7ull);
            if (length > buffer_size) {
                uint8_t *grown = realloc(buffer, length);
                if (!grown) {
                    err = ENOMEM;
                    break;
                }
                buffer = grown;
                buffer_size = length;
            }
            memset(buffer, 0, length);
            shmq_record_header *rec = (shmq_record_header *)buffer;
            shmq_enqueue_body *body = (shmq_enqueue_body *)(rec + 1);
            body->enqueued_ns = mh->enqueued_ns;
            body->lane = shmq_lane_ordered(h, index) ? index : UINT32_MAX; /* a group's jobs keep their lane */
            body->attempt = mh->attempt;
            body->tag = mh->tag;
            body->flags = SHMQ_ENQ_COPY;
            body->payload_bytes = mh->length;
            /* relaxed: read again just above with acquire; only its lap is needed. */
            uint64_t pos = ((uint64_t)shmq_state_lap(atomic_load_explicit(&lane.states[i], memory_order_relaxed))
                            << h->slot_shift) | i;
            uint8_t *payload = (uint8_t *)(body + 1);
            if (job.ref) { /* the payload, from the record the lane refers to */
                shmq_msg_ref ref;
                ring_read(h, lane, pos, SHMQ_MSG_HEADER_BYTES, &ref, sizeof ref);
                shmq_log_enter(h);
                int rc = SHMQ_OK;
                if (keyed) {
                    /* the unique key stays held after a restart */
                    rc = shmq_log_read_payload(h, ref.record, ref.offset - SHMQ_UNIQUE_KEY_BYTES, payload,
                                               SHMQ_UNIQUE_KEY_BYTES);
                    body->unique_bytes = SHMQ_UNIQUE_KEY_BYTES;
                    if (mh->flags & SHMQ_MSG_UNIQUE_FINISH)
                        body->flags |= SHMQ_ENQ_UNIQUE_FINISH;
                    payload += SHMQ_UNIQUE_KEY_BYTES;
                }
                if (rc == SHMQ_OK)
                    rc = shmq_log_read_payload(h, ref.record, ref.offset, payload, mh->length);
                shmq_log_leave(h);
                if (rc != SHMQ_OK) {
                    err = errno ? errno : EIO;
                    break;
                }
            } else {
                ring_read(h, lane, pos, SHMQ_MSG_HEADER_BYTES, payload, mh->length);
            }
            rec->body_bytes = (uint32_t)sizeof *body + body->unique_bytes + mh->length;
            rec->seq = offset;
            rec->job_id = mh->job_id;
            uint64_t word = shmq_record_word(length, SHMQ_REC_ENQUEUE, 0);
            atomic_store_explicit(&rec->word, word, memory_order_relaxed); /* a private buffer */
            rec->crc = shmq_record_crc(rec, word);
            if (write(fd, buffer, length) != (ssize_t)length)
                err = errno ? errno : EIO;
            offset += length;
        }
    }
    free(buffer);
    if (!err && h->durability >= SHMQ_DURABILITY_OS && fdatasync(fd) != 0)
        err = errno;
    close(fd);
    if (!err && renameat(h->log_dirfd, "snapshot.tmp", h->log_dirfd, "snapshot") != 0)
        err = errno;
    if (err) {
        unlinkat(h->log_dirfd, "snapshot.tmp", 0);
        return shmq_log_fail(h, err);
    }
    if (h->durability >= SHMQ_DURABILITY_OS)
        fsync(h->log_dirfd);
    /* The snapshot holds every live job: the log restarts after it. relaxed:
     * we are the last handle, and hold the queue's lock. */
    atomic_store_explicit(&hdr->log_tail, covered, memory_order_relaxed);
    atomic_store_explicit(&hdr->feed_cursor, covered, memory_order_relaxed);
    atomic_store_explicit(&hdr->flushed_tail, covered, memory_order_relaxed);
    atomic_store_explicit(&hdr->checkpoint_begin, covered, memory_order_relaxed); /* the copies are in the snapshot */
    atomic_store_explicit(&hdr->checkpoint_floor, covered, memory_order_relaxed);
    shmq_log_delete_below(h, keep < covered ? keep : covered);
    return SHMQ_OK;
}
