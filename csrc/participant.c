/* SPDX-License-Identifier: Apache-2.0 */
/* participant.c -- the table of attached handles, and whether their process lives.
 *
 * A slot state names its owner by participant index. An entry holds the
 * owner's pid and process start time: with pid_max as low as 32768, pids are
 * reused, and the start time tells a new process from the dead one. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

/* Reads the state letter and start time (fields 3 and 22) of /proc/<pid>/stat.
 * Returns 0, or -1 with errno (ENOENT: no such process). */
static int read_proc_stat(int pid, char *state, uint64_t *start_time)
{
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, text, sizeof text - 1);
    int saved = errno;
    close(fd);
    if (n <= 0) {
        errno = n < 0 ? saved : ENOENT;
        return -1;
    }
    text[n] = '\0';
    /* The command name (field 2) may hold spaces and ')': skip to the last ')'. */
    char *cursor = strrchr(text, ')');
    if (!cursor || cursor[1] != ' ') {
        errno = EINVAL;
        return -1;
    }
    cursor += 2;
    *state = *cursor;
    for (int field = 3; field < 22; field++) {
        cursor = strchr(cursor, ' ');
        if (!cursor) {
            errno = EINVAL;
            return -1;
        }
        cursor++;
    }
    *start_time = strtoull(cursor, NULL, 10);
    return 0;
}

uint64_t shmq_process_start_time(int pid)
{
    char state;
    uint64_t start = 0;
    return read_proc_stat(pid, &state, &start) == 0 ? start : 0;
}

