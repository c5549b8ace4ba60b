/* SPDX-License-Identifier: Apache-2.0 */
/*
 * layout.h -- THE shared-memory format of a shmq queue.
 *
 * A queue is one POSIX shared-memory object ("region"), named
 * "/shmq.<name>.<12 hex of sha1(realpath(data dir))>", mode 0600. All fields
 * are native-endian: shared memory is transient state of one machine and is
 * never written to disk. Bump SHMQ_LAYOUT_VERSION on any change to this file.
 *
 * Byte map of a region
 * --------------------
 *   0                      shmq_region_header (640 bytes)
 *   640                    shmq_participant[participant_capacity] (32 bytes each)
 *   lanes_offset           lane 0, lane 1, ... each lane_bytes long, 64-aligned
 *   jobs_offset            the job tables (see "Jobs" below), when job_slots > 0
 *
 * Byte map of a lane
 * ------------------
 *   0     shmq_lane_header (128 bytes: producer line, consumer line)
 *   128   uint64 state[slots]           one state word per slot
 *   D     uint8  data[slots][slot_bytes] D = 128 + 8*slots rounded up to 64
 *
 * Positions
 * ---------
 * Every lane counts positions 0, 1, 2, ... forever (64 bits never wrap).
 * Position p lives in slot p & (slots-1), in lap p >> log2(slots).
 * A message occupies `span` consecutive positions (its data is contiguous
 * in data[] except where it wraps past the last slot). Its first slot starts
 * with a shmq_msg_header; payload bytes follow it directly.
 *
 * The slot state word (64 bits)
 * -----------------------------
 *   bits 63..32  lap   (position >> log2(slots), modulo 2^32)
 *   bits 31..29  kind  FREE=0 WRITING=1 READY=2 READING=3
 *   bits 28..16  owner participant index (1..8191; 0 = none)
 *   bits 15..0   span - 1 (a claim covers 1..65536 slots)
 * A zero-filled region is therefore "every slot FREE in lap 0": valid.
 *
 * Life of a message at position p, lap L (first slot s = p & mask):
 *   state[s] FREE(L) --CAS by producer--> WRITING(L, producer, span)
 *            --store release--> READY(L, producer, span)          published
 *            --CAS by consumer--> READING(L, consumer, span)
 *            --store release--> FREE(L+1)                          released
 * Slots p+1 .. p+span-1 stay FREE(L) while the message lives and are stored
 * FREE(L+1) by the consumer before the first slot is. A producer may claim
 * position p only if all slots of its span are FREE of their own lap.
 *
 * The claim is the CAS on the slot state, and it names its owner, so no
 * claim ever exists without a recorded owner. `tail` and `head` are hints
 * that only grow: whoever sees a claimed slot at tail (or head) moves the
 * hint past it by the span written in the state word. Batches: a producer
 * claims one span for n messages (first slot WRITING with the total span),
 * publishes messages 2..n READY with their own spans, then message 1 last.
 *
 * A message is valid iff its first slot's state is READY(L) for the lap L
 * of its position; then its header and span slots of data were written
 * before that release store, and span == ceil((16 + length) / slot_bytes)
 * (a consumer that finds otherwise drops the message and counts it).
 *
 * Dead processes (nothing waits forever)
 * --------------------------------------
 * Each attached handle registers in the participant table (pid + process
 * start time, so a reused pid is not taken for the dead one). Sleepers
 * mark themselves there too, so a sleeper's death does not leave the
 * waiters counters raised (shmq_sweep_sleepers). A consumer
 * that finds WRITING(dead owner) at the head takes it over as READING and
 * releases the whole span: the put never returned, so dropping it is
 * allowed. A producer blocked by READING(dead owner) from the previous lap
 * (also found from an intermediate slot, by scanning back to the first
 * slot of the message) takes it over and releases it: that message had
 * already been handed to the consumer that died. Takeover is a CAS on the
 * state word, so exactly one repairer wins.
 */
#ifndef SHMQ_LAYOUT_H
#define SHMQ_LAYOUT_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shmq_api.h"

#define SHMQ_CACHE_LINE 64

/* Units of shmq_participant.sleeping: how many of the process's threads
 * sleep for data (low 16 bits) and for space (high 16 bits). A process
 * killed while asleep leaves them set, and whoever sweeps dead participants
 * takes them back from the waiters counters (else every publish would pay
 * a futex wake). */
#define SHMQ_SLEEP_DATA 1u
#define SHMQ_SLEEP_SPACE 0x10000u

enum shmq_slot_kind {
    SHMQ_SLOT_FREE = 0,
    SHMQ_SLOT_WRITING = 1,
    SHMQ_SLOT_READY = 2,
    SHMQ_SLOT_READING = 3,
};

#define SHMQ_STATE_KIND_SHIFT 29
#define SHMQ_STATE_OWNER_SHIFT 16
#define SHMQ_STATE_OWNER_MASK 0x1FFFu
#define SHMQ_STATE_SPAN_MASK 0xFFFFu
#define SHMQ_MAX_SPAN 65536u

/* The state word of a slot; see "The slot state word" above. */
static inline uint64_t shmq_state(uint32_t lap, unsigned kind, unsigned owner, uint32_t span)
{
    return ((uint64_t)lap << 32) | ((uint64_t)kind << SHMQ_STATE_KIND_SHIFT) |
           ((uint64_t)(owner & SHMQ_STATE_OWNER_MASK) << SHMQ_STATE_OWNER_SHIFT) |
           (uint64_t)(span ? span - 1 : 0);
}
static inline uint32_t shmq_state_lap(uint64_t s) { return (uint32_t)(s >> 32); }
static inline unsigned shmq_state_kind(uint64_t s) { return (unsigned)(s >> SHMQ_STATE_KIND_SHIFT) & 7u; }
static inline unsigned shmq_state_owner(uint64_t s)
{
    return (unsigned)(s >> SHMQ_STATE_OWNER_SHIFT) & SHMQ_STATE_OWNER_MASK;
}
static inline uint32_t shmq_state_span(uint64_t s) { return (uint32_t)(s & SHMQ_STATE_SPAN_MASK) + 1u; }
/* Laps wrap at 2^32: compare them as a signed distance. */
static inline int shmq_lap_before(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }

