/* SPDX-License-Identifier: Apache-2.0 */
/* core.h -- the base layer: the process-local handle every layer shares,
 * and the internal functions of region.c, participant.c, wait.c and
 * fault.c. Each layer above has its header (ring.h, log.h, jobs.h, ops.h),
 * which includes the headers of the layers it may call and no others. */
#ifndef SHMQ_CORE_H
#define SHMQ_CORE_H

#include <pthread.h>

#include "layout.h"

/* Fault-injection points: SHMQ_FAULT=<name>[:<nth hit>] makes the process
 * SIGKILL itself there, so tests can kill it inside every window. */
enum shmq_fault_point {
    SHMQ_FAULT_NONE = 0,
    SHMQ_FAULT_INIT_BEFORE_MAGIC,
    SHMQ_FAULT_PUSH_AFTER_CLAIM,
    SHMQ_FAULT_PUSH_MID_COPY,
    SHMQ_FAULT_PUSH_BEFORE_PUBLISH,
    SHMQ_FAULT_PUSH_MID_PUBLISH,
    SHMQ_FAULT_POP_AFTER_CLAIM,
    SHMQ_FAULT_POP_MID_COPY,
    SHMQ_FAULT_POP_MID_RELEASE,
    SHMQ_FAULT_REPAIR_AFTER_TAKEOVER,
    SHMQ_FAULT_LOG_AFTER_RESERVE,  /* space reserved, word still 0 */
    SHMQ_FAULT_LOG_MID_RECORD,     /* PENDING, body half written */
    SHMQ_FAULT_LOG_BEFORE_PUSH,    /* ENQUEUE published, not in a lane yet */
    SHMQ_FAULT_POP_BEFORE_DONE,    /* message copied out, DONE not written */
    SHMQ_FAULT_FEED_AFTER_PUSH,    /* backlog record pushed, cursor not moved */
    SHMQ_FAULT_CHECKPOINT_MID,     /* checkpoint copies half written */
    SHMQ_FAULT_RECOVER_MID,        /* recovery: new log half written, old one intact */
    SHMQ_FAULT_FETCH_AFTER_TAKE,   /* job taken from its lane, no lease yet */
    SHMQ_FAULT_FETCH_AFTER_LEASE,  /* lease published, lane slots not released */
    SHMQ_FAULT_ACK_BEFORE_FREE,    /* ack: result and DONE written, lease not freed */
    SHMQ_FAULT_FAIL_BEFORE_WAIT,   /* fail: RETRY written, entry still RUNNING */
    SHMQ_FAULT_MOVE_AFTER_PUSH,    /* a due job pushed into a lane, entry not freed */
    SHMQ_FAULT_UNIQUE_CLAIMED,     /* unique key claimed, ENQUEUE not written */
    SHMQ_FAULT_FLUSH_HELD,         /* the flusher role held, fdatasync not begun */
    SHMQ_FAULT_SEGMENT_CLAIMED,    /* the segment-making claim held, the file not made */
    SHMQ_FAULT_UNIQUE_LOCKED,      /* the unique-key table's lock held */
    SHMQ_FAULT_SEAT_LOOKED,        /* a seat's window read (not held), nothing claimed yet */
    SHMQ_FAULT_SEAT_CLAIMED,       /* a concurrency seat claimed, the window not yet checked */
    SHMQ_FAULT_RESULT_WRITING,     /* a result's ring entry odd (being written), not published */
    SHMQ_FAULT_GATE_CLAIMED,       /* an ordered lane's gate claimed, its job not taken yet */
};

/* A mapped log segment, per process. Slot i holds segment index with
 * index % SHMQ_SEGMENT_SLOTS == i; `base` is stored last (release) and
 * cleared first, so a reader that sees base and then a matching index may
 * use the mapping until it leaves the log code (see `inside`). */
