/* SPDX-License-Identifier: Apache-2.0 */
/* fault.c -- fault injection for crash tests.
 *
 * SHMQ_FAULT=<point>[:<n>] makes the process kill itself with SIGKILL on the
 * n-th time (default 1) it reaches <point>: a real kill -9 at an exact place,
 * with no handler and no cleanup. SHMQ_FAULT=<point>:<n>:stop stops it there
 * with SIGSTOP instead (a live holder that makes no progress until SIGCONT;
 * kept as a negative countdown). Read once per handle, never on the hot path. */
#define _GNU_SOURCE
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

static const struct {
    const char *name;
    int point;
} fault_names[] = {
    {"init_before_magic", SHMQ_FAULT_INIT_BEFORE_MAGIC},
    {"push_after_claim", SHMQ_FAULT_PUSH_AFTER_CLAIM},
    {"push_mid_copy", SHMQ_FAULT_PUSH_MID_COPY},
    {"push_before_publish", SHMQ_FAULT_PUSH_BEFORE_PUBLISH},
    {"push_mid_publish", SHMQ_FAULT_PUSH_MID_PUBLISH},
    {"pop_after_claim", SHMQ_FAULT_POP_AFTER_CLAIM},
    {"pop_mid_copy", SHMQ_FAULT_POP_MID_COPY},
    {"pop_mid_release", SHMQ_FAULT_POP_MID_RELEASE},
    {"repair_after_takeover", SHMQ_FAULT_REPAIR_AFTER_TAKEOVER},
    {"log_after_reserve", SHMQ_FAULT_LOG_AFTER_RESERVE},
    {"log_mid_record", SHMQ_FAULT_LOG_MID_RECORD},
    {"log_before_push", SHMQ_FAULT_LOG_BEFORE_PUSH},
    {"pop_before_done", SHMQ_FAULT_POP_BEFORE_DONE},
    {"feed_after_push", SHMQ_FAULT_FEED_AFTER_PUSH},
    {"checkpoint_mid", SHMQ_FAULT_CHECKPOINT_MID},
    {"recover_mid", SHMQ_FAULT_RECOVER_MID},
    {"fetch_after_take", SHMQ_FAULT_FETCH_AFTER_TAKE},
    {"fetch_after_lease", SHMQ_FAULT_FETCH_AFTER_LEASE},
    {"ack_before_free", SHMQ_FAULT_ACK_BEFORE_FREE},
    {"fail_before_wait", SHMQ_FAULT_FAIL_BEFORE_WAIT},
    {"move_after_push", SHMQ_FAULT_MOVE_AFTER_PUSH},
    {"unique_claimed", SHMQ_FAULT_UNIQUE_CLAIMED},
    {"flush_held", SHMQ_FAULT_FLUSH_HELD},
    {"segment_claimed", SHMQ_FAULT_SEGMENT_CLAIMED},
    {"unique_locked", SHMQ_FAULT_UNIQUE_LOCKED},
    {"seat_looked", SHMQ_FAULT_SEAT_LOOKED},
    {"seat_claimed", SHMQ_FAULT_SEAT_CLAIMED},
    {"result_writing", SHMQ_FAULT_RESULT_WRITING},
    {"gate_claimed", SHMQ_FAULT_GATE_CLAIMED},
};

int shmq_fault_parse(const char *spec, long *nth)
{
    if (!spec || !*spec)
        return SHMQ_FAULT_NONE;
    size_t name_length = strcspn(spec, ":");
    for (size_t i = 0; i < sizeof fault_names / sizeof fault_names[0]; i++) {
        if (strlen(fault_names[i].name) == name_length && strncmp(spec, fault_names[i].name, name_length) == 0) {
            char *end = NULL;
            *nth = spec[name_length] == ':' ? strtol(spec + name_length + 1, &end, 10) : 1;
            if (*nth < 1)
                *nth = 1;
            if (end && strcmp(end, ":stop") == 0)
                *nth = -*nth;
            return fault_names[i].point;
        }
    }
    return SHMQ_FAULT_NONE;
}

void shmq_fault_hit(shmq_handle *h)
{
    /* relaxed: a countdown private to this process; only the kill (stop) matters. */
    if (atomic_load_explicit(&h->fault_countdown, memory_order_relaxed) < 0) {
        if (atomic_fetch_add_explicit(&h->fault_countdown, 1, memory_order_relaxed) == -1) {
            atomic_store_explicit(&h->fault_countdown, LONG_MAX, memory_order_relaxed); /* once */
            kill(getpid(), SIGSTOP);
        }
        return;
    }
    if (atomic_fetch_sub_explicit(&h->fault_countdown, 1, memory_order_relaxed) == 1)
        kill(getpid(), SIGKILL);
}
