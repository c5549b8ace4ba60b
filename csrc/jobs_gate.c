/* SPDX-License-Identifier: Apache-2.0 */
/* jobs_gate.c -- the gates of ordered lanes (layout.h, "Ordered lanes"): opening a
 * gate when its job finishes, a waiting job taking its lane's gate, and the
 * repair of what a dead consumer left there. The ring asks for that repair
 * through the handle's repair_gate callback (queue.c). */
#define _GNU_SOURCE

#include "jobs.h"

/* Opens the gate of an ordered lane held by entry `index`, then wakes fetchers. */
void shmq_jobs_gate_open(shmq_handle *h, const shmq_job_entry *e, uint32_t index)
{
    if (!(e->flags & SHMQ_JOBF_ORDERED) || e->lane >= h->lane_count)
        return;
    uint64_t held = (uint64_t)index + 1;
    /* release: our work on the job happens before the next job of the lane starts. */
    atomic_compare_exchange_strong_explicit(&lane_header(h, e->lane)->gate, &held, 0, memory_order_release,
                                            memory_order_relaxed);
}

/* An ordered WAITING entry that its lane's gate does not name takes the
 * gate if it is open (see shmq_jobs_schedule; the tick retries). */
void shmq_jobs_gate_adopt(shmq_handle *h, uint32_t lane, uint32_t index, int64_t due)
{
    uint64_t open = 0;
    /* acq_rel: the entry (published before) is visible to whoever sees the gate. */
    if (atomic_compare_exchange_strong_explicit(&lane_header(h, lane)->gate, &open, (uint64_t)index + 1,
                                                memory_order_acq_rel, memory_order_relaxed)) {
        /* relaxed: a hint (see fetch_ordered). */
        atomic_store_explicit(&lane_header(h, lane)->gate_due, due, memory_order_relaxed);
        /* relaxed: for people (shmq_lane_info_read). */
        atomic_store_explicit(&lane_header(h, lane)->gate_since, shmq_wall_ns(), memory_order_relaxed);
    }
}

/* Repairs what a dead consumer left in an ordered lane's gate (layout.h,
 * "Ordered lanes"). Returns 1 if it repaired something. */
int shmq_jobs_repair_gate(shmq_handle *h, uint32_t lane)
{
    if (!h->jobs || !shmq_lane_ordered(h, lane))
        return 0;
    _Atomic uint64_t *gate = &lane_header(h, lane)->gate;
    /* acquire: pairs with the gate's release stores. */
    uint64_t g = atomic_load_explicit(gate, memory_order_acquire);
    if (g == 0)
        /* A head still READING under a dead owner with the gate open: its job
         * was leased, taken back and finished since; the slots go. */
        return shmq_lane_release_dead_head(h, lane, 0);
    if (g & SHMQ_GATE_CLAIM) {
        unsigned owner = (unsigned)(g & 0x1FFFu);
        if (owner == h->self || shmq_participant_alive(h, owner))
            return 0;
        /* Its half-made lease, if any: the lane still has the job. */
        for (uint32_t i = 0; i < h->job_slots; i++) {
            shmq_job_entry *e = entry_at(h, i);
            /* acquire: as in the tick. */
            uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
            unsigned kind = shmq_job_kind(s);
            if (shmq_job_owner(s) == owner && (kind == SHMQ_JOB_FILLING || kind == SHMQ_JOB_RUNNING_KIND) &&
                (GET(e->flags) & SHMQ_JOBF_ORDERED) && GET(e->lane) == lane)
                /* relaxed: never published as the lane's lease. */
                atomic_compare_exchange_strong_explicit(&e->state, &s, shmq_job_state(SHMQ_JOB_FREE, 0, s),
                                                        memory_order_relaxed, memory_order_relaxed);
        }
        shmq_lane_untake_dead(h, lane, owner);
        /* release: the head message is READY again before the lane opens. */
        if (atomic_compare_exchange_strong_explicit(gate, &g, 0, memory_order_release, memory_order_relaxed))
            shmq_wake_data(h);
        return 1;
    }
    if (g - 1 >= h->job_slots) {
        atomic_compare_exchange_strong_explicit(gate, &g, 0, memory_order_release, memory_order_relaxed);
        return 1;
    }
    shmq_job_entry *e = entry_at(h, (uint32_t)(g - 1));
    /* acquire: as above. */
    uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
    unsigned kind = shmq_job_kind(s);
    int holds = kind != SHMQ_JOB_FREE && kind != SHMQ_JOB_FILLING && (GET(e->flags) & SHMQ_JOBF_ORDERED) &&
                GET(e->lane) == lane;
    if (!holds) {
        /* release: as above. A gate naming an entry that no longer holds the lane. */
        if (atomic_compare_exchange_strong_explicit(gate, &g, 0, memory_order_release, memory_order_relaxed))
            shmq_wake_data(h);
        return 1;
    }
    /* The consumer died after its lease was published but before it released
     * the head's slots: the lease has the job, the slots go. */
    return shmq_lane_release_dead_head(h, lane, 0);
}
