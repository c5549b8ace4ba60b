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
 *   0                      shmq_region_header (320 bytes)
 *   320                    shmq_participant[participant_capacity] (16 bytes each)
 *   lanes_offset           lane 0, lane 1, ... each lane_bytes long, 64-aligned
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
 * before that release store, and span == ceil((8 + length) / slot_bytes)
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
_Static_assert(offsetof(shmq_region_header, data_event) == 128, "own cache line: consumers' futex word, away from the parameters");
_Static_assert(offsetof(shmq_region_header, space_event) == 192, "own cache line: producers' futex word, no false sharing with data_event");
_Static_assert(offsetof(shmq_region_header, dropped_dead_producer) == 256, "format");
_Static_assert(sizeof(shmq_region_header) == 320, "header is five cache lines");

typedef struct shmq_participant {
    _Atomic uint32_t pid;          /* 0 = free; CAS 0 -> pid claims the entry */
    _Atomic uint32_t sleeping;     /* SHMQ_SLEEP_* units: this process's sleepers in data/space_waiters */
    _Atomic uint64_t start_time;   /* field 22 of /proc/<pid>/stat; 0 = unknown */
} shmq_participant;

_Static_assert(offsetof(shmq_participant, pid) == 0, "format");
_Static_assert(offsetof(shmq_participant, sleeping) == 4, "format");
_Static_assert(offsetof(shmq_participant, start_time) == 8, "format");
_Static_assert(sizeof(shmq_participant) == 16, "format");

typedef struct shmq_lane_header {
    /* Producer line: only producers write it. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t tail; /* hint: every position below it is claimed; only grows */
    _Atomic uint64_t pushed;                        /* messages published (statistics, qsize) */
    uint8_t reserved0[SHMQ_CACHE_LINE - 16];
    /* Consumer line: only consumers write it. */
    alignas(SHMQ_CACHE_LINE) _Atomic uint64_t head; /* hint: every position below it is taken; head <= tail */
    _Atomic uint64_t popped;                        /* messages taken (statistics, qsize) */
    uint8_t reserved1[SHMQ_CACHE_LINE - 16];
} shmq_lane_header;

_Static_assert(offsetof(shmq_lane_header, tail) == 0, "format");
_Static_assert(offsetof(shmq_lane_header, pushed) == 8, "format");
_Static_assert(offsetof(shmq_lane_header, head) == 64, "head on its own cache line: producers and consumers must not false-share");
_Static_assert(offsetof(shmq_lane_header, popped) == 72, "format");
_Static_assert(sizeof(shmq_lane_header) == 128, "format");

/* Written at the start of a message's first slot. */
typedef struct shmq_msg_header {
    uint32_t length;   /* payload bytes following this header */
    uint8_t tag;       /* codec tag, opaque to the core */
    uint8_t flags;     /* SHMQ_MSG_* */
    uint16_t reserved;
} shmq_msg_header;

_Static_assert(offsetof(shmq_msg_header, length) == 0, "format");
_Static_assert(offsetof(shmq_msg_header, tag) == 4, "format");
_Static_assert(offsetof(shmq_msg_header, flags) == 5, "format");
_Static_assert(sizeof(shmq_msg_header) == 8, "format");

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
