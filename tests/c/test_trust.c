/* SPDX-License-Identifier: Apache-2.0 */
/* test_trust.c -- the core uses only what belongs to this user and is closed
 * to others (shmq_fd_trusted), and never opens a log file through a link. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "tests.h"

static void path_in(char *out, size_t size, const char *dir, const char *name)
{
    snprintf(out, size, "%s/%s", dir, name);
}

/* A file of the user's own that nothing may change. */
static int victim_create(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, "the victim's own data\n", 22), 22);
    return fd;
}

static void victim_unchanged(int fd)
{
    char text[64] = {0};
    CHECK_EQ(pread(fd, text, sizeof text, 0), 22);
    CHECK(memcmp(text, "the victim's own data\n", 22) == 0);
}

void test_trust_fd_checks(void)
{
    char *dir = temp_dir_create();
    char path[256];
    path_in(path, sizeof path, dir, "object");
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK_EQ(ftruncate(fd, 4096), 0);
    CHECK_RC(shmq_fd_trusted(fd), SHMQ_OK);
    static const mode_t open_modes[] = {0640, 0604, 0660, 0666, 0601};
    void *base = NULL;
    for (size_t i = 0; i < sizeof open_modes / sizeof open_modes[0]; i++) {
        CHECK_EQ(fchmod(fd, open_modes[i]), 0);
        CHECK_RC(shmq_fd_trusted(fd), SHMQ_EUNTRUSTED);
        CHECK_RC(shmq_map(fd, 4096, &base), SHMQ_EUNTRUSTED); /* refused before it is mapped */
    }
    CHECK_EQ(fchmod(fd, 0600), 0);
    CHECK_RC(shmq_map(fd, 4096, &base), SHMQ_OK);
    CHECK_RC(shmq_unmap(base, 4096), SHMQ_OK);
    if (geteuid() == 0) { /* root too refuses what another user owns */
        CHECK_EQ(fchown(fd, 12345, (gid_t)-1), 0);
        CHECK_RC(shmq_fd_trusted(fd), SHMQ_EUNTRUSTED);
        CHECK_RC(shmq_map(fd, 4096, &base), SHMQ_EUNTRUSTED);
    }
    close(fd);

    /* Directories: others may read and enter, never write. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(dfd >= 0);
    CHECK_RC(shmq_fd_trusted(dfd), SHMQ_OK);
    CHECK_EQ(fchmod(dfd, 0755), 0);
    CHECK_RC(shmq_fd_trusted(dfd), SHMQ_OK);
    CHECK_EQ(fchmod(dfd, 0770), 0);
    CHECK_RC(shmq_fd_trusted(dfd), SHMQ_EUNTRUSTED);
    CHECK_EQ(fchmod(dfd, 01777), 0);
    CHECK_RC(shmq_fd_trusted(dfd), SHMQ_EUNTRUSTED);
    CHECK_EQ(fchmod(dfd, 0700), 0);
    close(dfd);
    temp_dir_remove(dir);
}

void test_trust_log_files(void)
{
    char *dir = temp_dir_create();
    char *elsewhere = temp_dir_create();
    char victim[256], link[256];
    path_in(victim, sizeof victim, elsewhere, "important.txt");
    int vfd = victim_create(victim);
    shmq_params p = logged_params(1, 64, 64, SHMQ_DURABILITY_OS, 64 * 1024);
    test_region r = region_create_with(&p);
    shmq_handle *h = region_attach(&r);

    /* A log directory others may write is refused, and so is a link to one. */
    CHECK_EQ(chmod(dir, 0777), 0);
    CHECK_RC(shmq_log_open(h, dir), SHMQ_EUNTRUSTED);
    CHECK_EQ(chmod(dir, 0700), 0);
    path_in(link, sizeof link, elsewhere, "log-link");
    CHECK_EQ(symlink(dir, link), 0);
    CHECK_RC(shmq_log_open(h, link), SHMQ_ELOG);
    CHECK(errno == ENOTDIR || errno == ELOOP); /* O_DIRECTORY | O_NOFOLLOW on a link */

    /* A segment that is a link is never opened through it. */
    path_in(link, sizeof link, dir, "0000000000000000.seg");
    CHECK_EQ(symlink(victim, link), 0);
    CHECK_RC(shmq_log_open(h, dir), SHMQ_OK);
    shmq_recovery rep;
    CHECK_RC(shmq_log_recover(h, &rep), SHMQ_ELOG);
    CHECK_EQ(errno, ELOOP);
    victim_unchanged(vfd);
    CHECK_EQ(unlink(link), 0);
    shmq_detach(h);
    region_destroy(&r);

    /* The snapshot's temporary file is made anew, never written through a link. */
    r = region_create_with(&p);
    h = logged_attach(&r, dir);
    CHECK_RC(shmq_log_recover(h, &rep), SHMQ_OK);
    CHECK_RC(shmq_push(h, -1, 0, 0, "kept", 4, NULL, 0, 0), SHMQ_OK);
    path_in(link, sizeof link, dir, "snapshot.tmp");
    CHECK_EQ(symlink(victim, link), 0);
    CHECK_RC(shmq_log_snapshot(h), SHMQ_OK);
    victim_unchanged(vfd);
    struct stat st;
    path_in(link, sizeof link, dir, "snapshot");
    CHECK_EQ(lstat(link, &st), 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0600);
    shmq_detach(h);
    region_destroy(&r);
    close(vfd);
    temp_dir_remove(dir);
    temp_dir_remove(elsewhere);
}
