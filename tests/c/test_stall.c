/* SPDX-License-Identifier: Apache-2.0 */
/* test_stall.c -- roles taken over from a live holder that makes no
 * progress. The holder is a forked process that stops itself (SIGSTOP)
 * inside its window; threads of this process, each with its own handle,
 * must get through within a bound while it is stopped, and go on while it
 * wakes up late and finishes what it was doing. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "harness.h"
#include "log.h"
#include "tests.h"

enum { STALL_SEGMENT = 64 * 1024, THREADS = 2, LENGTH = 100 };
static const uint64_t HOLDER_SEQ = 1000000;

/* A message: its seq, then the seq's pattern. */
static void make_message(uint8_t *data, uint64_t seq)
{
    memcpy(data, &seq, sizeof seq);
    fill_pattern(data + sizeof seq, seq, LENGTH - sizeof seq);
}

static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' ? close_paren[2] : '?';
}

static void wait_stopped(pid_t pid)
{
    int64_t deadline = now_ns() + 10 * 1000000000ll;
    while (proc_state(pid) != 'T' && proc_state(pid) != 't') {
        CHECK(now_ns() < deadline); /* the holder never reached its stop point */
        int status;
        CHECK_EQ(waitpid(pid, &status, WNOHANG), 0); /* it ended instead */
        sleep_ms(1);
    }
}

/* A forked holder: attaches its own handle, parks itself at `point` with
 * SIGSTOP, and after SIGCONT does what it was doing and exits 0. */
static pid_t start_holder(const test_region *r, const char *dir, int point, int make_ahead)
{
    pid_t child = fork();
    CHECK(child >= 0);
    if (child)
        return child;
    alarm(20); /* a hang is a failure, not a stalled run */
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test leaves no stopped holder behind */
    shmq_handle *c = logged_attach(r, dir);
    c->fault_point = point;
    c->fault_countdown = -1; /* stop, not kill, at the first hit */
    uint8_t data[LENGTH];
    make_message(data, HOLDER_SEQ);
    int rc = make_ahead ? shmq_log_maintain(c)
                        : shmq_push(c, -1, 0, 0, (const char *)data, LENGTH, NULL, 0, -1);
    shmq_detach(c);
    _exit(rc == SHMQ_OK ? 0 : 1);
}

typedef struct putter {
    const test_region *r;
    const char *dir;
    uint64_t first, count;
    int64_t slowest_ns;
} putter;

static void *put_run(void *arg)
{
    putter *w = arg;
    shmq_handle *h = logged_attach(w->r, w->dir);
    uint8_t data[LENGTH];
    for (uint64_t seq = w->first; seq < w->first + w->count; seq++) {
        make_message(data, seq);
        int64_t t0 = now_ns();
        CHECK_RC(shmq_push(h, -1, 0, 0, (const char *)data, LENGTH, NULL, 0, 2 * 1000000000ll), SHMQ_OK);
        int64_t took = now_ns() - t0;
        if (took > w->slowest_ns)
            w->slowest_ns = took;
    }
    shmq_detach(h);
    return NULL;
}

