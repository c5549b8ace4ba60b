/* SPDX-License-Identifier: Apache-2.0 */
/* The write-ahead log, with real segment files in a temporary directory:
 * what a put and a get write, appends from many threads, recovery of pending
 * jobs into a new region, and recovery over a hole, a torn tail and a
 * corrupt record; retention, checkpoints, the backlog feeder, redelivery of
 * a dead reader's message, and the snapshot. The tests read the segment files themselves (layout.h,
 * "The log") rather than trusting the code that wrote them. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "crc32c.h"
#include "harness.h"
#include "log.h"
#include "tests.h"

enum { SEGMENT = 64 * 1024 }; /* small, so the tests cross segments */

/* ------------------------------------------------------------ the files */

typedef struct log_segment {
    uint64_t index;
    uint8_t *records; /* S bytes: the file past its header page (zeros past its end) */
    uint8_t *file;    /* the whole file */
    uint64_t bytes;   /* the file's length: the last segment may not be grown whole yet */
} log_segment;

/* Every segment file of a log directory, read into memory. */
typedef struct log_image {
    uint64_t S;
    uint32_t count;
    log_segment *segments; /* by index */
} log_image;

static int compare_segments(const void *a, const void *b)
{
    uint64_t x = ((const log_segment *)a)->index, y = ((const log_segment *)b)->index;
    return x < y ? -1 : x > y;
}

/* Segment files are named by their base position (index * S). */
static void segment_path(char *out, size_t size, const char *dir, uint64_t base)
{
    char name[32];
    shmq_segment_name(name, sizeof name, base);
    snprintf(out, size, "%s/%s", dir, name);
}

static log_image image_load(const char *dir, uint64_t S)
{
    log_image img = {.S = S};
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    struct dirent *entry;
    uint32_t capacity = 0;
    while ((entry = readdir(d))) {
        unsigned long long index;
        char rest[8];
        if (strlen(entry->d_name) != 20 || sscanf(entry->d_name, "%16llx%7s", &index, rest) != 2 ||
            strcmp(rest, ".seg") != 0)
            continue;
        index /= S; /* the name is the base position */
        if (img.count == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            img.segments = realloc(img.segments, capacity * sizeof *img.segments);
            CHECK(img.segments != NULL);
        }
        char path[512];
        segment_path(path, sizeof path, dir, index * S);
        int fd = open(path, O_RDONLY);
        CHECK(fd >= 0);
        struct stat st;
        CHECK_EQ(fstat(fd, &st), 0);
        CHECK(st.st_size >= SHMQ_SEGMENT_HEADER_BYTES && (uint64_t)st.st_size <= SHMQ_SEGMENT_HEADER_BYTES + S);
        uint8_t *file = calloc(1, SHMQ_SEGMENT_HEADER_BYTES + S);
        CHECK(file != NULL);
        CHECK_EQ(pread(fd, file, st.st_size, 0), st.st_size);
        close(fd);
        const shmq_segment_header *sh = (const shmq_segment_header *)file;
        CHECK_RC(shmq_segment_header_check(sh, SHMQ_SEGMENT_MAGIC), SHMQ_OK);
        CHECK_EQ(sh->index, index);
        CHECK_EQ(sh->segment_bytes, S);
        CHECK_EQ(sh->base, index * S);
        img.segments[img.count++] = (log_segment){index, file + SHMQ_SEGMENT_HEADER_BYTES, file, st.st_size};
    }
    closedir(d);
    qsort(img.segments, img.count, sizeof *img.segments, compare_segments);
    /* Every segment but the last is whole: the next is made only then. */
    for (uint32_t i = 0; i + 1 < img.count; i++)
        CHECK_EQ(img.segments[i].bytes, SHMQ_SEGMENT_HEADER_BYTES + S);
    return img;
}

static void image_free(log_image *img)
{
    for (uint32_t i = 0; i < img->count; i++)
        free(img->segments[i].file);
    free(img->segments);
    img->segments = NULL;
    img->count = 0;
}

/* The record at `position`, or NULL if no file holds it. */
static shmq_record_header *image_record(const log_image *img, uint64_t position)
{
    uint64_t index = position / img->S;
    for (uint32_t i = 0; i < img->count; i++)
        if (img->segments[i].index == index)
            return (shmq_record_header *)(img->segments[i].records + position % img->S);
    return NULL;
}

static uint64_t record_word(const shmq_record_header *rec)
{
    return atomic_load(&((shmq_record_header *)rec)->word);
}

typedef void (*record_visit)(void *ctx, uint64_t position, unsigned type, const shmq_record_header *rec);

/* Visits every record in [from, to): each must be whole, and each must
 * start where the one before it ended (PADs included, across segments). */
static void image_walk(const log_image *img, uint64_t from, uint64_t to, record_visit visit, void *ctx)
{
    uint64_t p = from;
    while (p < to) {
        const shmq_record_header *rec = image_record(img, p);
        if (!rec)
            test_fail(__FILE__, __LINE__, "no segment file holds log position %llu", (unsigned long long)p);
        uint64_t word = record_word(rec);
        if (!shmq_record_valid(rec, word, p, img->S))
            test_fail(__FILE__, __LINE__, "no whole record at log position %llu (word 0x%llx)",
                      (unsigned long long)p, (unsigned long long)word);
        uint32_t length = shmq_word_length(word);
        if (length >= sizeof *rec) {
            /* The CRC as layout.h defines it, computed here from the bytes. */
            uint32_t crc = shmq_crc32c(0, (const uint8_t *)rec + 12, length - 12);
            CHECK_EQ(shmq_crc32c(crc, &word, sizeof word), rec->crc);
        }
        visit(ctx, p, shmq_word_type(word), rec);
        p += length;
    }
    CHECK_EQ(p, to);
}

static const shmq_enqueue_body *enqueue_body(const shmq_record_header *rec)
{
    return (const shmq_enqueue_body *)(rec + 1);
}

static const uint8_t *enqueue_payload(const shmq_record_header *rec)
{
    const shmq_enqueue_body *body = enqueue_body(rec);
    return (const uint8_t *)(body + 1) + body->group_bytes + body->unique_bytes;
}

/* What a walk found: ENQUEUE positions in log order, every job id a DONE
 * or DONE_MANY names, and how many records (PADs apart) of which kind. */
typedef struct log_summary {
    uint64_t *enqueues, *dones;
    uint64_t enqueue_count, done_count, capacity;
    uint64_t records, pads, checkpoints, others;
} log_summary;

static void summary_add(uint64_t **list, uint64_t *count, uint64_t capacity, uint64_t value)
{
    if (*count == capacity)
        test_fail(__FILE__, __LINE__, "more records than expected");
    (*list)[(*count)++] = value;
}

static void summarize(void *ctx, uint64_t position, unsigned type, const shmq_record_header *rec)
{
    log_summary *s = ctx;
    if (type != SHMQ_REC_PAD)
        s->records++;
    switch (type) {
    case SHMQ_REC_ENQUEUE:
        CHECK(rec->body_bytes >= sizeof(shmq_enqueue_body));
        CHECK_EQ(rec->job_id, position); /* a new job's id is its position */
        summary_add(&s->enqueues, &s->enqueue_count, s->capacity, position);
        break;
    case SHMQ_REC_DONE:
        CHECK_EQ(rec->body_bytes, 0);
        summary_add(&s->dones, &s->done_count, s->capacity, rec->job_id);
        break;
    case SHMQ_REC_DONE_MANY: {
        const uint32_t *head = (const uint32_t *)(rec + 1);
        CHECK(head[0] >= 1);
        CHECK_EQ(head[1], 0);
        CHECK_EQ(rec->body_bytes, 8 + 8ull * head[0]);
        const uint64_t *ids = (const uint64_t *)(rec + 1) + 1;
        for (uint32_t i = 0; i < head[0]; i++)
            summary_add(&s->dones, &s->done_count, s->capacity, ids[i]);
        break;
    }
    case SHMQ_REC_PAD:
        s->pads++;
        break;
    case SHMQ_REC_CHECKPOINT_BEGIN:
    case SHMQ_REC_CHECKPOINT_END: /* a log may start with an (empty) checkpoint */
        s->checkpoints++;
        break;
    default:
        s->others++;
        break;
    }
}

static log_summary summary_new(uint64_t capacity)
{
    log_summary s = {.capacity = capacity};
    s.enqueues = malloc(capacity * sizeof *s.enqueues);
    s.dones = malloc(capacity * sizeof *s.dones);
    CHECK(s.enqueues && s.dones);
    return s;
}

