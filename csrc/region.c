/* SPDX-License-Identifier: Apache-2.0 */
/* region.c -- sizing, mapping, creating and checking a region; handles. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

const char *shmq_strerror(int status)
{
    switch (status) {
    case SHMQ_OK: return "ok";
    case SHMQ_EEMPTY: return "queue empty";
    case SHMQ_EFULL: return "queue full";
    case SHMQ_EINTR: return "interrupted by a signal";
    case SHMQ_EINVAL: return "invalid parameter";
    case SHMQ_ENOTSHMQ: return "not a shmq region (bad magic)";
    case SHMQ_EVERSION: return "region made by another layout version";
    case SHMQ_EUNINIT: return "region not initialised (its creator has not finished or died)";
    case SHMQ_ESIZE: return "region smaller than its header says";
    case SHMQ_ETOOBIG: return "message does not fit in a lane";
    case SHMQ_ECLAIMED: return "message claimed; it needs its own buffer";
    case SHMQ_EPARTICIPANTS: return "participant table full (too many open handles)";
    case SHMQ_ENAMESPACE: return "region made in another pid namespace";
    case SHMQ_ESYS: return "system call failed";
    case SHMQ_ELOG: return "the log could not be written";
    case SHMQ_ELOGSIZE: return "record larger than a log segment";
    case SHMQ_ELOGFORMAT: return "not a shmq log file of this format version";
    case SHMQ_EDUPLICATE: return "a pending job holds this unique key";
    case SHMQ_EJOBSFULL: return "the table of running and scheduled jobs is full";
    case SHMQ_EUNIQUEFULL: return "the unique-key table is full";
    case SHMQ_ELEASE: return "the job's lease was lost (it expired, or the job was taken back)";
    case SHMQ_ENOLOG: return "jobs need a log (the queue has durability none)";
    case SHMQ_ELOGFULL: return "the log holds max_log_bytes";
    case SHMQ_EUNTRUSTED: return "owned by another user, or open to group/others: refused";
    case SHMQ_ECANCELLED: return "the job was cancelled while it ran: it ended cancelled";
    case SHMQ_ECANCELFULL: return "too many cancelled jobs are still waiting in the lanes";
    case SHMQ_ELOCKED: return "held by a live process that makes no progress (stopped?)";
    case SHMQ_EADMITFULL: return "an admission table (paused tasks, concurrency seats, rate keys) is full";
    case SHMQ_ENOTDURABLE: return "accepted, but not yet durable (the wait for the flush was cut short)";
    default: return "unknown status";
    }
}

static int is_power_of_two(uint64_t v) { return v && !(v & (v - 1)); }

/* The first parameter out of range, by name (NULL: all are valid). The
 * bounds keep every size computed from them far from overflowing 64 bits. */
static const char *params_invalid(const shmq_params *p)
{
    if (p->lane_count < 1 || p->lane_count > 1024)
        return "lane_count (1 .. 1024)";
    if (!is_power_of_two(p->slots_per_lane) || p->slots_per_lane < 2 || p->slots_per_lane > (1u << 30))
        return "slots_per_lane (a power of two, 2 .. 2^30)";
    if (p->slot_bytes < 16 || p->slot_bytes > 65536 || p->slot_bytes % 16)
        return "slot_bytes (a multiple of 16, 16 .. 65536)";
    if (p->participant_capacity < 2 || p->participant_capacity > SHMQ_MAX_PARTICIPANTS + 1)
        return "participant_capacity (2 .. 8192)";
    if (p->max_message_bytes < 1 || p->max_message_bytes > (1ull << 40))
        return "max_message_bytes (1 .. 2^40)";
    if (p->durability > SHMQ_DURABILITY_SYNC)
        return "durability (0 .. 4)";
    if (p->durability != SHMQ_DURABILITY_NONE &&
        !(p->segment_bytes >= 8192 && p->segment_bytes % 4096 == 0 && p->segment_bytes <= (1ull << 40) &&
          p->max_message_bytes + SHMQ_ENQUEUE_OVERHEAD <= p->segment_bytes))
        return "segment_bytes (a multiple of 4096, 8192 .. 2^40, above max_message_bytes + 80)";
    if (p->ordered_lanes >= p->lane_count)
        return "ordered_lanes (below lane_count)";
    if (p->job_slots == 0) {
        if (p->ordered_lanes || p->unique_slots || p->result_slots || p->result_bytes)
            return "job_slots (0, yet ordered lanes, unique keys or results are set)";
    } else {
        if (p->durability == SHMQ_DURABILITY_NONE || p->job_slots > (1u << 20))
            return "job_slots (1 .. 2^20, with a log)";
        if (!is_power_of_two(p->unique_slots) || p->unique_slots < 2 || p->unique_slots > (1u << 24))
            return "unique_slots (a power of two, 2 .. 2^24)";
        if (p->result_slots > (1u << 24) || p->result_bytes % 64 || p->result_bytes > (1ull << 34) ||
            (p->result_slots == 0) != (p->result_bytes == 0))
            return "result_slots / result_bytes (0 .. 2^24 / a multiple of 64, 0 .. 2^34, both 0 or neither)";
    }
    if (p->throttle_mode > SHMQ_THROTTLE_CLOSED || (!p->job_slots && (p->throttle_mode || p->max_log_bytes)))
        return "throttle_mode (0 .. 2; with job tables only)";
    if (p->throttle_mode == SHMQ_THROTTLE_CLOSED && !(p->throttle_target >= 1 && p->throttle_high > p->throttle_target))
        return "throttle_target / throttle_high (1 <= target < high)";
    return NULL;
}

