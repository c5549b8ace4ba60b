/* SPDX-License-Identifier: Apache-2.0 */
/* log.h -- the log layer: what the log's .c files (log.c, log_recover.c,
 * log_retain.c) share and offer the layers above. It knows nothing of the
 * lanes or the jobs. The format is in layout.h. */
#ifndef SHMQ_LOG_H
#define SHMQ_LOG_H

#include "core.h"

/* An unwritten record older than this is filled even if its writer lives. */
static const int64_t SHMQ_HOLE_WAIT_NS = 200 * 1000 * 1000;

/* shmq_segment_map's `create`: 0 open only, 1 create if missing (waiting
 * for another maker), SHMQ_MAKE_AHEAD create unless someone else is making one. */
enum { SHMQ_MAKE_AHEAD = 2 };

/* Payloads up to this travel inline in a lane; larger ones by reference. */
enum { SHMQ_INLINE_PAYLOAD_MAX = 256 };
/* An ENQUEUE record's header and body; the payload follows (after the
 * unique key's SHMQ_UNIQUE_KEY_BYTES when it has one). */
enum { SHMQ_ENQUEUE_FIXED = 64, SHMQ_UNIQUE_KEY_BYTES = 16 };

void shmq_log_close(shmq_handle *h);
typedef struct shmq_log_entry {
    uint64_t position;
    shmq_record_header *record;
} shmq_log_entry;
typedef struct shmq_enqueue_args {
    uint64_t job_id;            /* 0: a new job (its id is its position) */
    uint16_t attempt;
    uint8_t tag;
    uint8_t flags;              /* SHMQ_ENQ_* */
    int64_t enqueued_ns;        /* 0: now */
    int64_t not_before_ns;      /* 0: at once */
    uint32_t lane_plus1;        /* 0: any lane */
    const uint8_t *unique;      /* 16 bytes of key hash, or NULL */
    const uint8_t *first;
    uint32_t first_length;
    const uint8_t *second;
    uint32_t second_length;
} shmq_enqueue_args;
int shmq_log_enqueue(shmq_handle *h, const shmq_enqueue_args *args, uint64_t *position, int *spilling);
int shmq_log_done(shmq_handle *h, const uint64_t *job_ids, uint32_t count);
void shmq_log_ack(shmq_handle *h, const uint64_t *job_ids, uint32_t count);
void shmq_log_ack_flush(shmq_handle *h);
int shmq_log_enqueue_batch(shmq_handle *h, const uint8_t *data, const uint32_t *lengths, const uint8_t *tags,
                           uint8_t tag, uint32_t count, uint64_t *job_ids);
int shmq_log_durable(shmq_handle *h, int64_t timeout_ns);
int shmq_log_read_payload(shmq_handle *h, uint64_t record, uint32_t offset, uint8_t *out, uint32_t length);
int shmq_log_spilling(const shmq_handle *h);
void shmq_log_pin(shmq_handle *h);
void shmq_log_unpin(shmq_handle *h);

typedef struct part {
    const void *data;
    uint32_t length;
} part;

int shmq_log_fail(shmq_handle *h, int err);
uint32_t shmq_record_crc(const shmq_record_header *rec, uint64_t word);
void shmq_log_enter(shmq_handle *h);
void shmq_log_leave(shmq_handle *h);
void shmq_segment_name(char *out, size_t size, uint64_t base);
int shmq_segment_header_check(const shmq_segment_header *sh, uint64_t magic);
void shmq_segment_header_fill(shmq_segment_header *sh, uint64_t magic, uint64_t segment_bytes, uint64_t index,
                              uint64_t base, uint32_t durability);
uint8_t *shmq_segment_map(shmq_handle *h, uint64_t index, int create, int *err);
int shmq_segment_cover(shmq_handle *h, uint64_t position, uint64_t length, int grow);
uint64_t shmq_segment_known_end(shmq_handle *h, uint64_t position);
void shmq_log_retire_slot(shmq_handle *h, shmq_segment_slot *slot);
void shmq_log_unmap_retired(shmq_handle *h, uint32_t self_inside);
shmq_record_header *shmq_record_at(shmq_handle *h, uint64_t position, int create, int *err);
int shmq_log_reserve(shmq_handle *h, uint32_t length, uint64_t *position, shmq_record_header **out,
                     int *spilling);
int shmq_log_append(shmq_handle *h, unsigned type, uint64_t job_id, const part *parts, unsigned count,
                    uint64_t *position, int *spilling);
int shmq_log_sync(shmq_handle *h);
int shmq_log_flush_due(shmq_handle *h);
int shmq_log_fill_hole(shmq_handle *h, shmq_record_header *rec, uint64_t position, uint64_t tail, int force);
void shmq_log_spill_begin(shmq_handle *h);
void shmq_log_delete_below(shmq_handle *h, uint64_t low);
void shmq_log_retire_below_base(shmq_handle *h);
int shmq_log_upkeep(shmq_handle *h);
/* A live job recovery left where it was (recovery in place): its record's
 * position in the old log, and what recovery worked out for it. */
typedef struct shmq_put_back {
    uint64_t position;
    int64_t not_before_ns;
    uint16_t attempt;
} shmq_put_back;
int shmq_log_recover_records(shmq_handle *h, shmq_recovery *report, shmq_put_back **put_back /* OUT */,
                             uint64_t *put_back_count /* OUT */);

/* Is the published record at `position` whole? (length, alignment, CRC, seq) */
static inline int shmq_record_valid(const shmq_record_header *rec, uint64_t word, uint64_t position,
                                    uint64_t segment_bytes)
{
    uint32_t length = shmq_word_length(word);
    unsigned type = shmq_word_type(word);
    uint64_t offset = position % segment_bytes;
    if (length < 8 || length % 8 || offset + length > segment_bytes)
        return 0;
    if (type == SHMQ_REC_PAD && length < sizeof(shmq_record_header))
        return offset == 0 || offset + length == segment_bytes;
    if (type < SHMQ_REC_PAD || type > SHMQ_REC_TYPE_MAX || length < sizeof(shmq_record_header))
        return 0;
    if (rec->seq != position || 32ull + rec->body_bytes > length || length - 32ull - rec->body_bytes >= 8)
        return 0;
    return shmq_record_crc(rec, word) == rec->crc;
}

#endif /* SHMQ_LOG_H */