static log_summary summary_make(const log_image *img, uint64_t from, uint64_t to, uint64_t capacity)
{
    log_summary s = summary_new(capacity);
    image_walk(img, from, to, summarize, &s);
    return s;
}

static void summary_free(log_summary *s)
{
    free(s->enqueues);
    free(s->dones);
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Every ENQUEUE has exactly one DONE, and every DONE names an ENQUEUE. */
static void check_each_done_once(log_summary *s)
{
    CHECK_EQ(s->done_count, s->enqueue_count);
    qsort(s->dones, s->done_count, sizeof *s->dones, compare_u64);
    for (uint64_t i = 0; i < s->enqueue_count; i++) /* enqueues are in log order: sorted */
        if (s->dones[i] != s->enqueues[i])
            test_fail(__FILE__, __LINE__, "DONE records do not match the ENQUEUEs one to one: job %llu vs done %llu",
                      (unsigned long long)s->enqueues[i], (unsigned long long)s->dones[i]);
}

/* Overwrites bytes of the segment file that holds `position`. */
static void file_patch(const char *dir, uint64_t S, uint64_t position, const void *bytes, size_t n)
{
    char path[512];
    segment_path(path, sizeof path, dir, position / S * S);
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK_EQ(pwrite(fd, bytes, n, (off_t)(SHMQ_SEGMENT_HEADER_BYTES + position % S)), (ssize_t)n);
    close(fd);
}

/* ------------------------------------------------------------ messages */

/* Length of test message `seq`: 0..limit bytes, the same in every run. */
static uint32_t length_of(uint64_t seq, uint32_t limit) { return (uint32_t)(mix64(seq * 31 + 7) % (limit + 1)); }

static void push_seq(shmq_handle *h, uint64_t seq, uint32_t length)
{
    static uint8_t data[4096];
    CHECK(length <= sizeof data);
    fill_pattern(data, seq, length);
    CHECK_RC(shmq_push(h, -1, (uint8_t)seq, 0, (const char *)data, length, NULL, 0, 0), SHMQ_OK);
}

/* Pops the next message: it must be `seq`. With `claim`, through a buffer
 * too small for it (claimed, then shmq_pop_finish). Returns what shmq_pop
 * reported; fields it did not write are all ones. */
static shmq_message pop_seq(shmq_handle *h, uint64_t seq, uint32_t length, int claim)
{
    static uint8_t buf[4096];
    shmq_message m;
    memset(&m, 0xFF, sizeof m);
    if (claim) {
        CHECK_RC(shmq_pop(h, (char *)buf, 0, 0, &m), SHMQ_ECLAIMED);
        CHECK_EQ(m.length, length);
        CHECK_RC(shmq_pop_finish(h, &m, (char *)buf), SHMQ_OK);
    } else {
        CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_OK);
    }
    CHECK_EQ(m.length, length);
    CHECK_EQ(m.tag, (uint8_t)seq);
    CHECK_EQ(check_pattern(buf, seq, length), 0);
    return m;
}

static void check_clean(const shmq_recovery *rep)
{
    CHECK_EQ(rep->corrupt_records, 0);
    CHECK_EQ(rep->corrupt_bytes, 0);
    CHECK_EQ(rep->torn_bytes, 0);
    CHECK_EQ(rep->torn_position, 0);
}

static void close_region(shmq_handle *h, test_region *r)
{
    shmq_detach(h);
    region_destroy(r);
}

static shmq_log_stats log_stats(const shmq_handle *h)
{
    shmq_log_stats st;
    shmq_log_stats_read(h, &st);
    return st;
}

/* ------------------------------------------------------------ records of puts and gets */

/* Each put writes an ENQUEUE whose position is the job id the message
 * carries; each get writes a DONE for it. */
