/* SPDX-License-Identifier: Apache-2.0 */
/* core.h -- what the core's .c files share: the process-local handle and the
 * internal functions of region.c, participant.c, wait.c and fault.c. */
#ifndef SHMQ_CORE_H
#define SHMQ_CORE_H

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
};

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
    uint32_t max_span;           /* slots one claim may cover */
    uint32_t self;               /* our participant index */
    _Atomic uint32_t push_cursor; /* lane rotation; relaxed: any value is correct */
    _Atomic uint32_t pop_cursor;
    int fault_point;
    _Atomic long fault_countdown;
};

/* participant.c */
int shmq_participant_register(shmq_handle *h);
void shmq_participant_unregister(shmq_handle *h);
int shmq_participant_alive(const shmq_handle *h, unsigned index);
uint64_t shmq_process_start_time(int pid);
uint64_t shmq_pid_namespace(void);
void shmq_sleep_begin(shmq_handle *h, _Atomic uint32_t *waiters, uint32_t bit);
void shmq_sleep_end(shmq_handle *h, _Atomic uint32_t *waiters, uint32_t bit);
int shmq_sweep_sleepers(shmq_handle *h);

/* wait.c */
int64_t shmq_now_ns(void);
int64_t shmq_deadline(int64_t timeout_ns);
int shmq_futex_wait(_Atomic uint32_t *word, uint32_t seen, int64_t deadline_ns, int64_t cap_ns);
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
