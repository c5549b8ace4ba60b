/* SPDX-License-Identifier: Apache-2.0 */
/* log_recover.c -- rebuilding a queue from its log when the shared region
 * is new (after a reboot, or an unlink): read the snapshot and every
 * segment, find the live jobs, write them as a checkpoint at the start of
 * a fresh log (in the old segments made ahead of need and never written,
 * when there are some: no new space needed), delete the old files, feed
 * the jobs into the lanes.
 *
 * Old files are deleted only after the new log is complete and flushed, so
 * a crash during recovery leaves both, and the next recovery reads both:
 * jobs are keyed by id, so copies do not duplicate them.
 *
 * Damage is read around, reported as it is, and kept: a file whose header
 * page is unreadable is still read record by record (its name gives its
 * base, each record carries its position and CRC); a gap between segment
 * positions is reported with its range; a file with damage is moved into
 * <log dir>/damaged/ (never deleted, never read again) instead of deleted. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

enum { JOB_PENDING = 1, JOB_RUNNING = 2, JOB_DONE = 3 };

typedef struct job {
    uint64_t id; /* 0: empty slot */
    const shmq_record_header *record;
    int64_t not_before; /* of its ENQUEUE, or of its last RETRY */
    uint16_t attempt;
    uint8_t state;
    uint8_t copy; /* record is a copy (its original was not seen) */
} job;

/* Jobs in the order first seen (position order: a job's original record
 * comes before its copies), found by id through an open-addressing index. */
typedef struct job_table {
    job *jobs;
    uint64_t count, room;
    uint64_t *index;     /* low 32 bits of the id << 32 | 1 + position in jobs[]; 0 = empty */
    uint64_t capacity;   /* of index, a power of two */
    int indexed;         /* 0 while every id so far was larger than the one before: no index needed yet */
} job_table;

typedef struct mapped_file {
    uint8_t *base;      /* NULL for an empty file */
    uint64_t bytes;
} mapped_file;

/* Positions [from, to) whose records could not be read. */
typedef struct span {
    uint64_t from, to;
} span;

/* Positions stay far below SHMQ_TAIL_SPILL (bit 63): a larger one in a file
 * name or header is damage. */
#define SHMQ_POSITION_LIMIT (1ull << 62)
#define SHMQ_SEGMENT_BYTES_LIMIT (1ull << 40)
enum { DAMAGED_SPANS_MAX = 1024 };

typedef struct recovery {
    shmq_handle *h;
    shmq_recovery *report;
    job_table jobs;
    uint64_t covered;   /* the snapshot covers positions below this */
    uint64_t top_id;    /* the largest job id seen: the new log starts past it */
    span damaged[DAMAGED_SPANS_MAX]; /* where lost ENQUEUE records may have been */
    unsigned damaged_count;
    int reading_snapshot; /* its records are numbered within it, not log positions */
} recovery;