uint64_t shmq_pid_namespace(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static int entry_alive(const shmq_participant *entry);

int shmq_participant_alive(const shmq_handle *h, unsigned index)
{
    if (index == 0 || index >= h->participant_capacity)
        return 0;
    return entry_alive(&h->participants[index]);
}

/* Live processes in the participant table of a region that may be damaged
 * (not attached, header unchecked): the table's length comes from the header
 * but never reaches past the object's `size`. */
int shmq_region_live_participants(const void *base, uint64_t size)
{
    if (size < SHMQ_PARTICIPANTS_OFFSET + 2 * sizeof(shmq_participant))
        return 0;
    const shmq_region_header *hdr = base;
    uint64_t capacity = hdr->participant_capacity;
    uint64_t fits = (size - SHMQ_PARTICIPANTS_OFFSET) / sizeof(shmq_participant);
    if (capacity > SHMQ_MAX_PARTICIPANTS + 1)
        capacity = SHMQ_MAX_PARTICIPANTS + 1;
    if (capacity > fits)
        capacity = fits;
    const shmq_participant *table = (const shmq_participant *)((const uint8_t *)base + SHMQ_PARTICIPANTS_OFFSET);
    int live = 0;
    for (uint64_t i = 1; i < capacity; i++)
        live += entry_alive(&table[i]);
    return live;
}

static int entry_alive(const shmq_participant *entry)
{
    /* acquire: pairs with the release store of start_time in register, so a
     * non-zero start_time read below belongs to this pid. */
    uint32_t pid = atomic_load_explicit((_Atomic uint32_t *)&entry->pid, memory_order_acquire);
    if (pid == 0)
        return 0;
    uint64_t expected = atomic_load_explicit((_Atomic uint64_t *)&entry->start_time, memory_order_acquire);
    char state;
    uint64_t start;
    if (read_proc_stat((int)pid, &state, &start) == 0) {
        if (state == 'Z' || state == 'X')
            return 0; /* killed, not yet reaped: it will never write again */
        return expected == 0 || expected == start;
    }
    if (errno == ENOENT || errno == ESRCH)
        return 0;
    return !(kill((pid_t)pid, 0) == -1 && errno == ESRCH);
}

/* Does any slot state still name `index` as owner of a claim? */
static int index_referenced(const shmq_handle *h, unsigned index)
{
    uint64_t slots = h->slot_mask + 1;
    for (uint32_t lane = 0; lane < h->lane_count; lane++) {
        _Atomic uint64_t *states =
            (_Atomic uint64_t *)(h->base + h->lanes_offset + lane * h->lane_bytes + SHMQ_LANE_STATES_OFFSET);
        for (uint64_t i = 0; i < slots; i++) {
            /* relaxed: a snapshot; the dead owner adds no claims, others only remove them. */
            uint64_t s = atomic_load_explicit(&states[i], memory_order_relaxed);
            unsigned kind = shmq_state_kind(s);
            if ((kind == SHMQ_SLOT_WRITING || kind == SHMQ_SLOT_READING) && shmq_state_owner(s) == index)
                return 1;
        }
    }
    return h->references ? h->references(h, index) : 0; /* the job tables' (queue.c) */
}

static int give_back_sleepers(shmq_handle *h, shmq_participant *entry)
{
    /* relaxed: counts only; the exchange makes us their sole taker. */
    uint32_t sleeping = atomic_exchange_explicit(&entry->sleeping, 0, memory_order_relaxed);
    atomic_fetch_sub_explicit(&h->header->data_waiters, sleeping & 0xFFFFu, memory_order_relaxed);
    atomic_fetch_sub_explicit(&h->header->space_waiters, sleeping >> 16, memory_order_relaxed);
    uint32_t results = atomic_exchange_explicit(&entry->result_sleeping, 0, memory_order_relaxed);
    if (results && h->jobs)
        atomic_fetch_sub_explicit(&h->jobs->result_waiters, results, memory_order_relaxed);
    return sleeping != 0 || results != 0;
}

static void claim_entry(shmq_handle *h, unsigned index, uint32_t pid)
{
    /* release: publishes the start time after the pid; pairs with the acquire in alive(). */
    atomic_store_explicit(&h->participants[index].start_time, shmq_process_start_time((int)pid),
                          memory_order_release);
    /* relaxed: statistics of the previous owner of the entry. */
    atomic_store_explicit(&h->participants[index].roles, 0, memory_order_relaxed);
    h->self = index;
}

int shmq_participant_register(shmq_handle *h)
{
    uint32_t pid = (uint32_t)getpid();
    uint32_t capacity = h->participant_capacity;
    for (unsigned i = 1; i < capacity; i++) {
        uint32_t expected = 0;
        /* acq_rel: the entry becomes ours; no one else can claim it now. */
        if (atomic_compare_exchange_strong_explicit(&h->participants[i].pid, &expected, pid,
                                                    memory_order_acq_rel, memory_order_relaxed)) {
            atomic_store_explicit(&h->participants[i].start_time, 0, memory_order_relaxed);
            claim_entry(h, i, pid);
            return SHMQ_OK;
        }
    }
    /* Full: take over an entry of a dead process that owns no claim any more. */
    for (unsigned i = 1; i < capacity; i++) {
        uint32_t dead = atomic_load_explicit(&h->participants[i].pid, memory_order_acquire);
        if (dead == 0 || shmq_participant_alive(h, i) || index_referenced(h, i))
            continue;
        if (atomic_compare_exchange_strong_explicit(&h->participants[i].pid, &dead, pid,
                                                    memory_order_acq_rel, memory_order_relaxed)) {
            give_back_sleepers(h, &h->participants[i]); /* the dead owner may have died asleep */
            claim_entry(h, i, pid);
            return SHMQ_OK;
        }
    }
    return SHMQ_EPARTICIPANTS;
}

void shmq_participant_unregister(shmq_handle *h)
{
    if (h->self == 0)
        return;
    shmq_participant *entry = &h->participants[h->self];
    /* A claim still names us (a message taken but never finished): keep the
     * entry, so the claim stays ours until this process dies and is then
     * repaired, rather than passing to whoever registers next. */
    if (index_referenced(h, h->self)) {
        h->self = 0;
        return;
    }
    uint32_t pid = (uint32_t)getpid();
    /* release: our last slot writes happen before the entry is free again.
     * Only clear it if it is still ours (a forked child's handle is not). */
    atomic_compare_exchange_strong_explicit(&entry->pid, &pid, 0, memory_order_release, memory_order_relaxed);
    h->self = 0;
}

/* Sleepers count themselves in a waiters counter, then in their entry; on
 * waking they uncount in the reverse order. Death between the two steps of
 * either pair leaks one count (a few instructions' window); death while
 * asleep, where a process spends its waiting time, is taken back by the sweep. */
void shmq_sleep_begin(shmq_handle *h, _Atomic uint32_t *waiters, uint32_t unit)
{
    atomic_fetch_add_explicit(waiters, 1, memory_order_relaxed); /* ordered by the caller's seq_cst fence */
    if (h->self)
        atomic_fetch_add_explicit(&h->participants[h->self].sleeping, unit, memory_order_relaxed);
}

void shmq_sleep_end(shmq_handle *h, _Atomic uint32_t *waiters, uint32_t unit)
{
    if (h->self)
        atomic_fetch_sub_explicit(&h->participants[h->self].sleeping, unit, memory_order_relaxed);
    atomic_fetch_sub_explicit(waiters, 1, memory_order_relaxed); /* a count only; orders nothing */
}

/* Takes back the waiters counts of participants that died asleep. */
int shmq_sweep_sleepers(shmq_handle *h)
{
    int swept = 0;
    for (unsigned i = 1; i < h->participant_capacity; i++) {
        shmq_participant *entry = &h->participants[i];
        /* relaxed: counts to give back; give_back's exchange makes us their sole taker. */
        if ((atomic_load_explicit(&entry->sleeping, memory_order_relaxed) == 0 &&
             atomic_load_explicit(&entry->result_sleeping, memory_order_relaxed) == 0) ||
            shmq_participant_alive(h, i))
            continue;
        swept += give_back_sleepers(h, entry);
    }
    return swept;
}

int shmq_live_participants(const shmq_handle *h)
{
    int live = 0;
    for (unsigned i = 1; i < h->participant_capacity; i++)
        /* acquire: as in shmq_participant_alive. */
        if (atomic_load_explicit(&h->participants[i].pid, memory_order_acquire) && shmq_participant_alive(h, i))
            live++;
    return live;
}

uint32_t shmq_participant_slots(const shmq_handle *h) { return h->participant_capacity; }

void shmq_participant_info_read(const shmq_handle *h, uint32_t index, shmq_participant_info *info /* OUT */)
{
    *info = (shmq_participant_info){0};
    if (index == 0 || index >= h->participant_capacity)
        return;
    const shmq_participant *p = &h->participants[index];
    /* relaxed: a snapshot for people. */
    info->pid = atomic_load_explicit((_Atomic uint32_t *)&p->pid, memory_order_relaxed);
    if (!info->pid)
        return;
    info->start_time = atomic_load_explicit((_Atomic uint64_t *)&p->start_time, memory_order_relaxed);
    info->roles = atomic_load_explicit((_Atomic uint32_t *)&p->roles, memory_order_relaxed);
    info->sleeping = atomic_load_explicit((_Atomic uint32_t *)&p->sleeping, memory_order_relaxed);
    info->alive = (uint32_t)shmq_participant_alive(h, index);
}
