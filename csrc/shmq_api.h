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
#define SHMQ_LAYOUT_VERSION 4
#define SHMQ_MSG_HEADER_BYTES 24
#define SHMQ_MSG_REF 1
#define SHMQ_MSG_SKIP 2
#define SHMQ_MSG_UNIQUE 4
#define SHMQ_MSG_UNIQUE_FINISH 8
#define SHMQ_MSG_LEASED 16
#define SHMQ_MSG_REF_BYTES 16
#define SHMQ_DURABILITY_NONE 0
#define SHMQ_DURABILITY_MEMORY 1
#define SHMQ_DURABILITY_OS 2
#define SHMQ_DURABILITY_INTERVAL 3
#define SHMQ_DURABILITY_SYNC 4
#define SHMQ_RECORD_HEADER_BYTES 32
#define SHMQ_ENQUEUE_OVERHEAD 80
/* A log segment file is made with this many bytes of records allocated and
 * grows by at least this much at a time (log_segment.c). */
#define SHMQ_SEGMENT_CHUNK 65536
#define SHMQ_MAX_PARTICIPANTS 8191
#define SHMQ_JOB_INLINE_BYTES 256
#define SHMQ_HIST_BUCKETS 256
#define SHMQ_HIST_WAIT 0
#define SHMQ_HIST_RUN 1
#define SHMQ_JOB_UNKNOWN 0
#define SHMQ_JOB_QUEUED 1
#define SHMQ_JOB_SCHEDULED 2
#define SHMQ_JOB_RUNNING 3
#define SHMQ_JOB_DONE 4
#define SHMQ_JOB_DEAD 5
#define SHMQ_JOB_CANCELLED 6
#define SHMQ_CANCEL_NONE 0
#define SHMQ_CANCEL_ENDED 1
#define SHMQ_CANCEL_RUNNING 2
#define SHMQ_CANCEL_REQUESTED 1
#define SHMQ_CANCEL_KILLED 2
#define SHMQ_THROTTLE_NONE 0
#define SHMQ_THROTTLE_OPEN 1
#define SHMQ_THROTTLE_CLOSED 2

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
    SHMQ_EDUPLICATE = -17,   /* a pending job has this unique key: its id is returned */
    SHMQ_EJOBSFULL = -18,    /* the table of running and scheduled jobs is full */
    SHMQ_EUNIQUEFULL = -19,  /* the unique-key table is full */
    SHMQ_ELEASE = -20,       /* the lease was lost (it expired, or the job was taken back) */
    SHMQ_ENOLOG = -21,       /* jobs need a log: the queue has durability none */
    SHMQ_ELOGFULL = -22,     /* the log holds max_log_bytes: nothing more is accepted until consumers catch up */
    SHMQ_ENOTDURABLE = -23,  /* ACCEPTED (published, will be delivered) but not yet flushed: a signal, the
                              * timeout or a flush error ended the wait; never send it again, call
                              * shmq_wait_durable to wait on */
    SHMQ_ELOCKED = -24,      /* a lock (the unique-key table, or this unique key) stayed held by a live
                              * process that makes no progress (stopped?) until the timeout; nothing done */
    SHMQ_EUNTRUSTED = -25,   /* a region, log file or directory is not owned by this effective uid, or is
                              * open to group/others (see shmq_fd_trusted): refused, never used */
    SHMQ_EADMITFULL = -26,   /* an admission table (paused tasks, concurrency seats, rate keys) is full */
    SHMQ_ECANCELLED = -27,   /* DONE, differently: the job was cancelled while it ran, so shmq_fail ended it
                              * cancelled (never retried, not dead) */
    SHMQ_ECANCELFULL = -28,  /* SHMQ_CANCEL_SLOTS cancelled jobs are still in the lanes: try again later */
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
    uint32_t ordered_lanes;        /* the last lanes, for jobs with a group: one job of a lane at a time */
    uint32_t job_slots;            /* running + scheduled jobs at once (0: no job tables) */
    uint32_t unique_slots;         /* unique keys, a power of two (0 with job_slots 0) */
    uint32_t result_slots;         /* results kept, at most */
    uint64_t result_bytes;         /* bytes of results kept, at most (a multiple of 64) */
    uint64_t result_ttl_ns;        /* results are kept this long, at most */
    uint32_t throttle_mode;        /* SHMQ_THROTTLE_* (needs job tables) */
    uint32_t reserved;
    uint64_t max_log_bytes;        /* 0: no limit */
    uint64_t throttle_target;      /* closed: the backlog aimed at (jobs) */
    uint64_t throttle_high;        /* closed: producers wait above this backlog (jobs) */
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

