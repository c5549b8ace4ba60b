/* SPDX-License-Identifier: Apache-2.0 */
/* main.c -- runs each test in a forked child, so a failed CHECK (or a
 * sanitizer report, or a hang) fails that test alone and the rest still run.
 * Usage: shmq_tests [substring ...]  (only the tests whose name matches). */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests.h"

/* A deadlocked test is killed rather than hanging the run. */
enum { TEST_TIMEOUT_S = 30 };

static const struct {
    const char *name;
    void (*run)(void);
} tests[] = {
#define X(name) {#name, test_##name},
    SHMQ_TESTS(X)
#undef X
};

static int selected(const char *name, int argc, char **argv)
{
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i]))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (!selected(tests[i].name, argc, argv))
            continue;
        fflush(NULL);
        int64_t start = now_ns();
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            alarm(TEST_TIMEOUT_S);
            tests[i].run();
            fflush(NULL);
            exit(0);
        }
        int status = 0;
        while (waitpid(pid, &status, 0) < 0)
            ;
        temp_dirs_sweep(pid);
        double seconds = (double)(now_ns() - start) / 1e9;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            printf("PASS %-28s %6.2f s\n", tests[i].name, seconds);
            passed++;
        } else {
            if (WIFSIGNALED(status))
                printf("FAIL %-28s %6.2f s  killed by signal %d%s\n", tests[i].name, seconds, WTERMSIG(status),
                       WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
            else
                printf("FAIL %-28s %6.2f s  exit status %d%s\n", tests[i].name, seconds, WEXITSTATUS(status),
                       WEXITSTATUS(status) == 66 ? " (sanitizer report)" : "");
            failed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