typedef struct shmq_region_header {
    /* Identity and parameters: written once by the creator, read-only after
     * `magic` is published. */
    _Atomic uint64_t magic;        /* stored last, release; pairs with the acquire in region_check */
    uint32_t layout_version;
    uint32_t header_bytes;         /* sizeof(shmq_region_header) */
    uint64_t region_bytes;
    uint32_t lane_count;
    uint32_t slots_per_lane;       /* a power of two */
    uint32_t slot_bytes;           /* a multiple of 16, >= 16 */
    uint32_t codec_id;
    uint64_t max_message_bytes;
    uint64_t lane_bytes;
    uint64_t lanes_offset;
    uint32_t participant_capacity; /* entries, index 0 unused */
    uint32_t creator_pid;
    uint64_t pid_namespace;        /* inode of /proc/self/ns/pid: pids mean nothing across namespaces */
    uint64_t jobs_offset;          /* the job tables; 0: none (durability none) */
    uint64_t result_bytes;         /* result arena bytes */
    uint32_t job_slots;            /* shmq_job_entry count */
    uint32_t unique_slots;         /* shmq_unique_entry count, a power of two */
    uint32_t result_slots;         /* shmq_result_entry count */
    uint32_t ordered_lanes;        /* lanes [lane_count - ordered_lanes, lane_count) are ordered */
    uint64_t result_ttl_ns;        /* a result older than this is expired */
    uint64_t reserved0;

    /* Consumers sleep on data_event; producers bump it only when data_waiters > 0. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint32_t data_event;
    _Atomic uint32_t data_waiters;
    uint8_t reserved1[SHMQ_CACHE_LINE - 8];

    /* Producers sleep on space_event; consumers bump it only when space_waiters > 0. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint32_t space_event;
    _Atomic uint32_t space_waiters;
    uint8_t reserved2[SHMQ_CACHE_LINE - 8];

    /* Rarely written counters (repairs); statistics only, relaxed. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t dropped_dead_producer;  /* spans of dead writers released */
    _Atomic uint64_t released_dead_consumer; /* spans of dead readers released */
    _Atomic uint64_t dropped_corrupt;        /* messages whose header contradicted their span */
    uint8_t reserved3[SHMQ_CACHE_LINE - 24];

    /* Log: the append point, alone on its line (every put and get adds to it). */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t log_tail; /* SHMQ_TAIL_SPILL | next position to reserve */
    uint8_t reserved4[SHMQ_CACHE_LINE - 8];

    /* Log parameters: written once by the creator, before the magic. */
    alignas(SHMQ_CACHE_LINE) uint64_t segment_bytes;  /* a multiple of 4096 */
    uint32_t durability;                              /* SHMQ_DURABILITY_* */
    _Atomic uint32_t log_flags;                       /* SHMQ_LOG_READY once recovery finished */
    uint64_t flush_interval_ns;                       /* interval: flush at least this often */
    uint64_t flush_bytes;                             /* interval: or after this many bytes (0: every append) */
    uint64_t log_origin;                              /* first position of this region's log */
    uint8_t reserved5[SHMQ_CACHE_LINE - 40];

    /* Log maintenance: retention, the backlog feeder, checkpoints. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t log_base; /* first position whose segment still exists */
    _Atomic uint64_t feed_cursor;      /* while SPILL: next log position to feed into the lanes */
    _Atomic uint64_t checkpoint_floor; /* lane jobs with ids below it have copies from checkpoint_begin on */
    _Atomic uint32_t feeder;           /* participant feeding the backlog (0: none) */
    _Atomic uint32_t maintainer;       /* participant running maintenance (0: none) */
    _Atomic int64_t maintained_ns;     /* when maintenance last ran (monotonic) */
    _Atomic uint64_t segments_made;    /* segments [0, segments_made) were created (some since deleted) */
    _Atomic uint64_t checkpoint_begin; /* the copies of the last checkpoint start here */
    _Atomic uint64_t segment_claim;    /* creator participant << 48 | segment index + 1: one creator at a time */

    /* Group commit (sync, interval): generations of flushes. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t flush_started; /* flushes begun */
    _Atomic uint64_t flush_done;       /* highest generation whose flush finished */
    _Atomic uint64_t flushed_tail;     /* log_tail read before the last flush began */
    _Atomic int64_t flushed_ns;        /* when the last flush began (monotonic) */
    _Atomic uint32_t flusher;          /* participant flushing now (0: none) */
    _Atomic uint32_t flush_event;      /* futex: bumped when a flush ends and someone waits */
    _Atomic uint32_t unflushed;        /* sync writers that published since the last flush began */
    _Atomic int32_t log_errno;         /* last errno of a failed log write or flush (0: none) */
    _Atomic uint32_t last_group;       /* the largest group of writers one flush covered lately */
    uint32_t reserved7;
    _Atomic uint64_t spilled;          /* records written for the feeder (SHMQ_ENQ_SPILLED); backlog = spilled - fed */

    /* Log statistics: relaxed counters. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t records_appended;
    _Atomic uint64_t bytes_appended;
    _Atomic uint64_t flushes;
    _Atomic uint64_t holes_filled;
    _Atomic uint64_t redelivered;      /* messages of dead consumers put back */
    _Atomic uint64_t fed;              /* backlog records fed into lanes */
    _Atomic uint64_t checkpoints;
    _Atomic uint64_t segments_deleted;
} shmq_region_header;

_Static_assert(offsetof(shmq_region_header, magic) == 0, "magic first: a reader checks it before anything else");
_Static_assert(offsetof(shmq_region_header, layout_version) == 8, "layout_version at 8 in every version");
_Static_assert(offsetof(shmq_region_header, header_bytes) == 12, "format");
_Static_assert(offsetof(shmq_region_header, region_bytes) == 16, "format");
_Static_assert(offsetof(shmq_region_header, lane_count) == 24, "format");
_Static_assert(offsetof(shmq_region_header, slots_per_lane) == 28, "format");
_Static_assert(offsetof(shmq_region_header, slot_bytes) == 32, "format");
_Static_assert(offsetof(shmq_region_header, codec_id) == 36, "format");
_Static_assert(offsetof(shmq_region_header, max_message_bytes) == 40, "format");
_Static_assert(offsetof(shmq_region_header, lane_bytes) == 48, "format");
_Static_assert(offsetof(shmq_region_header, lanes_offset) == 56, "format");
_Static_assert(offsetof(shmq_region_header, participant_capacity) == 64, "format");
_Static_assert(offsetof(shmq_region_header, creator_pid) == 68, "format");
_Static_assert(offsetof(shmq_region_header, pid_namespace) == 72, "format");
_Static_assert(offsetof(shmq_region_header, jobs_offset) == 80, "format");
_Static_assert(offsetof(shmq_region_header, result_ttl_ns) == 112, "format");
_Static_assert(offsetof(shmq_region_header, data_event) == 128, "own cache line: consumers' futex word, away from the parameters");
_Static_assert(offsetof(shmq_region_header, space_event) == 192, "own cache line: producers' futex word, no false sharing with data_event");
_Static_assert(offsetof(shmq_region_header, dropped_dead_producer) == 256, "format");
_Static_assert(offsetof(shmq_region_header, log_tail) == 320, "own cache line: every append adds to it");
_Static_assert(offsetof(shmq_region_header, segment_bytes) == 384, "format");
_Static_assert(offsetof(shmq_region_header, log_base) == 448, "format");
_Static_assert(offsetof(shmq_region_header, flush_started) == 512, "format");
_Static_assert(offsetof(shmq_region_header, records_appended) == 576, "format");
_Static_assert(sizeof(shmq_region_header) == 640, "header is ten cache lines");

