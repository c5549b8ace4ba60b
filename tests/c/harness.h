/* SPDX-License-Identifier: Apache-2.0 */
/* harness.h -- shared helpers of the C lane tests. White-box: the tests see
 * the layout and the lane internals so they can set up and check states. */
#ifndef SHMQ_TEST_HARNESS_H
#define SHMQ_TEST_HARNESS_H

#undef NDEBUG
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#include "ops.h"

/* Failures end the test's process: the runner forks one per test. */
#define CHECK(cond)                                                                                       \
    do {                                                                                                  \
        if (!(cond))                                                                                      \
            test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                                            \
    } while (0)

#define CHECK_EQ(actual, expected)                                                                        \
    do {                                                                                                  \
        long long check_a_ = (long long)(actual), check_e_ = (long long)(expected);                       \
        if (check_a_ != check_e_)                                                                         \
            test_fail(__FILE__, __LINE__, "CHECK_EQ(%s, %s): %lld != %lld", #actual, #expected, check_a_, \
                      check_e_);                                                                          \
    } while (0)

/* A status call: prints both statuses by name on mismatch. */
#define CHECK_RC(call, expected)                                                                          \
    do {                                                                                                  \
        long long check_rc_ = (long long)(call), check_want_ = (long long)(expected);                     \
        if (check_rc_ != check_want_)                                                                     \
            test_fail(__FILE__, __LINE__, "%s returned %lld (%s), expected %lld (%s)", #call, check_rc_,  \
                      shmq_strerror((int)check_rc_), check_want_, shmq_strerror((int)check_want_));       \
    } while (0)

__attribute__((noreturn, format(printf, 3, 4))) void test_fail(const char *file, int line, const char *fmt, ...);

/* A region in plain shared anonymous memory. */
typedef struct test_region {
    void *base;
    uint64_t size;
} test_region;

shmq_params test_params(uint32_t lanes, uint32_t slots, uint32_t slot_bytes);
test_region region_create(uint32_t lanes, uint32_t slots, uint32_t slot_bytes);
test_region region_create_with(const shmq_params *p);
void region_destroy(test_region *r);
shmq_handle *region_attach(const test_region *r);

/* Logged regions: the log lives in a fresh directory under /tmp, removed by
 * temp_dir_remove; the runner sweeps those of a test that did not get there. */
char *temp_dir_create(void);
void temp_dir_remove(char *dir);
void temp_dirs_sweep(pid_t pid);
/* test_params plus a log; max_message_bytes shrinks to what a segment holds. */
shmq_params logged_params(uint32_t lanes, uint32_t slots, uint32_t slot_bytes, uint32_t durability,
                          uint64_t segment_bytes);
/* Attaches and opens the log in `dir`. */
shmq_handle *logged_attach(const test_region *r, const char *dir);
/* A new region over the log in `dir`, as its creator makes it: attach, open
 * the log, recover (which starts an empty log). Returns the creator's handle. */
shmq_handle *logged_region_create(test_region *r, const shmq_params *p, const char *dir,
                                  shmq_recovery *report /* OUT */);

int64_t now_ns(void);
void sleep_ms(int ms);

/* splitmix64: deterministic, cheap, good enough to pick sizes and bytes. */
static inline uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static inline uint64_t rng_next(uint64_t *state) { return mix64((*state)++); }
static inline uint32_t rng_below(uint64_t *state, uint32_t bound) { return (uint32_t)(rng_next(state) % bound); }

/* Message bytes that depend on (seq, index), so a misplaced byte shows. */
void fill_pattern(uint8_t *dst, uint64_t seq, uint32_t length);
/* 0 if `src` holds the pattern of `seq`, else 1 + the index of the first bad byte. */
uint32_t check_pattern(const uint8_t *src, uint64_t seq, uint32_t length);

uint32_t fnv1a(const uint8_t *data, uint32_t length);

/* White-box access to lane states and hints. */
uint64_t lane_state(const shmq_handle *h, uint32_t lane, uint64_t pos);
void lane_set_state(const shmq_handle *h, uint32_t lane, uint64_t pos, uint64_t state);
uint64_t lane_tail(const shmq_handle *h, uint32_t lane);
uint64_t lane_head(const shmq_handle *h, uint32_t lane);
void lane_set_hints(const shmq_handle *h, uint32_t lane, uint64_t head, uint64_t tail);
/* Every slot of the lane FREE in the lap of its position counted from `start`
 * (all positions start..start+slots-1), head = tail = start: an empty lane
 * that has already run `start` positions. */
void lane_reset_at(const shmq_handle *h, uint32_t lane, uint64_t start);
/* The state a released span leaves behind, checked for every slot. */
void check_released(const shmq_handle *h, uint32_t lane, uint64_t pos, uint32_t span);

/* A pid that surely names no process: a child forked and reaped. */
pid_t dead_pid(void);
/* Registers a participant entry for `pid` (as another process would); returns its index. */
unsigned fake_participant(shmq_handle *h, pid_t pid, uint64_t start_time);

#endif /* SHMQ_TEST_HARNESS_H */
