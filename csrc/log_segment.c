/* SPDX-License-Identifier: Apache-2.0 */
/* log_segment.c -- the log's segment files: names, headers, making one
 * (its first blocks allocated before it is used) and growing it ahead of
 * the writers, mapping it per process (a slot per segment,
 * unmapped once no thread of the process is inside the log code), and the
 * record at a position. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"

/* ------------------------------------------------------------ segments */

/* Named by their first position, not their index: a log recovered with
 * another segment size continues past every old position, so names never
 * collide across sizes. */
void shmq_segment_name(char *out, size_t size, uint64_t base)
{
    snprintf(out, size, "%016llx.seg", (unsigned long long)base);
}

/* Reserves the first `bytes` of a new, private file (not linked yet):
 * no block is missing when the mapping is written there (a full disk then
 * fails here, not with SIGBUS later). Durable modes zero-fill it: writes
 * into written blocks need no journal commit at flush time (about 1.6x
 * faster fdatasync); dropping the cached pages afterwards keeps one store
 * from dirtying a large cached folio. */
static int make_whole(int fd, uint64_t bytes, uint32_t durability)
{
    if (durability < SHMQ_DURABILITY_INTERVAL)
        return posix_fallocate(fd, 0, (off_t)bytes);
    static const uint8_t zeros[1 << 20];
    for (uint64_t at = 0; at < bytes;) {
        size_t n = bytes - at < sizeof zeros ? (size_t)(bytes - at) : sizeof zeros;
        ssize_t w = pwrite(fd, zeros, n, (off_t)at);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        at += (uint64_t)w;
    }
    if (fdatasync(fd) != 0)
        return errno;
    posix_fadvise(fd, 0, (off_t)bytes, POSIX_FADV_DONTNEED);
    return 0;
}

/* Writes `bytes` zeros through `fd` (opened O_APPEND: each write lands at
 * the file's end as it is then, whoever else grows the file meanwhile). */
static int append_zeros(int fd, uint64_t bytes)
{
    static const uint8_t zeros[1 << 20];
    while (bytes) {
        size_t n = bytes < sizeof zeros ? (size_t)bytes : sizeof zeros;
        ssize_t w = write(fd, zeros, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : ENOSPC;
        bytes -= (uint64_t)w;
    }
    return 0;
}

/* Grows a live segment file (others may have it mapped and be writing
 * below its end) to at least `to` bytes, its new blocks allocated: no byte
 * below the end is ever written (fallocate allocates without writing;
 * zeros are appended, never written at an offset), so records stay as
 * they are. A failure may leave it grown part of the way: every block
 * below its end is allocated all the same. Returns 0 or an errno. */
static int grow_file(shmq_handle *h, int fd, const char *name, uint64_t to)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return errno;
    uint64_t size = (uint64_t)st.st_size;
    if (size >= to)
        return 0;
    if (h->durability < SHMQ_DURABILITY_INTERVAL) {
        /* fallocate(2), not posix_fallocate: glibc emulates the latter, where
         * a file system has no fallocate, by writing into blocks below the end. */
        int rc;
        while ((rc = fallocate(fd, 0, (off_t)size, (off_t)(to - size))) != 0 && errno == EINTR)
            ;
        if (rc == 0 || errno != EOPNOTSUPP)
            return rc == 0 ? 0 : errno;
    }
    /* Durable modes zero-fill, for the reason make_whole gives. */
    int append = openat(h->log_dirfd, name, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
    if (append < 0)
        return errno;
    int err = append_zeros(append, to - size);
    if (!err && h->durability >= SHMQ_DURABILITY_INTERVAL) {
        err = fdatasync(append) == 0 ? 0 : errno;
        posix_fadvise(append, (off_t)size, (off_t)(to - size), POSIX_FADV_DONTNEED);
    }
    close(append);
    /* Two growers at once append twice: what lies past the whole segment is
     * no position of the log (never mapped, never read): cut it. Nothing
     * makes the file shorter than that, so this never cuts a record. */
    uint64_t whole = SHMQ_SEGMENT_HEADER_BYTES + h->segment_bytes;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size > whole && ftruncate(fd, (off_t)whole) != 0 && !err)
        err = errno;
    return err;
}

