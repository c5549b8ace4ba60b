/* SPDX-License-Identifier: Apache-2.0 */
/* wait.c -- sleeping on a 32-bit word in shared memory (Linux futex), and time.
 *
 * The futex only puts a process to sleep; it orders no memory. Every wait
 * re-checks the queue through its own acquire loads after waking. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

int64_t shmq_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t shmq_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* < 0: never; otherwise an absolute CLOCK_MONOTONIC time. */
int64_t shmq_deadline(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -1;
    int64_t now = shmq_now_ns();
    return timeout_ns > INT64_MAX - now ? -1 : now + timeout_ns;
}

void shmq_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Sleeps while *word == seen, until the deadline, for at most cap_ns (< 0: no
 * cap). Returns SHMQ_OK (woken, value changed, or cap reached), SHMQ_EINTR,
 * or SHMQ_EEMPTY when the deadline has passed. Shared (not private) futex:
 * the word lives in memory mapped by several processes. */
int shmq_futex_wait(_Atomic uint32_t *word, uint32_t seen, int64_t deadline_ns, int64_t cap_ns)
{
    int64_t wait_ns = -1;
    if (deadline_ns >= 0) {
        wait_ns = deadline_ns - shmq_now_ns();
        if (wait_ns <= 0)
            return SHMQ_EEMPTY;
    }
    if (cap_ns >= 0 && (wait_ns < 0 || cap_ns < wait_ns))
        wait_ns = cap_ns;
    struct timespec relative, *timeout = NULL;
    if (wait_ns >= 0) {
        relative.tv_sec = wait_ns / 1000000000;
        relative.tv_nsec = wait_ns % 1000000000;
        timeout = &relative;
    }
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, timeout, NULL, 0);
    if (rc == -1 && errno == EINTR)
        return SHMQ_EINTR;
    return SHMQ_OK; /* EAGAIN (value changed) and ETIMEDOUT: the caller re-checks */
}

void shmq_futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