/* Appends a line to the report's damage text; cut short with "..." when full. */
static void note(shmq_recovery *r, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void note(shmq_recovery *r, const char *format, ...)
{
    size_t used = strlen(r->damage), room = sizeof r->damage;
    if (used + 5 >= room)
        return;
    va_list args;
    va_start(args, format);
    int n = vsnprintf(r->damage + used, room - used - 4, format, args);
    va_end(args);
    if (n < 0 || (size_t)n >= room - used - 4) {
        strcpy(r->damage + room - 5, "...");
        return;
    }
    strcat(r->damage, "\n");
}

static void mark_damaged(recovery *rc, uint64_t from, uint64_t to)
{
    if (rc->damaged_count == DAMAGED_SPANS_MAX) { /* widen the last: a bound, never a miss */
        if (to > rc->damaged[DAMAGED_SPANS_MAX - 1].to)
            rc->damaged[DAMAGED_SPANS_MAX - 1].to = to;
        return;
    }
    rc->damaged[rc->damaged_count++] = (span){from, to};
}

static int in_damaged(const recovery *rc, uint64_t position)
{
    for (unsigned i = 0; i < rc->damaged_count; i++)
        if (position >= rc->damaged[i].from && position < rc->damaged[i].to)
            return 1;
    return 0;
}

static uint64_t hash_id(uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdull;
    id ^= id >> 33;
    return id;
}

/* The id's low bits are kept in the index, so a probe that does not match
 * costs no access to jobs[] (recovery of a large log is cache-miss bound). */
static inline uint64_t index_entry(uint64_t id, uint64_t position) { return (id << 32) | (position + 1); }

static int index_grow(job_table *t, uint64_t at_least)
{
    uint64_t capacity = t->capacity ? t->capacity : 1u << 16;
    while (capacity < at_least * 2)
        capacity *= 2;
    if (capacity == t->capacity && t->indexed)
        return 0;
    uint64_t *index = calloc(capacity, sizeof *index);
    if (!index)
        return -1;
    for (uint64_t i = 0; i < t->count; i++) {
        uint64_t at = hash_id(t->jobs[i].id) & (capacity - 1);
        while (index[at])
            at = (at + 1) & (capacity - 1);
        index[at] = index_entry(t->jobs[i].id, i);
    }
    free(t->index);
    t->index = index;
    t->capacity = capacity;
    return 0;
}

static job *append_job(job_table *t, uint64_t id)
{
    if (t->count == t->room) {
        uint64_t room = t->room ? t->room * 2 : 1u << 16;
        job *grown = realloc(t->jobs, room * sizeof *grown);
        if (!grown || t->count >= UINT32_MAX - 1)
            return NULL;
        t->jobs = grown;
        t->room = room;
    }
    job *j = &t->jobs[t->count++];
    *j = (job){.id = id};
    return j;
}

static job *table_find(job_table *t, uint64_t id, int insert)
{
    if (!t->indexed) {
        /* A log read in order meets ids in increasing order: append without
         * hashing until something looks back (a DONE, a copy). */
        if (insert && (t->count == 0 || id > t->jobs[t->count - 1].id))
            return append_job(t, id);
        if (index_grow(t, t->count + 1) != 0)
            return NULL;
        t->indexed = 1;
    }
    if (insert && (t->count + 1) * 2 > t->capacity && index_grow(t, t->count + 1) != 0)
        return NULL;
    if (!t->capacity)
        return NULL;
    uint64_t at = hash_id(id) & (t->capacity - 1);
    for (uint64_t entry; (entry = t->index[at]); at = (at + 1) & (t->capacity - 1)) {
        if ((entry >> 32) != (id & 0xFFFFFFFFu))
            continue;
        job *j = &t->jobs[(uint32_t)entry - 1];
        if (j->id == id)
            return j;
    }
    if (!insert)
        return NULL;
    job *j = append_job(t, id);
    if (j)
        t->index[at] = index_entry(id, t->count - 1);
    return j;
}

static int apply(recovery *rc, const shmq_record_header *rec, unsigned type)
{
    job *j;
    switch (type) {
    case SHMQ_REC_ENQUEUE: {
        const shmq_enqueue_body *body = (const shmq_enqueue_body *)(rec + 1);
        if (sizeof *body + body->group_bytes + body->unique_bytes + (uint64_t)body->payload_bytes > rec->body_bytes)
            return 1; /* contradicts its own length: treated as corrupt */
        j = table_find(&rc->jobs, rec->job_id, 1);
        if (!j)
            return -1;
        if (rec->job_id > rc->top_id)
            rc->top_id = rec->job_id;
        if (j->state == JOB_DONE)
            break; /* a copy written after the job finished */
        int copy = (body->flags & SHMQ_ENQ_COPY) != 0;
        if (!j->record || body->attempt > j->attempt || (j->copy && !copy)) {
            /* first seen; or put back after a crash (higher attempt); or the
             * original after a copy. A checkpoint's copy never replaces an
             * original: it may have been read while its slot changed. */
            j->record = rec;
            j->copy = (uint8_t)copy;
            if (body->attempt > j->attempt) {
                j->attempt = body->attempt;
                j->not_before = body->not_before_ns;
            }
            if (!j->not_before)
                j->not_before = body->not_before_ns;
        }
        if (!j->state)
            j->state = JOB_PENDING;
        break;
    }
    case SHMQ_REC_START:
        /* Inserted even when its ENQUEUE was not seen: if that lay in damaged
         * bytes and nothing ends the job, it is counted as lost. */
        j = table_find(&rc->jobs, rec->job_id, 1);
        if (!j)
            return -1;
        if (j->state != JOB_DONE)
            j->state = JOB_RUNNING;
        break;
    case SHMQ_REC_RETRY: {
        j = table_find(&rc->jobs, rec->job_id, 1);
        if (!j)
            return -1;
        const shmq_retry_body *body = (const shmq_retry_body *)(rec + 1);
        if (j && j->state != JOB_DONE && rec->body_bytes >= sizeof *body) {
            j->state = JOB_PENDING;
            if (body->attempt > j->attempt)
                j->attempt = body->attempt;
            j->not_before = body->not_before_ns; /* a retry's backoff survives the restart */
        }
        break;
    }
    case SHMQ_REC_DONE:
    case SHMQ_REC_DEAD:
        j = table_find(&rc->jobs, rec->job_id, 1);
        if (!j)
            return -1;
        j->state = JOB_DONE;
        break;
    case SHMQ_REC_DONE_MANY: {
        const uint32_t *count = (const uint32_t *)(rec + 1);
        if (rec->body_bytes < 8 || 8ull + 8ull * count[0] > rec->body_bytes)
            return 1;
        const uint64_t *ids = (const uint64_t *)(rec + 1) + 1;
        for (uint32_t i = 0; i < count[0]; i++) {
            j = table_find(&rc->jobs, ids[i], 1);
            if (!j)
                return -1;
            j->state = JOB_DONE;
        }
        break;
    }
    default:
        break;
    }
    return 0;
}

/* Is every byte of [from, to) zero? */
static int all_zero(const uint8_t *from, const uint8_t *to)
{
    for (; from < to && ((uintptr_t)from & 7); from++)
        if (*from)
            return 0;
    for (; from + 8 <= to; from += 8)
        if (*(const uint64_t *)from)
            return 0;
    for (; from < to; from++)
        if (*from)
            return 0;
    return 1;
}

/* A whole record at `at`, with `available` bytes readable from there. */
static int record_ok(const uint8_t *at, uint64_t available, uint64_t position, uint64_t S)
{
    const shmq_record_header *rec = (const shmq_record_header *)at;
    /* relaxed: recovery reads files no process writes any more. */
    uint64_t word = atomic_load_explicit(&((shmq_record_header *)at)->word, memory_order_relaxed);
    if (shmq_word_length(word) > available)
        return 0; /* runs past the end of a file cut short */
    if (available < sizeof *rec && shmq_word_type(word) != SHMQ_REC_PAD)
        return 0;
    return shmq_record_valid(rec, word, position, S);
}

/* Reads the records of one file: data[0, bytes) holds positions
 * [base, base + bytes). Unreadable spans are skipped (scanning on at
 * 8-byte steps for the next whole record) and reported. */
static int scan(recovery *rc, const uint8_t *data, uint64_t bytes, uint64_t base, uint64_t S, int last)
{
    shmq_recovery *r = rc->report;
    uint64_t off = 0;
    while (off + 8 <= bytes) {
        const shmq_record_header *rec = (const shmq_record_header *)(data + off);
        /* relaxed: as in record_ok. */
        uint64_t word = atomic_load_explicit(&((shmq_record_header *)rec)->word, memory_order_relaxed);
        if (record_ok(data + off, bytes - off, base + off, S)) {
            unsigned type = shmq_word_type(word);
            if (base + off >= rc->covered) {
                int applied = type == SHMQ_REC_PAD ? 0 : apply(rc, rec, type);
                if (applied < 0)
                    return SHMQ_ESYS;
                if (applied > 0) {
                    r->corrupt_records++;
                    r->corrupt_bytes += shmq_word_length(word);
                } else if (type != SHMQ_REC_PAD) {
                    r->records++;
                }
            }
            off += shmq_word_length(word);
            continue;
        }
        uint64_t next = off + 8;
        while (next + 8 <= bytes && !record_ok(data + next, bytes - next, base + next, S))
            next += 8;
        unsigned type = shmq_word_type(word);
        int unwritten = word == 0 || type == SHMQ_REC_PENDING || type == SHMQ_REC_VOID ||
                        (type == SHMQ_REC_PAD && word >> 40 == 0);
        if (next + 8 <= bytes) { /* a whole record follows */
            if (unwritten && all_zero(data + off + 8, data + next)) {
                r->holes++;
            } else if (unwritten && type != SHMQ_REC_NONE) {
                r->holes++; /* a claim or a voided span whose writer died */
            } else {
                r->corrupt_records++;
                r->corrupt_bytes += next - off;
                if (!rc->reading_snapshot)
                    mark_damaged(rc, base + off, base + next);
            }
            off = next;
            continue;
        }
        /* Nothing whole after `off`: the end of what was written. */
        const uint8_t *end = data + bytes;
        while (end > data + off && end[-1] == 0)
            end--;
        if (end > data + off) {
            if (last) {
                r->torn_position = base + off;
                r->torn_bytes = (uint64_t)(end - (data + off));
            } else {
                r->corrupt_records++;
                r->corrupt_bytes += (uint64_t)(end - (data + off));
                if (!rc->reading_snapshot)
                    mark_damaged(rc, base + off, base + bytes);
            }
        }
        break;
    }
    return SHMQ_OK;
}

/* Maps a whole file (a file of 0 bytes: base NULL). Its contents are
 * checked by the caller: a damaged file is read as far as it can be. */
static int map_file(int dirfd, const char *name, mapped_file *out)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return SHMQ_ELOG;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return SHMQ_ELOG;
    }
    void *mem = NULL;
    if (st.st_size > 0) {
        mem = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (mem == MAP_FAILED) {
            close(fd);
            return SHMQ_ELOG;
        }
    }
    close(fd);
    *out = (mapped_file){.base = mem, .bytes = (uint64_t)st.st_size};
    return SHMQ_OK;
}