#define SHMQ_SEGMENT_SLOTS 1024u
#define SHMQ_ACK_BATCH 32u /* DONEs buffered per handle before one DONE_MANY record */
typedef struct shmq_segment_slot {
    _Atomic(uint8_t *) base;
    _Atomic uint64_t index;
    /* The file's length as this process last saw it (at most the whole
     * segment): every block below it is allocated. Only grows while the
     * slot holds one segment; a stale value only costs an fstat. */
    _Atomic uint64_t bytes;
    int fd;
} shmq_segment_slot;

typedef struct shmq_retired_map {
    uint8_t *base;
    int fd;
} shmq_retired_map;

struct shmq_handle {
    uint8_t *base;
    uint64_t size;
    shmq_region_header *header;
    shmq_participant *participants;
    uint64_t lanes_offset;
    uint64_t lane_bytes;
    uint64_t data_offset;        /* of data[] within a lane */
    uint64_t ring_bytes;         /* slots * slot_bytes */
    uint64_t slot_mask;
    uint32_t slot_shift;
    uint32_t slot_bytes;
    uint32_t lane_count;
    uint32_t unordered_lanes;    /* lanes [0, unordered_lanes) take any job; the rest are ordered */
    uint32_t max_span;           /* slots one claim may cover */
    uint32_t self;               /* our participant index */
    uint32_t participant_capacity; /* entries of the participant table (checked at attach) */
    _Atomic uint32_t push_cursor; /* lane rotation; relaxed: any value is correct */
    _Atomic uint32_t pop_cursor;
    int fault_point;
    _Atomic long fault_countdown;

    /* The log (log.c); log_on = 0 when the queue has none. */
    int log_on;
    uint32_t durability;
    uint64_t segment_bytes;
    int log_dirfd;
    char *log_dir;
    _Atomic uint32_t inside;           /* threads of this process in log code now */
    pthread_mutex_t segment_lock;      /* mapping and unmapping segments */
    shmq_segment_slot *segments;       /* [SHMQ_SEGMENT_SLOTS] */
    shmq_retired_map *retired;         /* unmapped once no thread is inside */
    uint32_t retired_count, retired_capacity;
    int64_t last_retention_ns;
    uint32_t inline_ref_min;           /* payloads above this travel as a reference to their record */
    /* Jobs taken whose DONE is not written yet (acks are written lazily: a
     * lost DONE only means the job runs again after a recovery). */
    atomic_flag ack_lock;
    uint32_t ack_count;
    uint64_t ack_ids[SHMQ_ACK_BATCH];
    _Atomic uint64_t upkeep_tail;      /* the log tail at this handle's last upkeep (relaxed: a rate estimate) */
    uint64_t hole_position;            /* the unwritten position this handle saw last, and when */
    int64_t hole_seen_ns;

    /* The job tables (jobs.c, unique.c, results.c); jobs = NULL without them. */
    shmq_jobs_header *jobs;
    shmq_lane_metrics *metrics;        /* [lane_count] */
    shmq_job_entry *entries;           /* [job_slots] */
    shmq_unique_entry *unique;         /* [unique_slots] */
    shmq_unique_change *unique_changes; /* [unique_slots] */
    shmq_result_entry *results;        /* [result_slots] */
    uint8_t *arena;                    /* [result_bytes] */
    shmq_admission_header *admission;  /* admission.c: pause, seats, rates */
    shmq_pause_entry *pauses;          /* [SHMQ_PAUSE_SLOTS] */
    _Atomic uint64_t *seats;           /* [SHMQ_SEAT_SLOTS] */
    shmq_rate_entry *rates;            /* [SHMQ_RATE_SLOTS] */
    _Atomic int64_t idle_since_ns;     /* prioritized queues: when a round of this handle found no job (0: it found one) */
    shmq_task_entry *tasks;            /* [SHMQ_TASK_SLOTS] */
    uint32_t job_slots, unique_slots, result_slots;
    uint64_t result_bytes;
    int64_t last_tick_ns;              /* when this handle last swept the job table */
    _Atomic uint32_t entry_cursor;     /* where this handle looks for a free job entry first; relaxed hint */
    int consumer_marked;               /* SHMQ_ROLE_CONSUMER set in our participant entry */
    int64_t spin_ns;                   /* shmq_fetch polls this long before it sleeps (shmq_set_spin) */

