/* SPDX-License-Identifier: Apache-2.0 */
/* log.c -- the write-ahead log while a queue runs: segment files, appending
 * from many processes at once, holes, and the SPILL bit by which jobs wait
 * in the log (the backlog; backlog.c feeds them into the lanes). The format
 * is specified in layout.h ("The log"); segment files are in
 * log_segment.c, flushing in log_flush.c, recovery and retention in
 * log_recover.c and log_retain.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"

/* ------------------------------------------------------------ helpers */

int shmq_log_fail(shmq_handle *h, int err)
{
    /* relaxed: a diagnostic value only. */
    atomic_store_explicit(&h->header->log_errno, err ? err : EIO, memory_order_relaxed);
    errno = err ? err : EIO;
    return SHMQ_ELOG;
}

uint32_t shmq_record_crc(const shmq_record_header *rec, uint64_t word)
{
    uint32_t length = shmq_word_length(word);
    uint32_t crc = shmq_crc32c(0, (const uint8_t *)rec + 12, length - 12);
    return shmq_crc32c(crc, &word, sizeof word);
}

uint32_t shmq_crc32c_value(const char *data, uint32_t length) { return shmq_crc32c(0, data, length); }

/* Threads of this process inside log code: a mapping may be unmapped only
 * while none is. seq_cst: pairs with the seq_cst clear of a slot's base and
 * load of `inside` in shmq_log_unmap_retired; one side sees the other. */
void shmq_log_enter(shmq_handle *h) { atomic_fetch_add_explicit(&h->inside, 1, memory_order_seq_cst); }
void shmq_log_leave(shmq_handle *h) { atomic_fetch_sub_explicit(&h->inside, 1, memory_order_seq_cst); }

/* ------------------------------------------------------------ opening */

static int log_open(shmq_handle *h, const char *dir);

int shmq_log_open(shmq_handle *h, const char *dir)
{
    if (h->log_on)
        return SHMQ_OK;
    if (h->header->durability == SHMQ_DURABILITY_NONE)
        return SHMQ_EINVAL;
    return log_open(h, dir);
}

/* Attaching to a region whose creator died during recovery: EUNINIT (the
 * caller removes it and creates it again, which recovers from the start). */
int shmq_log_attach(shmq_handle *h, const char *dir)
{
    /* acquire: pairs with the release that set READY at the end of recovery. */
    if (!(atomic_load_explicit(&h->header->log_flags, memory_order_acquire) & SHMQ_LOG_READY))
        return SHMQ_EUNINIT;
    return shmq_log_open(h, dir);
}

static int log_open(shmq_handle *h, const char *dir)
{
    h->durability = h->header->durability;
    h->segment_bytes = h->header->segment_bytes;
    h->segments = calloc(SHMQ_SEGMENT_SLOTS, sizeof *h->segments);
    h->log_dir = strdup(dir);
    if (!h->segments || !h->log_dir) {
        free(h->segments);
        free(h->log_dir);
        h->segments = NULL;
        h->log_dir = NULL;
        errno = ENOMEM;
        return SHMQ_ESYS;
    }
    /* No link followed; the directory must be ours and closed to writers
     * other than us (README "Safety"), else nothing of it is used. */
    h->log_dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    int trusted = h->log_dirfd < 0 ? SHMQ_ELOG : shmq_fd_trusted(h->log_dirfd);
    if (trusted != SHMQ_OK) {
        int saved = trusted == SHMQ_EUNTRUSTED ? EPERM : errno;
        if (h->log_dirfd >= 0)
            close(h->log_dirfd);
        free(h->segments);
        free(h->log_dir);
        h->segments = NULL;
        h->log_dir = NULL;
        errno = saved;
        return trusted == SHMQ_EUNTRUSTED ? SHMQ_EUNTRUSTED : SHMQ_ELOG;
    }
    pthread_mutex_init(&h->segment_lock, NULL);
    /* Small payloads travel inline (one more copy, into the lane; consumers
     * never touch the log); larger ones as a reference to their record.
     * Measured (bench_durability.py, 1 producer / 1 consumer, durability os):
     * 64 B inline 1.65 M vs by reference 1.62 M msgs/s; 1 KiB inline 0.58 M
     * vs by reference 0.83 M. */
    h->inline_ref_min = SHMQ_INLINE_PAYLOAD_MAX < shmq_inline_max(h) ? SHMQ_INLINE_PAYLOAD_MAX : shmq_inline_max(h);
    h->log_on = 1;
    return SHMQ_OK;
}