/* Why a snapshot's header cannot be trusted (NULL: it can). */
static const char *snapshot_problem(const mapped_file *f)
{
    const shmq_segment_header *sh = (const shmq_segment_header *)f->base;
    if (f->bytes < SHMQ_SEGMENT_HEADER_BYTES)
        return "shorter than its 4096-byte header page";
    if (shmq_segment_header_check(sh, SHMQ_SNAPSHOT_MAGIC) != SHMQ_OK)
        return "its header fails the magic, version or CRC check";
    if (sh->base >= SHMQ_POSITION_LIMIT || sh->base % SHMQ_SEGMENT_HEADER_BYTES)
        return "its header's log position is out of range";
    if (sh->segment_bytes >= SHMQ_POSITION_LIMIT || sh->index > sh->segment_bytes / SHMQ_ENQUEUE_FIXED)
        return "its header's job count or size is out of range";
    return NULL;
}

/* Reads the snapshot. A header that cannot be trusted leaves `covered` 0
 * (every segment is read in full) and its records are read anyway, by their
 * own CRC. Its header's `index` counts its jobs (0 with records: a snapshot
 * from before that count was kept). Returns 1 if it is damaged. */
static int read_snapshot(recovery *rc, const mapped_file *f, int *damaged /* OUT */)
{
    shmq_recovery *r = rc->report;
    const shmq_segment_header *sh = (const shmq_segment_header *)f->base;
    const char *problem = snapshot_problem(f);
    uint64_t present = f->bytes > SHMQ_SEGMENT_HEADER_BYTES ? f->bytes - SHMQ_SEGMENT_HEADER_BYTES : 0;
    uint64_t bytes = present, expected = UINT64_MAX;
    if (!problem) {
        bytes = sh->segment_bytes < present ? sh->segment_bytes : present;
        if (sh->index || !sh->segment_bytes)
            expected = sh->index;
    }
    uint64_t records = r->records, corrupt = r->corrupt_bytes;
    rc->reading_snapshot = 1;
    int status = bytes ? scan(rc, f->base + SHMQ_SEGMENT_HEADER_BYTES, bytes, 0, bytes, 0) : SHMQ_OK;
    rc->reading_snapshot = 0;
    if (status != SHMQ_OK)
        return status;
    uint64_t read = r->records - records;
    if (!problem && read && rc->top_id >= sh->base)
        problem = "its header's log position lies below the ids of its own jobs";
    *damaged = problem || r->corrupt_bytes != corrupt || bytes < (problem ? bytes : sh->segment_bytes) ||
               (expected != UINT64_MAX && read != expected);
    if (problem) {
        note(r, "snapshot (%llu bytes): %s; %llu job(s) read from its records, each checked by its own CRC; "
                "how many it held is unknown; every segment was read in full",
             (unsigned long long)f->bytes, problem, (unsigned long long)read);
        return SHMQ_OK;
    }
    rc->covered = sh->base;
    if (*damaged) {
        uint64_t lost = expected != UINT64_MAX && expected > read ? expected - read : 0;
        r->lost_jobs += lost;
        note(r, "snapshot: %llu of its %llu record bytes present, %llu corrupt; %llu of its %s job(s) read, "
                "%llu lost",
             (unsigned long long)bytes, (unsigned long long)sh->segment_bytes,
             (unsigned long long)(r->corrupt_bytes - corrupt), (unsigned long long)read,
             expected == UINT64_MAX ? "(uncounted)" : "counted", (unsigned long long)lost);
    }
    return SHMQ_OK;
}