int shmq_segment_header_check(const shmq_segment_header *sh, uint64_t magic)
{
    if (sh->magic != magic || sh->header_bytes != SHMQ_SEGMENT_HEADER_BYTES)
        return SHMQ_ELOGFORMAT;
    if (sh->version != SHMQ_LOG_VERSION)
        return SHMQ_ELOGFORMAT;
    if (shmq_crc32c(0, sh, offsetof(shmq_segment_header, crc)) != sh->crc)
        return SHMQ_ELOGFORMAT;
    return SHMQ_OK;
}

void shmq_segment_header_fill(shmq_segment_header *sh, uint64_t magic, uint64_t segment_bytes, uint64_t index,
                              uint64_t base, uint32_t durability)
{
    memset(sh, 0, sizeof *sh);
    sh->magic = magic;
    sh->version = SHMQ_LOG_VERSION;
    sh->header_bytes = SHMQ_SEGMENT_HEADER_BYTES;
    sh->segment_bytes = segment_bytes;
    sh->index = index;
    sh->base = base;
    sh->created_ns = shmq_wall_ns();
    sh->durability = durability;
    sh->crc = shmq_crc32c(0, sh, offsetof(shmq_segment_header, crc));
}

/* Opens segment `index`, creating it if `create` (another process may be
 * creating it at the same moment: the first link() wins, the other uses it).
 * Returns an fd, or -errno. */
static int segment_make(shmq_handle *h, uint64_t index, const char *name);

/* Making a 64 MiB segment takes tens of milliseconds: one process makes it,
 * the others wait (a writer that needs it) or leave it (maintenance making
 * it ahead). The claim names its maker, so a dead maker's claim is taken
 * over, and so is a live maker's that has not finished in SHMQ_STALL_NS
 * (stopped): making is safe twice over (segment_make: a private file, then
 * link(); the first link wins), and the late maker's release finds the claim
 * no longer its own and leaves it. */
static int segment_open(shmq_handle *h, uint64_t index, int create)
{
    char name[32];
    shmq_segment_name(name, sizeof name, index * h->segment_bytes);
    _Atomic uint64_t *claim = &h->header->segment_claim;
    uint64_t mine = ((uint64_t)h->self << 48) | (index + 1);
    shmq_stall_watch watch = {0};
    for (;;) {
        int fd = openat(h->log_dirfd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0 || errno != ENOENT || !create)
            return fd >= 0 ? fd : -errno;
        uint64_t held = 0;
        /* acquire: a previous maker's file is visible to us (also ordered by the file system). */
        int taken = atomic_compare_exchange_strong_explicit(claim, &held, mine, memory_order_acquire,
                                                            memory_order_acquire);
        if (!taken && !shmq_participant_alive(h, (unsigned)(held >> 48))) {
            /* its maker died: free the claim, then try again */
            atomic_compare_exchange_strong_explicit(claim, &held, 0, memory_order_relaxed, memory_order_relaxed);
            continue;
        }
        if (!taken && create == SHMQ_MAKE_AHEAD)
            return -EAGAIN; /* someone is making a segment: ahead-of-need work can wait */
        if (!taken && held != mine && shmq_stalled(&watch, claim, held, 0))
            /* acquire: as above. Its maker is stopped: the claim is ours now. */
            taken = atomic_compare_exchange_strong_explicit(claim, &held, mine, memory_order_acquire,
                                                            memory_order_relaxed);
        if (taken) {
            shmq_fault(h, SHMQ_FAULT_SEGMENT_CLAIMED);
            fd = segment_make(h, index, name);
            uint64_t ours = mine;
            /* release: pairs with the acquire of the next claimer. Fails
             * if a waiter took the claim over while we were stopped. */
            atomic_compare_exchange_strong_explicit(claim, &ours, 0, memory_order_release, memory_order_relaxed);
            return fd;
        }
        struct timespec pause = {0, 200 * 1000};
        nanosleep(&pause, NULL);
    }
}

/* Allocates the rest of segment `index` (if it exists): the segment after
 * it is about to be made. So every segment of the log but the last is
 * whole, and recovery can tell a file cut short (damage) from one the log
 * had not grown yet (the last). */