void shmq_log_close(shmq_handle *h)
{
    if (!h->log_on)
        return;
    shmq_log_ack_flush(h);
    for (uint32_t i = 0; i < SHMQ_SEGMENT_SLOTS; i++) {
        /* relaxed: closing; no other thread uses this handle any more. */
        uint8_t *base = atomic_load_explicit(&h->segments[i].base, memory_order_relaxed);
        if (base) {
            munmap(base, SHMQ_SEGMENT_HEADER_BYTES + h->segment_bytes);
            close(h->segments[i].fd);
        }
    }
    for (uint32_t i = 0; i < h->retired_count; i++) {
        munmap(h->retired[i].base, SHMQ_SEGMENT_HEADER_BYTES + h->segment_bytes);
        close(h->retired[i].fd);
    }
    free(h->retired);
    free(h->segments);
    free(h->log_dir);
    close(h->log_dirfd);
    pthread_mutex_destroy(&h->segment_lock);
    h->log_on = 0;
}


/* ------------------------------------------------------------ appending */

/* Writes a PAD over [position, position + length) that we reserved. */
static void write_pad(shmq_handle *h, shmq_record_header *rec, uint64_t position, uint32_t length)
{
    uint64_t expected = 0;
    uint64_t pending = shmq_record_word(length, SHMQ_REC_PENDING, h->self);
    /* relaxed: only claims the word; a failure means a filler voided it: a pad already. */
    if (!atomic_compare_exchange_strong_explicit(&rec->word, &expected, pending, memory_order_relaxed,
                                                 memory_order_relaxed))
        return;
    uint64_t word = shmq_record_word(length, SHMQ_REC_PAD, 0);
    if (length >= sizeof *rec) {
        rec->crc = 0;
        rec->body_bytes = length - (uint32_t)sizeof *rec;
        rec->seq = position;
        rec->job_id = 0;
        memset(rec + 1, 0, length - sizeof *rec);
        rec->crc = shmq_record_crc(rec, word);
    }
    /* release: the fields above are visible with the type; pairs with readers' acquire. */
    atomic_compare_exchange_strong_explicit(&rec->word, &pending, word, memory_order_release, memory_order_relaxed);
}

/* Checks that the blocks a record of `length` at the tail needs are
 * allocated (segments made, files grown), so a full disk fails the append
 * before any space is reserved. */
static int room_ahead(shmq_handle *h, uint32_t length)
{
    uint64_t S = h->segment_bytes;
    /* relaxed: an estimate; the reservation below is what counts. */
    uint64_t tail = atomic_load_explicit(&h->header->log_tail, memory_order_relaxed) & ~SHMQ_TAIL_SPILL;
    uint64_t first = tail / S, last = (tail + length) / S;
    for (uint64_t index = first; index <= last; index++) {
        int err = 0;
        if (!shmq_segment_map(h, index, 1, &err))
            return shmq_log_fail(h, err);
        uint64_t from = index == first ? tail : index * S;
        uint64_t to = tail + length < (index + 1) * S ? tail + length : (index + 1) * S;
        if (to > from && (err = shmq_segment_cover(h, from, to - from, 1)) != 0)
            return shmq_log_fail(h, err);
    }
    return SHMQ_OK;
}