/* A job handed to a consumer under a lease (shmq_fetch). `entry` and `gen`
 * name the lease: a consumer whose lease was taken back (its process looked
 * dead, or the lease expired) gets SHMQ_ELEASE from ack, fail and extend. */
/* shmq_delivery.flags bit: some task of the queue is paused (shmq_pause_check says which). */
#define SHMQ_DELIVERY_TASKS_PAUSED 128
typedef struct shmq_delivery {
    uint64_t job_id;
    uint64_t gen;
    int64_t enqueued_ns;       /* CLOCK_REALTIME */
    uint32_t entry;
    uint32_t lane;
    uint32_t length;           /* payload bytes */
    uint16_t attempt;
    uint8_t tag;
    uint8_t flags;
    uint32_t task;             /* 0 from fetch; the consumer may set its task's slot + 1 (shmq_task_slot)
                                  before ack or fail: the end counts in that task (as shmq_task_bind) */
} shmq_delivery;

/* Options of shmq_enqueue. */
typedef struct shmq_enqueue_options {
    int32_t lane;              /* < 0: any unordered lane; else this lane (an ordered one for a group) */
    uint8_t tag;
    uint8_t unique_until_finish; /* 0: the key is free once the job starts; 1: once it ends */
    uint16_t attempt;          /* 0: 1 */
    int64_t not_before_ns;     /* CLOCK_REALTIME; 0: at once */
    uint64_t unique_hi;        /* a 128-bit hash of the unique key; both 0: none */
    uint64_t unique_lo;
    uint32_t task;             /* its task's slot + 1 (shmq_task_slot): counted there once accepted; 0: none */
} shmq_enqueue_options;

/* A finished job's outcome (shmq_job_status, shmq_result_wait). */
typedef struct shmq_result_info {
    int64_t finished_ns;       /* CLOCK_REALTIME */
    uint32_t length;           /* result (or error) bytes */
    uint16_t attempt;
    uint8_t tag;
    uint8_t status;            /* SHMQ_JOB_* */
    int64_t run_ns;            /* the last attempt's run time (its start: finished_ns - run_ns); -1: none */
} shmq_result_info;

/* A task's counters (shmq_task_read), indexed by SHMQ_TASK_*. */
enum { SHMQ_TASK_ENQUEUED, SHMQ_TASK_DONE, SHMQ_TASK_FAILED, SHMQ_TASK_RETRIED, SHMQ_TASK_DEAD, SHMQ_TASK_COUNTERS };
#define SHMQ_TASK_SLOTS 32
typedef struct shmq_task_stats {
    char name[57];             /* NUL-terminated */
    uint64_t counts[5];        /* SHMQ_TASK_ENQUEUED .. SHMQ_TASK_DEAD */
    int64_t wait_max_ns;
    int64_t run_max_ns;
} shmq_task_stats;

/* Job counters, per lane or summed (shmq_job_stats_read). */
typedef struct shmq_job_stats {
    uint64_t enqueued;
    uint64_t deduplicated;
    uint64_t scheduled;        /* enqueued with a delay */
    uint64_t throttled;
    uint64_t started;
    uint64_t done;
    uint64_t failed;
    uint64_t retried;
    uint64_t dead;
    uint64_t lease_expired;    /* taken back from hung consumers */
    uint64_t consumer_died;    /* taken back from dead consumers */
    uint64_t depth;            /* waiting in the lane(s) */
    uint64_t in_flight;        /* leased to consumers now */
    uint64_t waiting;          /* scheduled for later (delay, retry backoff) */
    uint64_t unique_keys;      /* keys held now */
    uint64_t consumers;        /* live processes that took jobs */
    int64_t wait_max_ns;
    int64_t run_max_ns;
    uint64_t cancelled;        /* ended by a cancel */
} shmq_job_stats;

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
    uint64_t spilled;          /* jobs ever written for the feeder (lanes full, or recovered) */
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
    uint64_t damaged_files;    /* files kept aside in <log dir>/damaged/ (a damaged header, corrupt spans) */
    uint64_t missing_bytes;    /* log positions whose segment files are gone (gaps between segments) */
    uint64_t lost_jobs;        /* jobs known lost: counted by a snapshot header, or named by a later
                                * record while their ENQUEUE lay in damaged or missing bytes */
    char damage[2048];         /* what was found, a line per file or gap (cut short with "...") */
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
/* 0, or SHMQ_EUNTRUSTED if `fd` is not owned by the effective uid, or gives
 * group/others any access (a file or region) or write access (a directory);
 * SHMQ_ESYS if fstat fails. shmq_map checks the region's fd with it. */