    /* Where a lower layer must ask a higher one, it calls through these,
     * set when the handle is made (queue.c); NULL: nothing above to ask. */
    /* participant.c: does state above the lanes (a lease, a gate, a unique
     * key's claim) still name participant `index`? */
    int (*references)(const shmq_handle *h, unsigned index);
    /* ring.c: a reader of unordered `lane` died holding the message at `pos`,
     * which the caller now holds; called before the slots are released (the
     * message is put back through the log, backlog.c). */
    void (*dead_reader)(shmq_handle *h, uint32_t lane, uint64_t pos);
    /* ring.c: ordered `lane` may be blocked by a dead holder of its gate
     * (jobs_gate.c repairs it); returns 1 if it repaired something. */
    int (*repair_gate)(shmq_handle *h, uint32_t lane);
};

static inline int shmq_lane_ordered(const shmq_handle *h, uint32_t lane) { return lane >= h->unordered_lanes; }

/* participant.c */
int shmq_participant_register(shmq_handle *h);
void shmq_participant_unregister(shmq_handle *h);
int shmq_participant_alive(const shmq_handle *h, unsigned index);
uint64_t shmq_process_start_time(int pid);
uint64_t shmq_pid_namespace(void);
void shmq_sleep_begin(shmq_handle *h, _Atomic uint32_t *waiters, uint32_t bit);
void shmq_sleep_end(shmq_handle *h, _Atomic uint32_t *waiters, uint32_t bit);
int shmq_sweep_sleepers(shmq_handle *h);

/* region.c */
int shmq_handle_make(void *base, uint64_t size, shmq_handle **out);

/* wait.c */
int64_t shmq_now_ns(void);
int64_t shmq_wall_ns(void);
int64_t shmq_deadline(int64_t timeout_ns);
int shmq_futex_wait(_Atomic uint32_t *word, uint32_t seen, int64_t deadline_ns, int64_t cap_ns);

/* A role or claim whose holder lives but has shown no progress this long is
 * taken over: its holder is stopped (SIGSTOP, a debugger) or starved. Every
 * role taken over this way is one where a late holder waking up finds its
 * claim gone and does no harm (docs/architecture.md, "What a stopped
 * process can hold up"). Far above a healthy hold (a flush, making a
 * segment: milliseconds), far below what a user would call a hang. */
static const int64_t SHMQ_STALL_NS = 200 * 1000 * 1000;

/* Watches a holder of a role at `where` and its progress (two words that
 * change when it moves on) from one waiter's side; private to the waiter,
 * so no ordering. It may outlive one call (a thread's own), since the same
 * holder and progress seen again mean the same hold. */
typedef struct shmq_stall_watch {
    const void *where;
    uint64_t holder, progress;
    int64_t since; /* 0: not watching yet */
} shmq_stall_watch;

/* 1 once (holder, progress) has stayed the same for SHMQ_STALL_NS. */
static inline int shmq_stalled(shmq_stall_watch *w, const void *where, uint64_t holder, uint64_t progress)
{
    int64_t now = shmq_now_ns();
    if (w->since == 0 || w->where != where || w->holder != holder || w->progress != progress) {
        w->where = where;
        w->holder = holder;
        w->progress = progress;
        w->since = now;
        return 0;
    }
    return now - w->since >= SHMQ_STALL_NS;
}
void shmq_futex_wake_all(_Atomic uint32_t *word);
void shmq_cpu_relax(void);

/* fault.c */
int shmq_fault_parse(const char *spec, long *nth);
void shmq_fault_hit(shmq_handle *h);

static inline void shmq_fault(shmq_handle *h, int point)
{
    if (__builtin_expect(h->fault_point == point, 0))
        shmq_fault_hit(h);
}

#endif /* SHMQ_CORE_H */