static int params_valid(const shmq_params *p) { return params_invalid(p) == NULL; }

/* Where the job tables start, and their total size (see "Jobs" in layout.h). */
static uint64_t jobs_bytes(const shmq_params *p)
{
    if (p->job_slots == 0)
        return 0;
    return sizeof(shmq_jobs_header) + sizeof(shmq_lane_metrics) * (uint64_t)p->lane_count +
           sizeof(shmq_job_entry) * (uint64_t)p->job_slots +
           (sizeof(shmq_unique_entry) + sizeof(shmq_unique_change)) * (uint64_t)p->unique_slots +
           sizeof(shmq_result_entry) * (uint64_t)p->result_slots + shmq_align_up(p->result_bytes, SHMQ_CACHE_LINE) +
           sizeof(shmq_task_entry) * SHMQ_TASK_SLOTS + SHMQ_ADMISSION_BYTES;
}

static uint64_t lanes_offset_for(uint32_t participant_capacity)
{
    return shmq_align_up(SHMQ_PARTICIPANTS_OFFSET + sizeof(shmq_participant) * (uint64_t)participant_capacity,
                         SHMQ_CACHE_LINE);
}

static uint64_t jobs_offset_for(const shmq_params *p)
{
    return shmq_align_up(lanes_offset_for(p->participant_capacity) +
                             (uint64_t)p->lane_count * shmq_lane_bytes(p->slots_per_lane, p->slot_bytes),
                         SHMQ_CACHE_LINE);
}

uint64_t shmq_region_size(const shmq_params *p)
{
    if (!params_valid(p))
        return 0;
    return jobs_offset_for(p) + jobs_bytes(p);
}

/* The trust rule (README "Safety"): what a queue uses belongs to this
 * effective uid and is closed to everyone else, so no other local user can
 * have made it, read it or change it. Checked on the descriptor (fstat), so
 * the object checked is the object used. */
int shmq_fd_trusted(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return SHMQ_ESYS;
    if (st.st_uid != geteuid())
        return SHMQ_EUNTRUSTED;
    mode_t closed = S_ISDIR(st.st_mode) ? (S_IWGRP | S_IWOTH) : (S_IRWXG | S_IRWXO);
    return (st.st_mode & closed) ? SHMQ_EUNTRUSTED : SHMQ_OK;
}

int shmq_map(int fd, uint64_t size, void **base /* OUT */)
{
    int trusted = shmq_fd_trusted(fd);
    if (trusted != SHMQ_OK)
        return trusted;
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED)
        return SHMQ_ESYS;
    *base = mem;
    return SHMQ_OK;
}

int shmq_unmap(void *base, uint64_t size) { return munmap(base, size) == 0 ? SHMQ_OK : SHMQ_ESYS; }

/* `base` must be zero-filled (a fresh ftruncate'd object is): zero is a valid
 * empty lane, so only the header is written. */