void test_log_put_get_records(void)
{
    enum { COUNT = 1000, ROUND = 8, BIG = 1500 };
    char *dir = temp_dir_create();
    /* 64 slots of 32 bytes: payloads over 1008 bytes travel as references to their record. */
    shmq_params p = logged_params(1, 64, 32, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    CHECK_EQ(rep.live, 0);
    CHECK_EQ(rep.records, 0);
    CHECK(shmq_inline_max(h) < BIG);
    uint64_t origin = rep.next_position;

    static uint32_t lengths[COUNT];
    static uint64_t ids[COUNT];
    for (uint64_t i = 0; i < COUNT; i++)
        lengths[i] = i % 17 == 5 ? BIG : length_of(i, 200);
    for (uint64_t done = 0; done < COUNT; done += ROUND) {
        for (uint64_t i = done; i < done + ROUND; i++)
            push_seq(h, i, lengths[i]);
        for (uint64_t i = done; i < done + ROUND; i++) {
            shmq_message m = pop_seq(h, i, lengths[i], i % 2);
            if (m.job_id == UINT64_MAX)
                test_fail(__FILE__, __LINE__, "shmq_pop did not report the job id of message %llu",
                          (unsigned long long)i);
            CHECK_EQ(m.attempt, 1);
            if (lengths[i] == BIG && i % 2)
                CHECK(m.flags & SHMQ_MSG_REF); /* a claim shows it: the payload came from the log */
            ids[i] = m.job_id;
            if (ids[i] == 0)
                test_fail(__FILE__, __LINE__, "message %llu has job id 0 (\"not logged\")", (unsigned long long)i);
            if (i > 0)
                CHECK(ids[i] > ids[i - 1]);
        }
    }
    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    CHECK(st.tail / SEGMENT > origin / SEGMENT + 1); /* three segments at least */

    log_image img = image_load(dir, SEGMENT);
    log_summary s = summary_make(&img, origin, st.tail, 2 * COUNT);
    CHECK_EQ(s.enqueue_count, COUNT);
    CHECK(s.pads > 0); /* segment ends */
    CHECK_EQ(s.others, 0);
    for (uint64_t i = 0; i < COUNT; i++) {
        CHECK_EQ(ids[i], s.enqueues[i]);
        const shmq_record_header *rec = image_record(&img, ids[i]);
        const shmq_enqueue_body *body = enqueue_body(rec);
        CHECK_EQ(body->payload_bytes, lengths[i]);
        CHECK_EQ(body->tag, (uint8_t)i);
        CHECK_EQ(body->attempt, 1);
        CHECK_EQ(body->flags, SHMQ_ENQ_LANED);
        CHECK_EQ(check_pattern(enqueue_payload(rec), i, lengths[i]), 0);
    }
    check_each_done_once(&s);
    /* acks are batched: fewer DONE records than gets, none lost */
    CHECK(s.records < s.enqueue_count + s.done_count + s.checkpoints);
    CHECK_EQ(st.records_appended, s.records);
    summary_free(&s);
    image_free(&img);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ many writers at once */

enum { B_PRODUCERS = 4, B_CONSUMERS = 2, B_PER_PRODUCER = 20000, B_BATCH = 16 };

typedef struct b_message {
    uint32_t producer, seq, check;
} b_message;

typedef struct b_run {
    test_region *region;
    const char *dir;
    shmq_handle *shared; /* used by some threads at once: TSan sees one mapping of the log */
    _Atomic uint64_t received;
    _Atomic uint8_t *seen;
} b_run;

typedef struct b_worker {
    b_run *run;
    uint32_t id;
    int shared; /* 1: uses run->shared; 0: a handle of its own, as another process would */
    pthread_t thread;
} b_worker;

static shmq_handle *b_handle(const b_worker *w)
{
    return w->shared ? w->run->shared : logged_attach(w->run->region, w->run->dir);
}

static void b_release(const b_worker *w, shmq_handle *h)
{
    if (!w->shared)
        shmq_detach(h);
}

static uint32_t b_check(uint32_t producer, uint32_t seq)
{
    return (uint32_t)mix64((uint64_t)producer << 32 | seq);
}

static void *b_producer(void *arg)
{
    b_worker *w = arg;
    shmq_handle *h = b_handle(w);
    for (uint32_t seq = 0; seq < B_PER_PRODUCER; seq++) {
        b_message m = {w->id, seq, b_check(w->id, seq)};
        CHECK_RC(shmq_push(h, -1, (uint8_t)w->id, 0, (const char *)&m, sizeof m, NULL, 0, -1), SHMQ_OK);
    }
    b_release(w, h);
    return NULL;
}

static void *b_consumer(void *arg)
{
    b_worker *w = arg;
    b_run *run = w->run;
    shmq_handle *h = b_handle(w);
    const uint64_t total = (uint64_t)B_PRODUCERS * B_PER_PRODUCER;
    static _Thread_local uint8_t buf[B_BATCH * sizeof(b_message)];
    uint32_t lengths[B_BATCH], count;
    uint8_t tags[B_BATCH];
    shmq_message claimed;
    while (atomic_load(&run->received) < total) {
        int rc = shmq_pop_many(h, (char *)buf, sizeof buf, B_BATCH, 10 * 1000000, lengths, tags, &count, &claimed);
        if (rc == SHMQ_EEMPTY)
            continue;
        CHECK_RC(rc, SHMQ_OK);
        for (uint32_t i = 0; i < count; i++) {
            b_message m;
            CHECK_EQ(lengths[i], sizeof m);
            memcpy(&m, buf + i * sizeof m, sizeof m);
            CHECK(m.producer < B_PRODUCERS && m.seq < B_PER_PRODUCER);
            CHECK_EQ(tags[i], m.producer);
            CHECK_EQ(m.check, b_check(m.producer, m.seq));
            if (atomic_fetch_add(&run->seen[(uint64_t)m.producer * B_PER_PRODUCER + m.seq], 1) != 0)
                test_fail(__FILE__, __LINE__, "producer %u seq %u received twice", m.producer, m.seq);
        }
        atomic_fetch_add(&run->received, count);
    }
    b_release(w, h);
    return NULL;
}

typedef struct b_scan {
    log_summary summary;
    uint8_t *logged; /* per (producer, seq): ENQUEUE records seen */
} b_scan;

static void b_visit(void *ctx, uint64_t position, unsigned type, const shmq_record_header *rec)
{
    b_scan *scan = ctx;
    summarize(&scan->summary, position, type, rec);
    if (type != SHMQ_REC_ENQUEUE)
        return;
    b_message m;
    CHECK_EQ(enqueue_body(rec)->payload_bytes, sizeof m);
    memcpy(&m, enqueue_payload(rec), sizeof m);
    CHECK(m.producer < B_PRODUCERS && m.seq < B_PER_PRODUCER);
    CHECK_EQ(m.check, b_check(m.producer, m.seq));
    CHECK_EQ(scan->logged[(uint64_t)m.producer * B_PER_PRODUCER + m.seq]++, 0);
}

/* Grows the log's files ahead of the writers, as maintenance does, until
 * the producers are done. */
static void *b_upkeep(void *arg)
{
    b_run *run = arg;
    shmq_handle *h = logged_attach(run->region, run->dir);
    const uint64_t total = (uint64_t)B_PRODUCERS * B_PER_PRODUCER;
    while (atomic_load(&run->received) < total) {
        shmq_log_enter(h);
        CHECK_RC(shmq_log_upkeep(h), SHMQ_OK);
        shmq_log_leave(h);
        sleep_ms(1);
    }
    shmq_detach(h);
    return NULL;
}

/* Producers and consumers append at once: the log is still one gapless
 * sequence of whole records, and every job has exactly one DONE. Half the
 * threads share a handle (one mapping of each segment, which TSan can
 * check); the others have their own, as separate processes would. With
 * segments larger than SHMQ_SEGMENT_CHUNK the files grow while written
 * (by writers that reach their end, and by upkeep ahead of them): no
 * record is lost or torn, no page past a file's end is touched (SIGBUS). */
static void concurrent_append_run(uint64_t S, int upkeep)
{
    const uint64_t total = (uint64_t)B_PRODUCERS * B_PER_PRODUCER;
    char *dir = temp_dir_create();
    /* Room for every message at once: producers never wait for consumers. */
    shmq_params p = logged_params(1, 1u << 17, 32, SHMQ_DURABILITY_MEMORY, S);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    uint64_t origin = rep.next_position;

    b_run run = {.region = &r, .dir = dir, .shared = logged_attach(&r, dir)};
    run.seen = calloc(total, 1);
    CHECK(run.seen != NULL);
    b_worker producers[B_PRODUCERS], consumers[B_CONSUMERS];
    pthread_t keeper;
    if (upkeep)
        CHECK_EQ(pthread_create(&keeper, NULL, b_upkeep, &run), 0);
    for (uint32_t i = 0; i < B_CONSUMERS; i++) {
        consumers[i] = (b_worker){.run = &run, .id = i, .shared = i == 0};
        CHECK_EQ(pthread_create(&consumers[i].thread, NULL, b_consumer, &consumers[i]), 0);
    }
    for (uint32_t i = 0; i < B_PRODUCERS; i++) {
        producers[i] = (b_worker){.run = &run, .id = i, .shared = i < 2};
        CHECK_EQ(pthread_create(&producers[i].thread, NULL, b_producer, &producers[i]), 0);
    }
    for (uint32_t i = 0; i < B_PRODUCERS; i++)
        CHECK_EQ(pthread_join(producers[i].thread, NULL), 0);
    for (uint32_t i = 0; i < B_CONSUMERS; i++)
        CHECK_EQ(pthread_join(consumers[i].thread, NULL), 0);
    if (upkeep)
        CHECK_EQ(pthread_join(keeper, NULL), 0);
    CHECK_EQ(atomic_load(&run.received), total);
    for (uint64_t i = 0; i < total; i++)
        if (atomic_load(&run.seen[i]) != 1)
            test_fail(__FILE__, __LINE__, "producer %llu seq %llu received %u times",
                      (unsigned long long)(i / B_PER_PRODUCER), (unsigned long long)(i % B_PER_PRODUCER),
                      atomic_load(&run.seen[i]));
    CHECK(shmq_is_empty(h));
    shmq_detach(run.shared);

    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    CHECK_EQ(st.last_errno, 0);
    CHECK_EQ(st.holes_filled, 0);
    log_image img = image_load(dir, S);
    CHECK(img.count > 2);
    b_scan scan = {.summary = summary_new(2 * total), .logged = calloc(total, 1)};
    CHECK(scan.logged != NULL);
    image_walk(&img, origin, st.tail, b_visit, &scan);
    CHECK_EQ(scan.summary.enqueue_count, total); /* each (producer, seq) once: b_visit */
    CHECK_EQ(scan.summary.others, 0);
    CHECK_EQ(scan.summary.records, st.records_appended);
    check_each_done_once(&scan.summary);

    summary_free(&scan.summary);
    free(scan.logged);
    image_free(&img);
    free(run.seen);
    close_region(h, &r);
    temp_dir_remove(dir);
}

void test_log_concurrent_append(void) { concurrent_append_run(SEGMENT, 0); }

/* Segments of 1 MiB: each file is made with 64 KiB of records and grows
 * four or five times while four producers write into it at once. */
void test_log_segments_grow(void) { concurrent_append_run(1u << 20, 1); }

/* ------------------------------------------------------------ growing files, large records */

enum { G_WRITERS = 4, G_PER_WRITER = 300, G_MAX = 60 * 1024 };

typedef struct g_writer {
    test_region *region;
    const char *dir;
    uint32_t id;
    pthread_t thread;
} g_writer;

static uint32_t g_length(uint32_t id, uint32_t i) { return 8 + (uint32_t)(mix64((uint64_t)id << 32 | i) % G_MAX); }

static void *g_write(void *arg)
{
    g_writer *w = arg;
    shmq_handle *h = logged_attach(w->region, w->dir); /* its own mappings, as another process */
    uint8_t *payload = malloc(G_MAX + 8);
    CHECK(payload != NULL);
    for (uint32_t i = 0; i < G_PER_WRITER; i++) {
        uint32_t length = g_length(w->id, i);
        uint64_t key = (uint64_t)w->id << 32 | i; /* then bytes that depend on it */
        memcpy(payload, &key, 8);
        fill_pattern(payload + 8, key, length - 8);
        shmq_enqueue_args args = {.tag = (uint8_t)w->id, .first = payload, .first_length = length};
        uint64_t position;
        int spilling;
        shmq_log_enter(h);
        CHECK_RC(shmq_log_enqueue(h, &args, &position, &spilling), SHMQ_OK);
        shmq_log_leave(h);
    }
    free(payload);
    shmq_detach(h);
    return NULL;
}

typedef struct g_scan {
    uint64_t records;
    uint8_t seen[G_WRITERS][G_PER_WRITER];
} g_scan;

static void g_visit(void *ctx, uint64_t position, unsigned type, const shmq_record_header *rec)
{
    (void)position;
    g_scan *scan = ctx;
    if (type != SHMQ_REC_ENQUEUE)
        return;
    const uint8_t *payload = enqueue_payload(rec);
    uint64_t key;
    memcpy(&key, payload, 8);
    uint32_t id = (uint32_t)(key >> 32), i = (uint32_t)key;
    CHECK(id < G_WRITERS && i < G_PER_WRITER);
    CHECK_EQ(enqueue_body(rec)->payload_bytes, g_length(id, i));
    CHECK_EQ(check_pattern(payload + 8, key, g_length(id, i) - 8), 0);
    CHECK_EQ(scan->seen[id][i]++, 0);
    scan->records++;
}

/* Writers of records up to 60 KiB, each with its own mappings and no
 * upkeep: one writer's check that the file reaches past the tail is soon
 * out of date when others reserve behind it, so each grows the file for
 * its own reservation before it writes (a page past the file's end would
 * kill it with SIGBUS). Every record is whole, once. */
void test_log_segments_grow_large_records(void)
{
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 1u << 10, 64, SHMQ_DURABILITY_MEMORY, 1u << 20);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    uint64_t origin = rep.next_position;
    g_writer writers[G_WRITERS];
    for (uint32_t i = 0; i < G_WRITERS; i++) {
        writers[i] = (g_writer){.region = &r, .dir = dir, .id = i};
        CHECK_EQ(pthread_create(&writers[i].thread, NULL, g_write, &writers[i]), 0);
    }
    for (uint32_t i = 0; i < G_WRITERS; i++)
        CHECK_EQ(pthread_join(writers[i].thread, NULL), 0);
    shmq_log_stats st = log_stats(h);
    CHECK_EQ(st.last_errno, 0);
    log_image img = image_load(dir, 1u << 20);
    CHECK(img.count > 10);
    static g_scan scan;
    memset(&scan, 0, sizeof scan);
    image_walk(&img, origin, st.tail, g_visit, &scan);
    CHECK_EQ(scan.records, (uint64_t)G_WRITERS * G_PER_WRITER);
    image_free(&img);
    close_region(h, &r);
    temp_dir_remove(dir);
}


/* ------------------------------------------------------------ recovery */

/* A queue whose region is gone (a reboot): a new region over the same log
 * gets back exactly the jobs that were not taken, in their order, with
 * their ids. */
void test_log_recover_pending(void)
{
    enum { COUNT = 1000, TAKEN = 300, LIMIT = 120 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 4096, 64, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    uint64_t origin = rep.next_position;
    for (uint64_t i = 0; i < COUNT; i++)
        push_seq(h, i, length_of(i, LIMIT));
    for (uint64_t i = 0; i < TAKEN; i++)
        pop_seq(h, i, length_of(i, LIMIT), 0);
    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    close_region(h, &r);

    /* The job ids, from the files, before recovery replaces them. */
    log_image img = image_load(dir, SEGMENT);
    log_summary s = summary_make(&img, origin, st.tail, 2 * COUNT);
    CHECK_EQ(s.enqueue_count, COUNT);
    CHECK_EQ(s.done_count, TAKEN);
    image_free(&img);

    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, COUNT - TAKEN);
    CHECK_EQ(rep.done, TAKEN);
    CHECK_EQ(rep.running, 0);
    CHECK_EQ(rep.holes, 0);
    CHECK_EQ(rep.records, s.records); /* every record of the files */
    CHECK(rep.next_position >= st.tail);
    /* Every other one claimed: a claim always reports the job's id and
     * attempt (log_put_get_records checks that shmq_pop reports them too). */
    for (uint64_t i = TAKEN; i < COUNT; i++) {
        shmq_message got = pop_seq(h, i, length_of(i, LIMIT), i % 2);
        if (i % 2) {
            CHECK_EQ(got.job_id, s.enqueues[i]); /* the same job, not a new one */
            CHECK_EQ(got.attempt, 1);
        }
    }
    shmq_message m;
    static char buf[4096];
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    close_region(h, &r);

    /* Taken after recovery: done for good. */
    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, 0);
    CHECK_EQ(rep.done, COUNT - TAKEN);
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    summary_free(&s);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ holes */

/* A writer that died right after its reservation leaves unwritten space:
 * recovery counts the hole and finds every record after it. */
void test_log_hole_filled(void)
{
    enum { BEFORE = 10, AFTER = 90, TAKEN = 20, HOLE = 64, LIMIT = 100 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 1024, 64, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    uint64_t origin = rep.next_position;
    for (uint64_t i = 0; i < BEFORE; i++)
        push_seq(h, i, length_of(i, LIMIT));
    /* The dead writer's reservation: never claimed, never written. */
    uint64_t hole = atomic_fetch_add(&h->header->log_tail, HOLE) & ~SHMQ_TAIL_SPILL;
    CHECK(hole % SEGMENT + HOLE <= SEGMENT);
    for (uint64_t i = BEFORE; i < BEFORE + AFTER; i++)
        push_seq(h, i, length_of(i, LIMIT));
    for (uint64_t i = 0; i < TAKEN; i++)
        pop_seq(h, i, length_of(i, LIMIT), 0);
    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    close_region(h, &r);

    /* On disk: zeros where the hole is, whole records on both sides. */
    log_image img = image_load(dir, SEGMENT);
    const uint8_t *zeros = (const uint8_t *)image_record(&img, hole);
    for (int i = 0; i < HOLE; i++)
        CHECK_EQ(zeros[i], 0);
    log_summary s = summary_new(2 * (BEFORE + AFTER));
    image_walk(&img, origin, hole, summarize, &s);
    image_walk(&img, hole + HOLE, st.tail, summarize, &s);
    CHECK_EQ(s.enqueue_count, BEFORE + AFTER);
    CHECK_EQ(s.done_count, TAKEN);
    CHECK_EQ(s.records, st.records_appended);
    image_free(&img);

    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.holes, 1);
    CHECK_EQ(rep.records, s.records); /* nothing after the hole was missed */
    CHECK_EQ(rep.live, BEFORE + AFTER - TAKEN);
    CHECK_EQ(rep.done, TAKEN);
    for (uint64_t i = TAKEN; i < BEFORE + AFTER; i++)
        pop_seq(h, i, length_of(i, LIMIT), 0);
    shmq_message m;
    char buf[256];
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    summary_free(&s);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ torn and corrupt logs */

/* A region with COUNT jobs pushed and none taken, then dropped: returns the
 * ENQUEUE positions (from the files) in *s. With `maintain`, a maintenance
 * pass runs first, as it does in a live queue (it makes the next segment). */
static void pending_log(const char *dir, const shmq_params *p, uint64_t count, uint32_t limit, int maintain,
                        log_summary *s)
{
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, p, dir, &rep);
    uint64_t origin = rep.next_position;
    for (uint64_t i = 0; i < count; i++)
        push_seq(h, i, 20 + length_of(i, limit - 20));
    if (maintain)
        CHECK_RC(shmq_log_maintain(h), SHMQ_OK);
    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    close_region(h, &r);
    log_image img = image_load(dir, SEGMENT);
    *s = summary_make(&img, origin, st.tail, 2 * count);
    CHECK_EQ(s->enqueue_count, count);
    CHECK_EQ(s->done_count, 0);
    /* The last ENQUEUE is the last record. */
    const shmq_record_header *last = image_record(&img, s->enqueues[count - 1]);
    CHECK_EQ(s->enqueues[count - 1] + shmq_word_length(record_word(last)), st.tail);
    image_free(&img);
}

/* The last record is half written (a crash mid-write): recovery cuts it off,
 * says where, and keeps every job before it. */
static void torn_tail_run(int maintain)
{
    enum { COUNT = 100, LIMIT = 100 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 1024, 64, SHMQ_DURABILITY_OS, SEGMENT);
    log_summary s;
    pending_log(dir, &p, COUNT, LIMIT, maintain, &s);

    uint64_t last = s.enqueues[COUNT - 1];
    log_image img = image_load(dir, SEGMENT);
    uint32_t length = shmq_word_length(record_word(image_record(&img, last)));
    image_free(&img);
    uint8_t garbage[16];
    memset(garbage, 0xA5, sizeof garbage);
    file_patch(dir, SEGMENT, last + length - sizeof garbage, garbage, sizeof garbage);

    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    CHECK_EQ(rep.torn_position, last);
    CHECK_EQ(rep.torn_bytes, length); /* from the record's start to the last garbage byte */
    CHECK_EQ(rep.corrupt_records, 0);
    CHECK_EQ(rep.live, COUNT - 1);
    for (uint64_t i = 0; i < COUNT - 1; i++)
        pop_seq(h, i, 20 + length_of(i, LIMIT - 20), 0);
    shmq_message m;
    char buf[256];
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    summary_free(&s);
    close_region(h, &r);
    temp_dir_remove(dir);
}

void test_log_torn_tail(void) { torn_tail_run(0); }

/* An empty segment made ahead of the tail does not turn the torn tail into
 * a corrupt record. */
void test_log_torn_tail_ahead(void) { torn_tail_run(1); }

/* One flipped byte in a record amid whole ones: that record is skipped and
 * counted, every other job comes back in order. */
static int file_exists(const char *dir, const char *name);

void test_log_corrupt_middle(void)
{
    enum { COUNT = 100, BAD = 49, LIMIT = 100 }; /* BAD: the 50th record */
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 1024, 64, SHMQ_DURABILITY_OS, SEGMENT);
    log_summary s;
    pending_log(dir, &p, COUNT, LIMIT, 0, &s);

    /* A payload byte in the middle of the record. */
    uint64_t at = s.enqueues[BAD] + sizeof(shmq_record_header) + sizeof(shmq_enqueue_body) + 10;
    log_image img = image_load(dir, SEGMENT);
    uint8_t byte = *((const uint8_t *)image_record(&img, s.enqueues[BAD]) + (at - s.enqueues[BAD])) ^ 0x40;
    uint32_t length = shmq_word_length(record_word(image_record(&img, s.enqueues[BAD])));
    image_free(&img);
    file_patch(dir, SEGMENT, at, &byte, 1);

    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    CHECK_EQ(rep.corrupt_records, 1);
    CHECK_EQ(rep.corrupt_bytes, length);
    CHECK_EQ(rep.torn_bytes, 0);
    CHECK_EQ(rep.live, COUNT - 1);
    CHECK_EQ(rep.damaged_files, 1); /* kept aside, not deleted */
    CHECK(strstr(rep.damage, "0000000000000000.seg") != NULL);
    CHECK(file_exists(dir, "damaged/0000000000000000.seg"));
    for (uint64_t i = 0; i < COUNT; i++)
        if (i != BAD)
            pop_seq(h, i, 20 + length_of(i, LIMIT - 20), 0);
    shmq_message m;
    char buf[256];
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    summary_free(&s);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* Whole files damaged: a segment's header fails its CRC (its records are
 * still read), the next one is gone (a gap, reported with its range), the
 * one after is cut to less than its header page. The damaged files are kept
 * in damaged/; every job outside the lost positions comes back in order. */