typedef struct shmq_participant {
    _Atomic uint32_t pid;          /* 0 = free; CAS 0 -> pid claims the entry */
    _Atomic uint32_t sleeping;     /* SHMQ_SLEEP_* units: this process's sleepers in data/space_waiters */
    _Atomic uint64_t start_time;   /* field 22 of /proc/<pid>/stat; 0 = unknown */
    _Atomic uint64_t pin;          /* log position + 1 below which this process's records stay needed; 0 = none */
    _Atomic uint32_t roles;        /* SHMQ_ROLE_*: what this handle did (statistics) */
    _Atomic uint32_t result_sleeping; /* this process's threads counted in result_waiters */
} shmq_participant;
#define SHMQ_ROLE_CONSUMER 1u

_Static_assert(offsetof(shmq_participant, pid) == 0, "format");
_Static_assert(offsetof(shmq_participant, sleeping) == 4, "format");
_Static_assert(offsetof(shmq_participant, start_time) == 8, "format");
_Static_assert(offsetof(shmq_participant, pin) == 16, "format");
_Static_assert(sizeof(shmq_participant) == 32, "format");

typedef struct shmq_lane_header {
    /* Producer line: only producers write it. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t tail; /* hint: every position below it is claimed; only grows */
    _Atomic uint64_t pushed;                        /* messages published (statistics, qsize) */
    uint8_t reserved0[SHMQ_CACHE_LINE - 16];
    /* Consumer line: only consumers write it. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t head; /* hint: every position below it is taken; head <= tail */
    _Atomic uint64_t popped;                        /* messages taken (statistics, qsize) */
    _Atomic uint64_t gate;                          /* ordered lanes: SHMQ_GATE_* (see "Ordered lanes") */
    _Atomic int64_t gate_due;                       /* ordered lanes: when the gate's WAITING job may run */
    _Atomic int64_t looked_ns;                      /* prioritized queues: CLOCK_MONOTONIC when a fetch last
                                                     * took from this lane or found it empty (admission.c) */
    _Atomic int64_t gate_since;                     /* ordered lanes: CLOCK_REALTIME the gate's job took it */
    uint8_t reserved1[SHMQ_CACHE_LINE - 48];
} shmq_lane_header;

_Static_assert(offsetof(shmq_lane_header, tail) == 0, "format");
_Static_assert(offsetof(shmq_lane_header, pushed) == 8, "format");
_Static_assert(offsetof(shmq_lane_header, head) == 64, "head on its own cache line: producers and consumers must not false-share");
_Static_assert(offsetof(shmq_lane_header, popped) == 72, "format");
_Static_assert(offsetof(shmq_lane_header, gate) == 80, "format");
_Static_assert(offsetof(shmq_lane_header, gate_due) == 88, "format");
_Static_assert(offsetof(shmq_lane_header, looked_ns) == 96, "format");
_Static_assert(sizeof(shmq_lane_header) == 128, "format");

/* Written at the start of a message's first slot. */
typedef struct shmq_msg_header {
    uint32_t length;   /* payload bytes following this header (SHMQ_MSG_REF: in the log record) */
    uint8_t tag;       /* codec tag, opaque to the core */
    uint8_t flags;     /* SHMQ_MSG_* */
    uint16_t attempt;  /* 1 for the first delivery */
    uint64_t job_id;   /* log position of the job's first ENQUEUE record (0: not logged) */
    int64_t enqueued_ns; /* CLOCK_REALTIME of the job's enqueue (0: not logged) */
} shmq_msg_header;

_Static_assert(offsetof(shmq_msg_header, length) == 0, "format");
_Static_assert(offsetof(shmq_msg_header, tag) == 4, "format");
_Static_assert(offsetof(shmq_msg_header, flags) == 5, "format");
_Static_assert(offsetof(shmq_msg_header, attempt) == 6, "format");
_Static_assert(offsetof(shmq_msg_header, job_id) == 8, "format");
_Static_assert(offsetof(shmq_msg_header, enqueued_ns) == 16, "format");
_Static_assert(sizeof(shmq_msg_header) == SHMQ_MSG_HEADER_BYTES, "format");

/* SHMQ_MSG_REF: the lane carries a shmq_msg_ref instead of the payload. */
typedef struct shmq_msg_ref {
    uint64_t record;   /* log position of the ENQUEUE record holding the payload */
    uint32_t offset;   /* of the payload within that record */
    uint32_t reserved;
} shmq_msg_ref;
_Static_assert(sizeof(shmq_msg_ref) == 16, "format");