int shmq_fd_trusted(int fd);
int shmq_map(int fd, uint64_t size, void **base /* OUT */);
int shmq_unmap(void *base, uint64_t size);
int shmq_region_init(void *base, uint64_t size, const shmq_params *params);
int shmq_region_read(const void *base, uint64_t size, shmq_params *params /* OUT */,
                     uint32_t *layout_version /* OUT */);
/* shmq_region_read's verdict, with what was wrong (magic, a parameter out of
 * range, an offset or size that its parameters contradict, the object's size)
 * as text in `text` (capacity bytes, NUL-terminated; "" when OK). */
int shmq_region_problem(const void *base, uint64_t size, char *text /* OUT */, uint32_t capacity);
/* Live processes named in a region's participant table, read without
 * attaching (for deciding whether a damaged region is abandoned). */
int shmq_region_live_participants(const void *base, uint64_t size);

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

/* The consumer's one-copy path, for callers that make their own result
 * object (the CPython extension, csrc/pyfast.c): takes one message if one
 * is there now (never waits, never feeds the backlog or repairs: shmq_get
 * does), asks alloc(ctx, length) for room and copies the payload there once.
 * alloc may be called again for a later message (when a record could not be
 * read): only the last room holds the message. Returns (tag << 32) | length,
 * SHMQ_EEMPTY when nothing is there now, or SHMQ_ECLAIMED when alloc
 * returned NULL: the claim is in *message, for shmq_pop_finish or
 * shmq_pop_abandon. */
typedef void *(*shmq_alloc_fn)(void *ctx, uint32_t length);
int64_t shmq_take(shmq_handle *handle, shmq_alloc_fn alloc, void *ctx, shmq_message *message /* OUT */);

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
/* Waits until everything this process published before the call is as
 * durable as the queue's setting asks (SYNC, INTERVAL: flushed): after a put
 * or enqueue returned SHMQ_ENOTDURABLE. SHMQ_EEMPTY: the timeout passed. */
int shmq_wait_durable(shmq_handle *handle, int64_t timeout_ns);
int shmq_log_snapshot(shmq_handle *handle);
void shmq_log_stats_read(const shmq_handle *handle, shmq_log_stats *stats /* OUT */);
int shmq_live_participants(const shmq_handle *handle);
uint32_t shmq_crc32c_value(const char *data, uint32_t length);

/* Jobs (need a log): enqueue with options, fetch under a lease, finish.
 * shmq_enqueue returns SHMQ_EDUPLICATE with the pending job's id when the
 * unique key is held. shmq_fetch returns SHMQ_ECLAIMED when the payload is
 * larger than `capacity`: the job is leased, and shmq_delivery_payload
 * copies it into a buffer of d->length bytes. */
int shmq_enqueue(shmq_handle *handle, const shmq_enqueue_options *options, const char *data, uint32_t length,
                 int64_t timeout_ns, uint64_t *job_id /* OUT */);
int shmq_fetch(shmq_handle *handle, char *buffer, uint32_t capacity, int64_t timeout_ns, int64_t lease_ns,
               shmq_delivery *delivery /* OUT */);
int shmq_delivery_payload(shmq_handle *handle, const shmq_delivery *delivery, char *buffer);
int shmq_ack(shmq_handle *handle, const shmq_delivery *delivery, uint8_t tag, const char *result, uint32_t length);
/* retry_at_ns: CLOCK_REALTIME of the next attempt; < 0: the job is dead. */
int shmq_fail(shmq_handle *handle, const shmq_delivery *delivery, int64_t retry_at_ns, uint8_t tag,
              const char *error, uint32_t length);
int shmq_extend(shmq_handle *handle, const shmq_delivery *delivery, int64_t lease_ns);
/* shmq_fetch on this handle busy-polls up to spin_ns before it sleeps (0: a
 * few microseconds): lower latency for a core's worth of CPU while jobs come. */
void shmq_set_spin(shmq_handle *handle, int64_t spin_ns);
/* Takes back leases of dead or hung consumers, moves due jobs into lanes.
 * Returns how many jobs it moved, or a negative status. */