/* Reserves `length` bytes (a multiple of 8, at most a segment). */
int shmq_log_reserve(shmq_handle *h, uint32_t length, uint64_t *position, shmq_record_header **out, int *spilling)
{
    uint64_t S = h->segment_bytes;
    int rc = room_ahead(h, length);
    if (rc != SHMQ_OK)
        return rc;
    for (;;) {
        /* acq_rel: the reservation. acquire pairs with the feeder's release
         * when it clears SPILL (the records it fed happen before); release
         * orders our pin store (seq_cst, before) for maintenance readers. */
        uint64_t tail = atomic_fetch_add_explicit(&h->header->log_tail, length, memory_order_acq_rel);
        uint64_t p = tail & ~SHMQ_TAIL_SPILL;
        uint64_t offset = p % S;
        int err = 0;
        shmq_record_header *rec = shmq_record_at(h, p, 1, &err);
        /* Another writer may have reserved past room_ahead's estimate: the
         * file is grown before a byte is written. On failure the space stays
         * a hole (past the file's end, perhaps); fillers skip it. */
        if (rec && (err = shmq_segment_cover(h, p, offset + length <= S ? length : S - offset, 1)) != 0)
            rec = NULL;
        if (!rec)
            return shmq_log_fail(h, err);
        if (offset + length <= S) {
            *position = p;
            *out = rec;
            *spilling = (tail & SHMQ_TAIL_SPILL) != 0;
            return SHMQ_OK;
        }
        /* Across a segment end: pad both pieces, reserve again. */
        write_pad(h, rec, p, (uint32_t)(S - offset));
        uint64_t next = (p / S + 1) * S;
        shmq_record_header *second = shmq_record_at(h, next, 1, &err);
        if (second && (err = shmq_segment_cover(h, next, p + length - next, 1)) != 0)
            second = NULL;
        if (!second)
            return shmq_log_fail(h, err);
        write_pad(h, second, next, (uint32_t)(p + length - next));
    }
}

/* Appends one record: reserve, claim, write, publish (layout.h, "Appending"). */
int shmq_log_append(shmq_handle *h, unsigned type, uint64_t job_id, const part *parts, unsigned count,
                    uint64_t *position, int *spilling)
{
    uint64_t body = 0;
    for (unsigned i = 0; i < count; i++)
        body += parts[i].length;
    uint64_t length64 = (sizeof(shmq_record_header) + body + SHMQ_RECORD_ALIGN - 1) & ~(uint64_t)(SHMQ_RECORD_ALIGN - 1);
    if (length64 > h->segment_bytes)
        return SHMQ_ELOGSIZE;
    uint32_t length = (uint32_t)length64;
    for (;;) {
        uint64_t p = 0;
        shmq_record_header *rec = NULL;
        int rc = shmq_log_reserve(h, length, &p, &rec, spilling);
        if (rc != SHMQ_OK)
            return rc;
        shmq_fault(h, SHMQ_FAULT_LOG_AFTER_RESERVE);
        uint64_t expected = 0, pending = shmq_record_word(length, SHMQ_REC_PENDING, h->self);
        /* relaxed: claims the word against hole fillers; the data is ordered by the publish below. */
        if (!atomic_compare_exchange_strong_explicit(&rec->word, &expected, pending, memory_order_relaxed,
                                                     memory_order_relaxed))
            continue; /* voided by a filler: write it further on */
        rec->crc = 0;
        rec->body_bytes = (uint32_t)body;
        rec->seq = p;
        rec->job_id = job_id || type != SHMQ_REC_ENQUEUE ? job_id : p; /* a new job's id is its position */
        uint8_t *at = (uint8_t *)(rec + 1);
        for (unsigned i = 0; i < count; i++) {
            if (parts[i].length)
                memcpy(at, parts[i].data, parts[i].length);
            at += parts[i].length;
            if (i == 0)
                shmq_fault(h, SHMQ_FAULT_LOG_MID_RECORD);
        }
        memset(at, 0, length - sizeof *rec - body);
        int counted = 0;
        if (type == SHMQ_REC_ENQUEUE && *spilling) {
            /* The feeder moves it iff it was written while spilling by a
             * writer that does not push it itself (SHMQ_ENQ_LANED). */
            shmq_enqueue_body *eb = (shmq_enqueue_body *)(rec + 1);
            if (!(eb->flags & SHMQ_ENQ_LANED)) {
                eb->flags |= SHMQ_ENQ_SPILLED;
                atomic_fetch_add_explicit(&h->header->spilled, 1, memory_order_relaxed); /* statistics (qsize) */
                counted = 1;
            }
        }
        uint64_t word = shmq_record_word(length, type, 0);
        rec->crc = shmq_record_crc(rec, word);
        /* release: the record is visible to whoever sees its type; pairs with
         * the acquire loads of the word by the feeder and maintenance. */
        if (!atomic_compare_exchange_strong_explicit(&rec->word, &pending, word, memory_order_release,
                                                     memory_order_relaxed)) {
            /* Voided while we wrote (we were dead or stalled to a filler): our
             * bytes lie under a PAD, never fed; counted again further on. */
            if (counted)
                atomic_fetch_sub_explicit(&h->header->spilled, 1, memory_order_relaxed); /* statistics (qsize) */
            continue;
        }
        /* relaxed: statistics. */
        atomic_fetch_add_explicit(&h->header->records_appended, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->header->bytes_appended, length, memory_order_relaxed);
        *position = p;
        return SHMQ_OK;
    }
}