void test_log_damaged_files(void)
{
    enum { COUNT = 2200, LIMIT = 100 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 4096, 64, SHMQ_DURABILITY_OS, SEGMENT);
    log_summary s;
    pending_log(dir, &p, COUNT, LIMIT, 0, &s);
    CHECK(s.enqueues[COUNT - 1] >= 4 * SEGMENT); /* records in five segments */

    char path[512];
    segment_path(path, sizeof path, dir, 1 * SEGMENT);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    uint8_t byte = 0;
    CHECK_EQ(pread(fd, &byte, 1, 12), 1); /* header_bytes: covered by the header CRC */
    byte ^= 0x10;
    CHECK_EQ(pwrite(fd, &byte, 1, 12), 1);
    close(fd);
    segment_path(path, sizeof path, dir, 2 * SEGMENT);
    CHECK(unlink(path) == 0);
    segment_path(path, sizeof path, dir, 3 * SEGMENT);
    CHECK(truncate(path, 100) == 0);

    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    uint64_t lost = 0;
    for (uint64_t i = 0; i < COUNT; i++)
        lost += s.enqueues[i] >= 2 * SEGMENT && s.enqueues[i] < 4 * SEGMENT;
    CHECK(lost > 0);
    CHECK_EQ(rep.live, COUNT - lost);
    CHECK_EQ(rep.missing_bytes, 2 * SEGMENT);
    CHECK_EQ(rep.damaged_files, 2);
    CHECK_EQ(rep.corrupt_bytes, 0);
    CHECK(strstr(rep.damage, "0000000000010000.seg") != NULL);
    CHECK(strstr(rep.damage, "positions 131072..196608 are missing") != NULL);
    CHECK(strstr(rep.damage, "0000000000030000.seg (100 bytes)") != NULL ||
          strstr(rep.damage, "0000000000030000.seg (positions") != NULL);
    CHECK(file_exists(dir, "damaged/0000000000010000.seg"));
    CHECK(file_exists(dir, "damaged/0000000000030000.seg"));
    for (uint64_t i = 0; i < COUNT; i++)
        if (s.enqueues[i] < 2 * SEGMENT || s.enqueues[i] >= 4 * SEGMENT)
            pop_seq(h, i, 20 + length_of(i, LIMIT - 20), 0);
    shmq_message m;
    char buf[256];
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    summary_free(&s);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ retention helpers */

/* Indexes of the segment files in `dir` (named by base position), ascending. */
static uint32_t segment_files(const char *dir, uint64_t *indexes, uint32_t capacity)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    uint32_t count = 0;
    struct dirent *entry;
    while ((entry = readdir(d))) {
        unsigned long long index;
        char rest[8];
        if (strlen(entry->d_name) != 20 || sscanf(entry->d_name, "%16llx%7s", &index, rest) != 2 ||
            strcmp(rest, ".seg") != 0)
            continue;
        if (count == capacity)
            test_fail(__FILE__, __LINE__, "more than %u segment files in %s", capacity, dir);
        indexes[count++] = index / SEGMENT;
    }
    closedir(d);
    qsort(indexes, count, sizeof *indexes, compare_u64);
    return count;
}