/*
 * ======================================================================
 * The log (write-ahead log): format version SHMQ_LOG_VERSION
 * ======================================================================
 *
 * Unlike the region, the log is written to disk: all fields are
 * little-endian (shmq builds only on little-endian hosts, see below).
 *
 * Files, in the log directory (<data dir>/<queue>.log/, or for durability
 * "memory" /dev/shm/shmq.<queue>.<12 hex>.log/), mode 0600:
 *   <16 hex digits of base>.seg    segment `index`, base = index * S (its first position)
 *   snapshot                       live jobs at a clean shutdown (optional)
 *   params                         the queue's parameters (shmq/logparams.py)
 *   damaged/                       files recovery found damaged: kept, never read again
 *   history                        recent jobs read from the log (shmq/channel/history.py); not read by the core
 *
 * Positions: the log is one byte sequence numbered 0, 1, 2, ... forever.
 * Segment i holds positions [i * S, (i + 1) * S), S = segment_bytes, at
 * file offset SHMQ_SEGMENT_HEADER_BYTES + (position - i * S). A segment
 * file is at most SHMQ_SEGMENT_HEADER_BYTES + S bytes, and every block
 * below its length is allocated (zero-filled or fallocated): it is made
 * with its first 64 KiB of records and grown (fallocate, or zeros
 * appended) before a writer writes past its end, so writing into the
 * mapping never meets a missing block (no SIGBUS on a full disk).
 * Positions past a file's length hold no record. Segment i + 1 is made
 * only once segment i is whole, so every segment but the last is whole;
 * a shorter one before the last is damage. (Logs whose files were all
 * made whole read the same; readers that expect whole files read these
 * too: only the last is short, as a log cut short at its end.)
 *
 * Records: 8-aligned, never across a segment end; each starts with a
 * shmq_record_header. A record's `length` covers header, body and padding
 * to 8. Its job_id is the position of the job's first ENQUEUE record, so
 * ids are unique and grow with time; `seq` is the record's own position.
 *
 * Appending (any number of processes at once):
 *   1. reserve: p = fetch_add(log_tail, length). If [p, p + length) crosses
 *      a segment end, the writer fills both pieces with PAD records and
 *      reserves again.
 *   2. claim: CAS word 0 -> PENDING(length, owner). Failure means a hole
 *      filler voided the space (below): reserve again.
 *   3. write the body and the rest of the header, CRC last.
 *   4. publish: CAS word PENDING -> (length, type). release: the body is
 *      visible to whoever sees the type. Failure: voided, reserve again.
 * So a reader never takes a half-written record for a whole one: a word
 * that is 0 or PENDING is not a record yet, and a record whose CRC does not
 * match is corrupt.
 *
 * Holes: a writer killed between reserve and publish leaves zeros or a
 * PENDING word. A filler (the backlog feeder, recovery) that finds one
 * turns it into PAD: PENDING(owner dead) -> PAD(length) by CAS; zeros ->
 * every 8-byte word up to the next non-zero word is CAS'd 0 -> VOID, then
 * the first becomes PAD. A live writer that was only slow then fails its
 * CAS and writes its record again further on; nothing is lost or hidden.
 *
 * CRC32C (Castagnoli) covers bytes [12, length) of the record, then the 8
 * bytes of the published word. PADs shorter than a header (at a segment's
 * end or start) are the word alone.
 *
 * Recovery reads the snapshot, then every record of every segment in
 * position order; a job is live from its ENQUEUE until its DONE or DEAD.
 * Beyond the last valid record the tail is cut (reported with offset and
 * byte count); a corrupt record with valid records after it is skipped
 * (found by scanning on at 8-byte steps for a header whose CRC holds).
 * A segment is valid iff its header's CRC holds and its base and index
 * agree with its file name; an invalid one is still read, record by record,
 * at the base its name gives. Segments follow each other: a gap is damage.
 */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the log format is little-endian; shmq does not support big-endian hosts"
#endif

#define SHMQ_SEGMENT_MAGIC 0x31474553514d4853ull  /* "SHMQSEG1" */
#define SHMQ_SNAPSHOT_MAGIC 0x31504e53514d4853ull /* "SHMQSNP1" */
#define SHMQ_LOG_VERSION 1u
#define SHMQ_SEGMENT_HEADER_BYTES 4096u
#define SHMQ_RECORD_ALIGN 8u

enum shmq_record_type {
    SHMQ_REC_NONE = 0,     /* never published: 0 word = unwritten */
    SHMQ_REC_PAD = 1,      /* filler: end of segment, or a voided reservation */
    SHMQ_REC_ENQUEUE = 2,  /* a job: shmq_enqueue_body, group, unique key, payload */
    SHMQ_REC_START = 3,    /* job_id handed to a consumer that will ack: shmq_start_body */
    SHMQ_REC_DONE = 4,     /* job_id finished (body empty) */
    SHMQ_REC_DONE_MANY = 5,/* body: uint32 count, uint32 0, uint64 job_id[count] */
    SHMQ_REC_RETRY = 6,    /* job_id runs again: shmq_retry_body, then error text */
    SHMQ_REC_DEAD = 7,     /* job_id failed for good: shmq_retry_body, then error text */
    SHMQ_REC_CHECKPOINT_BEGIN = 8, /* copies of live jobs follow: shmq_checkpoint_body */
    SHMQ_REC_CHECKPOINT_END = 9,   /* the copies are complete: shmq_checkpoint_body */
    SHMQ_REC_TYPE_MAX = 9,
    SHMQ_REC_PENDING = 0xFE, /* reserved, being written by `owner` */
    SHMQ_REC_VOID = 0xFF,    /* inside a filled hole */
};

/* The published word: bits 0..31 length, 32..39 type, 40..52 owner (PENDING only). */
static inline uint64_t shmq_record_word(uint32_t length, unsigned type, unsigned owner)
{
    return (uint64_t)length | ((uint64_t)(type & 0xFFu) << 32) | ((uint64_t)(owner & 0x1FFFu) << 40);
}
static inline uint32_t shmq_word_length(uint64_t w) { return (uint32_t)w; }
static inline unsigned shmq_word_type(uint64_t w) { return (unsigned)(w >> 32) & 0xFFu; }
static inline unsigned shmq_word_owner(uint64_t w) { return (unsigned)(w >> 40) & 0x1FFFu; }

typedef struct shmq_record_header {
    _Atomic uint64_t word;  /* length | type << 32, written last (see "Appending") */
    uint32_t crc;           /* CRC32C, see above */
    uint32_t body_bytes;    /* bytes of body after this header (length = align8(32 + body_bytes)) */
    uint64_t seq;           /* this record's position */
    uint64_t job_id;        /* the job it is about (DONE_MANY, PAD, CHECKPOINT_*: 0) */
} shmq_record_header;
_Static_assert(offsetof(shmq_record_header, word) == 0, "format");
_Static_assert(offsetof(shmq_record_header, crc) == 8, "format");
_Static_assert(offsetof(shmq_record_header, body_bytes) == 12, "format");
_Static_assert(offsetof(shmq_record_header, seq) == 16, "format");
_Static_assert(offsetof(shmq_record_header, job_id) == 24, "format");
_Static_assert(sizeof(shmq_record_header) == 32, "format");

typedef struct shmq_enqueue_body {
    int64_t enqueued_ns;    /* CLOCK_REALTIME of the first enqueue */
    int64_t not_before_ns;  /* CLOCK_REALTIME; 0 = at once */
    uint32_t lane;          /* UINT32_MAX: any */
    uint16_t attempt;       /* 1 = first run */
    uint8_t tag;            /* codec tag of the payload */
    uint8_t flags;          /* SHMQ_ENQ_* */
    uint16_t group_bytes;
    uint16_t unique_bytes;
    uint32_t payload_bytes;
    /* then group, unique key, payload: no padding between */
} shmq_enqueue_body;
_Static_assert(sizeof(shmq_enqueue_body) == 32, "format");
#define SHMQ_ENQ_LANED 1u   /* its writer pushes it into a lane: the feeder skips it */
#define SHMQ_ENQ_SPILLED 2u /* written while spilling: the feeder moves it into a lane */
#define SHMQ_ENQ_COPY 4u    /* a copy of a job enqueued earlier (checkpoint, recovery, redelivery) */
#define SHMQ_ENQ_UNIQUE_FINISH 8u /* its unique key (16 bytes: a hash) is held until it ends, not until it starts */
#define SHMQ_ENQ_SCHEDULED 16u    /* its writer put it in the job table to wait for not_before */