int shmq_region_init(void *base, uint64_t size, const shmq_params *p)
{
    uint64_t needed = shmq_region_size(p);
    if (needed == 0)
        return SHMQ_EINVAL;
    if (size < needed)
        return SHMQ_ESIZE;
    shmq_region_header *hdr = base;
    hdr->layout_version = SHMQ_LAYOUT_VERSION;
    hdr->header_bytes = (uint32_t)sizeof(shmq_region_header);
    hdr->region_bytes = needed;
    hdr->lane_count = p->lane_count;
    hdr->slots_per_lane = p->slots_per_lane;
    hdr->slot_bytes = p->slot_bytes;
    hdr->codec_id = p->codec_id;
    hdr->max_message_bytes = p->max_message_bytes;
    hdr->lane_bytes = shmq_lane_bytes(p->slots_per_lane, p->slot_bytes);
    hdr->lanes_offset = lanes_offset_for(p->participant_capacity);
    hdr->participant_capacity = p->participant_capacity;
    hdr->creator_pid = (uint32_t)getpid();
    hdr->pid_namespace = shmq_pid_namespace();
    hdr->durability = p->durability;
    hdr->segment_bytes = p->durability == SHMQ_DURABILITY_NONE ? 0 : p->segment_bytes;
    hdr->flush_interval_ns = p->flush_interval_ns;
    hdr->flush_bytes = p->flush_bytes;
    hdr->jobs_offset = p->job_slots ? jobs_offset_for(p) : 0;
    hdr->job_slots = p->job_slots;
    hdr->unique_slots = p->unique_slots;
    hdr->result_slots = p->result_slots;
    hdr->result_bytes = p->result_bytes;
    hdr->ordered_lanes = p->ordered_lanes;
    hdr->result_ttl_ns = p->result_ttl_ns;
    if (p->job_slots) {
        shmq_jobs_header *jh = (shmq_jobs_header *)((uint8_t *)base + hdr->jobs_offset);
        /* relaxed: published with the header by the magic's release store. */
        atomic_store_explicit(&jh->next_due_ns, INT64_MAX, memory_order_relaxed);
        jh->throttle_mode = p->throttle_mode;
        jh->max_log_bytes = p->max_log_bytes;
        jh->throttle_target = p->throttle_target;
        jh->throttle_high = p->throttle_high;
    }

    long nth = 0;
    if (shmq_fault_parse(getenv("SHMQ_FAULT"), &nth) == SHMQ_FAULT_INIT_BEFORE_MAGIC)
        shmq_fault_hit(&(shmq_handle){.fault_point = SHMQ_FAULT_INIT_BEFORE_MAGIC, .fault_countdown = 1});

    /* release: publishes every header field above; pairs with the acquire
     * load in shmq_region_read. A reader that sees the magic sees a whole header. */
    atomic_store_explicit(&hdr->magic, (uint64_t)SHMQ_MAGIC, memory_order_release);
    return SHMQ_OK;
}

#define PROBLEM(...) (text ? snprintf(text, capacity, __VA_ARGS__) : 0)

/* Compares a header field with the value its parameters give. */
#define EXPECT_FIELD(field, expected)                                                                   \
    do {                                                                                                \
        uint64_t want_ = (expected);                                                                    \
        if ((uint64_t)hdr->field != want_) {                                                            \
            PROBLEM("header field " #field " is %llu, but its parameters give %llu",                   \
                    (unsigned long long)hdr->field, (unsigned long long)want_);                          \
            return SHMQ_ENOTSHMQ;                                                                       \
        }                                                                                               \
    } while (0)

/* Checks a region before anything past its header is touched: magic,
 * version, every parameter's range, then every offset and size recomputed
 * from the parameters and compared with the header, then the object's size;
 * only then the parameters kept in the job tables. A header that a stray
 * write changed is refused here rather than followed out of the mapping.
 * `text` (may be NULL) gets what was wrong. */
