/* SPDX-License-Identifier: Apache-2.0 */
/*
 * C reference for benchmarks/bench_throughput.py.
 *
 * A bounded multi-producer/multi-consumer ring in a POSIX shared-memory region,
 * driven by forked producer and consumer processes. It shows what a shared-memory
 * ring costs on this machine without any Python in the loop, so shmq's numbers can
 * be read as a fraction of it.
 *
 * Ring: per-slot sequence numbers (Vyukov's bounded MPMC queue, the layout of
 * rigtorp/MPMCQueue). For the message at position pos, its slot's seq is
 *   pos       -> free, the producer that claimed pos may write it
 *   pos + 1   -> full, the consumer that claimed pos may read it
 * and the consumer frees it for the next lap by storing pos + capacity.
 * A batch claims up to B contiguous ready slots with one CAS on tail (or head),
 * then copies and publishes each slot on its own.
 *
 * Every message: bytes 0..7 = tag = producer << 48 | per-producer sequence,
 * last 8 bytes = tag ^ TAIL_KEY, filler in between. Consumers check every message:
 * exact order with one producer, exactly-once delivery (bitmaps) with several.
 *
 * Usage: ring_bench --payload N --batch B --msgs M [--procs P] [--capacity C]
 *                   [--pin] [--timeout SECONDS]
 * Prints one JSON line on success; exits non-zero with a message on stderr on
 * any failure (including a verification failure).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CACHE_LINE 64
#define MAX_PROCS 16
#define SPINS_BEFORE_YIELD 64
#define PRODUCER_SHIFT 48
#define SEQ_MASK ((UINT64_C(1) << PRODUCER_SHIFT) - 1)
#define TAIL_KEY UINT64_C(0x5A5A5A5A5A5A5A5A)

struct header {
    /* Separate cache lines: producers hammer tail, consumers hammer head. */
    _Alignas(CACHE_LINE) _Atomic uint64_t tail; /* next position a producer claims */
    _Alignas(CACHE_LINE) _Atomic uint64_t head; /* next position a consumer claims */
    _Alignas(CACHE_LINE) _Atomic uint32_t ready; /* start barrier */
    /* Written by one child each, read by the parent after waitpid(). */
    int64_t start_ns[2 * MAX_PROCS];
    int64_t end_ns[MAX_PROCS];
    uint64_t received[MAX_PROCS];
};

struct slot {
    _Atomic uint64_t seq;
    unsigned char data[];
};

struct config {
    size_t payload;
    uint64_t batch;
    uint64_t msgs;
    uint64_t capacity;
    int procs;
    int pin;
    double timeout;
};