typedef struct shmq_start_body {
    uint32_t lane;
    uint16_t attempt;
    uint16_t reserved;
    uint32_t pid;
    uint32_t reserved2;
    int64_t lease_until_ns; /* CLOCK_REALTIME */
} shmq_start_body;
_Static_assert(sizeof(shmq_start_body) == 24, "format");

typedef struct shmq_retry_body {
    int64_t not_before_ns;  /* RETRY: when it may run again */
    uint16_t attempt;       /* RETRY: the next attempt; DEAD: the last one */
    uint16_t reason;        /* SHMQ_RETRY_* */
    uint32_t error_bytes;   /* error text (UTF-8) after this body */
} shmq_retry_body;
_Static_assert(sizeof(shmq_retry_body) == 16, "format");
enum { SHMQ_RETRY_FAILED = 1, SHMQ_RETRY_CONSUMER_DIED = 2, SHMQ_RETRY_RECOVERED = 3, SHMQ_RETRY_HELD = 4,
       SHMQ_RETRY_CANCELLED = 5 };
/* SHMQ_RETRY_HELD: held back by a limit or a pause (shmq_hold); `attempt` is unchanged. */

typedef struct shmq_checkpoint_body {
    uint64_t floor;         /* END: every live job with a record below it has a copy after BEGIN */
    uint64_t begin;         /* END: position of the matching BEGIN */
    uint64_t count;         /* END: copies written */
    uint64_t reserved;
} shmq_checkpoint_body;
_Static_assert(sizeof(shmq_checkpoint_body) == 32, "format");

/* First bytes of a segment file (the rest of its 4096-byte header page is 0). */
typedef struct shmq_segment_header {
    uint64_t magic;          /* SHMQ_SEGMENT_MAGIC, or SHMQ_SNAPSHOT_MAGIC for the snapshot */
    uint32_t version;        /* SHMQ_LOG_VERSION */
    uint32_t header_bytes;   /* SHMQ_SEGMENT_HEADER_BYTES */
    uint64_t segment_bytes;  /* S; snapshot: bytes of records after the header */
    uint64_t index;          /* segment index; snapshot: its job count (0 with records: not counted) */
    uint64_t base;           /* index * S; snapshot: the log position it covers up to */
    int64_t created_ns;      /* CLOCK_REALTIME */
    uint32_t durability;     /* of the queue when written */
    uint32_t crc;            /* CRC32C of the bytes above */
} shmq_segment_header;
_Static_assert(sizeof(shmq_segment_header) == 56, "format");

#define SHMQ_LOG_READY 1u /* log_flags: the creator finished recovery (else it died in it) */
#define SHMQ_TAIL_SPILL (1ull << 63) /* log_tail bit: new jobs wait in the log, the feeder moves them */

/*
 * ======================================================================
 * Jobs: leases, scheduled jobs, ordered lanes, unique keys, results
 * ======================================================================
 *
 * Present when the queue has a log (job_slots > 0). At jobs_offset:
 *   shmq_jobs_header                         (see below)
 *   shmq_lane_metrics[lane_count]            128 bytes each
 *   shmq_job_entry[job_slots]                384 bytes each
 *   shmq_unique_entry[unique_slots]          32 bytes each
 *   shmq_unique_change[unique_slots]         32 bytes each: changes waiting for the lock
 *   shmq_result_entry[result_slots]          64 bytes each
 *   uint8 arena[result_bytes]                result bytes, a ring, padded to a cache line
 *   shmq_task_entry[SHMQ_TASK_SLOTS]         per-task counters and histograms
 *   admission tables (see "Admission" below): 64-aligned, as every part before is
 *
 * Job entries hold every job that is out of the lanes but not finished:
 * leased to a consumer (RUNNING) or waiting for a time (WAITING: a delay,
 * a retry's backoff). The entry's state word is kind << 56 | owner << 40 |
 * gen (40 bits); gen grows on every lease, so a lease is (entry, gen) and a
 * consumer that lost its lease cannot finish someone else's.
 *   FREE --CAS claimer--> FILLING(owner) --store release--> RUNNING(owner, gen) or WAITING
 *   RUNNING --CAS owner--> FINISHING(owner) --ack/dead--> FREE, or --retry--> WAITING
 *   RUNNING --CAS sweeper (owner dead, or lease expired)--> MOVING --> WAITING, attempt + 1
 *   WAITING(due) --CAS--> MOVING(owner) --push into a lane--> FREE
 *   WAITING(due, ordered lane) --CAS fetcher--> RUNNING(owner, gen + 1)
 * An entry keeps the payload inline (up to SHMQ_JOB_INLINE_BYTES) or the
 * position of the record that holds it (SHMQ_JOBF_REF); retention keeps
 * that record (for an inline entry: `copy`, else job_id's record) while the
 * entry lives. A checkpoint copies WAITING entries that pin old segments
 * (a job delayed for a day must not keep a day of log) and points them at
 * their copy.
 * Whoever finds an entry FILLING, RUNNING or MOVING under a dead owner
 * (shmq_jobs_tick) repairs it: FILLING is freed (its job is still in its
 * lane slot, which the lane repair puts back; or its enqueue never
 * returned), RUNNING and FINISHING become WAITING with attempt + 1 (the
 * lease expiring does the same for a live owner's RUNNING), MOVING becomes
 * WAITING again. A finish of an ordered job that had already opened its
 * lane's gate (it was acked, or dead) is freed instead.
 *
 * Ordered lanes (the last ordered_lanes lanes; a group hashes to one of
 * them): one job of the lane at a time. The lane's gate word is 0 (open),
 * SHMQ_GATE_CLAIM | owner (a consumer is taking the head message), or
 * entry + 1 (that entry holds the lane: its job runs, or waits to run
 * again). A fetch: CAS gate 0 -> CLAIM(me); take the head message without
 * moving `head`; fill an entry RUNNING; store gate = entry + 1; release the
 * slots and move `head`. An ack stores gate 0 before freeing the entry; a
 * failure that retries keeps the gate and makes the entry WAITING, so the
 * group waits for it. Repairs (owner dead): gate CLAIM(dead) -> the head
 * message taken by the dead owner goes back to READY with attempt + 1 and
 * its half-filled entry is freed; gate = entry + 1 with the head still
 * READING(dead) -> the slots are released (the entry has the job).
 *
 * Unique keys: an open-addressing table of 128-bit key hashes, changed
 * under a lock word (participant index; taken over from a dead holder).
 * job = 0 empty, SHMQ_UNIQUE_CLAIMED | owner while its enqueue writes the
 * record, else the job id. The key's hash is also in the job's ENQUEUE
 * record (unique_bytes = 16), so recovery rebuilds the table; unique jobs
 * travel by reference so that a consumer finds the key to free.
 * Changes that must not wait (storing a job's id, freeing a key) are made
 * under the lock when it is free; when it is held (by a stopped process,
 * say) they go into the change list instead, and whoever holds the lock
 * next applies them before it reads the table (unique.c). A change slot's
 * state: 0 free --CAS writer--> FILLING | owner --store release--> SET or
 * DROP --lock holder: TAKEN (drops), applied--> 0. unique_deferred counts
 * the changes written; unique_drained is its value before the last full
 * pass of a lock holder over the list (they differ: something may wait).
 *
 * Job control (csrc/jobs_cancel.c): an entry's `control` word holds what
 * was asked of its running job (SHMQ_JOBC_CANCEL, _FORCE; zeroed when the
 * entry is filled), `progress` what its task reported (ppm). A job cancelled
 * while in a lane or the backlog has its id in the header's cancel_ids
 * until a fetcher passes it by unrun; its end is a DEAD record with reason
 * SHMQ_RETRY_CANCELLED (recovery drops it) and a result with status
 * SHMQ_JOB_CANCELLED. No snapshot is written while an id is there.
 *
 * Results: entry n of the ring (n = claimed sequence number) lives in
 * slot n % result_slots; its `seq` is 2n + 1 while written and 2n + 2 once
 * published (a seqlock: readers copy, then check seq again). Result bytes
 * go to the arena at a position that only grows (pos % result_bytes); a
 * reader's copy is good if the arena's head has not passed pos +
 * result_bytes by the time it finished.
 *
 * Tasks (csrc/tasks.c): a table of SHMQ_TASK_SLOTS entries keyed by a
 * 63-bit hash of the task's name, filled by open addressing over all but
 * the last slot, which takes every task that finds no room (named "*").
 * key: 0 free --CAS claimer--> key | SHMQ_TASK_CLAIM --name written, store
 * release--> key. Producers count `enqueued` after an enqueue; a consumer
 * binds its lease to the slot (entry.task) once it has decoded the task's
 * name, and the finish (ack, fail, delete) counts done/failed/retried/dead
 * and the attempt's wait and run times into the slot. All counters relaxed.
 */