/* The segment size to read a segment file with: its header's, or when that
 * cannot be trusted the first plausible of its file size, its neighbours'
 * and the queue's. 0: none fits its base. */
static uint64_t segment_size(const mapped_file *f, uint64_t base, uint64_t hint, uint64_t queue_S,
                             const char **problem /* OUT */)
{
    const shmq_segment_header *sh = (const shmq_segment_header *)f->base;
    *problem = NULL;
    if (f->bytes < SHMQ_SEGMENT_HEADER_BYTES)
        *problem = "shorter than its 4096-byte header page";
    else if (shmq_segment_header_check(sh, SHMQ_SEGMENT_MAGIC) != SHMQ_OK)
        *problem = "its header fails the magic, version or CRC check";
    else if (!sh->segment_bytes || sh->segment_bytes % SHMQ_SEGMENT_HEADER_BYTES ||
             sh->segment_bytes > SHMQ_SEGMENT_BYTES_LIMIT)
        *problem = "its header's segment size is out of range";
    else if (sh->base != base || base % sh->segment_bytes || sh->index != base / sh->segment_bytes)
        *problem = "its header's position disagrees with its file name";
    else
        return sh->segment_bytes;
    uint64_t candidates[3] = {f->bytes > SHMQ_SEGMENT_HEADER_BYTES ? f->bytes - SHMQ_SEGMENT_HEADER_BYTES : 0,
                              hint, queue_S};
    for (int i = 0; i < 3; i++) {
        uint64_t S = candidates[i];
        if (S && S % SHMQ_SEGMENT_HEADER_BYTES == 0 && S <= SHMQ_SEGMENT_BYTES_LIMIT && base % S == 0)
            return S;
    }
    return 0;
}

/* Reads one segment file, named for `base`; *S is the size it was read with
 * (in: the last segment's). Sets *damaged if anything in it was lost. */
static int read_segment(recovery *rc, const mapped_file *f, const char *name, uint64_t base, int last,
                        uint64_t *S /* IN/OUT */, int *damaged /* OUT */, int *empty /* OUT */)
{
    *empty = 0;
    shmq_recovery *r = rc->report;
    const char *problem;
    uint64_t size = segment_size(f, base, *S, rc->h->segment_bytes, &problem);
    *damaged = problem != NULL;
    if (!size) {
        mark_damaged(rc, base, base + *S);
        note(r, "%s (%llu bytes): %s, and no segment size fits its name: unreadable", name,
             (unsigned long long)f->bytes, problem);
        return SHMQ_OK;
    }
    *S = size;
    if (base + size <= rc->covered && !problem)
        return SHMQ_OK; /* wholly covered by the snapshot */
    uint64_t have = f->bytes > SHMQ_SEGMENT_HEADER_BYTES ? f->bytes - SHMQ_SEGMENT_HEADER_BYTES : 0;
    uint64_t present = have < size ? have : size; /* a file cut short is read as far as it goes */
    uint64_t records = r->records, corrupt = r->corrupt_bytes, holes = r->holes, torn = r->torn_bytes;
    int status = present ? scan(rc, f->base + SHMQ_SEGMENT_HEADER_BYTES, present, base, size, last) : SHMQ_OK;
    if (status != SHMQ_OK)
        return status;
    /* Never written (made ahead of need, as far as it was grown): recovery
     * may reuse the file. */
    *empty = !problem && r->records == records && r->corrupt_bytes == corrupt && r->holes == holes &&
             r->torn_bytes == torn &&
             all_zero(f->base + SHMQ_SEGMENT_HEADER_BYTES, f->base + SHMQ_SEGMENT_HEADER_BYTES + present);
    uint64_t missing = last ? 0 : size - present; /* every segment but the last was written to its end */
    if (missing) {
        r->missing_bytes += missing;
        mark_damaged(rc, base + present, base + size);
    }
    if (r->corrupt_bytes != corrupt || missing)
        *damaged = 1;
    if (*damaged)
        note(r, "%s (positions %llu..%llu): %s%s%llu record(s) read, %llu corrupt byte(s) skipped, %llu byte(s) "
                "missing from its end",
             name, (unsigned long long)base, (unsigned long long)(base + size), problem ? problem : "",
             problem ? ", its records read by their own CRC and position; " : "",
             (unsigned long long)(r->records - records), (unsigned long long)(r->corrupt_bytes - corrupt),
             (unsigned long long)missing);
    return SHMQ_OK;
}

/* Keeps a damaged file in <log dir>/damaged/ (never deleted by retention,
 * never read by recovery), under a name not taken yet. */
static int move_aside(shmq_handle *h, const char *name)
{
    if (mkdirat(h->log_dirfd, "damaged", 0700) != 0 && errno != EEXIST)
        return -1;
    char target[64];
    struct stat st;
    for (unsigned n = 0; n < 1000; n++) {
        if (n)
            snprintf(target, sizeof target, "damaged/%s.%u", name, n);
        else
            snprintf(target, sizeof target, "damaged/%s", name);
        if (fstatat(h->log_dirfd, target, &st, AT_SYMLINK_NOFOLLOW) == 0)
            continue;
        if (errno != ENOENT)
            return -1;
        return renameat(h->log_dirfd, name, h->log_dirfd, target);
    }
    errno = EEXIST;
    return -1;
}

/* An old file after recovery: deleted, or kept aside if damaged. */
static void retire_file(shmq_handle *h, const char *name, int damaged, shmq_recovery *report)
{
    if (!damaged) {
        unlinkat(h->log_dirfd, name, 0);
    } else if (move_aside(h, name) == 0) {
        report->damaged_files++;
    } else {
        note(report, "%s could not be moved to damaged/ (%s): left in place", name, strerror(errno));
    }
}