static int file_exists(const char *dir, const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

/* A copy of every file of a log directory, so a recovery can run over it
 * while the queue that owns the original keeps going. */
static char *dir_copy(const char *src)
{
    char *dst = temp_dir_create();
    DIR *d = opendir(src);
    CHECK(d != NULL);
    struct dirent *entry;
    static uint8_t block[1 << 16];
    while ((entry = readdir(d))) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        char from[512], to[512];
        snprintf(from, sizeof from, "%s/%s", src, entry->d_name);
        snprintf(to, sizeof to, "%s/%s", dst, entry->d_name);
        int in = open(from, O_RDONLY);
        CHECK(in >= 0);
        int out = open(to, O_WRONLY | O_CREAT | O_EXCL, 0600);
        CHECK(out >= 0);
        ssize_t n;
        while ((n = read(in, block, sizeof block)) > 0)
            CHECK_EQ(write(out, block, (size_t)n), n);
        CHECK_EQ(n, 0);
        close(in);
        close(out);
    }
    closedir(d);
    return dst;
}

/* A job the tests follow through the log: its payload is test message `seq`. */
typedef struct tracked_job {
    uint64_t job_id, seq;
    uint32_t length;
    /* what a walk found: */
    uint32_t records, copies;
    uint16_t attempt; /* of its last ENQUEUE */
    uint8_t flags;
    uint64_t position;
} tracked_job;

typedef struct job_scan {
    tracked_job *jobs;
    uint32_t count;
} job_scan;

static void scan_jobs(void *ctx, uint64_t position, unsigned type, const shmq_record_header *rec)
{
    job_scan *scan = ctx;
    if (type != SHMQ_REC_ENQUEUE)
        return;
    for (uint32_t i = 0; i < scan->count; i++) {
        tracked_job *j = &scan->jobs[i];
        if (rec->job_id != j->job_id)
            continue;
        const shmq_enqueue_body *body = enqueue_body(rec);
        CHECK_EQ(body->payload_bytes, j->length);
        CHECK_EQ(body->tag, (uint8_t)j->seq);
        CHECK_EQ(check_pattern(enqueue_payload(rec), j->seq, j->length), 0);
        j->records++;
        if (body->flags & SHMQ_ENQ_COPY)
            j->copies++;
        else
            CHECK_EQ(position, j->job_id); /* an original lies at its id */
        j->attempt = body->attempt;
        j->flags = body->flags;
        j->position = position;
    }
}

/* The ENQUEUE records of `jobs` in the files of `dir`, over [log_base, tail). */
static void scan_files(const char *dir, const shmq_handle *h, tracked_job *jobs, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        jobs[i].records = jobs[i].copies = 0;
    shmq_log_stats st = log_stats(h);
    log_image img = image_load(dir, SEGMENT);
    job_scan scan = {jobs, count};
    image_walk(&img, st.base, st.tail, scan_jobs, &scan);
    image_free(&img);
}

/* Recovers a copy of `dir` into a new region (the queue of `dir` runs on):
 * it must bring back exactly `jobs`, each once, whatever lane they land in. */
static void recover_copy(const char *dir, const shmq_params *p, const tracked_job *jobs, uint32_t count)
{
    char *copy = dir_copy(dir);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, p, copy, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, count);
    uint8_t seen[8] = {0};
    CHECK(count <= sizeof seen);
    static uint8_t buf[4096];
    shmq_message m;
    for (uint32_t n = 0; n < count; n++) {
        CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_OK);
        uint32_t i = 0;
        while (i < count && jobs[i].job_id != m.job_id)
            i++;
        if (i == count)
            test_fail(__FILE__, __LINE__, "recovery brought back job %llu, not one of the live ones",
                      (unsigned long long)m.job_id);
        CHECK_EQ(seen[i]++, 0);
        CHECK_EQ(m.length, jobs[i].length);
        CHECK_EQ(m.tag, (uint8_t)jobs[i].seq);
        CHECK_EQ(check_pattern(buf, jobs[i].seq, jobs[i].length), 0);
    }
    CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    close_region(h, &r);
    temp_dir_remove(copy);
}