#define SHMQ_JOB_FREE 0u
#define SHMQ_JOB_FILLING 1u
#define SHMQ_JOB_RUNNING_KIND 2u
#define SHMQ_JOB_WAITING 3u
#define SHMQ_JOB_MOVING 4u
#define SHMQ_JOB_FINISHING 5u
#define SHMQ_JOB_GEN_MASK ((1ull << 40) - 1)
static inline uint64_t shmq_job_state(unsigned kind, unsigned owner, uint64_t gen)
{
    return ((uint64_t)kind << 56) | ((uint64_t)(owner & 0x1FFFu) << 40) | (gen & SHMQ_JOB_GEN_MASK);
}
static inline unsigned shmq_job_kind(uint64_t s) { return (unsigned)(s >> 56); }
static inline unsigned shmq_job_owner(uint64_t s) { return (unsigned)(s >> 40) & 0x1FFFu; }
static inline uint64_t shmq_job_gen(uint64_t s) { return s & SHMQ_JOB_GEN_MASK; }

#define SHMQ_JOBF_REF 1u           /* the payload is in the record at `record` */
#define SHMQ_JOBF_ORDERED 2u       /* it holds its lane's gate (or will, for a WAITING one) */
#define SHMQ_JOBF_UNIQUE_FINISH 4u /* its unique key is freed when it ends */
#define SHMQ_JOBF_UNIQUE 8u        /* unique_hi/lo hold its key */

/* Job control words (entry `control`): what was asked of a running job. */
#define SHMQ_JOBC_CANCEL 1u        /* cancelled: the task may look (current_job().cancelled); never retried */
#define SHMQ_JOBC_FORCE 2u         /* cancelled with force: its process was killed */
#define SHMQ_PROGRESS_NONE 0xFFFFFFFFu
#define SHMQ_CANCEL_SLOTS 127      /* cancelled jobs still in a lane or the backlog, at once */

#define SHMQ_GATE_CLAIM (1ull << 63)
#define SHMQ_UNIQUE_CLAIMED (1ull << 63)