void shmq_log_pin(shmq_handle *h)
{
    if (!h->self)
        return;
    /* seq_cst: the pin is visible before our reservation; maintenance reads
     * log_tail, then the pins (seq_cst), so it sees the pin or our record. */
    uint64_t tail = atomic_load_explicit(&h->header->log_tail, memory_order_seq_cst) & ~SHMQ_TAIL_SPILL;
    atomic_store_explicit(&h->participants[h->self].pin, tail + 1, memory_order_seq_cst);
}

void shmq_log_unpin(shmq_handle *h)
{
    if (h->self)
        /* release: our lane publish happens before the pin goes. */
        atomic_store_explicit(&h->participants[h->self].pin, 0, memory_order_release);
}

int shmq_log_enqueue(shmq_handle *h, const shmq_enqueue_args *a, uint64_t *position, int *spilling)
{
    shmq_enqueue_body body = {
        .enqueued_ns = a->enqueued_ns ? a->enqueued_ns : shmq_wall_ns(),
        .not_before_ns = a->not_before_ns,
        .lane = a->lane_plus1 ? a->lane_plus1 - 1 : UINT32_MAX,
        .attempt = a->attempt ? a->attempt : 1,
        .tag = a->tag,
        .flags = a->flags,
        .unique_bytes = a->unique ? SHMQ_UNIQUE_KEY_BYTES : 0,
        .payload_bytes = a->first_length + a->second_length,
    };
    part parts[4] = {{&body, sizeof body},
                     {a->unique, a->unique ? SHMQ_UNIQUE_KEY_BYTES : 0},
                     {a->first, a->first_length},
                     {a->second, a->second_length}};
    return shmq_log_append(h, SHMQ_REC_ENQUEUE, a->job_id, parts, 4, position, spilling);
}

static inline uint32_t enqueue_length(uint32_t payload)
{
    return (uint32_t)((SHMQ_ENQUEUE_FIXED + (uint64_t)payload + SHMQ_RECORD_ALIGN - 1) &
                      ~(uint64_t)(SHMQ_RECORD_ALIGN - 1));
}

/* Writes one ENQUEUE record into space we reserved; 0 if a hole filler voided it. */
static int fill_enqueue(shmq_handle *h, shmq_record_header *rec, uint64_t position, const uint8_t *payload,
                        uint32_t length, uint8_t tag, int64_t now, int spilling)
{
    uint32_t bytes = enqueue_length(length);
    uint64_t expected = 0, pending = shmq_record_word(bytes, SHMQ_REC_PENDING, h->self);
    /* relaxed: claims the word against hole fillers, as in shmq_log_append. */
    if (!atomic_compare_exchange_strong_explicit(&rec->word, &expected, pending, memory_order_relaxed,
                                                 memory_order_relaxed))
        return 0;
    rec->crc = 0;
    rec->body_bytes = (uint32_t)sizeof(shmq_enqueue_body) + length;
    rec->seq = position;
    rec->job_id = position;
    shmq_enqueue_body *body = (shmq_enqueue_body *)(rec + 1);
    *body = (shmq_enqueue_body){.enqueued_ns = now, .lane = UINT32_MAX, .attempt = 1, .tag = tag,
                                .flags = SHMQ_ENQ_LANED, .payload_bytes = length};
    (void)spilling; /* LANED: its writer pushes it, spilling or not */
    memcpy(body + 1, payload, length);
    shmq_fault(h, SHMQ_FAULT_LOG_MID_RECORD);
    memset((uint8_t *)(body + 1) + length, 0, bytes - SHMQ_ENQUEUE_FIXED - length);
    uint64_t word = shmq_record_word(bytes, SHMQ_REC_ENQUEUE, 0);
    rec->crc = shmq_record_crc(rec, word);
    /* release: as the publish in shmq_log_append. */
    return atomic_compare_exchange_strong_explicit(&rec->word, &pending, word, memory_order_release,
                                                   memory_order_relaxed);
}