static uint32_t traffic_length(uint64_t seq) { return 20 + length_of(seq, 80); }

static void push_to(shmq_handle *h, int lane, uint64_t seq)
{
    static uint8_t data[4096];
    uint32_t length = traffic_length(seq);
    fill_pattern(data, seq, length);
    CHECK_RC(shmq_push(h, lane, (uint8_t)seq, 0, (const char *)data, length, NULL, 0, 0), SHMQ_OK);
}

enum { RUN_MAX = 256 };

/* Pops messages first .. first + count - 1 with one shmq_pop_many that
 * starts at `lane` and stops at `count`: other lanes are not touched
 * (pop_round starts at the handle's pop cursor). */
static void pop_run(shmq_handle *h, uint32_t lane, uint64_t first, uint32_t count)
{
    static uint8_t buf[RUN_MAX * 128];
    uint32_t lengths[RUN_MAX], got = 0;
    uint8_t tags[RUN_MAX];
    shmq_message claimed;
    CHECK(count <= RUN_MAX);
    atomic_store(&h->pop_cursor, lane);
    CHECK_RC(shmq_pop_many(h, (char *)buf, sizeof buf, count, 0, lengths, tags, &got, &claimed), SHMQ_OK);
    CHECK_EQ(got, count);
    uint64_t at = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t seq = first + i;
        CHECK_EQ(lengths[i], traffic_length(seq));
        CHECK_EQ(tags[i], (uint8_t)seq);
        CHECK_EQ(check_pattern(buf + at, seq, lengths[i]), 0);
        at += lengths[i];
    }
}

/* One round of traffic through `lane`: `count` messages pushed and popped,
 * then a maintenance pass that runs retention now. */
static void traffic_round(shmq_handle *h, uint32_t lane, uint64_t *seq, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        push_to(h, (int)lane, *seq + i);
    pop_run(h, lane, *seq, count);
    *seq += count;
    h->last_retention_ns = 0; /* retention is due every time */
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK);
}

/* Every live job still has an ENQUEUE record on disk, and the log's files
 * stay few: the log is proportional to the backlog, not to the traffic. */
static void check_retained(const char *dir, shmq_handle *h, tracked_job *jobs, uint32_t count, uint32_t round)
{
    uint64_t indexes[64];
    uint32_t files = segment_files(dir, indexes, 64);
    if (files > 4)
        test_fail(__FILE__, __LINE__, "round %u: %u segment files, retention keeps too many", round, files);
    scan_files(dir, h, jobs, count);
    for (uint32_t i = 0; i < count; i++)
        if (jobs[i].records == 0) {
            shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
            test_fail(__FILE__, __LINE__,
                      "round %u: live job %llu has no ENQUEUE record left on disk (log_base %llu, tail %llu, "
                      "checkpoint_floor %llu, checkpoints %llu): a recovery now would lose it",
                      round, (unsigned long long)jobs[i].job_id, (unsigned long long)st.base,
                      (unsigned long long)st.tail, (unsigned long long)atomic_load(&h->header->checkpoint_floor),
                      (unsigned long long)st.checkpoints);
        }
}

/* ------------------------------------------------------------ checkpoints */

/* Two old jobs stay in lane 1 while traffic flows through lane 0: A taken by
 * a live reader that holds it (READING), B waiting (READY). They would pin
 * the log's first segment forever; checkpoints copy them forward, and old
 * segments go. At every point a recovery would bring each back once. */