static int make_predecessor_whole(shmq_handle *h, uint64_t index)
{
    char name[32];
    shmq_segment_name(name, sizeof name, index * h->segment_bytes);
    int fd = openat(h->log_dirfd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 0 : errno; /* deleted by retention: long whole */
    int err = grow_file(h, fd, name, SHMQ_SEGMENT_HEADER_BYTES + h->segment_bytes);
    close(fd);
    return err;
}

/* Creates segment `index` under `name` (the caller holds the claim), its
 * first SHMQ_SEGMENT_CHUNK bytes of records allocated; it grows as the log
 * reaches its end (shmq_segment_cover). */
static int segment_make(shmq_handle *h, uint64_t index, const char *name)
{
    char tmp[64];
    int fd;
    /* The log of this region starts at log_origin; recovery may keep an
     * older, shorter file before it. */
    if (index > 0 && index * h->segment_bytes > h->header->log_origin) {
        int err = make_predecessor_whole(h, index - 1);
        if (err)
            return -err;
    }
    uint64_t first = h->segment_bytes < SHMQ_SEGMENT_CHUNK ? h->segment_bytes : SHMQ_SEGMENT_CHUNK;
    static _Atomic uint32_t counter;
    /* relaxed: only makes the name unique within this process. */
    snprintf(tmp, sizeof tmp, "tmp.%016llx.%d.%u", (unsigned long long)index, (int)getpid(),
             atomic_fetch_add_explicit(&counter, 1, memory_order_relaxed));
    fd = openat(h->log_dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    int err = fchmod(fd, 0600) == 0 ? 0 : errno; /* whatever the umask: owner only */
    if (!err)
        err = make_whole(fd, SHMQ_SEGMENT_HEADER_BYTES + first, h->durability);
    shmq_segment_header sh;
    shmq_segment_header_fill(&sh, SHMQ_SEGMENT_MAGIC, h->segment_bytes, index, index * h->segment_bytes,
                             h->durability);
    if (!err && pwrite(fd, &sh, sizeof sh, 0) != (ssize_t)sizeof sh)
        err = errno ? errno : EIO;
    if (!err && h->durability >= SHMQ_DURABILITY_OS && fdatasync(fd) != 0)
        err = errno;
    if (!err && linkat(h->log_dirfd, tmp, h->log_dirfd, name, 0) != 0) {
        if (errno == EEXIST) { /* someone else made it first: use theirs */
            close(fd);
            fd = openat(h->log_dirfd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
            if (fd < 0)
                err = errno;
        } else {
            err = errno;
        }
    }
    unlinkat(h->log_dirfd, tmp, 0);
    if (err) {
        if (fd >= 0)
            close(fd);
        return -err;
    }
    if (h->durability >= SHMQ_DURABILITY_OS)
        fsync(h->log_dirfd); /* the new name survives a power cut */
    /* relaxed: a high-water mark for maintenance; races only lose to a larger value. */
    uint64_t made = atomic_load_explicit(&h->header->segments_made, memory_order_relaxed);
    while (made < index + 1 &&
           !atomic_compare_exchange_weak_explicit(&h->header->segments_made, &made, index + 1, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
    return fd;
}

/* The mapping of segment `index` in this process (mapped on first use;
 * created first if `create`). NULL with *err = errno on failure. The caller
 * is inside log code (shmq_log_enter). */
uint8_t *shmq_segment_map(shmq_handle *h, uint64_t index, int create, int *err)
{
    shmq_segment_slot *slot = &h->segments[index % SHMQ_SEGMENT_SLOTS];
    /* acquire: pairs with the release store of base below; index and fd were written before it. */
    uint8_t *base = atomic_load_explicit(&slot->base, memory_order_acquire);
    if (base && atomic_load_explicit(&slot->index, memory_order_relaxed) == index)
        return base;
    pthread_mutex_lock(&h->segment_lock);
    /* relaxed: under segment_lock, which orders every change of a slot. */
    base = atomic_load_explicit(&slot->base, memory_order_relaxed);
    if (base && atomic_load_explicit(&slot->index, memory_order_relaxed) == index) {
        pthread_mutex_unlock(&h->segment_lock);
        return base;
    }
    if (base) {
        /* The slot holds another segment: 1024 segments apart, so the older
         * one is long gone unless the log is that long. */
        uint64_t other = atomic_load_explicit(&slot->index, memory_order_relaxed);
        uint64_t log_base = atomic_load_explicit(&h->header->log_base, memory_order_acquire);
        if ((other + 1) * h->segment_bytes > log_base && other + SHMQ_SEGMENT_SLOTS > index) {
            pthread_mutex_unlock(&h->segment_lock);
            *err = EFBIG;
            return NULL;
        }
        shmq_log_retire_slot(h, slot);
    }
    int fd = segment_open(h, index, create);
    if (fd < 0) {
        pthread_mutex_unlock(&h->segment_lock);
        *err = -fd;
        return NULL;
    }
    uint64_t bytes = SHMQ_SEGMENT_HEADER_BYTES + h->segment_bytes;
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < SHMQ_SEGMENT_HEADER_BYTES || shmq_fd_trusted(fd) != SHMQ_OK) {
        /* a file without its header page is no segment; one of another user
         * (or open to others) is never used */
        *err = fstat(fd, &st) != 0 ? errno : (uint64_t)st.st_size < SHMQ_SEGMENT_HEADER_BYTES ? EINVAL : EPERM;
        close(fd);
        pthread_mutex_unlock(&h->segment_lock);
        return NULL;
    }
    /* tmpfs, made ahead of need (maintenance): fault every page in now, off
     * the writers' path (a fault every 4 KiB otherwise). On a disk file the
     * first store faults anyway (the page must be marked dirty), so no.
     * The whole segment is mapped, the file may be shorter: pages past its
     * end are never touched (shmq_segment_cover); MAP_POPULATE skips them. */
    int populate = create == SHMQ_MAKE_AHEAD && h->durability == SHMQ_DURABILITY_MEMORY ? MAP_POPULATE : 0;
    void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | populate, fd, 0);
    if (mem == MAP_FAILED) {
        *err = errno;
        close(fd);
        pthread_mutex_unlock(&h->segment_lock);
        return NULL;
    }
    if (shmq_segment_header_check(mem, SHMQ_SEGMENT_MAGIC) != SHMQ_OK ||
        ((shmq_segment_header *)mem)->index != index ||
        ((shmq_segment_header *)mem)->segment_bytes != h->segment_bytes) {
        munmap(mem, bytes);
        close(fd);
        pthread_mutex_unlock(&h->segment_lock);
        *err = EINVAL;
        return NULL;
    }
    slot->fd = fd;
    /* relaxed: published by the release store of base below. */
    atomic_store_explicit(&slot->bytes, (uint64_t)st.st_size < bytes ? (uint64_t)st.st_size : bytes,
                          memory_order_relaxed);
    atomic_store_explicit(&slot->index, index, memory_order_relaxed);
    /* release: publishes index and fd with the mapping; pairs with the acquire above. */
    atomic_store_explicit(&slot->base, (uint8_t *)mem, memory_order_release);
    pthread_mutex_unlock(&h->segment_lock);
    return mem;
}

/* The slot of mapped segment `index`, or NULL if this process has it
 * mapped no more (retired meanwhile: only far behind the tail). */
static shmq_segment_slot *slot_of(shmq_handle *h, uint64_t index)
{
    shmq_segment_slot *slot = &h->segments[index % SHMQ_SEGMENT_SLOTS];
    /* acquire: pairs with the release store of base in shmq_segment_map. */
    if (!atomic_load_explicit(&slot->base, memory_order_acquire) ||
        atomic_load_explicit(&slot->index, memory_order_relaxed) != index)
        return NULL;
    return slot;
}

/* Makes sure the file of the (mapped) segment holding `position` reaches
 * past [position, position + length), which lies in that segment: pages
 * past a file's end must never be touched (SIGBUS). A writer (`grow`)
 * grows the file before it writes there: to twice the records it holds
 * (at least SHMQ_SEGMENT_CHUNK more), at most the whole segment, so a busy
 * log soon has its segments whole and a small one stays small. A reader
 * only looks at the file's length again (another process may have grown
 * it). Returns 0, or an errno: ENODATA for a reader (not written yet), the
 * file system's (ENOSPC, ...) for a writer, before anything is written. */
int shmq_segment_cover(shmq_handle *h, uint64_t position, uint64_t length, int grow)
{
    uint64_t S = h->segment_bytes, index = position / S;
    uint64_t need = SHMQ_SEGMENT_HEADER_BYTES + position % S + length;
    shmq_segment_slot *slot = slot_of(h, index);
    /* acquire: pairs with the release store below (the file's growth, by
     * this process, happened before). */
    if (slot && atomic_load_explicit(&slot->bytes, memory_order_acquire) >= need)
        return 0;
    pthread_mutex_lock(&h->segment_lock);
    slot = slot_of(h, index);
    if (!slot) {
        pthread_mutex_unlock(&h->segment_lock);
        return ESTALE;
    }
    uint64_t whole = SHMQ_SEGMENT_HEADER_BYTES + S, have = 0;
    struct stat st;
    int err = fstat(slot->fd, &st) == 0 ? 0 : errno;
    if (!err)
        have = (uint64_t)st.st_size < whole ? (uint64_t)st.st_size : whole;
    if (!err && have < need && grow) {
        uint64_t records = have - SHMQ_SEGMENT_HEADER_BYTES;
        uint64_t target = records * 2 > records + SHMQ_SEGMENT_CHUNK ? records * 2 : records + SHMQ_SEGMENT_CHUNK;
        if (target < need - SHMQ_SEGMENT_HEADER_BYTES)
            target = need - SHMQ_SEGMENT_HEADER_BYTES;
        target = (target + SHMQ_SEGMENT_CHUNK - 1) / SHMQ_SEGMENT_CHUNK * SHMQ_SEGMENT_CHUNK;
        char name[32];
        shmq_segment_name(name, sizeof name, index * S);
        err = grow_file(h, slot->fd, name, SHMQ_SEGMENT_HEADER_BYTES + (target < S ? target : S));
        if (fstat(slot->fd, &st) == 0) /* grown, perhaps part of the way */
            have = (uint64_t)st.st_size < whole ? (uint64_t)st.st_size : whole;
    }
    /* release: pairs with the acquire above; only grows. */
    if (have > atomic_load_explicit(&slot->bytes, memory_order_relaxed))
        atomic_store_explicit(&slot->bytes, have, memory_order_release);
    pthread_mutex_unlock(&h->segment_lock);
    if (have >= need)
        return 0;
    return err ? err : grow ? ENOSPC : ENODATA;
}

/* The position where what this process knows of the file of (mapped)
 * segment holding `position` ends; no system call. */
uint64_t shmq_segment_known_end(shmq_handle *h, uint64_t position)
{
    uint64_t S = h->segment_bytes;
    shmq_segment_slot *slot = slot_of(h, position / S);
    /* acquire: as in shmq_segment_cover. */
    uint64_t bytes = slot ? atomic_load_explicit(&slot->bytes, memory_order_acquire) : 0;
    return position / S * S + (bytes > SHMQ_SEGMENT_HEADER_BYTES ? bytes - SHMQ_SEGMENT_HEADER_BYTES : 0);
}

/* Takes a slot's mapping out of use; it is unmapped once no thread is
 * inside (caller holds segment_lock). */
void shmq_log_retire_slot(shmq_handle *h, shmq_segment_slot *slot)
{
    /* seq_cst: see shmq_log_enter. */
    uint8_t *base = atomic_exchange_explicit(&slot->base, NULL, memory_order_seq_cst);
    if (!base)
        return;
    if (h->retired_count == h->retired_capacity) {
        uint32_t capacity = h->retired_capacity ? h->retired_capacity * 2 : 16;
        shmq_retired_map *grown = realloc(h->retired, capacity * sizeof *grown);
        if (!grown) { /* keep it mapped: leaks address space, never a mapping in use */
            close(slot->fd);
            return;
        }
        h->retired = grown;
        h->retired_capacity = capacity;
    }
    h->retired[h->retired_count++] = (shmq_retired_map){base, slot->fd};
}

/* Unmaps retired segments if no other thread of this process is inside
 * (the caller is inside once itself). */
void shmq_log_unmap_retired(shmq_handle *h, uint32_t self_inside)
{
    pthread_mutex_lock(&h->segment_lock);
    /* seq_cst: see shmq_log_enter. */
    if (h->retired_count && atomic_load_explicit(&h->inside, memory_order_seq_cst) == self_inside) {
        for (uint32_t i = 0; i < h->retired_count; i++) {
            munmap(h->retired[i].base, SHMQ_SEGMENT_HEADER_BYTES + h->segment_bytes);
            close(h->retired[i].fd);
        }
        h->retired_count = 0;
    }
    pthread_mutex_unlock(&h->segment_lock);
}

shmq_record_header *shmq_record_at(shmq_handle *h, uint64_t position, int create, int *err)
{
    uint8_t *base = shmq_segment_map(h, position / h->segment_bytes, create, err);
    return base ? (shmq_record_header *)(base + SHMQ_SEGMENT_HEADER_BYTES + position % h->segment_bytes) : NULL;
}
