/* SPDX-License-Identifier: Apache-2.0 */
/* crc32c.h -- CRC-32C (Castagnoli), the checksum of iSCSI, SCTP and ext4:
 * reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF. */
#ifndef SHMQ_CRC32C_H
#define SHMQ_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C of `length` bytes at `data` (which may be NULL when `length` is 0).
 * Pass crc = 0 to start and a previous result to continue:
 * shmq_crc32c(shmq_crc32c(0, a, n), b, m) is the CRC of a followed by b.
 * Uses the CPU's CRC-32C instruction where there is one. Thread-safe. */
uint32_t shmq_crc32c(uint32_t crc, const void *data, size_t length);

/* The same result from lookup tables alone, on any CPU: the portable path,
 * exposed so tests can check it against the instruction. */
uint32_t shmq_crc32c_table(uint32_t crc, const void *data, size_t length);

#endif /* SHMQ_CRC32C_H */