static int region_check(const void *base, uint64_t size, shmq_params *out, uint32_t *layout_version, char *text,
                        uint32_t capacity)
{
    if (text && capacity)
        text[0] = '\0';
    *layout_version = 0;
    if (size < SHMQ_HEADER_BYTES) {
        PROBLEM("the region is %llu bytes, smaller than its %llu-byte header", (unsigned long long)size,
                (unsigned long long)SHMQ_HEADER_BYTES);
        return size == 0 ? SHMQ_EUNINIT : SHMQ_ESIZE;
    }
    const shmq_region_header *hdr = base;
    /* acquire: pairs with the release store of the magic in shmq_region_init. */
    uint64_t magic = atomic_load_explicit((_Atomic uint64_t *)&hdr->magic, memory_order_acquire);
    *layout_version = hdr->layout_version;
    if (magic == 0) {
        PROBLEM("the magic number is 0 (its creator never finished, or the header was overwritten)");
        return SHMQ_EUNINIT;
    }
    if (magic != (uint64_t)SHMQ_MAGIC) {
        PROBLEM("the magic number is 0x%016llx, not 0x%016llx", (unsigned long long)magic,
                (unsigned long long)SHMQ_MAGIC);
        return SHMQ_ENOTSHMQ;
    }
    if (hdr->layout_version != SHMQ_LAYOUT_VERSION) {
        PROBLEM("layout version %u, not %u", hdr->layout_version, (unsigned)SHMQ_LAYOUT_VERSION);
        return SHMQ_EVERSION;
    }
    EXPECT_FIELD(header_bytes, SHMQ_HEADER_BYTES);
    *out = (shmq_params){
        .lane_count = hdr->lane_count,
        .slots_per_lane = hdr->slots_per_lane,
        .slot_bytes = hdr->slot_bytes,
        .codec_id = hdr->codec_id,
        .max_message_bytes = hdr->max_message_bytes,
        .participant_capacity = hdr->participant_capacity,
        .durability = hdr->durability,
        .segment_bytes = hdr->segment_bytes,
        .flush_interval_ns = hdr->flush_interval_ns,
        .flush_bytes = hdr->flush_bytes,
        .ordered_lanes = hdr->ordered_lanes,
        .job_slots = hdr->job_slots,
        .unique_slots = hdr->unique_slots,
        .result_slots = hdr->result_slots,
        .result_bytes = hdr->result_bytes,
        .result_ttl_ns = hdr->result_ttl_ns,
    };
    const char *bad = params_invalid(out);
    if (bad) {
        PROBLEM("header parameter out of range: %s", bad);
        return SHMQ_ENOTSHMQ;
    }
    if (out->durability == SHMQ_DURABILITY_NONE)
        EXPECT_FIELD(segment_bytes, 0);
    EXPECT_FIELD(lanes_offset, lanes_offset_for(out->participant_capacity));
    EXPECT_FIELD(lane_bytes, shmq_lane_bytes(out->slots_per_lane, out->slot_bytes));
    EXPECT_FIELD(jobs_offset, out->job_slots ? jobs_offset_for(out) : 0);
    EXPECT_FIELD(region_bytes, jobs_offset_for(out) + jobs_bytes(out));
    if (size < hdr->region_bytes) {
        PROBLEM("the region object is %llu bytes, but its header needs %llu", (unsigned long long)size,
                (unsigned long long)hdr->region_bytes);
        return SHMQ_ESIZE;
    }
    if (out->job_slots) { /* jobs_offset was checked above, and lies inside the object */
        const shmq_jobs_header *jh = (const shmq_jobs_header *)((const uint8_t *)base + hdr->jobs_offset);
        out->throttle_mode = jh->throttle_mode;
        out->max_log_bytes = jh->max_log_bytes;
        out->throttle_target = jh->throttle_target;
        out->throttle_high = jh->throttle_high;
        if ((bad = params_invalid(out)) != NULL) {
            PROBLEM("job table parameter out of range: %s", bad);
            return SHMQ_ENOTSHMQ;
        }
    }
    return SHMQ_OK;
}

int shmq_region_read(const void *base, uint64_t size, shmq_params *out /* OUT */,
                     uint32_t *layout_version /* OUT */)
{
    return region_check(base, size, out, layout_version, NULL, 0);
}

int shmq_region_problem(const void *base, uint64_t size, char *text /* OUT */, uint32_t capacity)
{
    shmq_params params;
    uint32_t version;
    return region_check(base, size, &params, &version, text, capacity);
}

static uint32_t log2_u64(uint64_t v)
{
    uint32_t shift = 0;
    while ((1ull << shift) < v)
        shift++;
    return shift;
}

/* A handle on the region at `base`, not registered yet (queue.c registers
 * it once the layers above have set their callbacks on it). */
