/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

/* Temporary directories are named after the test's process, so the runner
 * can remove what a test killed by a signal or a sanitizer left behind. */
#define TEMP_PREFIX "shmq-test."

static void remove_tree(const char *path)
{
    DIR *dir = opendir(path);
    if (dir) {
        int fd = dirfd(dir);
        struct dirent *entry;
        while ((entry = readdir(dir)))
            if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0 &&
                unlinkat(fd, entry->d_name, 0) != 0 && errno == EISDIR) {
                char sub[512]; /* a subdirectory (a log's damaged/) */
                snprintf(sub, sizeof sub, "%s/%s", path, entry->d_name);
                remove_tree(sub);
            }
        closedir(dir);
    }
    rmdir(path);
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "%s:%d: ", file, line);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    fflush(stderr);
    _exit(1);
}

shmq_params test_params(uint32_t lanes, uint32_t slots, uint32_t slot_bytes)
{
    return (shmq_params){.lane_count = lanes,
                         .slots_per_lane = slots,
                         .slot_bytes = slot_bytes,
                         .codec_id = 0,
                         .max_message_bytes = 1u << 20,
                         .participant_capacity = 64};
}

test_region region_create_with(const shmq_params *p)
{
    uint64_t size = shmq_region_size(p);
    CHECK(size > 0);
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(base != MAP_FAILED);
    CHECK_RC(shmq_region_init(base, size, p), SHMQ_OK);
    return (test_region){base, size};
}

test_region region_create(uint32_t lanes, uint32_t slots, uint32_t slot_bytes)
{
    shmq_params p = test_params(lanes, slots, slot_bytes);
    return region_create_with(&p);
}

char *temp_dir_create(void)
{
    char *dir = malloc(64);
    CHECK(dir != NULL);
    snprintf(dir, 64, "/tmp/" TEMP_PREFIX "%d.XXXXXX", (int)getpid());
    CHECK(mkdtemp(dir) != NULL);
    return dir;
}

void temp_dirs_sweep(pid_t pid)
{
    char prefix[32], path[512];
    snprintf(prefix, sizeof prefix, TEMP_PREFIX "%d.", (int)pid);
    DIR *tmp = opendir("/tmp");
    if (!tmp)
        return;
    struct dirent *entry;
    while ((entry = readdir(tmp)))
        if (strncmp(entry->d_name, prefix, strlen(prefix)) == 0) {
            snprintf(path, sizeof path, "/tmp/%s", entry->d_name);
            remove_tree(path);
        }
    closedir(tmp);
}

void temp_dir_remove(char *dir)
{
    remove_tree(dir);
    struct stat st;
    CHECK(stat(dir, &st) != 0); /* gone */
    free(dir);
}

shmq_params logged_params(uint32_t lanes, uint32_t slots, uint32_t slot_bytes, uint32_t durability,
                          uint64_t segment_bytes)
{
    shmq_params p = test_params(lanes, slots, slot_bytes);
    p.durability = durability;
    p.segment_bytes = segment_bytes;
    if (p.max_message_bytes + SHMQ_ENQUEUE_OVERHEAD > segment_bytes)
        p.max_message_bytes = segment_bytes / 4;
    return p;
}

shmq_handle *logged_attach(const test_region *r, const char *dir)
{
    shmq_handle *h = region_attach(r);
    CHECK_RC(shmq_log_open(h, dir), SHMQ_OK);
    return h;
}

shmq_handle *logged_region_create(test_region *r, const shmq_params *p, const char *dir,
                                  shmq_recovery *report /* OUT */)
{
    *r = region_create_with(p);
    shmq_handle *h = logged_attach(r, dir);
    CHECK_RC(shmq_log_recover(h, report), SHMQ_OK);
    return h;
}

void region_destroy(test_region *r)
{
    CHECK_RC(shmq_unmap(r->base, r->size), SHMQ_OK);
    r->base = NULL;
}

shmq_handle *region_attach(const test_region *r)
{
    shmq_handle *h = NULL;
    CHECK_RC(shmq_attach(r->base, r->size, &h), SHMQ_OK);
    CHECK(h != NULL);
    return h;
}

int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static inline uint8_t pattern_byte(uint64_t seed, uint32_t index)
{
    return (uint8_t)(seed >> ((index & 7) * 8)) ^ (uint8_t)(index * 131u + (index >> 8));
}

void fill_pattern(uint8_t *dst, uint64_t seq, uint32_t length)
{
    uint64_t seed = mix64(seq ^ 0x5EED);
    for (uint32_t i = 0; i < length; i++)
        dst[i] = pattern_byte(seed, i);
}

uint32_t check_pattern(const uint8_t *src, uint64_t seq, uint32_t length)
{
    uint64_t seed = mix64(seq ^ 0x5EED);
    for (uint32_t i = 0; i < length; i++)
        if (src[i] != pattern_byte(seed, i))
            return i + 1;
    return 0;
}

uint32_t fnv1a(const uint8_t *data, uint32_t length)
{
    uint32_t hash = 2166136261u;
    for (uint32_t i = 0; i < length; i++)
        hash = (hash ^ data[i]) * 16777619u;
    return hash;
}

uint64_t lane_state(const shmq_handle *h, uint32_t lane, uint64_t pos)
{
    return atomic_load(state_at(h, lane_at(h, lane), pos));
}

void lane_set_state(const shmq_handle *h, uint32_t lane, uint64_t pos, uint64_t state)
{
    atomic_store(state_at(h, lane_at(h, lane), pos), state);
}

uint64_t lane_tail(const shmq_handle *h, uint32_t lane) { return atomic_load(&lane_at(h, lane).header->tail); }
uint64_t lane_head(const shmq_handle *h, uint32_t lane) { return atomic_load(&lane_at(h, lane).header->head); }

void lane_set_hints(const shmq_handle *h, uint32_t lane, uint64_t head, uint64_t tail)
{
    atomic_store(&lane_at(h, lane).header->head, head);
    atomic_store(&lane_at(h, lane).header->tail, tail);
}

void lane_reset_at(const shmq_handle *h, uint32_t lane, uint64_t start)
{
    for (uint64_t pos = start; pos < start + h->slot_mask + 1; pos++)
        lane_set_state(h, lane, pos, free_state(h, pos));
    lane_set_hints(h, lane, start, start);
}

void check_released(const shmq_handle *h, uint32_t lane, uint64_t pos, uint32_t span)
{
    for (uint32_t i = 0; i < span; i++)
        CHECK_EQ(lane_state(h, lane, pos + i), free_state(h, pos + i + h->slot_mask + 1));
}

pid_t dead_pid(void)
{
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(0);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    return pid;
}

unsigned fake_participant(shmq_handle *h, pid_t pid, uint64_t start_time)
{
    for (unsigned i = 1; i < h->header->participant_capacity; i++) {
        uint32_t expected = 0;
        if (atomic_compare_exchange_strong(&h->participants[i].pid, &expected, (uint32_t)pid)) {
            atomic_store(&h->participants[i].start_time, start_time);
            return i;
        }
    }
    test_fail(__FILE__, __LINE__, "participant table full");
}
