/* SPDX-License-Identifier: Apache-2.0 */
/* jobs.h -- the job layer: the job table and leases, scheduling and the
 * tick, the ordered lanes' gates, unique keys, results and the throttle.
 * It uses the ring and the log, never the operations (ops.h). */
#ifndef SHMQ_JOBS_H
#define SHMQ_JOBS_H

#include "log.h"
#include "ring.h"

/* jobs.c */
int shmq_jobs_holds(shmq_handle *h, uint64_t job_id);
int shmq_jobs_schedule(shmq_handle *h, const shmq_record_header *rec, uint64_t position);
int shmq_jobs_schedule_new(shmq_handle *h, const shmq_enqueue_args *args, const uint8_t *payload, uint32_t length,
                           uint64_t *job_id);
int shmq_jobs_repair_gate(shmq_handle *h, uint32_t lane);
uint64_t shmq_jobs_low_water(shmq_handle *h, uint64_t low);
uint64_t shmq_jobs_below(const shmq_handle *h, uint64_t target);
int shmq_jobs_checkpoint(shmq_handle *h, uint64_t target, uint64_t *copies);
uint64_t shmq_jobs_live(const shmq_handle *h);
int shmq_jobs_references(const shmq_handle *h, unsigned index);
void shmq_jobs_detach(shmq_handle *h);
int shmq_result_lookup(const shmq_handle *h, uint64_t job_id, shmq_result_info *info);

/* throttle.c */
int shmq_throttle_admit(shmq_handle *h, uint64_t count, uint64_t bytes, int64_t timeout_ns);
int shmq_throttle_open(const shmq_handle *h);

/* unique.c */
int shmq_unique_claim(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t *existing);
int shmq_unique_claim_until(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t *existing, int64_t deadline);
void shmq_unique_set(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id);
void shmq_unique_drop(shmq_handle *h, uint64_t hi, uint64_t lo, uint64_t job_id);

/* results.c */
void shmq_result_put(shmq_handle *h, uint64_t job_id, uint8_t status, uint16_t attempt, uint8_t tag,
                     const uint8_t *data, uint32_t length);

#endif /* SHMQ_JOBS_H */
