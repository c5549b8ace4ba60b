/* SPDX-License-Identifier: Apache-2.0 */
/* CRC-32C: published check values, chaining across calls, and the
 * instruction path against the table path against a bit-at-a-time
 * reference. */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>

#include "crc32c.h"
#include "harness.h"
#include "tests.h"

/* Prints both values in hex, the way CRCs are published. */
#define CHECK_CRC(actual, expected)                                                                       \
    do {                                                                                                  \
        uint32_t check_a_ = (actual), check_e_ = (expected);                                              \
        if (check_a_ != check_e_)                                                                         \
            test_fail(__FILE__, __LINE__, "%s = 0x%08X, expected 0x%08X", #actual, (unsigned)check_a_,    \
                      (unsigned)check_e_);                                                                \
    } while (0)

/* The definition itself, one bit at a time: slow but with no tables to get
 * wrong. */
static uint32_t crc32c_bitwise(uint32_t crc, const uint8_t *p, size_t length)
{
    crc = ~crc;
    for (size_t i = 0; i < length; i++) {
        crc ^= p[i];
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void fill_random(uint8_t *dst, size_t length, uint64_t *rng)
{
    for (size_t i = 0; i < length; i += 8) {
        uint64_t word = rng_next(rng);
        memcpy(dst + i, &word, length - i < 8 ? length - i : 8);
    }
}

/* `length` random bytes at `offset` into a fresh allocation that ends right
 * after them, so ASan catches any read past the end. *block is to be freed. */
static uint8_t *random_buffer(size_t offset, size_t length, uint64_t *rng, uint8_t **block)
{
    *block = malloc(offset + length + 1);
    CHECK(*block != NULL);
    uint8_t *data = *block + 1 + offset;
    fill_random(*block, offset + length + 1, rng);
    return data;
}

static void check_value(const void *data, size_t length, uint32_t expected)
{
    CHECK_CRC(shmq_crc32c(0, data, length), expected);
    CHECK_CRC(shmq_crc32c_table(0, data, length), expected);
    CHECK_CRC(crc32c_bitwise(0, data, length), expected);
}

void test_crc32c_check_values(void)
{
    /* The catalogued check value of CRC-32/ISCSI. */
    check_value("123456789", 9, 0xE3069283);

    /* Nothing to add: 0 from the start, and any crc is left as it is. */
    check_value("", 0, 0);
    CHECK_CRC(shmq_crc32c(0, NULL, 0), 0);
    CHECK_CRC(shmq_crc32c_table(0, NULL, 0), 0);
    CHECK_CRC(shmq_crc32c(0xE3069283, NULL, 0), 0xE3069283);
    CHECK_CRC(shmq_crc32c_table(0xE3069283, NULL, 0), 0xE3069283);

    /* RFC 3720 (iSCSI), B.4. */
    uint8_t buf[32];
    memset(buf, 0x00, sizeof buf);
    check_value(buf, sizeof buf, 0x8A9136AA);
    memset(buf, 0xFF, sizeof buf);
    check_value(buf, sizeof buf, 0x62A8AB43);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    check_value(buf, sizeof buf, 0x46DD794E);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    check_value(buf, sizeof buf, 0x113FDB5C);
}

/* Every length up to a few words (each tail of the 8-byte loops) at every
 * alignment, then longer ones, against the bit-at-a-time definition. */
void test_crc32c_reference(void)
{
    uint64_t rng = 0xC0FFEE;
    for (size_t length = 0; length <= 40; length++) {
        for (size_t offset = 0; offset < 8; offset++) {
            uint8_t *block, *data = random_buffer(offset, length, &rng, &block);
            uint32_t seed = rng_below(&rng, 2) ? (uint32_t)rng_next(&rng) : 0;
            uint32_t want = crc32c_bitwise(seed, data, length);
            CHECK_CRC(shmq_crc32c_table(seed, data, length), want);
            CHECK_CRC(shmq_crc32c(seed, data, length), want);
            free(block);
        }
    }
    for (int round = 0; round < 300; round++) {
        size_t offset = rng_below(&rng, 64), length = rng_below(&rng, 4097);
        uint8_t *block, *data = random_buffer(offset, length, &rng, &block);
        uint32_t seed = (uint32_t)rng_next(&rng);
        uint32_t want = crc32c_bitwise(seed, data, length);
        CHECK_CRC(shmq_crc32c_table(seed, data, length), want);
        CHECK_CRC(shmq_crc32c(seed, data, length), want);
        free(block);
    }
}

/* One buffer cut at random points: feeding the pieces in turn, each call
 * continuing from the last result, gives the one-shot CRC, on either path
 * and when the paths alternate. */
void test_crc32c_chaining(void)
{
    enum { MAX_LENGTH = 2048, MAX_PIECES = 8 };
    static uint8_t data[MAX_LENGTH];
    uint64_t rng = 0xC4A1;
    for (int round = 0; round < 2000; round++) {
        size_t length = rng_below(&rng, MAX_LENGTH + 1);
        fill_random(data, length, &rng);
        uint32_t whole = shmq_crc32c_table(0, data, length);
        CHECK_CRC(shmq_crc32c(0, data, length), whole);

        /* Sorted cut points, repeats allowed: empty pieces are pieces too. */
        size_t cuts[MAX_PIECES + 1];
        uint32_t pieces = 1 + rng_below(&rng, MAX_PIECES);
        cuts[0] = 0;
        cuts[pieces] = length;
        for (uint32_t i = 1; i < pieces; i++)
            cuts[i] = rng_below(&rng, (uint32_t)length + 1);
        for (uint32_t i = 1; i < pieces; i++)
            for (uint32_t j = i; j > 1 && cuts[j - 1] > cuts[j]; j--) {
                size_t t = cuts[j];
                cuts[j] = cuts[j - 1];
                cuts[j - 1] = t;
            }

        uint32_t fast = 0, table = 0, mixed = 0;
        for (uint32_t i = 0; i < pieces; i++) {
            const uint8_t *piece = data + cuts[i];
            size_t n = cuts[i + 1] - cuts[i];
            fast = shmq_crc32c(fast, piece, n);
            table = shmq_crc32c_table(table, piece, n);
            mixed = (i & 1) ? shmq_crc32c(mixed, piece, n) : shmq_crc32c_table(mixed, piece, n);
        }
        CHECK_CRC(fast, whole);
        CHECK_CRC(table, whole);
        CHECK_CRC(mixed, whole);
    }
}

/* Where the CPU has a CRC-32C instruction shmq_crc32c uses it; it must agree
 * with the tables on every length and alignment. */
void test_crc32c_paths_agree(void)
{
    uint64_t rng = 0xA11C;
    for (int round = 0; round < 10000; round++) {
        size_t offset = rng_below(&rng, 64), length = rng_below(&rng, 4097);
        uint8_t *block, *data = random_buffer(offset, length, &rng, &block);
        uint32_t seed = rng_below(&rng, 2) ? (uint32_t)rng_next(&rng) : 0;
        uint32_t fast = shmq_crc32c(seed, data, length), table = shmq_crc32c_table(seed, data, length);
        if (fast != table)
            test_fail(__FILE__, __LINE__, "round %d, length %zu at offset %zu, crc 0x%08X: 0x%08X != table 0x%08X",
                      round, length, offset, (unsigned)seed, (unsigned)fast, (unsigned)table);
        free(block);
    }
}

/* Threads whose first calls race on the one-time choice of implementation
 * (the runner forks each test, so the choice has not been made yet). */
enum { CRC_THREADS = 8 };

static pthread_barrier_t crc_start;

static void *crc_thread_main(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&crc_start);
    for (int i = 0; i < 100; i++)
        CHECK_CRC(shmq_crc32c(0, "123456789", 9), 0xE3069283);
    return NULL;
}

void test_crc32c_threads(void)
{
    pthread_t threads[CRC_THREADS];
    CHECK_EQ(pthread_barrier_init(&crc_start, NULL, CRC_THREADS), 0);
    for (int i = 0; i < CRC_THREADS; i++)
        CHECK_EQ(pthread_create(&threads[i], NULL, crc_thread_main, NULL), 0);
    for (int i = 0; i < CRC_THREADS; i++)
        CHECK_EQ(pthread_join(threads[i], NULL), 0);
    pthread_barrier_destroy(&crc_start);
}
