/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shmq_api.h -- the public C API of the shmq core.
 *
 * This is the only header cffi reads (csrc/ffi_build.py): keep it free of
 * #include and of anything cffi's cdef parser does not take. Each
 * "#define NAME value" reaches Python as NAME with the compiler's value.
 *
 * Conventions: functions return SHMQ_OK (0) or a negative shmq_status;
 * shmq_strerror() names it. SHMQ_ESYS leaves errno set. Timeouts are
 * nanoseconds: < 0 waits forever, 0 never waits. Output parameters are
 * marked OUT. Byte buffers are char so that Python bytes pass without a copy.
 */
#ifndef SHMQ_API_H
#define SHMQ_API_H

#include <stdint.h>

#define SHMQ_MAGIC 0x31474552514d4853
#define SHMQ_LAYOUT_VERSION 2
#define SHMQ_MSG_HEADER_BYTES 16
#define SHMQ_MSG_REF 1
#define SHMQ_MSG_SKIP 2
#define SHMQ_MSG_REF_BYTES 16
#define SHMQ_DURABILITY_NONE 0
#define SHMQ_DURABILITY_MEMORY 1
#define SHMQ_DURABILITY_OS 2
#define SHMQ_DURABILITY_INTERVAL 3
#define SHMQ_DURABILITY_SYNC 4
#define SHMQ_RECORD_HEADER_BYTES 32
#define SHMQ_ENQUEUE_OVERHEAD 64
#define SHMQ_MAX_PARTICIPANTS 8191

enum shmq_status {
    SHMQ_OK = 0,
    SHMQ_EEMPTY = -1,        /* nothing to take before the timeout */
    SHMQ_EFULL = -2,         /* no room before the timeout */
    SHMQ_EINTR = -3,         /* a signal arrived while waiting: handle it, then retry */
    SHMQ_EINVAL = -4,        /* a parameter is out of range */
    SHMQ_ENOTSHMQ = -5,      /* the region does not start with SHMQ_MAGIC */
    SHMQ_EVERSION = -6,      /* the region has another layout version */
    SHMQ_EUNINIT = -7,       /* the region's creator has not finished (or died) */
    SHMQ_ESIZE = -8,         /* the region is smaller than its header says */
    SHMQ_ETOOBIG = -9,       /* the message does not fit in a lane */
    SHMQ_ECLAIMED = -10,     /* the message is claimed and needs its own buffer */
    SHMQ_EPARTICIPANTS = -11,/* the participant table is full */
    SHMQ_ENAMESPACE = -12,   /* the region was made in another pid namespace */
    SHMQ_ESYS = -13,         /* a system call failed: see errno */
    SHMQ_ELOG = -14,         /* the log could not be written: errno says why (ENOSPC, EACCES, ...) */
    SHMQ_ELOGSIZE = -15,     /* a record does not fit in a log segment */
    SHMQ_ELOGFORMAT = -16,   /* a log file has another format version, or is not a shmq log */
};

typedef struct shmq_params {
    uint32_t lane_count;
    uint32_t slots_per_lane;       /* a power of two, 2 .. 2^30 */
    uint32_t slot_bytes;           /* a multiple of 16, 16 .. 65536 */
    uint32_t codec_id;
    uint64_t max_message_bytes;
    uint32_t participant_capacity; /* 2 .. SHMQ_MAX_PARTICIPANTS + 1 */
    uint32_t durability;           /* SHMQ_DURABILITY_*; NONE: no log */
    uint64_t segment_bytes;        /* log segment size, a multiple of 4096 */
    uint64_t flush_interval_ns;    /* INTERVAL: flush at least this often */
    uint64_t flush_bytes;          /* INTERVAL: or once this many bytes are unflushed (0: every append) */
} shmq_params;

/* A message taken from a lane; with SHMQ_ECLAIMED it is still held (READING)
 * and must be passed to shmq_pop_finish or shmq_pop_abandon. */
typedef struct shmq_message {
    uint64_t position;
    uint64_t job_id;
    uint32_t lane;
    uint32_t span;
    uint32_t length;
    uint16_t attempt;
    uint8_t tag;
    uint8_t flags;
} shmq_message;

/* The log, as seen by shmq_log_stats. */
typedef struct shmq_log_stats {
    uint64_t tail;             /* next position to be written */
    uint64_t base;             /* first position still on disk */
    uint64_t feed_cursor;      /* backlog: next position to feed (when spilling) */
    uint64_t flushed_tail;
    uint64_t records_appended;
    uint64_t bytes_appended;
    uint64_t flushes;
    uint64_t holes_filled;
    uint64_t redelivered;
    uint64_t fed;
    uint64_t checkpoints;
    uint64_t segments_deleted;
    uint64_t segments_made;
    uint64_t backlog;          /* jobs waiting in the log for the feeder */
    int32_t spilling;          /* 1 while new jobs wait in the log for the feeder */
    int32_t last_errno;        /* of the last failed log write or flush */
} shmq_log_stats;