/* Runs THREADS putters of `count` messages each from `first` on; returns the slowest put. */
static int64_t put_threads(const test_region *r, const char *dir, uint64_t first, uint64_t count)
{
    pthread_t threads[THREADS];
    putter work[THREADS];
    int64_t slowest = 0;
    for (int i = 0; i < THREADS; i++) {
        work[i] = (putter){.r = r, .dir = dir, .first = first + i * count, .count = count};
        CHECK_EQ(pthread_create(&threads[i], NULL, put_run, &work[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK_EQ(pthread_join(threads[i], NULL), 0);
        if (work[i].slowest_ns > slowest)
            slowest = work[i].slowest_ns;
    }
    return slowest;
}

/* Every message put, once: seqs [0, count), and the holder's if it put one. */
static void check_each_once(shmq_handle *h, uint64_t count, int with_holder)
{
    uint8_t *seen = calloc(count, 1), buf[4096];
    int holder = 0;
    shmq_message m;
    uint64_t got = 0;
    int rc;
    while ((rc = shmq_pop(h, (char *)buf, sizeof buf, 0, &m)) == SHMQ_OK) {
        CHECK_EQ(m.length, LENGTH);
        uint64_t seq;
        memcpy(&seq, buf, sizeof seq);
        CHECK_EQ(check_pattern(buf + sizeof seq, seq, LENGTH - sizeof seq), 0);
        if (seq == HOLDER_SEQ) {
            holder++;
            continue;
        }
        CHECK(seq < count);
        CHECK_EQ(seen[seq], 0);
        seen[seq] = 1;
        got++;
    }
    CHECK_RC(rc, SHMQ_EEMPTY);
    CHECK_EQ(got, count);
    CHECK_EQ(holder, with_holder);
    free(seen);
}

/* The flusher stopped with the role, its fdatasync not begun: the other
 * sync writers take the role over; the late flusher, woken, finishes its
 * flush while they flush too, and nothing moves back. */
void test_stall_flusher_taken_over(void)
{
    enum { EACH = 60 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 1024, 128, SHMQ_DURABILITY_SYNC, STALL_SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    pid_t holder = start_holder(&r, dir, SHMQ_FAULT_FLUSH_HELD, 0);
    wait_stopped(holder);
    CHECK(atomic_load(&h->header->flusher) != 0);
    int64_t slowest = put_threads(&r, dir, 0, EACH);
    CHECK(proc_state(holder) == 'T' || proc_state(holder) == 't');
    CHECK(slowest < 1500 * 1000000ll); /* a take-over, not a wait for the holder */
    /* Wake it while others flush: two flushers at once for a while. */
    CHECK_EQ(kill(holder, SIGCONT), 0);
    put_threads(&r, dir, THREADS * EACH, EACH);
    int status = 0;
    CHECK_EQ(waitpid(holder, &status, 0), holder);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    shmq_region_header *hdr = h->header;
    CHECK_EQ(atomic_load(&hdr->flusher), 0);
    CHECK_EQ(atomic_load(&hdr->flush_done), atomic_load(&hdr->flush_started));
    CHECK_EQ(atomic_load(&hdr->flushed_tail), atomic_load(&hdr->log_tail) & ~SHMQ_TAIL_SPILL);
    check_each_once(h, 2 * THREADS * EACH, 1);
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}

static int temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strncmp(e->d_name, "tmp.", 4) == 0;
    closedir(d);
    return n;
}

/* The maker of the next segment stopped with the claim: writers that need
 * the segment make it themselves; the late maker finds it made, uses it,
 * and leaves no file of its own behind. */
void test_stall_segment_maker_taken_over(void)
{
    enum { EACH = 400 }; /* 2 x 400 x ~180 bytes: past two more segments */
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 4096, 128, SHMQ_DURABILITY_OS, STALL_SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    /* The tail into the last segment made, so the next one is still to make. */
    uint64_t filler = 0;
    uint8_t data[LENGTH];
    shmq_log_stats st;
    for (;;) {
        shmq_log_stats_read(h, &st);
        if (st.tail / STALL_SEGMENT + 1 >= st.segments_made)
            break;
        make_message(data, 2000000 + filler++);
        CHECK_RC(shmq_push(h, -1, 0, 0, (const char *)data, LENGTH, NULL, 0, 0), SHMQ_OK);
    }
    uint8_t buf[4096];
    shmq_message m;
    for (uint64_t i = 0; i < filler; i++)
        CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_OK);
    uint64_t start_tail = st.tail;
    pid_t holder = start_holder(&r, dir, SHMQ_FAULT_SEGMENT_CLAIMED, 1);
    wait_stopped(holder);
    CHECK(atomic_load(&h->header->segment_claim) != 0);
    int64_t slowest = put_threads(&r, dir, 0, EACH);
    CHECK(proc_state(holder) == 'T' || proc_state(holder) == 't');
    CHECK(slowest < 1500 * 1000000ll);
    shmq_log_stats_read(h, &st);
    CHECK(st.tail / STALL_SEGMENT >= start_tail / STALL_SEGMENT + 2);
    CHECK_EQ(kill(holder, SIGCONT), 0);
    int status = 0;
    CHECK_EQ(waitpid(holder, &status, 0), holder);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_EQ(atomic_load(&h->header->segment_claim), 0);
    CHECK_EQ(temp_files(dir), 0);
    check_each_once(h, THREADS * EACH, 0);
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}