/* Is the segment at bases[i] the last one written? Later segments may exist
 * unwritten (made ahead of need): their first record word is still 0. */
static int nothing_after(shmq_handle *h, const uint64_t *bases, size_t i, size_t count)
{
    for (size_t k = i + 1; k < count; k++) {
        char name[32];
        uint64_t word = 0;
        shmq_segment_name(name, sizeof name, bases[k]);
        int fd = openat(h->log_dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue;
        ssize_t n = pread(fd, &word, sizeof word, SHMQ_SEGMENT_HEADER_BYTES);
        close(fd);
        if (n == (ssize_t)sizeof word && word != 0)
            return 0;
    }
    return 1;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int compare_jobs(const void *a, const void *b)
{
    return compare_u64(&((const job *)a)->id, &((const job *)b)->id);
}

/* Writes the live jobs' copies, many records to one reservation (no one
 * else is attached while recovery runs, but the protocol is the usual one). */
static int write_copies(shmq_handle *h, const job *live, uint64_t count, shmq_recovery *report)
{
    uint64_t S = h->segment_bytes;
    for (uint64_t i = 0; i < count;) {
        /* As many records as fit in what is left of the tail's segment. */
        uint64_t tail = atomic_load_explicit(&h->header->log_tail, memory_order_relaxed) & ~SHMQ_TAIL_SPILL;
        uint64_t room = S - tail % S, total = 0, end = i;
        while (end < count && end - i < 4096) {
            uint64_t bytes = (sizeof(shmq_record_header) + live[end].record->body_bytes + 7) & ~7ull;
            if (total + bytes > room)
                break;
            total += bytes;
            end++;
        }
        if (end == i) { /* the segment is full: one record, which reserve() moves on */
            end = i + 1;
            total = (sizeof(shmq_record_header) + live[i].record->body_bytes + 7) & ~7ull;
        }
        uint64_t p = 0;
        shmq_record_header *rec = NULL;
        int spilling = 0;
        int rc = shmq_log_reserve(h, (uint32_t)total, &p, &rec, &spilling);
        if (rc != SHMQ_OK)
            return rc;
        uint8_t *at = (uint8_t *)rec;
        for (uint64_t k = i; k < end; k++) {
            const shmq_record_header *old = live[k].record;
            uint32_t bytes = (uint32_t)((sizeof *old + old->body_bytes + 7) & ~7ull);
            shmq_record_header *copy = (shmq_record_header *)at;
            uint64_t expected = 0, pending = shmq_record_word(bytes, SHMQ_REC_PENDING, h->self);
            /* relaxed: no one else is attached; the publish below orders the data. */
            if (!atomic_compare_exchange_strong_explicit(&copy->word, &expected, pending, memory_order_relaxed,
                                                         memory_order_relaxed))
                return SHMQ_ELOG;
            memcpy((uint8_t *)copy + 8, (const uint8_t *)old + 8, bytes - 8);
            copy->crc = 0;
            copy->seq = p;
            copy->job_id = live[k].id;
            shmq_enqueue_body *body = (shmq_enqueue_body *)(copy + 1);
            body->attempt = live[k].attempt ? live[k].attempt : 1;
            if (live[k].state == JOB_RUNNING) { /* it was running when the crash came: runs again */
                body->attempt++;
                report->running++;
            }
            body->not_before_ns = live[k].not_before;
            body->flags = (uint8_t)(SHMQ_ENQ_COPY | (spilling ? SHMQ_ENQ_SPILLED : 0) |
                                    (body->flags & SHMQ_ENQ_UNIQUE_FINISH));
            uint64_t word = shmq_record_word(bytes, SHMQ_REC_ENQUEUE, 0);
            copy->crc = shmq_record_crc(copy, word);
            /* release: as every publish. */
            atomic_store_explicit(&copy->word, word, memory_order_release);
            at += bytes;
            p += bytes;
            if (k == count / 2)
                shmq_fault(h, SHMQ_FAULT_RECOVER_MID);
        }
        atomic_fetch_add_explicit(&h->header->records_appended, end - i, memory_order_relaxed); /* statistics */
        if (spilling)
            atomic_fetch_add_explicit(&h->header->spilled, end - i, memory_order_relaxed); /* statistics (qsize) */
        i = end;
    }
    return SHMQ_OK;
}

/* The bytes the copies of the live jobs and the checkpoint's two markers
 * take at most (a record never crosses a segment end: one record's length
 * of padding per segment they span). */
static uint64_t copies_bytes(const job *live, uint64_t count, uint64_t S)
{
    uint64_t total = 2 * (sizeof(shmq_record_header) + sizeof(shmq_checkpoint_body)), largest = 0;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t bytes = (sizeof(shmq_record_header) + live[i].record->body_bytes + 7) & ~7ull;
        total += bytes;
        if (bytes > largest)
            largest = bytes;
    }
    return total + (total / S + 1) * largest;
}

/* Allocates the new log's blocks for `bytes` from `from` on (segments made,
 * files grown) before anything is written there. 0 or an errno. */
static int room_for(shmq_handle *h, uint64_t from, uint64_t bytes)
{
    uint64_t S = h->segment_bytes;
    for (uint64_t at = from, end = from + bytes; at < end;) {
        uint64_t stop = (at / S + 1) * S < end ? (at / S + 1) * S : end;
        int err = 0;
        if (!shmq_segment_map(h, at / S, 1, &err))
            return err;
        if ((err = shmq_segment_cover(h, at, stop - at, 1)) != 0)
            return err;
        at = stop;
    }
    return 0;
}

/* Removes the segments room_for made from `next` on (the old log's files,
 * `bases`, stay): nothing was written into them. */
static void drop_new_segments(shmq_handle *h, uint64_t next, const uint64_t *bases, size_t count)
{
    uint64_t S = h->segment_bytes;
    /* relaxed: no one else is attached yet. */
    uint64_t made = atomic_load_explicit(&h->header->segments_made, memory_order_relaxed);
    for (uint64_t index = next / S; index < made; index++) {
        int old = 0;
        for (size_t i = 0; i < count && !old; i++)
            old = bases[i] == index * S;
        if (old)
            continue;
        pthread_mutex_lock(&h->segment_lock);
        shmq_segment_slot *slot = &h->segments[index % SHMQ_SEGMENT_SLOTS];
        /* relaxed: under segment_lock. */
        if (atomic_load_explicit(&slot->base, memory_order_relaxed) &&
            atomic_load_explicit(&slot->index, memory_order_relaxed) == index)
            shmq_log_retire_slot(h, slot);
        pthread_mutex_unlock(&h->segment_lock);
        char name[32];
        shmq_segment_name(name, sizeof name, index * S);
        unlinkat(h->log_dirfd, name, 0);
    }
    shmq_log_unmap_retired(h, 0); /* recovery runs outside the log code */
    atomic_store_explicit(&h->header->segments_made, next / S, memory_order_relaxed);
}

/* The old segment files, as recovery read them (files[i] holds bases[i]). */
typedef struct in_place_files {
    const mapped_file *files;
    size_t mapped;
    const uint64_t *bases;
    size_t count;
    const uint8_t *damaged;
} in_place_files;

/* Writes a PAD over [position, position + length) of the old log's last
 * segment, where a writer died mid-record (torn bytes), so that a later
 * recovery finds a record there, not damage. Only this process is attached. */
static int pad_torn(shmq_handle *h, uint64_t position, uint32_t length)
{
    int err = 0;
    shmq_record_header *rec = shmq_record_at(h, position, 0, &err);
    if (!rec)
        return shmq_log_fail(h, err);
    memset((uint8_t *)rec + 8, 0, length - 8);
    uint64_t word = shmq_record_word(length, SHMQ_REC_PAD, 0);
    rec->body_bytes = length - (uint32_t)sizeof *rec;
    rec->seq = position;
    rec->crc = shmq_record_crc(rec, word);
    /* release: as every publish (no reader is attached yet). */
    atomic_store_explicit(&rec->word, word, memory_order_release);
    if (h->durability >= SHMQ_DURABILITY_OS) {
        int fd = h->segments[(position / h->segment_bytes) % SHMQ_SEGMENT_SLOTS].fd;
        if (fdatasync(fd) != 0)
            return shmq_log_fail(h, errno);
    }
    return SHMQ_OK;
}

/* Recovery in place, when the disk has no room for the copies: the old
 * segments stay the log, unchanged but for a PAD over a torn record at
 * their end; the log goes on where they end, and the live jobs go back
 * into the lanes from their records where they lie (the caller pushes
 * `put_back`). Retention deletes the old segments as their jobs finish,
 * as it does any segment. Possible when every segment was read whole,
 * with this queue's segment size, and no job lives in a snapshot. */
static int recover_in_place(recovery *rc, const in_place_files *f, const job *live, uint64_t live_count,
                            shmq_put_back **put_back, uint64_t *put_back_count)
{
    shmq_handle *h = rc->h;
    shmq_recovery *report = rc->report;
    uint64_t S = h->segment_bytes;
    int err = ENOSPC;
    if (f->mapped != f->count || !f->count)
        return shmq_log_fail(h, err);
    size_t last = f->count;
    for (size_t i = 0; i < f->count; i++) {
        const mapped_file *m = &f->files[i];
        const shmq_segment_header *sh = (const shmq_segment_header *)m->base;
        if (f->damaged[i] || m->bytes < SHMQ_SEGMENT_HEADER_BYTES || sh->segment_bytes != S)
            return shmq_log_fail(h, err); /* read around damage, or of another size: only copies can carry it */
        if (m->bytes > SHMQ_SEGMENT_HEADER_BYTES &&
            !all_zero(m->base + SHMQ_SEGMENT_HEADER_BYTES, m->base + m->bytes))
            last = i;
    }
    if (last == f->count)
        return shmq_log_fail(h, err);
    /* The old log ends after its last non-zero byte (records, torn bytes);
     * the new one goes on from there, in what its file has allocated. */
    const mapped_file *m = &f->files[last];
    const uint8_t *data = m->base + SHMQ_SEGMENT_HEADER_BYTES, *end = m->base + m->bytes;
    while (end > data && end[-1] == 0)
        end--;
    uint64_t seg = f->bases[last];
    uint64_t file_end = seg + (m->bytes - SHMQ_SEGMENT_HEADER_BYTES < S ? m->bytes - SHMQ_SEGMENT_HEADER_BYTES : S);
    uint64_t written = seg + (((uint64_t)(end - data) + 7) & ~7ull), tail = written;
    uint64_t torn = report->torn_bytes && report->torn_position >= seg && report->torn_position < written
                        ? report->torn_position
                        : written;
    if (torn < tail && tail - torn < sizeof(shmq_record_header))
        tail = torn + sizeof(shmq_record_header); /* a PAD in mid-segment has a whole header */
    if (tail > file_end)
        tail = file_end;
    if ((torn < tail && tail - torn < sizeof(shmq_record_header) && tail != seg + S) || tail <= rc->top_id)
        return shmq_log_fail(h, err);
    shmq_put_back *back = malloc((live_count ? live_count : 1) * sizeof *back);
    if (!back)
        return shmq_log_fail(h, ENOMEM);
    for (uint64_t k = 0; k < live_count; k++) {
        const uint8_t *at = (const uint8_t *)live[k].record;
        size_t i = 0;
        while (i < f->count && !(at >= f->files[i].base + SHMQ_SEGMENT_HEADER_BYTES &&
                                 at < f->files[i].base + f->files[i].bytes))
            i++;
        if (i == f->count) { /* in no segment file (the snapshot's) */
            free(back);
            return shmq_log_fail(h, err);
        }
        uint16_t attempt = live[k].attempt ? live[k].attempt : 1;
        if (live[k].state == JOB_RUNNING) { /* it was running when the crash came: runs again */
            attempt++;
            report->running++;
        }
        back[k] = (shmq_put_back){.position = f->bases[i] + (uint64_t)(at - f->files[i].base) - SHMQ_SEGMENT_HEADER_BYTES,
                                  .not_before_ns = live[k].not_before, .attempt = attempt};
    }
    shmq_region_header *hdr = h->header;
    /* relaxed: no one else is attached yet (the creator holds the queue's lock). */
    atomic_store_explicit(&hdr->log_tail, tail, memory_order_relaxed);
    atomic_store_explicit(&hdr->log_base, f->bases[0], memory_order_relaxed);
    atomic_store_explicit(&hdr->feed_cursor, tail, memory_order_relaxed);
    atomic_store_explicit(&hdr->checkpoint_floor, 0, memory_order_relaxed); /* no copies: every job needs its id */
    atomic_store_explicit(&hdr->checkpoint_begin, 0, memory_order_relaxed);
    atomic_store_explicit(&hdr->flushed_tail, tail, memory_order_relaxed);
    atomic_store_explicit(&hdr->segments_made, f->bases[f->count - 1] / S + 1, memory_order_relaxed);
    hdr->log_origin = f->bases[0];
    report->next_position = tail;
    int status = torn < tail ? pad_torn(h, torn, (uint32_t)(tail - torn)) : SHMQ_OK;
    if (status != SHMQ_OK) {
        free(back);
        return status;
    }
    report->live = live_count;
    *put_back = back;
    *put_back_count = live_count;
    return SHMQ_OK;
}

/* Writes a checkpoint marker. */
static int marker(shmq_handle *h, unsigned type, uint64_t floor, uint64_t begin, uint64_t count, uint64_t *position)
{
    shmq_checkpoint_body body = {.floor = floor, .begin = begin, .count = count, .reserved = 0};
    part parts[1] = {{&body, sizeof body}};
    int spilling;
    return shmq_log_append(h, type, 0, parts, 1, position, &spilling);
}

/* Recovery of the log itself; the public shmq_log_recover, in backlog.c,
 * then feeds the live backlog into the lanes and declares the log ready. */
int shmq_log_recover_records(shmq_handle *h, shmq_recovery *report /* OUT */, shmq_put_back **put_back /* OUT */,
                             uint64_t *put_back_count /* OUT */)
{
    int64_t started = shmq_now_ns();
    *report = (shmq_recovery){0};
    *put_back = NULL;
    *put_back_count = 0;
    if (!h->log_on)
        return SHMQ_EINVAL;
    recovery rc = {.h = h, .report = report};
    int status = SHMQ_OK;

    /* The files: the snapshot and the segments, in index order. */
    int dirfd = dup(h->log_dirfd);
    DIR *dir = dirfd >= 0 ? fdopendir(dirfd) : NULL;
    if (!dir)
        return shmq_log_fail(h, errno);
    uint64_t *bases = NULL;
    size_t count = 0, capacity = 0;
    int have_snapshot = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        unsigned long long index;
        char tail[8];
        if (strcmp(entry->d_name, "snapshot") == 0) {
            have_snapshot = 1;
        } else if (strncmp(entry->d_name, "tmp.", 4) == 0) {
            unlinkat(h->log_dirfd, entry->d_name, 0); /* a file a crashed process was making */
        } else if (strlen(entry->d_name) == 20 && sscanf(entry->d_name, "%16llx%7s", &index, tail) == 2 &&
                   strcmp(tail, ".seg") == 0) {
            if (count == capacity) {
                capacity = capacity ? capacity * 2 : 64;
                uint64_t *grown = realloc(bases, capacity * sizeof *grown);
                if (!grown) {
                    closedir(dir);
                    free(bases);
                    errno = ENOMEM;
                    return SHMQ_ESYS;
                }
                bases = grown;
            }
            bases[count++] = index;
        }
    }
    closedir(dir);
    if (count)
        qsort(bases, count, sizeof *bases, compare_u64);

    mapped_file *files = calloc(count + 1, sizeof *files);
    uint8_t *damaged = calloc(count + 1, 1); /* damaged[count]: the snapshot */
    size_t mapped = 0;
    if (!files || !damaged) {
        free(files);
        free(damaged);
        free(bases);
        errno = ENOMEM;
        return SHMQ_ESYS;
    }
    uint64_t end_position = 0; /* past every old position */
    if (have_snapshot) {
        mapped_file *f = &files[mapped];
        status = map_file(h->log_dirfd, "snapshot", f);
        if (status != SHMQ_OK)
            goto out;
        mapped++;
        report->segments++;
        int bad = 0;
        status = read_snapshot(&rc, f, &bad);
        if (status != SHMQ_OK)
            goto out;
        damaged[count] = (uint8_t)bad;
        end_position = rc.covered;
    }
    /* Segments follow each other without a gap (retention deletes from the
     * start; a snapshot's log goes on at its position). */
    uint64_t S = h->segment_bytes, expected = rc.covered;
    /* The trailing segments never written (made ahead of need, so already
     * whole) become the new log's first files: recovery then needs no new
     * file, so a crashed queue on a full disk recovers. Their positions were
     * never used by a record (a reservation there was never written). */
    size_t reusable = SIZE_MAX;
    uint64_t written_end = rc.covered;
    int have_expected = rc.covered != 0;
    for (size_t i = 0; i < count; i++) {
        char name[32];
        shmq_segment_name(name, sizeof name, bases[i]);
        if (bases[i] >= SHMQ_POSITION_LIMIT) {
            damaged[i] = 1;
            note(report, "%s: its name is a log position out of range: not read", name);
            continue;
        }
        if (have_expected && bases[i] > expected) {
            report->missing_bytes += bases[i] - expected;
            mark_damaged(&rc, expected, bases[i]);
            note(report, "positions %llu..%llu are missing (no segment file before %s): their records are lost",
                 (unsigned long long)expected, (unsigned long long)bases[i], name);
        }
        mapped_file *f = &files[mapped];
        status = map_file(h->log_dirfd, name, f);
        if (status != SHMQ_OK)
            goto out;
        mapped++;
        report->segments++;
        int bad = 0, empty = 0;
        status = read_segment(&rc, f, name, bases[i], nothing_after(h, bases, i, count), &S, &bad, &empty);
        if (status != SHMQ_OK)
            goto out;
        damaged[i] = (uint8_t)bad;
        if (!empty || S != h->segment_bytes)
            reusable = SIZE_MAX, written_end = bases[i] + S;
        else if (reusable == SIZE_MAX)
            reusable = i;
        if (bases[i] + S > end_position)
            end_position = bases[i] + S;
        if (!have_expected || bases[i] + S > expected)
            expected = bases[i] + S;
        have_expected = 1;
    }
    if (rc.top_id && rc.top_id >= end_position)
        end_position = rc.top_id + 1; /* a snapshot without its position: new ids stay above old ones */

    /* The live jobs, in the order they were first enqueued: the order first
     * seen, unless copies (a snapshot of several lanes) came out of order. */
    job *live = rc.jobs.jobs;
    uint64_t live_count = 0;
    int sorted = 1;
    for (uint64_t i = 0; i < rc.jobs.count; i++) {
        job *j = &rc.jobs.jobs[i];
        if (j->state == JOB_DONE) {
            report->done++;
            continue;
        }
        if (!j->record) {
            if (in_damaged(&rc, j->id))
                report->lost_jobs++; /* named by a later record; its ENQUEUE was in damaged bytes */
            continue;
        }
        if (live_count && live[live_count - 1].id > j->id)
            sorted = 0;
        live[live_count++] = *j; /* compact in place: writes only behind the reader */
    }
    free(rc.jobs.index);
    rc.jobs.index = NULL;
    if (live_count && !sorted)
        qsort(live, live_count, sizeof *live, compare_jobs);

    /* The new log starts in a fresh segment past every old record. */
    S = h->segment_bytes;
    uint64_t next = (end_position + S - 1) / S * S;
    if (reusable != SIZE_MAX && bases[reusable] >= written_end && bases[reusable] > rc.top_id &&
        bases[reusable] % S == 0)
        next = bases[reusable]; /* the files from here on are kept: the new log goes on in them */
    else
        reusable = count;
    shmq_region_header *hdr = h->header;
    /* relaxed: no one else is attached yet (the creator holds the queue's lock). */
    atomic_store_explicit(&hdr->log_tail, next, memory_order_relaxed);
    atomic_store_explicit(&hdr->log_base, next, memory_order_relaxed);
    atomic_store_explicit(&hdr->feed_cursor, next, memory_order_relaxed);
    atomic_store_explicit(&hdr->checkpoint_floor, next, memory_order_relaxed);
    atomic_store_explicit(&hdr->flushed_tail, next, memory_order_relaxed);
    atomic_store_explicit(&hdr->segments_made, next / S, memory_order_relaxed);
    hdr->log_origin = next;
    report->next_position = next;

    /* No room on disk for the copies (a full disk): the old segments stay
     * the log, the jobs are put back from where they lie. */
    int room = room_for(h, next, copies_bytes(live, live_count, S));
    if (room == ENOSPC || room == EDQUOT) {
        drop_new_segments(h, next, bases, count);
        in_place_files old = {files + have_snapshot, mapped - (size_t)have_snapshot, bases, count, damaged};
        status = have_snapshot ? shmq_log_fail(h, room)
                               : recover_in_place(&rc, &old, live, live_count, put_back, put_back_count);
        goto out;
    }

    /* Every log starts with a checkpoint (empty for a new queue): so no job
     * has position 0, which lanes read as "not logged". */
    uint64_t begin, position;
    status = marker(h, SHMQ_REC_CHECKPOINT_BEGIN, 0, 0, live_count, &begin);
    if (live_count && status == SHMQ_OK) {
        shmq_log_spill_begin(h); /* the feeder moves them into the lanes, in order */
        status = write_copies(h, live, live_count, report);
        report->live = live_count;
    }
    if (status == SHMQ_OK)
        status = marker(h, SHMQ_REC_CHECKPOINT_END, next, begin, live_count, &position);
    /* relaxed: no one else is attached yet. Recovered jobs keep their old
     * ids (below the floor); their records are the copies from `begin` on. */
    atomic_store_explicit(&hdr->checkpoint_begin, begin, memory_order_relaxed);
    if (status == SHMQ_OK && h->durability >= SHMQ_DURABILITY_OS)
        status = shmq_log_sync(h); /* the new log is on disk before the old one goes */

    if (status == SHMQ_OK) {
        /* The snapshot first, then the segments from the start: a crash in
         * between leaves segments that still follow each other. */
        if (have_snapshot)
            retire_file(h, "snapshot", damaged[count], report);
        for (size_t i = 0; i < count; i++) {
            char name[32];
            shmq_segment_name(name, sizeof name, bases[i]);
            if (i < reusable || damaged[i])
                retire_file(h, name, damaged[i], report); /* all old: the new log starts past them */
        }
        if (h->durability >= SHMQ_DURABILITY_OS)
            fsync(h->log_dirfd);
    }
out:
    for (size_t i = 0; i < mapped; i++)
        if (files[i].base)
            munmap(files[i].base, files[i].bytes);
    free(files);
    free(damaged);
    free(bases);
    free(rc.jobs.jobs);
    free(rc.jobs.index);
    report->elapsed_ns = shmq_now_ns() - started;
    return status;
}