struct ring {
    unsigned char *base; /* whole mapping, for prefault() */
    size_t size;
    struct header *hdr;
    unsigned char *slots;
    size_t slot_size;
    uint64_t capacity;
    uint64_t mask;
    uint64_t *bitmaps; /* one per consumer, only used with several producers */
    size_t bitmap_words;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spin briefly, then give the core away: with 2 cores and up to 4 processes
 * the peer we wait for may need this very core. */
static inline void backoff(unsigned *spins)
{
    if (*spins < SPINS_BEFORE_YIELD) {
        cpu_relax();
        ++*spins;
    } else {
        sched_yield();
    }
}

static int64_t now_ns(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC is system-wide, so timestamps from different processes compare. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline struct slot *slot_at(const struct ring *r, uint64_t pos)
{
    return (struct slot *)(r->slots + (size_t)(pos & r->mask) * r->slot_size);
}

/* Claims up to want free slots starting at the current tail; returns how many
 * (at least 1) and their first position in *first. */
static uint64_t claim_for_produce(const struct ring *r, uint64_t want, uint64_t *first)
{
    unsigned spins = 0;
    /* relaxed: tail only decides who owns which position; the data ordering
     * travels through each slot's seq (acquire/release below). */
    uint64_t pos = atomic_load_explicit(&r->hdr->tail, memory_order_relaxed);
    for (;;) {
        uint64_t n = 0;
        int64_t diff = 0;
        while (n < want) {
            /* acquire: pairs with the consumer's release store that freed the slot,
             * so its copy-out of the previous lap finishes before we overwrite. */
            uint64_t seq = atomic_load_explicit(&slot_at(r, pos + n)->seq, memory_order_acquire);
            diff = (int64_t)(seq - (pos + n));
            if (diff != 0)
                break;
            n++;
        }
        if (n > 0) {
            /* relaxed on success and failure: ownership only (see above). On failure
             * pos is reloaded with the current tail. */
            if (atomic_compare_exchange_weak_explicit(&r->hdr->tail, &pos, pos + n,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                *first = pos;
                return n;
            }
            continue;
        }
        if (diff < 0)
            backoff(&spins); /* full: the slot still holds last lap's message */
        /* relaxed: as above; diff > 0 means another producer took pos already. */
        pos = atomic_load_explicit(&r->hdr->tail, memory_order_relaxed);
    }
}

/* Claims up to want published slots starting at the current head; returns 0 once
 * every one of the total messages has been claimed by some consumer. */
static uint64_t claim_for_consume(const struct ring *r, uint64_t want, uint64_t total, uint64_t *first)
{
    unsigned spins = 0;
    /* relaxed: head only decides who owns which position (see claim_for_produce). */
    uint64_t pos = atomic_load_explicit(&r->hdr->head, memory_order_relaxed);
    for (;;) {
        if (pos >= total)
            return 0;
        uint64_t limit = total - pos < want ? total - pos : want;
        uint64_t n = 0;
        int64_t diff = 0;
        while (n < limit) {
            /* acquire: pairs with the producer's release store that published the
             * slot, so its payload is visible before we copy it out. */
            uint64_t seq = atomic_load_explicit(&slot_at(r, pos + n)->seq, memory_order_acquire);
            diff = (int64_t)(seq - (pos + n + 1));
            if (diff != 0)
                break;
            n++;
        }
        if (n > 0) {
            /* relaxed on success and failure: ownership only. */
            if (atomic_compare_exchange_weak_explicit(&r->hdr->head, &pos, pos + n,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                *first = pos;
                return n;
            }
            continue;
        }
        if (diff < 0)
            backoff(&spins); /* empty: pos is not published yet */
        /* relaxed: as above; diff > 0 means another consumer took pos already. */
        pos = atomic_load_explicit(&r->hdr->head, memory_order_relaxed);
    }
}

/* fork() leaves a child's page table for the shared mapping empty; take those
 * minor faults before the clock starts rather than inside the measured run. */
static void prefault(const struct ring *r)
{
    long page = sysconf(_SC_PAGESIZE);
    volatile unsigned char sink = 0;
    for (size_t off = 0; off < r->size; off += (size_t)page)
        sink ^= ((volatile unsigned char *)r->base)[off];
    (void)sink;
}

static void wait_for_start(const struct ring *r, int children, int idx)
{
    struct header *hdr = r->hdr;
    unsigned spins = 0;
    prefault(r);
    /* relaxed: a pure rendezvous; the ring was initialised before fork(), and
     * fork() already orders that for every child. */
    atomic_fetch_add_explicit(&hdr->ready, 1, memory_order_relaxed);
    while (atomic_load_explicit(&hdr->ready, memory_order_relaxed) < (uint32_t)children)
        backoff(&spins);
    hdr->start_ns[idx] = now_ns();
}

static int run_producer(const struct ring *r, const struct config *c, int id)
{
    uint64_t per = c->msgs / (uint64_t)c->procs;
    uint64_t base = (uint64_t)id << PRODUCER_SHIFT;
    unsigned char *msg = malloc(c->payload);
    if (!msg) {
        perror("ring_bench: producer malloc");
        return 1;
    }
    memset(msg, 0xA5, c->payload);
    wait_for_start(r, 2 * c->procs, id);

    uint64_t sent = 0;
    while (sent < per) {
        uint64_t want = per - sent < c->batch ? per - sent : c->batch;
        uint64_t first;
        uint64_t n = claim_for_produce(r, want, &first);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t tag = base | (sent + i);
            uint64_t check = tag ^ TAIL_KEY;
            memcpy(msg, &tag, sizeof tag);
            memcpy(msg + c->payload - sizeof check, &check, sizeof check);
            struct slot *s = slot_at(r, first + i);
            memcpy(s->data, msg, c->payload);
            /* release: the payload written above is visible to whoever acquires seq == pos + 1. */
            atomic_store_explicit(&s->seq, first + i + 1, memory_order_release);
        }
        sent += n;
    }
    free(msg);
    return 0;
}

static int run_consumer(const struct ring *r, const struct config *c, int id)
{
    uint64_t per = c->msgs / (uint64_t)c->procs;
    uint64_t next_seq[MAX_PROCS];
    uint64_t *bitmap = c->procs > 1 ? r->bitmaps + (size_t)id * r->bitmap_words : NULL;
    unsigned char *buf = malloc(c->payload);
    if (!buf) {
        perror("ring_bench: consumer malloc");
        return 1;
    }
    memset(next_seq, 0, sizeof next_seq);
    wait_for_start(r, 2 * c->procs, c->procs + id);

    uint64_t got = 0;
    for (;;) {
        uint64_t first;
        uint64_t n = claim_for_consume(r, c->batch, c->msgs, &first);
        if (n == 0)
            break;
        for (uint64_t i = 0; i < n; i++) {
            struct slot *s = slot_at(r, first + i);
            memcpy(buf, s->data, c->payload);
            /* release: our copy-out above completes before a producer, acquiring
             * seq == pos + capacity, reuses the slot on the next lap. */
            atomic_store_explicit(&s->seq, first + i + r->capacity, memory_order_release);

            uint64_t tag, check;
            memcpy(&tag, buf, sizeof tag);
            memcpy(&check, buf + c->payload - sizeof check, sizeof check);
            uint64_t producer = tag >> PRODUCER_SHIFT;
            uint64_t seq = tag & SEQ_MASK;
            if (check != (tag ^ TAIL_KEY) || producer >= (uint64_t)c->procs || seq >= per) {
                fprintf(stderr, "ring_bench: consumer %d: corrupt message at position %" PRIu64
                                " (tag %#" PRIx64 ", tail %#" PRIx64 ")\n",
                        id, first + i, tag, check);
                return 2;
            }
            /* Every consumer sees each producer's messages in increasing order,
             * since both claim positions in increasing order. */
            if (seq < next_seq[producer] || (c->procs == 1 && seq != next_seq[producer])) {
                fprintf(stderr, "ring_bench: consumer %d: producer %" PRIu64 " message %" PRIu64
                                " out of order (expected %s%" PRIu64 ")\n",
                        id, producer, seq, c->procs == 1 ? "" : ">= ", next_seq[producer]);
                return 2;
            }
            next_seq[producer] = seq + 1;
            if (bitmap) {
                uint64_t bit = producer * per + seq;
                bitmap[bit / 64] |= UINT64_C(1) << (bit % 64);
            }
        }
        got += n;
    }
    r->hdr->end_ns[id] = now_ns();
    r->hdr->received[id] = got;
    free(buf);
    return 0;
}

static void pin_to(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        perror("ring_bench: sched_setaffinity");
}

static int verify_delivery(const struct ring *r, const struct config *c)
{
    uint64_t total = 0;
    for (int i = 0; i < c->procs; i++)
        total += r->hdr->received[i];
    if (total != c->msgs) {
        fprintf(stderr, "ring_bench: consumers received %" PRIu64 " messages, expected %" PRIu64 "\n",
                total, c->msgs);
        return 1;
    }
    if (c->procs == 1)
        return 0; /* the consumer checked the exact order */
    for (size_t w = 0; w < r->bitmap_words; w++) {
        uint64_t seen = 0;
        for (int i = 0; i < c->procs; i++) {
            uint64_t bits = r->bitmaps[(size_t)i * r->bitmap_words + w];
            if (seen & bits) {
                fprintf(stderr, "ring_bench: a message was delivered twice (bitmap word %zu)\n", w);
                return 1;
            }
            seen |= bits;
        }
        uint64_t want = ~UINT64_C(0);
        if (w == r->bitmap_words - 1 && c->msgs % 64)
            want = (UINT64_C(1) << (c->msgs % 64)) - 1;
        if (seen != want) {
            fprintf(stderr, "ring_bench: a message was lost (bitmap word %zu)\n", w);
            return 1;
        }
    }
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ring_bench --payload N --batch B --msgs M [--procs P] [--capacity C]\n"
            "                  [--pin] [--timeout SECONDS]\n"
            "  --payload   message size in bytes (>= 16)\n"
            "  --batch     slots claimed per CAS (1 = one message at a time)\n"
            "  --msgs      messages in total (a multiple of --procs)\n"
            "  --procs     producers, and as many consumers (default 1, max %d)\n"
            "  --capacity  ring slots, a power of two >= batch (default 65536)\n"
            "  --pin       producers on the first allowed CPU, consumers on the second\n"
            "  --timeout   give up after this many seconds (default 120)\n",
            MAX_PROCS);
}

static int parse_args(int argc, char **argv, struct config *c)
{
    static const struct option opts[] = {
        {"payload", required_argument, NULL, 'p'}, {"batch", required_argument, NULL, 'b'},
        {"msgs", required_argument, NULL, 'm'},    {"procs", required_argument, NULL, 'n'},
        {"capacity", required_argument, NULL, 'c'}, {"pin", no_argument, NULL, 'P'},
        {"timeout", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *c = (struct config){.payload = 0, .batch = 1, .msgs = 0, .capacity = 65536, .procs = 1, .pin = 0, .timeout = 120};
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'p': c->payload = strtoull(optarg, NULL, 10); break;
        case 'b': c->batch = strtoull(optarg, NULL, 10); break;
        case 'm': c->msgs = strtoull(optarg, NULL, 10); break;
        case 'n': c->procs = atoi(optarg); break;
        case 'c': c->capacity = strtoull(optarg, NULL, 10); break;
        case 'P': c->pin = 1; break;
        case 't': c->timeout = strtod(optarg, NULL); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return 1;
        }
    }
    const char *err = NULL;
    if (c->payload < 16)
        err = "--payload must be >= 16 (two 8-byte check words)";
    else if (c->batch < 1)
        err = "--batch must be >= 1";
    else if (c->procs < 1 || c->procs > MAX_PROCS)
        err = "--procs out of range";
    else if (c->msgs == 0 || c->msgs % (uint64_t)c->procs)
        err = "--msgs must be a positive multiple of --procs";
    else if (c->msgs / (uint64_t)c->procs > SEQ_MASK)
        err = "--msgs too large";
    else if (c->capacity < c->batch || (c->capacity & (c->capacity - 1)))
        err = "--capacity must be a power of two >= --batch";
    else if (!(c->timeout > 0))
        err = "--timeout must be > 0";
    if (err) {
        fprintf(stderr, "ring_bench: %s\n", err);
        usage(stderr);
        return 1;
    }
    return 0;
}

static void kill_all(pid_t *pids, int n)
{
    for (int i = 0; i < n; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGKILL);
    for (int i = 0; i < n; i++)
        if (pids[i] > 0)
            waitpid(pids[i], NULL, 0);
}

int main(int argc, char **argv)
{
    struct config c;
    if (parse_args(argc, argv, &c))
        return 1;

    struct ring r;
    r.capacity = c.capacity;
    r.mask = c.capacity - 1;
    r.slot_size = (offsetof(struct slot, data) + c.payload + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    r.bitmap_words = c.procs > 1 ? (size_t)((c.msgs + 63) / 64) : 0;
    size_t hdr_size = (sizeof(struct header) + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    size_t ring_size = (size_t)c.capacity * r.slot_size;
    size_t size = hdr_size + ring_size + (size_t)c.procs * r.bitmap_words * sizeof(uint64_t);

    char name[64];
    snprintf(name, sizeof name, "/ring-bench-%ld", (long)getpid());
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
        perror("ring_bench: shm_open");
        return 1;
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        perror("ring_bench: ftruncate");
        shm_unlink(name);
        return 1;
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    /* The children inherit the mapping; unlinking now means nothing leaks even on a crash. */
    shm_unlink(name);
    if (base == MAP_FAILED) {
        perror("ring_bench: mmap");
        return 1;
    }
    r.base = base;
    r.size = size;
    r.hdr = base;
    r.slots = (unsigned char *)base + hdr_size;
    r.bitmaps = (uint64_t *)(r.slots + ring_size);
    /* The region comes zeroed from ftruncate; only the seqs need a value.
     * relaxed: no child exists yet, and fork() orders these stores before it. */
    for (uint64_t i = 0; i < c.capacity; i++)
        atomic_store_explicit(&slot_at(&r, i)->seq, i, memory_order_relaxed);

    int cpus[2] = {-1, -1};
    if (c.pin) {
        cpu_set_t allowed;
        int found = 0;
        if (sched_getaffinity(0, sizeof allowed, &allowed) == 0)
            for (int cpu = 0; cpu < CPU_SETSIZE && found < 2; cpu++)
                if (CPU_ISSET(cpu, &allowed))
                    cpus[found++] = cpu;
        if (found < 2) {
            fprintf(stderr, "ring_bench: --pin needs 2 allowed CPUs; not pinning\n");
            c.pin = 0;
        }
    }

    fflush(stdout);
    int children = 2 * c.procs;
    pid_t pids[2 * MAX_PROCS];
    for (int i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("ring_bench: fork");
            kill_all(pids, i);
            return 1;
        }
        if (pid == 0) {
            int producer = i < c.procs;
            if (c.pin)
                pin_to(producer ? cpus[0] : cpus[1]);
            int rc = producer ? run_producer(&r, &c, i) : run_consumer(&r, &c, i - c.procs);
            _exit(rc);
        }
        pids[i] = pid;
    }

    int64_t deadline = now_ns() + (int64_t)(c.timeout * 1e9);
    int alive = children;
    while (alive > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0) {
            perror("ring_bench: waitpid");
            kill_all(pids, children);
            return 1;
        }
        if (pid == 0) {
            if (now_ns() > deadline) {
                fprintf(stderr, "ring_bench: timed out after %.0f s\n", c.timeout);
                kill_all(pids, children);
                return 1;
            }
            struct timespec nap = {0, 2000000};
            nanosleep(&nap, NULL);
            continue;
        }
        for (int i = 0; i < children; i++)
            if (pids[i] == pid)
                pids[i] = -1;
        alive--;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "ring_bench: a child failed (%s %d)\n",
                    WIFEXITED(status) ? "exit status" : "signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            kill_all(pids, children);
            return 1;
        }
    }

    if (verify_delivery(&r, &c))
        return 1;

    int64_t start = r.hdr->start_ns[0];
    for (int i = 1; i < children; i++)
        if (r.hdr->start_ns[i] < start)
            start = r.hdr->start_ns[i];
    int64_t end = r.hdr->end_ns[0];
    for (int i = 1; i < c.procs; i++)
        if (r.hdr->end_ns[i] > end)
            end = r.hdr->end_ns[i];
    double seconds = (double)(end - start) / 1e9;
    printf("{\"system\": \"c-ring\", \"payload\": %zu, \"batch\": %" PRIu64 ", \"procs\": %d, "
           "\"msgs\": %" PRIu64 ", \"seconds\": %.9f, \"msgs_per_s\": %.1f, \"capacity\": %" PRIu64
           ", \"verified\": true}\n",
           c.payload, c.batch, c.procs, c.msgs, seconds, (double)c.msgs / seconds, c.capacity);
    munmap(base, size);
    return 0;
}