int shmq_jobs_tick(shmq_handle *handle);
int64_t shmq_jobs_next_due(const shmq_handle *handle);
/* A job waiting for its time (delay, retry backoff) becomes due now (not
 * logged: a restart restores its logged time). SHMQ_EEMPTY: none such. */
int shmq_job_run_now(shmq_handle *handle, uint64_t job_id);
/* A job waiting for its time is deleted: it ends dead (a DEAD record with
 * `error`; its unique key freed, its ordered lane's gate opened). SHMQ_EEMPTY: none such. */
int shmq_job_delete(shmq_handle *handle, uint64_t job_id, uint8_t tag, const char *error, uint32_t length);
/* SHMQ_JOB_* of a job id; for a finished one, *info. */
int shmq_job_status(shmq_handle *handle, uint64_t job_id, shmq_result_info *info /* OUT */);
/* Waits for a job's result and copies it (ECLAIMED: info->length is larger
 * than capacity; call again with a larger buffer and timeout 0). EEMPTY at
 * the deadline. */
int shmq_result_wait(shmq_handle *handle, uint64_t job_id, int64_t timeout_ns, char *buffer, uint32_t capacity,
                     shmq_result_info *info /* OUT */);
void shmq_job_stats_read(const shmq_handle *handle, int lane, shmq_job_stats *stats /* OUT */);
void shmq_histogram_read(const shmq_handle *handle, int which, uint64_t *buckets /* OUT [SHMQ_HIST_BUCKETS] */);
uint64_t shmq_histogram_bucket_low(uint32_t bucket);
/* Per-task counters and histograms (every job of a task whose producer
 * counted it and whose consumer bound its lease). shmq_task_slot finds or
 * takes the slot of a name (the last slot, "*", when the table is full);
 * shmq_task_bind ties a lease to a slot, so its finish counts there;
 * shmq_task_read copies slot `slot` (0: free, 1: copied). */
int shmq_task_slot(shmq_handle *handle, const char *name, uint32_t length);
int shmq_task_enqueued(shmq_handle *handle, int slot, uint32_t count);
int shmq_task_bind(shmq_handle *handle, const shmq_delivery *delivery, int slot);
int shmq_task_read(const shmq_handle *handle, int slot, shmq_task_stats *stats /* OUT */,
                   uint64_t *wait_buckets /* OUT [SHMQ_HIST_BUCKETS] */, uint64_t *run_buckets /* OUT */);
int shmq_unique_release(shmq_handle *handle, uint64_t unique_hi, uint64_t unique_lo, uint64_t job_id);

/* Job control (csrc/jobs_cancel.c). shmq_job_cancel: a queued or scheduled
 * job ends cancelled now and never runs (*outcome SHMQ_CANCEL_ENDED); a
 * running one is marked (SHMQ_CANCEL_RUNNING): its task sees it through
 * shmq_job_control, a failure ends it cancelled, and with `force` its
 * process is killed (SIGKILL) and the lease's taking back ends it
 * cancelled. SHMQ_CANCEL_NONE: not pending (finished, or unknown). */
int shmq_job_cancel(shmq_handle *handle, uint64_t job_id, int force, int *outcome /* OUT */);
/* For the lease's holder: the job's SHMQ_JOBC_* bits (>= 0), or SHMQ_ELEASE. */
int shmq_job_control(shmq_handle *handle, const shmq_delivery *delivery);
/* For the lease's holder: progress in parts per million (0 .. 1000000). */
int shmq_job_progress_set(shmq_handle *handle, const shmq_delivery *delivery, uint32_t ppm);
/* Any process: a running job's progress in ppm (>= 0), or -1: none known. */
int64_t shmq_job_progress(const shmq_handle *handle, uint64_t job_id);
/* The lease (entry, gen) of job_id, held by another participant of this
 * process's making (a worker child about to be killed), becomes ours: the
 * old holder's ack/fail get SHMQ_ELEASE. Fills *delivery for shmq_fail. */
int shmq_lease_take(shmq_handle *handle, uint64_t job_id, uint32_t entry, uint64_t gen,
                    shmq_delivery *delivery /* OUT */);

/* Throttling. The controller (the supervisor) calls shmq_throttle_refill
 * every few milliseconds with the puts allowed until the next call; without
 * refills for a second, producers are not held back by credit (the data
 * path never waits for the supervisor). shmq_queue_depth: jobs in the
 * lanes and in the log's backlog. */
void shmq_throttle_refill(shmq_handle *handle, int64_t credits, uint64_t rate);
uint64_t shmq_queue_depth(const shmq_handle *handle);
uint64_t shmq_consumed(const shmq_handle *handle);

