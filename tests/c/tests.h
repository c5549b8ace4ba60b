/* SPDX-License-Identifier: Apache-2.0 */
/* tests.h -- every test, in the order the runner runs them. */
#ifndef SHMQ_TESTS_H
#define SHMQ_TESTS_H

#define SHMQ_TESTS(X)            \
    X(region_params)             \
    X(region_damage)             \
    X(basic_round_trip)          \
    X(basic_empty_full)          \
    X(basic_timeouts)            \
    X(basic_lanes)               \
    X(basic_core_flags)          \
    X(wrap_single)               \
    X(wrap_batches)              \
    X(wrap_lap_overflow)         \
    X(batch_push_many)           \
    X(batch_push_many_blocks)    \
    X(batch_pop_many)            \
    X(batch_claimed)             \
    X(batch_publish_order)       \
    X(mpmc_one_lane)             \
    X(mpmc_three_lanes)          \
    X(mpmc_tiny_lanes)           \
    X(repair_participant_alive)  \
    X(repair_dead_writer)        \
    X(repair_dead_batch_writer)  \
    X(repair_wakes_sleeper)      \
    X(repair_live_owners_kept)   \
    X(repair_dead_reader)        \
    X(repair_reader_scan_back)   \
    X(repair_races)              \
    X(repair_explicit)           \
    X(repair_release_order)      \
    X(crc32c_check_values)       \
    X(crc32c_reference)          \
    X(crc32c_chaining)           \
    X(crc32c_paths_agree)        \
    X(crc32c_threads)            \
    X(log_put_get_records)       \
    X(log_concurrent_append)     \
    X(log_recover_pending)       \
    X(log_recover_running_job)   \
    X(log_hole_filled)           \
    X(log_torn_tail)             \
    X(log_torn_tail_ahead)       \
    X(log_corrupt_middle)          \
    X(log_damaged_files)           \
    X(log_checkpoint_moves_old_jobs) \
    X(log_recovered_job_kept)      \
    X(log_retention_deletes_drained_segments) \
    X(log_backlog_fed_in_order)    \
    X(log_redeliver_dead_reader)   \
    X(log_snapshot_then_recover)   \
    X(log_fork_while_mapping)      \
    X(stall_flusher_taken_over)    \
    X(stall_segment_maker_taken_over) \
    X(stall_unique_lock_holder)    \
    X(stall_unique_changes_race)   \
    X(jobs_round_trip)               \
    X(jobs_claimed_payload)          \
    X(jobs_retry_and_dead)           \
    X(jobs_delayed)                  \
    X(jobs_lease_expiry)             \
    X(jobs_dead_consumer)            \
    X(jobs_tick_wakes_fetcher)       \
    X(jobs_ordered_lane)             \
    X(jobs_ordered_fault_points)     \
    X(jobs_ordered_dead_states)      \
    X(jobs_ordered_hung_then_dead)   \
    X(jobs_repair_reaches_the_gate)  \
    X(jobs_lease_keeps_participant_entry) \
    X(jobs_unordered_dead_after_take) \
    X(jobs_unordered_dead_after_lease) \
    X(jobs_unordered_dead_after_lease_maintained) \
    X(jobs_unique_keys)              \
    X(jobs_unique_full)              \
    X(jobs_unique_claims)            \
    X(jobs_unique_key_race)          \
    X(jobs_table_full)               \
    X(jobs_results_ring)             \
    X(jobs_results_expire)           \
    X(jobs_result_wait_wakes)        \
    X(jobs_histogram_buckets)        \
    X(jobs_histogram_recording)      \
    X(jobs_stats_counters)           \
    X(jobs_concurrent)               \
    X(trust_fd_checks)               \
    X(trust_log_files)

#define X(name) void test_##name(void);
SHMQ_TESTS(X)
#undef X

#endif /* SHMQ_TESTS_H */