int shmq_log_enqueue_batch(shmq_handle *h, const uint8_t *data, const uint32_t *lengths, const uint8_t *tags,
                           uint8_t tag, uint32_t count, uint64_t *job_ids)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < count; i++)
        total += enqueue_length(lengths[i]);
    int64_t now = shmq_wall_ns();
    if (count > 1 && total <= h->segment_bytes / 2) {
        /* One reservation for the whole batch. */
        uint64_t p = 0;
        shmq_record_header *rec = NULL;
        int spilling = 0;
        int rc = shmq_log_reserve(h, (uint32_t)total, &p, &rec, &spilling);
        if (rc != SHMQ_OK)
            return rc;
        shmq_fault(h, SHMQ_FAULT_LOG_AFTER_RESERVE);
        uint8_t *at = (uint8_t *)rec;
        for (uint32_t i = 0; i < count; i++) {
            uint8_t t = tags ? tags[i] : tag;
            if (fill_enqueue(h, (shmq_record_header *)at, p, data, lengths[i], t, now, spilling)) {
                job_ids[i] = p;
            } else { /* voided by a filler while we were slow: that record goes further on */
                shmq_enqueue_args args = {.tag = t, .flags = SHMQ_ENQ_LANED, .first = data, .first_length = lengths[i]};
                rc = shmq_log_enqueue(h, &args, &job_ids[i], &spilling);
                if (rc != SHMQ_OK)
                    return rc;
            }
            at += enqueue_length(lengths[i]);
            p += enqueue_length(lengths[i]);
            data += lengths[i];
        }
        /* relaxed: statistics. */
        atomic_fetch_add_explicit(&h->header->records_appended, count, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->header->bytes_appended, total, memory_order_relaxed);
        return SHMQ_OK;
    }
    for (uint32_t i = 0; i < count; i++) {
        shmq_enqueue_args args = {.tag = tags ? tags[i] : tag, .flags = SHMQ_ENQ_LANED, .first = data,
                                  .first_length = lengths[i], .enqueued_ns = now};
        int spilling;
        int rc = shmq_log_enqueue(h, &args, &job_ids[i], &spilling);
        if (rc != SHMQ_OK)
            return rc;
        data += lengths[i];
    }
    return SHMQ_OK;
}

int shmq_log_done(shmq_handle *h, const uint64_t *job_ids, uint32_t count)
{
    uint64_t position;
    int spilling;
    if (count == 1)
        return shmq_log_append(h, SHMQ_REC_DONE, job_ids[0], NULL, 0, &position, &spilling);
    uint32_t head[2] = {count, 0};
    part parts[2] = {{head, sizeof head}, {job_ids, count * (uint32_t)sizeof *job_ids}};
    return shmq_log_append(h, SHMQ_REC_DONE_MANY, 0, parts, 2, &position, &spilling);
}

/* Takes the buffered acks out (into `out`, at most SHMQ_ACK_BATCH). */
static uint32_t acks_take(shmq_handle *h, uint64_t *out)
{
    /* acquire/release: the flag orders the buffer between threads of this process. */
    while (atomic_flag_test_and_set_explicit(&h->ack_lock, memory_order_acquire))
        shmq_cpu_relax();
    uint32_t n = h->ack_count;
    memcpy(out, h->ack_ids, n * sizeof *out);
    h->ack_count = 0;
    atomic_flag_clear_explicit(&h->ack_lock, memory_order_release);
    return n;
}

static void acks_write(shmq_handle *h, const uint64_t *ids, uint32_t n)
{
    if (!n)
        return;
    shmq_fault(h, SHMQ_FAULT_POP_BEFORE_DONE);
    shmq_log_enter(h);
    shmq_log_done(h, ids, n); /* on failure the jobs run again after a recovery: at least once */
    shmq_log_leave(h);
}

/* Jobs a consumer took: their DONE goes into a per-handle buffer, written as
 * one DONE_MANY when it fills, when the consumer finds nothing to take, at
 * maintenance (every 50 ms) and at close. Writing a DONE per get was most of
 * the log's cost (producers and consumers contend for the tail). */