int shmq_handle_make(void *base, uint64_t size, shmq_handle **out /* OUT */)
{
    shmq_params p;
    uint32_t version;
    int rc = shmq_region_read(base, size, &p, &version);
    if (rc != SHMQ_OK)
        return rc;
    shmq_region_header *hdr = base;
    uint64_t ns = shmq_pid_namespace();
    if (hdr->pid_namespace && ns && hdr->pid_namespace != ns)
        return SHMQ_ENAMESPACE;

    shmq_handle *h = calloc(1, sizeof *h);
    if (!h)
        return SHMQ_ESYS;
    h->base = base;
    h->size = size;
    h->header = hdr;
    h->participants = (shmq_participant *)((uint8_t *)base + SHMQ_PARTICIPANTS_OFFSET);
    /* From the checked parameters, never read again from the header: a stray
     * write there later must not move this process's view of the region. */
    h->participant_capacity = p.participant_capacity;
    h->lanes_offset = lanes_offset_for(p.participant_capacity);
    h->lane_bytes = shmq_lane_bytes(p.slots_per_lane, p.slot_bytes);
    h->data_offset = shmq_lane_data_offset(p.slots_per_lane);
    h->ring_bytes = (uint64_t)p.slots_per_lane * p.slot_bytes;
    h->slot_mask = p.slots_per_lane - 1u;
    h->slot_shift = log2_u64(p.slots_per_lane);
    h->slot_bytes = p.slot_bytes;
    h->lane_count = p.lane_count;
    h->unordered_lanes = p.lane_count - p.ordered_lanes;
    if (p.job_slots) {
        uint8_t *at = (uint8_t *)base + jobs_offset_for(&p);
        h->jobs = (shmq_jobs_header *)at;
        at += sizeof(shmq_jobs_header);
        h->metrics = (shmq_lane_metrics *)at;
        at += sizeof(shmq_lane_metrics) * (uint64_t)p.lane_count;
        h->entries = (shmq_job_entry *)at;
        at += sizeof(shmq_job_entry) * (uint64_t)p.job_slots;
        h->unique = (shmq_unique_entry *)at;
        at += sizeof(shmq_unique_entry) * (uint64_t)p.unique_slots;
        h->unique_changes = (shmq_unique_change *)at;
        at += sizeof(shmq_unique_change) * (uint64_t)p.unique_slots;
        h->results = (shmq_result_entry *)at;
        at += sizeof(shmq_result_entry) * (uint64_t)p.result_slots;
        h->arena = at;
        at += shmq_align_up(p.result_bytes, SHMQ_CACHE_LINE);
        h->tasks = (shmq_task_entry *)at;
        at += sizeof(shmq_task_entry) * SHMQ_TASK_SLOTS;
        h->admission = (shmq_admission_header *)at;
        at += sizeof(shmq_admission_header);
        h->pauses = (shmq_pause_entry *)at;
        at += sizeof(shmq_pause_entry) * (uint64_t)SHMQ_PAUSE_SLOTS;
        h->seats = (_Atomic uint64_t *)at;
        at += 8u * (uint64_t)SHMQ_SEAT_SLOTS;
        h->rates = (shmq_rate_entry *)at;
        h->job_slots = p.job_slots;
        h->unique_slots = p.unique_slots;
        h->result_slots = p.result_slots;
        h->result_bytes = p.result_bytes;
    }
    /* Half a lane at most, so one message never starves every other producer. */
    h->max_span = p.slots_per_lane / 2 < SHMQ_MAX_SPAN ? p.slots_per_lane / 2 : SHMQ_MAX_SPAN;
    if (h->max_span == 0)
        h->max_span = 1;
    long nth = 1;
    h->fault_point = shmq_fault_parse(getenv("SHMQ_FAULT"), &nth);
    h->fault_countdown = nth;
    atomic_store_explicit(&h->push_cursor, (uint32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&h->pop_cursor, (uint32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&h->idle_since_ns, 1, memory_order_relaxed); /* idle since ever (admission.c) */

    *out = h;
    return SHMQ_OK;
}

uint32_t shmq_inline_max(const shmq_handle *h)
{
    uint64_t bytes = (uint64_t)h->max_span * h->slot_bytes - SHMQ_MSG_HEADER_BYTES;
    return bytes > UINT32_MAX ? UINT32_MAX : (uint32_t)bytes;
}

uint32_t shmq_participant_index(const shmq_handle *h) { return h->self; }