typedef struct shmq_jobs_header {
    /* Waiters for results sleep on result_event; finishers bump it only when result_waiters > 0. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint32_t result_event;
    _Atomic uint32_t result_waiters;
    _Atomic uint32_t unique_lock;      /* participant changing the unique table (0: none) */
    _Atomic uint32_t mover;            /* participant moving due jobs into lanes (0: none) */
    _Atomic int64_t next_due_ns;       /* CLOCK_REALTIME: no WAITING entry is due before it (INT64_MAX: none) */
    _Atomic uint64_t unique_count;     /* keys held */
    _Atomic uint64_t in_flight;        /* RUNNING entries */
    _Atomic uint64_t waiting;          /* WAITING entries */
    _Atomic uint32_t entry_cursor;     /* where claimers start looking for a FREE entry; relaxed hint */
    _Atomic uint32_t unique_deferred;  /* changes written to the change list (wraps; compared for equality) */
    _Atomic uint32_t unique_drained;   /* unique_deferred before the last full pass over the list */
    uint8_t reserved1[SHMQ_CACHE_LINE - 60];
    /* Results: claimed ring entries and arena bytes (only grow). */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t result_seq;
    _Atomic uint64_t arena_head;
    uint8_t reserved2[SHMQ_CACHE_LINE - 16];
    /* Histograms of wait time (enqueue -> start) and run time (start -> end), ns. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t hist[2][SHMQ_HIST_BUCKETS];
    _Atomic int64_t hist_max[2];
    uint8_t reserved3[SHMQ_CACHE_LINE - 16];
    /* Throttling (csrc/throttle.c): parameters written by the creator; credit
     * and refilled_ns by the controller (the supervisor), taken by producers. */
    alignas(SHMQ_CACHE_LINE) uint32_t throttle_mode; /* SHMQ_THROTTLE_* */
    uint32_t reserved4;
    uint64_t max_log_bytes;                           /* 0: no limit */
    uint64_t throttle_target;                         /* closed: the backlog the controller aims at */
    uint64_t throttle_high;                           /* closed: producers wait while the backlog is this high */
    _Atomic int64_t credit;                           /* closed: puts allowed before the next refill */
    _Atomic int64_t refilled_ns;                      /* closed: CLOCK_MONOTONIC of the last refill (0: never) */
    _Atomic uint64_t rate;                            /* closed: the controller's allowed rate, jobs/s */
    _Atomic uint32_t controller;                      /* participant refilling (0: none) */
    uint32_t reserved5;
    /* Cancellation (csrc/jobs_cancel.c): ids of jobs cancelled while in a
     * lane or the backlog; the fetcher that takes one ends it unrun.
     * cancel_count is how many slots are taken (a hint: fetchers look at
     * the slots only while it is not 0). */
    alignas(SHMQ_CACHE_LINE) _Atomic uint32_t cancel_count;
    uint32_t reserved6;
    _Atomic uint64_t cancel_ids[SHMQ_CANCEL_SLOTS];   /* 0: free */
} shmq_jobs_header;
_Static_assert(offsetof(shmq_jobs_header, result_seq) == 64, "format");
_Static_assert(offsetof(shmq_jobs_header, hist) == 128, "format");
_Static_assert(offsetof(shmq_jobs_header, throttle_mode) == 4288, "format");
_Static_assert(offsetof(shmq_jobs_header, cancel_count) == 4352, "format");
_Static_assert(offsetof(shmq_jobs_header, cancel_ids) == 4360, "format");
_Static_assert(sizeof(shmq_jobs_header) % SHMQ_CACHE_LINE == 0, "format");

/* Per lane; relaxed counters. Producers write the first line, consumers the second. */
typedef struct shmq_lane_metrics {
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t enqueued;
    _Atomic uint64_t deduplicated;
    _Atomic uint64_t scheduled;
    _Atomic uint64_t throttled;
    uint8_t reserved0[SHMQ_CACHE_LINE - 32];
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t started;
    _Atomic uint64_t done;
    _Atomic uint64_t failed;
    _Atomic uint64_t retried;
    _Atomic uint64_t dead;
    _Atomic uint64_t lease_expired;
    _Atomic uint64_t consumer_died;
    _Atomic uint64_t cancelled;    /* ended by a cancel (jobs_cancel.c) */
} shmq_lane_metrics;
_Static_assert(sizeof(shmq_lane_metrics) == 128, "format");

#define SHMQ_TASK_CLAIM (1ull << 63)
#define SHMQ_TASK_NAME_BYTES 56
typedef struct shmq_task_entry {
    /* Written once (the claim), then only read. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t key; /* 0: free; hash | SHMQ_TASK_CLAIM while its name is written; hash */
    char name[SHMQ_TASK_NAME_BYTES]; /* NUL-padded; a longer name is cut */
    /* Producers write this line, consumers the next: no line moves between them per job. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t enqueued;
    uint8_t reserved0[SHMQ_CACHE_LINE - 8];
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t counts[SHMQ_TASK_COUNTERS]; /* [SHMQ_TASK_ENQUEUED] unused */
    _Atomic int64_t hist_max[2];
    uint8_t reserved1[SHMQ_CACHE_LINE - 8 * SHMQ_TASK_COUNTERS - 16];
    _Atomic uint64_t hist[2][SHMQ_HIST_BUCKETS];
} shmq_task_entry;
_Static_assert(offsetof(shmq_task_entry, counts) == 128, "format");
_Static_assert(offsetof(shmq_task_entry, hist) == 192, "format");

typedef struct shmq_job_entry {
    _Atomic uint64_t state;     /* see above */
    uint64_t job_id;
    uint64_t record;            /* JOBF_REF: position of the record with the payload */
    int64_t due_ns;             /* WAITING: CLOCK_REALTIME when it may run */
    _Atomic int64_t deadline_ns;/* RUNNING: CLOCK_MONOTONIC end of the lease */
    int64_t enqueued_ns;        /* CLOCK_REALTIME */
    int64_t started_ns;         /* RUNNING: CLOCK_MONOTONIC of the fetch */
    uint64_t unique_hi;
    uint64_t unique_lo;
    uint32_t length;            /* payload bytes */
    uint32_t offset;            /* JOBF_REF: of the payload in its record */
    uint32_t lane;
    uint16_t attempt;
    uint8_t tag;
    uint8_t flags;              /* SHMQ_JOBF_* */
    uint64_t copy;              /* not JOBF_REF: position of a record (or checkpoint) holding a copy; 0: job_id's */
    /* Job control (jobs_cancel.c): set by any process, read by the lease's holder. */
    _Atomic uint32_t control;   /* SHMQ_JOBC_*: 0 when the entry is filled */
    _Atomic uint32_t progress;  /* RUNNING: parts per million the task reported; SHMQ_PROGRESS_NONE: none */
    int64_t wait_ns;            /* RUNNING: the wait before this lease (-1: unknown), for its task's histogram */
    _Atomic uint32_t task;      /* its task's slot + 1 (shmq_task_bind; 0: none); relaxed, statistics */
    uint8_t reserved[12];
    uint8_t payload[SHMQ_JOB_INLINE_BYTES];
} shmq_job_entry;
_Static_assert(offsetof(shmq_job_entry, control) == 96, "format");
_Static_assert(offsetof(shmq_job_entry, payload) == 128, "format");
_Static_assert(sizeof(shmq_job_entry) == 384, "format");

typedef struct shmq_unique_entry {
    _Atomic uint64_t job;       /* 0 empty; SHMQ_UNIQUE_CLAIMED | owner; else the job id */
    uint64_t hi;
    uint64_t lo;
    uint64_t reserved;
} shmq_unique_entry;
_Static_assert(sizeof(shmq_unique_entry) == 32, "format");

/* A change of the unique table waiting for its lock (see "Unique keys"). */
#define SHMQ_CHANGE_SET 1ull              /* store job as the key's job id (insert if absent) */
#define SHMQ_CHANGE_DROP 2ull             /* free the key if its job is `job` */
#define SHMQ_CHANGE_TAKEN 3ull            /* a DROP a lock holder is applying */
#define SHMQ_CHANGE_FILLING (1ull << 63)  /* | owner: being written */
typedef struct shmq_unique_change {
    _Atomic uint64_t state;     /* 0 free; FILLING | owner; SET, DROP, TAKEN */
    _Atomic uint64_t job;       /* a job id, or SHMQ_UNIQUE_CLAIMED | owner (a claim) */
    _Atomic uint64_t hi;
    _Atomic uint64_t lo;
} shmq_unique_change;
_Static_assert(sizeof(shmq_unique_change) == 32, "format");