void test_log_checkpoint_moves_old_jobs(void)
{
    enum { ROUND = 200, SEGMENTS = 12, MAX_ROUNDS = 400, A = 0, B = 1 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(2, 256, 128, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    shmq_handle *reader = logged_attach(&r, dir);
    uint64_t origin = rep.next_position;
    uint64_t floor0 = atomic_load(&h->header->checkpoint_floor);

    push_to(h, 1, A);
    push_to(h, 1, B);
    static char buf[4096];
    shmq_message a;
    CHECK_RC(shmq_pop(reader, buf, 0, 0, &a), SHMQ_ECLAIMED); /* lane 0 is empty: A it is */
    CHECK_EQ(a.lane, 1);
    CHECK_EQ(a.tag, A);
    uint64_t b_position = a.position + a.span;
    uint64_t a_state = lane_state(h, 1, a.position);
    CHECK_EQ(shmq_state_kind(a_state), SHMQ_SLOT_READING);
    CHECK_EQ(shmq_state_owner(a_state), shmq_participant_index(reader));
    tracked_job jobs[2] = {
        {.job_id = a.job_id, .seq = A, .length = traffic_length(A)},
        {.job_id = header_at(h, lane_at(h, 1), b_position)->job_id, .seq = B, .length = traffic_length(B)},
    };
    CHECK(jobs[1].job_id > jobs[0].job_id);

    uint64_t seq = 2;
    uint32_t round = 0;
    int copies_checked = 0;
    while (log_stats(h).tail < origin + SEGMENTS * SEGMENT) {
        CHECK(round < MAX_ROUNDS);
        traffic_round(h, 0, &seq, ROUND);
        CHECK_EQ(lane_state(h, 1, a.position), a_state); /* neither old job was touched */
        CHECK_EQ(shmq_state_kind(lane_state(h, 1, b_position)), SHMQ_SLOT_READY);
        check_retained(dir, h, jobs, 2, round);
        if (!copies_checked && log_stats(h).checkpoints > 0) {
            /* The first checkpoint copied both, the READING one too, and
             * their originals' segment went: a recovery now finds each once. */
            for (int i = 0; i < 2; i++) {
                CHECK_EQ(jobs[i].copies, jobs[i].records);
                CHECK_EQ(jobs[i].flags, SHMQ_ENQ_COPY | SHMQ_ENQ_LANED);
                CHECK_EQ(jobs[i].attempt, 1);
            }
            CHECK(!file_exists(dir, "0000000000000000.seg"));
            recover_copy(dir, &p, jobs, 2);
            copies_checked = 1;
        }
        round++;
    }
    CHECK(copies_checked);

    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    uint64_t floor = atomic_load(&h->header->checkpoint_floor);
    CHECK(st.checkpoints >= 1);
    CHECK(floor > floor0);
    CHECK(st.base > origin);
    CHECK(st.segments_deleted >= SEGMENTS - 4);
    uint64_t indexes[64];
    uint32_t files = segment_files(dir, indexes, 64);
    CHECK(files <= 4);
    for (uint32_t i = 0; i < files; i++)
        CHECK(indexes[i] >= floor / SEGMENT && indexes[i] >= st.base / SEGMENT);

    /* A recovery now (the queue runs on) brings back A and B, once each. */
    recover_copy(dir, &p, jobs, 2);

    /* A is finished intact; B is still pending. */
    CHECK_RC(shmq_pop_finish(reader, &a, buf), SHMQ_OK);
    CHECK_EQ(check_pattern((const uint8_t *)buf, A, traffic_length(A)), 0);
    shmq_detach(reader);
    close_region(h, &r);

    /* Neither A nor any popped message comes back; B does, once. */
    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, 1);
    shmq_message m = pop_seq(h, B, traffic_length(B), 0);
    CHECK_EQ(m.job_id, jobs[1].job_id);
    CHECK_EQ(m.attempt, 1);
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ recovered jobs and retention */

/* A recovered job lies in a lane with an id below the new log's checkpoint
 * floor; its only record is recovery's copy. A reader holds it while
 * traffic flows through the other lane (a held message stops its own lane
 * one lap on): the copy must outlive retention. */
void test_log_recovered_job_kept(void)
{
    enum { ROUND = 200, SEGMENTS = 8, MAX_ROUNDS = 400 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(2, 256, 128, SHMQ_DURABILITY_OS, SEGMENT);
    log_summary s;
    pending_log(dir, &p, 1, 100, 0, &s); /* job 0, length traffic_length(0) */
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    CHECK_EQ(rep.live, 1);
    uint64_t origin = rep.next_position;
    CHECK(s.enqueues[0] < atomic_load(&h->header->checkpoint_floor));
    shmq_handle *reader = logged_attach(&r, dir);
    static char buf[4096];
    shmq_message j;
    CHECK_RC(shmq_pop(reader, buf, 0, 0, &j), SHMQ_ECLAIMED);
    CHECK_EQ(j.job_id, s.enqueues[0]);
    tracked_job job = {.job_id = j.job_id, .seq = 0, .length = traffic_length(0)};

    uint64_t seq = 1;
    for (uint32_t round = 0; log_stats(h).tail < origin + SEGMENTS * SEGMENT; round++) {
        CHECK(round < MAX_ROUNDS);
        traffic_round(h, 1 - j.lane, &seq, ROUND);
        check_retained(dir, h, &job, 1, round);
    }
    CHECK(log_stats(h).base > origin);
    recover_copy(dir, &p, &job, 1);

    CHECK_RC(shmq_pop_finish(reader, &j, buf), SHMQ_OK);
    CHECK_EQ(check_pattern((const uint8_t *)buf, 0, traffic_length(0)), 0);
    shmq_detach(reader);
    close_region(h, &r);
    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, 0);
    summary_free(&s);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ retention */

/* Twenty segments of traffic, all taken: one maintenance pass deletes every
 * segment below the one the last live job needs, and this process unmaps them. */
void test_log_retention_deletes_drained_segments(void)
{
    enum { ROUND = 200, SEGMENTS = 20, MAX_ROUNDS = 400 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 256, 128, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    uint64_t origin = rep.next_position;
    uint64_t seq = 0;
    for (uint32_t round = 0; log_stats(h).tail < origin + SEGMENTS * SEGMENT; round++) {
        CHECK(round < MAX_ROUNDS);
        for (uint32_t i = 0; i < ROUND; i++)
            push_to(h, -1, seq + i);
        pop_run(h, 0, seq, ROUND);
        seq += ROUND;
    }
    uint64_t indexes[64];
    uint32_t before = segment_files(dir, indexes, 64);
    CHECK(before >= SEGMENTS); /* nothing deleted without maintenance */
    CHECK_EQ(log_stats(h).segments_deleted, 0);
    CHECK_EQ(log_stats(h).base, origin);

    /* One job stays pending: its segment stays. */
    uint64_t last = seq;
    push_to(h, -1, last);
    uint64_t last_id = header_at(h, lane_at(h, 0), lane_tail(h, 0) - 1)->job_id;
    h->last_retention_ns = 0;
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK);

    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    CHECK(st.segments_deleted >= 15);
    CHECK_EQ(st.base, last_id / SEGMENT * SEGMENT);
    CHECK_EQ(st.segments_deleted, (st.base - origin) / SEGMENT);
    uint32_t after = segment_files(dir, indexes, 64);
    CHECK(after <= 3);
    /* Gone: the deleted ones; new: at most the one maintenance makes ahead. */
    CHECK(after == before - st.segments_deleted || after == before - st.segments_deleted + 1);
    for (uint32_t i = 0; i < after; i++)
        CHECK(indexes[i] >= st.base / SEGMENT);
    CHECK(indexes[0] * SEGMENT <= last_id);
    /* This process keeps no mapping of a deleted segment. */
    for (uint32_t i = 0; i < SHMQ_SEGMENT_SLOTS; i++)
        if (atomic_load(&h->segments[i].base))
            CHECK(atomic_load(&h->segments[i].index) >= st.base / SEGMENT);

    close_region(h, &r);
    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, 1);
    shmq_message m = pop_seq(h, last, traffic_length(last), 0);
    CHECK_EQ(m.job_id, last_id);
    static char buf[4096];
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ the backlog */

/* A backlog larger than the lanes: recovery leaves the rest in the log
 * (spilling), and the feeder moves it in as consumers make room, in order;
 * jobs put meanwhile wait behind it. */
void test_log_backlog_fed_in_order(void)
{
    enum { COUNT = 3000, LATE = 100, MIDWAY = 1500, SLOTS = 256, BATCH = 512 };
    char *dir = temp_dir_create();
    shmq_params big = logged_params(1, 4096, 128, SHMQ_DURABILITY_OS, SEGMENT);
    log_summary s;
    pending_log(dir, &big, COUNT, 100, 0, &s); /* job i has length traffic_length(i) */
    summary_free(&s);

    shmq_params small = logged_params(1, SLOTS, 128, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &small, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, COUNT);
    CHECK(shmq_log_spilling(h));
    CHECK_EQ(log_stats(h).fed, SLOTS); /* as many as the lane holds */

    static uint8_t buf[BATCH * 128];
    uint32_t lengths[BATCH], count;
    uint8_t tags[BATCH];
    shmq_message claimed;
    uint64_t next = 0;
    int late_pushed = 0;
    while (next < COUNT + LATE) {
        CHECK_RC(shmq_pop_many(h, (char *)buf, sizeof buf, BATCH, 0, lengths, tags, &count, &claimed), SHMQ_OK);
        CHECK(count > 0);
        uint64_t at = 0;
        for (uint32_t i = 0; i < count; i++, next++) {
            if (lengths[i] != traffic_length(next) || tags[i] != (uint8_t)next ||
                check_pattern(buf + at, next, lengths[i]) != 0)
                test_fail(__FILE__, __LINE__, "message %u of a batch is not job %llu (length %u, tag %u)", i,
                          (unsigned long long)next, lengths[i], tags[i]);
            at += lengths[i];
        }
        if (next >= MIDWAY && !late_pushed) {
            CHECK(shmq_log_spilling(h));
            for (uint64_t i = COUNT; i < COUNT + LATE; i++)
                push_to(h, -1, i);
            late_pushed = 1;
        }
    }
    CHECK_RC(shmq_pop(h, (char *)buf, sizeof buf, 0, &claimed), SHMQ_EEMPTY);
    CHECK(!shmq_log_spilling(h));
    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    CHECK_EQ(st.fed, COUNT + LATE);
    CHECK_EQ(st.last_errno, 0);
    close_region(h, &r);

    /* Each was recorded done: none comes back. */
    h = logged_region_create(&r, &small, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, 0);
    CHECK_EQ(rep.done, COUNT + LATE);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ redelivery */

/* A consumer dies holding a message: it is put back through the log as a
 * copy with the next attempt, by maintenance (X, inline) or explicitly (Y,
 * whose payload is in its record), and a recovery keeps the attempt. */
void test_log_redeliver_dead_reader(void)
{
    enum { X = 0, Y = 1, X_LENGTH = 100, BIG = 1500 };
    char *dir = temp_dir_create();
    /* 64 slots of 32 bytes: Y travels as a reference to its record. */
    shmq_params p = logged_params(1, 64, 32, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    CHECK(shmq_inline_max(h) < BIG);
    push_seq(h, X, X_LENGTH);
    static char buf[4096];

    shmq_handle *doomed = logged_attach(&r, dir);
    shmq_message x;
    CHECK_RC(shmq_pop(doomed, buf, 0, 0, &x), SHMQ_ECLAIMED);
    CHECK_EQ(x.tag, X);
    CHECK_EQ(x.attempt, 1);
    CHECK_EQ(shmq_log_maintain(h), SHMQ_OK);
    CHECK_EQ(log_stats(h).redelivered, 0); /* its reader lives */
    atomic_store(&h->participants[shmq_participant_index(doomed)].pid, (uint32_t)dead_pid());
    atomic_store(&h->header->maintained_ns, 0); /* the pass above used up the redelivery interval */
    CHECK_RC(shmq_log_maintain(h), SHMQ_OK);
    CHECK_EQ(atomic_load(&h->header->redelivered), 1);
    CHECK_EQ(atomic_load(&h->header->released_dead_consumer), 1);
    tracked_job jx = {.job_id = x.job_id, .seq = X, .length = X_LENGTH};
    scan_files(dir, h, &jx, 1);
    CHECK_EQ(jx.records, 2);
    CHECK_EQ(jx.copies, 1);
    CHECK(jx.flags & SHMQ_ENQ_COPY);
    CHECK_EQ(jx.attempt, 2);
    CHECK(jx.position > jx.job_id);
    shmq_message m = pop_seq(h, X, X_LENGTH, 0);
    CHECK_EQ(m.attempt, 2);
    CHECK_EQ(m.job_id, x.job_id);

    push_seq(h, Y, BIG);
    shmq_handle *doomed2 = logged_attach(&r, dir);
    shmq_message y;
    CHECK_RC(shmq_pop(doomed2, buf, 0, 0, &y), SHMQ_ECLAIMED);
    CHECK_EQ(y.tag, Y);
    CHECK(y.flags & SHMQ_MSG_REF);
    atomic_store(&h->participants[shmq_participant_index(doomed2)].pid, (uint32_t)dead_pid());
    CHECK_EQ(shmq_lane_redeliver_dead(h), 1);
    CHECK_EQ(shmq_lane_redeliver_dead(h), 0); /* once */
    CHECK_EQ(atomic_load(&h->header->redelivered), 2);
    tracked_job jy = {.job_id = y.job_id, .seq = Y, .length = BIG};
    scan_files(dir, h, &jy, 1);
    CHECK_EQ(jy.records, 2);
    CHECK_EQ(jy.copies, 1);
    CHECK(jy.flags & SHMQ_ENQ_COPY);
    CHECK_EQ(jy.attempt, 2);
    shmq_detach(doomed);
    shmq_detach(doomed2);
    close_region(h, &r);

    /* Y was never taken again: it comes back once, still on attempt 2. */
    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, 1);
    m = pop_seq(h, Y, BIG, 0);
    CHECK_EQ(m.job_id, y.job_id);
    CHECK_EQ(m.attempt, 2);
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* ------------------------------------------------------------ snapshots */

/* A clean shutdown writes the live jobs to one file and deletes the
 * segments; the next start reads that file alone. */
void test_log_snapshot_then_recover(void)
{
    enum { COUNT = 100, TAKEN = 50, SLOTS = 256 }; /* inline payloads of 2-5 slots */
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, SLOTS, 64, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    uint64_t origin = rep.next_position;
    /* Taken before the rest is put, so the pending messages wrap the ring. */
    for (uint64_t i = 0; i < TAKEN; i++)
        push_seq(h, i, 100 + length_of(i, 150));
    for (uint64_t i = 0; i < TAKEN; i++)
        pop_seq(h, i, 100 + length_of(i, 150), 0);
    for (uint64_t i = TAKEN; i < COUNT; i++)
        push_seq(h, i, 100 + length_of(i, 150));
    CHECK(lane_tail(h, 0) > SLOTS);
    shmq_log_ack_flush(h); /* acks are written lazily */
    shmq_log_stats st = log_stats(h);
    log_image img = image_load(dir, SEGMENT);
    log_summary s = summary_make(&img, origin, st.tail, 2 * COUNT);
    image_free(&img);
    CHECK_EQ(s.enqueue_count, COUNT);

    CHECK_RC(shmq_log_snapshot(h), SHMQ_OK);
    uint64_t covered = (st.tail + SEGMENT - 1) / SEGMENT * SEGMENT;
    shmq_log_stats after = log_stats(h);
    CHECK_EQ(after.tail, covered);
    CHECK_EQ(after.base, covered);
    uint64_t indexes[64];
    uint32_t files = segment_files(dir, indexes, 64);
    for (uint32_t i = 0; i < files; i++)
        CHECK(indexes[i] * SEGMENT >= covered);

    /* The file: a header, then one whole ENQUEUE copy per pending job. */
    char path[512];
    snprintf(path, sizeof path, "%s/snapshot", dir);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    struct stat fst;
    CHECK_EQ(fstat(fd, &fst), 0);
    CHECK(fst.st_size > SHMQ_SEGMENT_HEADER_BYTES);
    uint8_t *file = malloc(fst.st_size);
    CHECK(file != NULL);
    CHECK_EQ(pread(fd, file, fst.st_size, 0), fst.st_size);
    close(fd);
    const shmq_segment_header *sh = (const shmq_segment_header *)file;
    CHECK_RC(shmq_segment_header_check(sh, SHMQ_SNAPSHOT_MAGIC), SHMQ_OK);
    CHECK_EQ(sh->base, covered);
    uint64_t bytes = sh->segment_bytes;
    CHECK_EQ(bytes, fst.st_size - SHMQ_SEGMENT_HEADER_BYTES);
    uint8_t seen[COUNT] = {0};
    uint64_t at = 0, records = 0;
    while (at < bytes) {
        shmq_record_header *rec = (shmq_record_header *)(file + SHMQ_SEGMENT_HEADER_BYTES + at);
        uint64_t word = record_word(rec);
        CHECK(shmq_record_valid(rec, word, at, bytes));
        CHECK_EQ(shmq_word_type(word), SHMQ_REC_ENQUEUE);
        const shmq_enqueue_body *body = enqueue_body(rec);
        CHECK_EQ(body->flags, SHMQ_ENQ_COPY);
        uint64_t seq = body->tag; /* every seq is below 256 */
        CHECK(seq >= TAKEN && seq < COUNT);
        CHECK_EQ(seen[seq]++, 0);
        CHECK_EQ(rec->job_id, s.enqueues[seq]);
        CHECK_EQ(body->payload_bytes, 100 + length_of(seq, 150));
        CHECK_EQ(check_pattern(enqueue_payload(rec), seq, body->payload_bytes), 0);
        at += shmq_word_length(word);
        records++;
    }
    CHECK_EQ(at, bytes);
    CHECK_EQ(records, COUNT - TAKEN);
    free(file);
    close_region(h, &r);

    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, COUNT - TAKEN);
    CHECK_EQ(rep.records, COUNT - TAKEN); /* the snapshot's; the segments left are empty */
    CHECK(rep.next_position >= covered);
    CHECK(!file_exists(dir, "snapshot"));
    for (uint64_t i = TAKEN; i < COUNT; i++) {
        shmq_message m = pop_seq(h, i, 100 + length_of(i, 150), i % 2);
        CHECK_EQ(m.job_id, s.enqueues[i]);
        CHECK_EQ(m.attempt, 1);
    }
    shmq_message m;
    static char buf[4096];
    CHECK_RC(shmq_pop(h, buf, sizeof buf, 0, &m), SHMQ_EEMPTY);
    close_region(h, &r);

    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, 0);
    summary_free(&s);
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* A job whose START has no DONE was running when the crash came: recovery
 * puts it back with attempt + 1, in its place, and counts it as running. */
void test_log_recover_running_job(void)
{
    enum { COUNT = 10, RUNNING = 3 };
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 256, 64, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    for (uint64_t i = 0; i < COUNT; i++)
        push_seq(h, i, length_of(i, 40));
    shmq_message taken = pop_seq(h, 0, length_of(0, 40), 0); /* job 0: finished (its DONE is written) */
    (void)taken;
    shmq_log_ack_flush(h);
    /* Jobs 1..RUNNING were handed to a consumer that will ack: START, no DONE. */
    uint64_t ids[COUNT];
    shmq_log_stats st = log_stats(h);
    log_image img = image_load(dir, SEGMENT);
    log_summary s = summary_make(&img, rep.next_position, st.tail, 2 * COUNT);
    CHECK_EQ(s.enqueue_count, COUNT);
    for (uint64_t i = 0; i < COUNT; i++)
        ids[i] = s.enqueues[i];
    image_free(&img);
    summary_free(&s);
    for (uint64_t i = 1; i <= RUNNING; i++) {
        shmq_start_body body = {.lane = 0, .attempt = 1, .pid = (uint32_t)getpid()};
        part parts[1] = {{&body, sizeof body}};
        uint64_t position;
        int spilling;
        CHECK_RC(shmq_log_append(h, SHMQ_REC_START, ids[i], parts, 1, &position, &spilling), SHMQ_OK);
    }
    close_region(h, &r);

    h = logged_region_create(&r, &p, dir, &rep);
    check_clean(&rep);
    CHECK_EQ(rep.live, COUNT - 1);
    CHECK_EQ(rep.running, RUNNING);
    for (uint64_t i = 1; i < COUNT; i++) {
        shmq_message got = pop_seq(h, i, length_of(i, 40), 0);
        CHECK_EQ(got.job_id, ids[i]);
        CHECK_EQ(got.attempt, i <= RUNNING ? 2 : 1);
    }
    close_region(h, &r);
    temp_dir_remove(dir);
}

/* A fork while another thread of the parent maps segments (holds the
 * handle's segment lock): the child's handle must not inherit the held
 * lock, or its maintenance blocks for ever. */
void test_log_fork_while_mapping(void)
{
    char *dir = temp_dir_create();
    shmq_params p = logged_params(1, 64, 128, SHMQ_DURABILITY_OS, SEGMENT);
    test_region r;
    shmq_recovery rep;
    shmq_handle *h = logged_region_create(&r, &p, dir, &rep);
    CHECK_EQ(pthread_mutex_lock(&h->segment_lock), 0); /* as a maintenance thread mid-map */
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        alarm(10); /* a hang is a failure, not a stalled run */
        if (shmq_after_fork(h) != SHMQ_OK || shmq_log_maintain(h) != SHMQ_OK)
            _exit(1);
        push_seq(h, 0, 1);
        _exit(0);
    }
    int status = 0;
    CHECK_EQ(waitpid(child, &status, 0), child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_EQ(pthread_mutex_unlock(&h->segment_lock), 0);
    shmq_detach(h);
    region_destroy(&r);
    temp_dir_remove(dir);
}