void shmq_log_ack(shmq_handle *h, const uint64_t *job_ids, uint32_t count)
{
    uint64_t full[SHMQ_ACK_BATCH];
    for (uint32_t i = 0; i < count; i++) {
        if (!job_ids[i])
            continue;
        uint32_t n = 0;
        while (atomic_flag_test_and_set_explicit(&h->ack_lock, memory_order_acquire))
            shmq_cpu_relax();
        h->ack_ids[h->ack_count++] = job_ids[i];
        if (h->ack_count == SHMQ_ACK_BATCH) {
            n = h->ack_count;
            memcpy(full, h->ack_ids, n * sizeof *full);
            h->ack_count = 0;
        }
        atomic_flag_clear_explicit(&h->ack_lock, memory_order_release);
        acks_write(h, full, n);
    }
}

void shmq_log_ack_flush(shmq_handle *h)
{
    if (!h->log_on || !h->ack_count) /* a racy peek: a stale 0 only delays the flush */
        return;
    uint64_t ids[SHMQ_ACK_BATCH];
    acks_write(h, ids, acks_take(h, ids));
}

/* Copies `length` payload bytes of the record at `record` (at `offset` in it). */
int shmq_log_read_payload(shmq_handle *h, uint64_t record, uint32_t offset, uint8_t *out, uint32_t length)
{
    int err = 0;
    shmq_record_header *rec = shmq_record_at(h, record, 0, &err);
    if (!rec)
        return shmq_log_fail(h, err);
    /* acquire: pairs with the publish; the record was published before the
     * lane message naming it, so this only re-checks it. */
    uint64_t word = atomic_load_explicit(&rec->word, memory_order_acquire);
    if (shmq_word_type(word) != SHMQ_REC_ENQUEUE || (uint64_t)offset + length > shmq_word_length(word))
        return shmq_log_fail(h, EBADMSG);
    memcpy(out, (const uint8_t *)rec + offset, length);
    return SHMQ_OK;
}

/* ------------------------------------------------------------ holes */

/* The record at `position` is unpublished (word 0 or PENDING) although the
 * tail is past it. Turns it into a PAD if its writer is dead, or if `force`
 * (no writer can be live: recovery), or if it has stayed unwritten for
 * SHMQ_HOLE_WAIT_NS, even by a live writer (stopped, or starved): that
 * writer's publish CAS then fails and it writes the record again further
 * on. Returns 1 if the position now holds a record (the caller re-reads
 * it), 0 to come back later. */
int shmq_log_fill_hole(shmq_handle *h, shmq_record_header *rec, uint64_t position, uint64_t tail, int force)
{
    /* acquire: as any reader of the word. */
    uint64_t word = atomic_load_explicit(&rec->word, memory_order_acquire);
    if (shmq_word_type(word) == SHMQ_REC_PENDING) {
        if (!force && shmq_participant_alive(h, shmq_word_owner(word))) {
            int64_t now = shmq_now_ns();
            if (h->hole_position != position) {
                h->hole_position = position;
                h->hole_seen_ns = now;
                return 0;
            }
            if (now - h->hole_seen_ns < SHMQ_HOLE_WAIT_NS)
                return 0;
        }
        uint64_t pad = shmq_record_word(shmq_word_length(word), SHMQ_REC_PAD, 0);
        /* relaxed: replaces the claim; the writer's publish CAS then fails. */
        if (atomic_compare_exchange_strong_explicit(&rec->word, &word, pad, memory_order_relaxed,
                                                    memory_order_relaxed))
            atomic_fetch_add_explicit(&h->header->holes_filled, 1, memory_order_relaxed);
        return 1;
    }
    if (word != 0)
        return 1;
    int64_t now = shmq_now_ns();
    if (!force) {
        if (h->hole_position != position) {
            h->hole_position = position;
            h->hole_seen_ns = now;
            return 0;
        }
        if (now - h->hole_seen_ns < SHMQ_HOLE_WAIT_NS)
            return 0;
    }
    /* Void every zero word up to the next non-zero one (a record's claim),
     * the tail, or the segment end; then pad over them. */
    uint64_t S = h->segment_bytes;
    uint64_t end = (position / S + 1) * S;
    if (tail < end)
        end = tail;
    uint64_t known = shmq_segment_known_end(h, position); /* never past the file's end */
    if (known < end)
        end = known;
    uint64_t at = position + 8;
    _Atomic uint64_t *words = (_Atomic uint64_t *)rec;
    for (; at < end; at += 8) {
        uint64_t zero = 0;
        /* relaxed: a writer that claims later fails its claim and moves on. */
        if (!atomic_compare_exchange_strong_explicit(&words[(at - position) / 8], &zero,
                                                     shmq_record_word(0, SHMQ_REC_VOID, 0), memory_order_relaxed,
                                                     memory_order_relaxed))
            break;
    }
    uint64_t zero = 0;
    if (atomic_compare_exchange_strong_explicit(&rec->word, &zero,
                                                shmq_record_word((uint32_t)(at - position), SHMQ_REC_PAD, 0),
                                                memory_order_relaxed, memory_order_relaxed))
        atomic_fetch_add_explicit(&h->header->holes_filled, 1, memory_order_relaxed);
    return 1;
}