typedef struct shmq_result_entry {
    _Atomic uint64_t seq;       /* 2n + 1 while written, 2n + 2 published */
    uint64_t job_id;
    int64_t finished_ns;        /* CLOCK_REALTIME */
    uint64_t arena_pos;         /* where its bytes start (only grows) */
    uint32_t length;
    uint16_t attempt;
    uint8_t tag;
    uint8_t status;             /* SHMQ_JOB_DONE or SHMQ_JOB_DEAD */
    int64_t run_ns;             /* the last attempt's run time; -1: it did not run (deleted while waiting) */
    uint8_t reserved[16];
} shmq_result_entry;
_Static_assert(sizeof(shmq_result_entry) == 64, "format");

/*
 * Admission: pause, concurrency seats, rate limits (csrc/admission.c)
 * ----------------------------------------------------------------------
 * After the result arena (when job_slots > 0), 64-aligned:
 *   shmq_admission_header                      64 bytes
 *   shmq_pause_entry[SHMQ_PAUSE_SLOTS]         64 bytes each
 *   _Atomic uint64 seat[SHMQ_SEAT_SLOTS]       8 bytes each
 *   shmq_rate_entry[SHMQ_RATE_SLOTS]           16 bytes each
 *
 * Pause: `paused` = 1 stops every fetch (jobs stay where they are; enqueue
 * goes on). A task is paused while a pause entry holds its 64-bit name
 * hash; `paused_tasks` counts such entries, so a job of a queue with none
 * costs one load.
 *
 * A seat is one run's permission under a concurrency limit: key k with
 * limit n has seats 0 .. n-1, seat s has the 51-bit tag t(k, s), and a
 * seat word is t << 13 | owner (participant index; 0: free). A seat is
 * looked for in SHMQ_SEAT_WINDOW words from t % SHMQ_SEAT_SLOTS. Taking
 * it: no word of the window holds t under a live owner; CAS a free word
 * 0 -> t|me (seq_cst); then read the rest of the window (seq_cst): if any
 * other word holds t, give ours back and count the seat busy. Of two
 * processes that claim the same seat in two words, one at least sees the
 * other (both CAS, then both read: a seq_cst store-load pair), so at most
 * one keeps it. A seat held by a dead participant is freed by CAS (owner
 * dead -> 0) by whoever finds it; the participant index stays referenced
 * (not reused) until then. Nothing is a lock: a process killed at any
 * point leaves at most seats that name it, and those are taken back.
 *
 * Priorities: once a producer enqueues a job with a priority it sets
 * priority_age_ns (> 0). Unordered lane k is then band k (lane 0 first) and
 * a fetch takes from the first lane with a job, in band order, the ordered
 * lanes last, except that a lane whose looked_ns (last taken from, or
 * found empty) is more than band * priority_age_ns old goes first: a job
 * waits behind higher bands at most its band's age (aging, no starvation).
 * A fetcher back from idle (its previous round more than a step ago)
 * stores looked_ns = now in every lane first: their times were not waits.
 *
 * A rate entry is GCRA's theoretical arrival time per key: key (0: free;
 * set once by CAS, never removed) and tat (CLOCK_MONOTONIC ns). A run is
 * admitted iff tat <= now; it then CASes tat -> max(tat, now) + interval.
 */
/* SHMQ_PAUSE_SLOTS, SHMQ_SEAT_SLOTS, SHMQ_RATE_SLOTS: in shmq_api.h (Python reads them). */
#define SHMQ_SEAT_WINDOW 32u
#define SHMQ_SEAT_OWNER_BITS 13u

typedef struct shmq_admission_header {
    alignas(SHMQ_CACHE_LINE) _Atomic uint32_t paused; /* 1: no fetch takes a job */
    _Atomic uint32_t paused_tasks;    /* pause entries set (0: no task is paused) */
    _Atomic uint64_t held;            /* shmq_hold calls: jobs held back by a limit or a pause (statistics, relaxed) */
    _Atomic int64_t priority_age_ns;  /* 0: no priorities (fetch rotates); else the aging step per band */
    uint8_t reserved[SHMQ_CACHE_LINE - 24];
} shmq_admission_header;
_Static_assert(sizeof(shmq_admission_header) == 64, "format");

typedef struct shmq_pause_entry {
    _Atomic uint64_t task;            /* 0 free; else the paused task's name hash */
    _Atomic uint64_t name[7];         /* its name, NUL-padded, for people (relaxed words) */
} shmq_pause_entry;
_Static_assert(sizeof(shmq_pause_entry) == 64, "format");

typedef struct shmq_rate_entry {
    _Atomic uint64_t key;             /* 0 free; set once */
    _Atomic int64_t tat;              /* CLOCK_MONOTONIC: the next run may start at this time */
} shmq_rate_entry;
_Static_assert(sizeof(shmq_rate_entry) == 16, "format");

#define SHMQ_ADMISSION_BYTES                                                                              \
    ((uint64_t)sizeof(shmq_admission_header) + sizeof(shmq_pause_entry) * (uint64_t)SHMQ_PAUSE_SLOTS + \
     8u * (uint64_t)SHMQ_SEAT_SLOTS + sizeof(shmq_rate_entry) * (uint64_t)SHMQ_RATE_SLOTS)

#define SHMQ_HEADER_BYTES ((uint64_t)sizeof(shmq_region_header))
#define SHMQ_PARTICIPANTS_OFFSET SHMQ_HEADER_BYTES
#define SHMQ_LANE_STATES_OFFSET ((uint64_t)sizeof(shmq_lane_header))

static inline uint64_t shmq_align_up(uint64_t value, uint64_t to) { return (value + to - 1) / to * to; }

static inline uint64_t shmq_lane_data_offset(uint64_t slots)
{
    return shmq_align_up(SHMQ_LANE_STATES_OFFSET + 8u * slots, SHMQ_CACHE_LINE);
}

static inline uint64_t shmq_lane_bytes(uint64_t slots, uint64_t slot_bytes)
{
    return shmq_align_up(shmq_lane_data_offset(slots) + slots * slot_bytes, SHMQ_CACHE_LINE);
}

#endif /* SHMQ_LAYOUT_H */