/* What recovery found (shmq_log_recover). */
typedef struct shmq_recovery {
    uint64_t segments;         /* files read, snapshot included */
    uint64_t records;          /* valid records read */
    uint64_t live;             /* jobs pending again */
    uint64_t running;          /* of which were running: attempt + 1 */
    uint64_t done;             /* jobs found finished */
    uint64_t corrupt_records;  /* corrupt spans skipped in the middle */
    uint64_t corrupt_bytes;
    uint64_t torn_bytes;       /* bytes cut off the end */
    uint64_t torn_position;    /* where the cut began (0: none) */
    uint64_t holes;            /* unwritten reservations skipped */
    uint64_t next_position;    /* where the new log begins */
    int64_t elapsed_ns;
} shmq_recovery;

typedef struct shmq_counts {
    uint64_t pushed;
    uint64_t popped;
    uint64_t dropped_dead_producer;
    uint64_t released_dead_consumer;
    uint64_t dropped_corrupt;
    uint32_t data_waiters;   /* consumers asleep now */
    uint32_t space_waiters;  /* producers asleep now */
} shmq_counts;

typedef struct shmq_handle shmq_handle;

const char *shmq_strerror(int status);

/* Regions: sizing, mapping, creating, checking. */
uint64_t shmq_region_size(const shmq_params *params);
int shmq_map(int fd, uint64_t size, void **base /* OUT */);
int shmq_unmap(void *base, uint64_t size);
int shmq_region_init(void *base, uint64_t size, const shmq_params *params);
int shmq_region_read(const void *base, uint64_t size, shmq_params *params /* OUT */,
                     uint32_t *layout_version /* OUT */);

/* Handles: one per attached queue object; registers this process. */
int shmq_attach(void *base, uint64_t size, shmq_handle **handle /* OUT */);
void shmq_detach(shmq_handle *handle);
int shmq_after_fork(shmq_handle *handle);
uint32_t shmq_inline_max(const shmq_handle *handle);
uint32_t shmq_participant_index(const shmq_handle *handle);

/* The fast paths: one message, any lane, few arguments (each costs in cffi).
 * shmq_get returns (tag << 32) | length, or a negative status; with
 * SHMQ_ECLAIMED the claim is in *message. */
int shmq_put(shmq_handle *handle, uint8_t tag, const char *data, uint32_t length, int64_t timeout_ns);
int64_t shmq_get(shmq_handle *handle, char *buffer, uint32_t capacity, int64_t timeout_ns,
                 shmq_message *message /* OUT */);

/* Producing. lane < 0 picks one. */
int shmq_push(shmq_handle *handle, int lane, uint8_t tag, uint8_t flags,
              const char *first, uint32_t first_length,
              const char *second, uint32_t second_length, int64_t timeout_ns);
int shmq_push_many(shmq_handle *handle, int lane, const char *data,
                   const uint32_t *lengths, const char *tags, uint8_t tag,
                   uint32_t count, int64_t timeout_ns, uint32_t *pushed /* OUT */);

/* Consuming. */
int shmq_pop(shmq_handle *handle, char *buffer, uint32_t capacity, int64_t timeout_ns,
             shmq_message *message /* OUT */);
int shmq_pop_many(shmq_handle *handle, char *buffer, uint32_t capacity, uint32_t max_items,
                  int64_t timeout_ns, uint32_t *lengths /* OUT */, uint8_t *tags /* OUT */,
                  uint32_t *count /* OUT */, shmq_message *claimed /* OUT */);
int shmq_pop_finish(shmq_handle *handle, const shmq_message *message, char *buffer);
void shmq_pop_abandon(shmq_handle *handle, const shmq_message *message);

/* The log. shmq_log_open enables it on a handle (the region must have been
 * created with a durability other than NONE); `dir` is the log directory. The
 * creator of a region calls shmq_log_recover before anyone else attaches. */
int shmq_log_open(shmq_handle *handle, const char *dir);
int shmq_log_attach(shmq_handle *handle, const char *dir); /* EUNINIT: its creator died recovering */
int shmq_log_recover(shmq_handle *handle, shmq_recovery *report /* OUT */);
int shmq_log_maintain(shmq_handle *handle);
int shmq_log_flush(shmq_handle *handle);
int shmq_log_snapshot(shmq_handle *handle);
void shmq_log_stats_read(const shmq_handle *handle, shmq_log_stats *stats /* OUT */);
int shmq_live_participants(const shmq_handle *handle);
uint32_t shmq_crc32c_value(const char *data, uint32_t length);

/* Observing. */
void shmq_counts_read(const shmq_handle *handle, shmq_counts *counts /* OUT */);
int shmq_is_empty(const shmq_handle *handle);
int shmq_is_full(const shmq_handle *handle);
int shmq_repair(shmq_handle *handle);

#endif /* SHMQ_API_H */