/* ------------------------------------------------------------ the backlog */

int shmq_log_spilling(const shmq_handle *h)
{
    /* relaxed: a hint; the reservation's own acq_rel read of the bit decides. */
    return h->log_on &&
           (atomic_load_explicit(&h->header->log_tail, memory_order_relaxed) & SHMQ_TAIL_SPILL) != 0;
}

/* From now on new jobs wait in the log (SPILL), fed into lanes in order. */
void shmq_log_spill_begin(shmq_handle *h)
{
    shmq_region_header *hdr = h->header;
    /* acquire: as the CAS below. */
    uint64_t tail = atomic_load_explicit(&hdr->log_tail, memory_order_acquire);
    while (!(tail & SHMQ_TAIL_SPILL)) {
        /* acq_rel: from this value on, reservations carry SPILL. */
        if (atomic_compare_exchange_weak_explicit(&hdr->log_tail, &tail, tail | SHMQ_TAIL_SPILL,
                                                  memory_order_acq_rel, memory_order_acquire)) {
            /* The feeder starts here at the latest; earlier positions hold
             * no SPILLED record it has not fed. Only ever raised. */
            uint64_t cursor = atomic_load_explicit(&hdr->feed_cursor, memory_order_acquire);
            while (cursor < tail &&
                   !atomic_compare_exchange_weak_explicit(&hdr->feed_cursor, &cursor, tail, memory_order_release,
                                                          memory_order_acquire))
                ;
            return;
        }
    }
}

/* ------------------------------------------------------------ observing */

void shmq_log_stats_read(const shmq_handle *h, shmq_log_stats *s /* OUT */)
{
    const shmq_region_header *hdr = h->header;
    *s = (shmq_log_stats){0};
    /* relaxed: statistics. */
    uint64_t tail = atomic_load_explicit(&hdr->log_tail, memory_order_relaxed);
    s->tail = tail & ~SHMQ_TAIL_SPILL;
    s->spilling = (tail & SHMQ_TAIL_SPILL) != 0;
    s->base = atomic_load_explicit(&hdr->log_base, memory_order_relaxed);
    s->feed_cursor = atomic_load_explicit(&hdr->feed_cursor, memory_order_relaxed);
    s->flushed_tail = atomic_load_explicit(&hdr->flushed_tail, memory_order_relaxed);
    s->records_appended = atomic_load_explicit(&hdr->records_appended, memory_order_relaxed);
    s->bytes_appended = atomic_load_explicit(&hdr->bytes_appended, memory_order_relaxed);
    s->flushes = atomic_load_explicit(&hdr->flushes, memory_order_relaxed);
    s->holes_filled = atomic_load_explicit(&hdr->holes_filled, memory_order_relaxed);
    s->redelivered = atomic_load_explicit(&hdr->redelivered, memory_order_relaxed);
    s->fed = atomic_load_explicit(&hdr->fed, memory_order_relaxed);
    s->checkpoints = atomic_load_explicit(&hdr->checkpoints, memory_order_relaxed);
    s->segments_deleted = atomic_load_explicit(&hdr->segments_deleted, memory_order_relaxed);
    s->segments_made = atomic_load_explicit(&hdr->segments_made, memory_order_relaxed);
    s->last_errno = atomic_load_explicit(&hdr->log_errno, memory_order_relaxed);
    uint64_t spilled = atomic_load_explicit(&hdr->spilled, memory_order_relaxed);
    s->backlog = spilled > s->fed ? spilled - s->fed : 0;
    s->spilled = atomic_load_explicit(&hdr->spilled, memory_order_relaxed);
}
