/* SPDX-License-Identifier: Apache-2.0 */
/* log_recover.c -- rebuilding a queue from its log when the shared region
 * is new (after a reboot, or an unlink): read the snapshot and every
 * segment, find the live jobs, write them as a checkpoint at the start of
 * a fresh log, delete the old files, feed the jobs into the lanes.
 *
 * Old files are deleted only after the new log is complete and flushed, so
 * a crash during recovery leaves both, and the next recovery reads both:
 * jobs are keyed by id, so copies do not duplicate them. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
    uint8_t *base;
    uint64_t bytes;
    uint64_t index;     /* segment index; UINT64_MAX for the snapshot */
    uint64_t S;         /* its segment size */
} mapped_file;

typedef struct recovery {
    shmq_handle *h;
    shmq_recovery *report;
    job_table jobs;
    uint64_t covered;   /* the snapshot covers positions below this */
} recovery;

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
        j = table_find(&rc->jobs, rec->job_id, 0);
        if (j && j->state != JOB_DONE)
            j->state = JOB_RUNNING;
        break;
    case SHMQ_REC_RETRY: {
        j = table_find(&rc->jobs, rec->job_id, 0);
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
            }
        }
        break;
    }
    return SHMQ_OK;
}

static int map_file(int dirfd, const char *name, mapped_file *out, uint64_t magic)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return SHMQ_ELOG;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return SHMQ_ELOG;
    }
    if ((uint64_t)st.st_size < SHMQ_SEGMENT_HEADER_BYTES) {
        close(fd);
        return SHMQ_ELOGFORMAT;
    }
    void *mem = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (mem == MAP_FAILED)
        return SHMQ_ELOG;
    const shmq_segment_header *sh = mem;
    if (shmq_segment_header_check(sh, magic) != SHMQ_OK) {
        munmap(mem, (size_t)st.st_size);
        return SHMQ_ELOGFORMAT;
    }
    out->base = mem;
    out->bytes = (uint64_t)st.st_size;
    out->index = sh->index;
    out->S = sh->segment_bytes;
    return SHMQ_OK;
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

/* Writes a checkpoint marker. */
static int marker(shmq_handle *h, unsigned type, uint64_t floor, uint64_t begin, uint64_t count, uint64_t *position)
{
    shmq_checkpoint_body body = {.floor = floor, .begin = begin, .count = count, .reserved = 0};
    part parts[1] = {{&body, sizeof body}};
    int spilling;
    return shmq_log_append(h, type, 0, parts, 1, position, &spilling);
}

int shmq_log_recover(shmq_handle *h, shmq_recovery *report /* OUT */)
{
    int64_t started = shmq_now_ns();
    *report = (shmq_recovery){0};
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
    size_t mapped = 0;
    if (!files) {
        free(bases);
        errno = ENOMEM;
        return SHMQ_ESYS;
    }
    uint64_t end_position = 0; /* past every old position */
    if (have_snapshot) {
        mapped_file *f = &files[mapped];
        status = map_file(h->log_dirfd, "snapshot", f, SHMQ_SNAPSHOT_MAGIC);
        if (status != SHMQ_OK)
            goto out;
        const shmq_segment_header *sh = (const shmq_segment_header *)f->base;
        rc.covered = sh->base;
        end_position = sh->base;
        uint64_t bytes = sh->segment_bytes;
        if (bytes > f->bytes - SHMQ_SEGMENT_HEADER_BYTES)
            bytes = f->bytes - SHMQ_SEGMENT_HEADER_BYTES;
        mapped++;
        report->segments++;
        /* Snapshot records are numbered from 0 within it: pass base 0. */
        uint64_t saved = rc.covered;
        rc.covered = 0;
        status = scan(&rc, f->base + SHMQ_SEGMENT_HEADER_BYTES, bytes, 0, bytes ? bytes : 8, 0);
        rc.covered = saved;
        if (status != SHMQ_OK)
            goto out;
    }
    for (size_t i = 0; i < count; i++) {
        char name[32];
        shmq_segment_name(name, sizeof name, bases[i]);
        mapped_file *f = &files[mapped];
        int r = map_file(h->log_dirfd, name, f, SHMQ_SEGMENT_MAGIC);
        if (r == SHMQ_ELOGFORMAT ||
            (r == SHMQ_OK && (f->S == 0 || ((const shmq_segment_header *)f->base)->base != bases[i] ||
                              f->index * f->S != bases[i]))) {
            if (r == SHMQ_OK)
                munmap(f->base, f->bytes);
            report->corrupt_records++; /* a segment whose header is unreadable */
            continue;
        }
        if (r != SHMQ_OK) {
            status = r;
            goto out;
        }
        mapped++;
        report->segments++;
        uint64_t base = f->index * f->S;
        if (base + f->S > end_position)
            end_position = base + f->S;
        if (base + f->S <= rc.covered)
            continue; /* wholly covered by the snapshot */
        /* A file cut short (copied or truncated) is read as far as it goes. */
        uint64_t present = f->bytes - SHMQ_SEGMENT_HEADER_BYTES < f->S ? f->bytes - SHMQ_SEGMENT_HEADER_BYTES : f->S;
        status = scan(&rc, f->base + SHMQ_SEGMENT_HEADER_BYTES, present, base, f->S, nothing_after(h, bases, i, count));
        if (status != SHMQ_OK)
            goto out;
    }

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
        if (!j->record)
            continue;
        if (live_count && live[live_count - 1].id > j->id)
            sorted = 0;
        live[live_count++] = *j; /* compact in place: writes only behind the reader */
    }
    free(rc.jobs.index);
    rc.jobs.index = NULL;
    if (live_count && !sorted)
        qsort(live, live_count, sizeof *live, compare_jobs);

    /* The new log starts in a fresh segment past every old position. */
    uint64_t S = h->segment_bytes;
    uint64_t next = (end_position + S - 1) / S * S;
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
        for (size_t i = 0; i < count; i++) {
            char name[32];
            shmq_segment_name(name, sizeof name, bases[i]);
            unlinkat(h->log_dirfd, name, 0); /* all old: the new log starts past them */
        }
        if (have_snapshot)
            unlinkat(h->log_dirfd, "snapshot", 0);
        if (h->durability >= SHMQ_DURABILITY_OS)
            fsync(h->log_dirfd);
    }
out:
    for (size_t i = 0; i < mapped; i++)
        munmap(files[i].base, files[i].bytes);
    free(files);
    free(bases);
    free(rc.jobs.jobs);
    free(rc.jobs.index);
    if (status == SHMQ_OK && report->live)
        shmq_log_feed(h, UINT32_MAX);
    if (status == SHMQ_OK)
        /* release: everything recovery wrote is visible to whoever sees READY. */
        atomic_fetch_or_explicit(&h->header->log_flags, SHMQ_LOG_READY, memory_order_release);
    report->elapsed_ns = shmq_now_ns() - started;
    return status;
}