/* Inspecting (shmq inspect): snapshots, for people. */
typedef struct shmq_lane_info {
    uint64_t head;
    uint64_t tail;
    uint64_t pushed;
    uint64_t popped;
    uint64_t gate;             /* ordered lanes: 0 open; else see layout.h */
    int64_t gate_due_ns;
    uint32_t ordered;
    uint32_t reserved;
    int64_t gate_since_ns;     /* ordered lanes: CLOCK_REALTIME its job took the gate (kept while it retries) */
} shmq_lane_info;
typedef struct shmq_participant_info {
    uint64_t start_time;
    uint32_t pid;              /* 0: a free entry */
    uint32_t alive;
    uint32_t roles;
    uint32_t sleeping;
} shmq_participant_info;
typedef struct shmq_job_info {
    uint64_t job_id;
    int64_t enqueued_ns;       /* CLOCK_REALTIME */
    int64_t due_ns;            /* waiting: CLOCK_REALTIME */
    int64_t lease_left_ns;     /* running: until the lease expires */
    uint64_t gen;              /* running: the lease's generation (for shmq_lease_take) */
    uint32_t entry;
    uint32_t owner_pid;        /* running: the consumer's pid */
    uint32_t lane;
    uint32_t length;
    uint16_t attempt;
    uint8_t kind;              /* 2 running, 3 waiting, 4 being moved, 5 finishing */
    uint8_t flags;
} shmq_job_info;
void shmq_lane_info_read(const shmq_handle *handle, uint32_t lane, shmq_lane_info *info /* OUT */);
uint32_t shmq_participant_slots(const shmq_handle *handle);
void shmq_participant_info_read(const shmq_handle *handle, uint32_t index, shmq_participant_info *info /* OUT */);
/* Copies up to `capacity` live job entries; returns how many it copied. */
uint32_t shmq_jobs_list(const shmq_handle *handle, shmq_job_info *out, uint32_t capacity);

/* Admission (admission.c): pause, concurrency seats, rate limits. Keys are
 * 64-bit hashes made by the caller (never 0). shmq_pause_set(task 0): the
 * queue (no fetch takes a job while paused); else a task, named for people.
 * shmq_pause_check: 1 if `task` is paused. shmq_seat_take: one of the
 * `limit` seats of `key` for this process (EFULL: all held by live
 * processes); shmq_seat_give hands it back; a dead holder's seat is taken
 * back by whoever finds it. shmq_rate_take: OK, or EFULL with how long to
 * wait. shmq_hold: a leased job waits until retry_at_ns (CLOCK_REALTIME)
 * without counting an attempt (held back, not failed). */
#define SHMQ_PAUSE_SLOTS 64u
#define SHMQ_SEAT_SLOTS 4096u
#define SHMQ_RATE_SLOTS 1024u
typedef struct shmq_pause_info {
    uint64_t task;
    char name[56];
} shmq_pause_info;
int shmq_pause_set(shmq_handle *handle, uint64_t task, const char *name, int paused);
int shmq_pause_check(shmq_handle *handle, uint64_t task);
int shmq_queue_paused(const shmq_handle *handle);
uint32_t shmq_pause_list(const shmq_handle *handle, shmq_pause_info *out, uint32_t capacity);
int shmq_seat_take(shmq_handle *handle, uint64_t key, uint32_t limit, uint32_t *seat /* OUT */);
int shmq_seat_give(shmq_handle *handle, uint64_t key, uint32_t seat);
uint32_t shmq_seats_held(shmq_handle *handle, uint64_t key, uint32_t limit);
int shmq_rate_take(shmq_handle *handle, uint64_t key, int64_t interval_ns, int64_t *wait_ns /* OUT */);
int shmq_hold(shmq_handle *handle, const shmq_delivery *delivery, int64_t retry_at_ns);
uint64_t shmq_admission_held(const shmq_handle *handle);
/* Priorities: unordered lane k is band k (lane 0 first); a lane not looked
 * at for band * age_ns goes first (aging). Set once a job has a priority. */
void shmq_priority_on(shmq_handle *handle, int64_t age_ns);

/* Observing. */
void shmq_counts_read(const shmq_handle *handle, shmq_counts *counts /* OUT */);
int shmq_is_empty(const shmq_handle *handle);
int shmq_is_full(const shmq_handle *handle);
int shmq_repair(shmq_handle *handle);

#endif /* SHMQ_API_H */
