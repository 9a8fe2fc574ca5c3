// A tiny thread pool for the engine's kernels, fast to enter from any thread.
//
// OpenMP (libgomp) costs ~70 us to enter a parallel region from a thread other than the process's
// main one (measured here; ~6 us from the main thread), and the engine steps on its own thread,
// hundreds of regions per step. These workers spin briefly between jobs, then sleep on a condition
// variable. Items are claimed one at a time by compare-and-swap on a word holding (job, next item,
// items), so a descheduled worker (the event loop needs the core) delays nobody: the calling thread
// takes the remaining items itself and waits only for items already claimed.
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "kernels.h"
#include "pool.h"

#define MAX_WORKERS 63
#define SPIN_ITERATIONS 100000  // polling before a worker sleeps (tens of microseconds)

// ticket layout: job id (32 bits) | next item (16 bits) | items (16 bits)
#define JOB(t) ((uint32_t)((t) >> 32))
#define NEXT(t) ((int)(((t) >> 16) & 0xffff))
#define ITEMS(t) ((int)((t) & 0xffff))

static int num_workers;  // threads besides the caller
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static atomic_int sleepers;
static _Atomic uint64_t ticket;
static atomic_int done;  // items finished in the current job
static task_fn job_fn;
static void *job_ctx;

// claim and run items of job `job` until none is left; returns when the job has no more items
static void take_items(uint32_t job) {
    uint64_t t = atomic_load_explicit(&ticket, memory_order_acquire);
    while (JOB(t) == job && NEXT(t) < ITEMS(t)) {
        if (atomic_compare_exchange_weak_explicit(&ticket, &t, t + (1u << 16), memory_order_acq_rel,
                                                  memory_order_acquire)) {
            job_fn(job_ctx, NEXT(t));  // the job cannot finish (and be replaced) before this item is done
            atomic_fetch_add_explicit(&done, 1, memory_order_release);
            t = atomic_load_explicit(&ticket, memory_order_acquire);
        }
    }
}

static void *worker_main(void *arg) {
    (void)arg;
    uint32_t seen = JOB(atomic_load(&ticket));
    for (;;) {
        int spins = 0;
        uint32_t job;
        while ((job = JOB(atomic_load_explicit(&ticket, memory_order_acquire))) == seen) {
            if (++spins < SPIN_ITERATIONS) {
                __builtin_ia32_pause();
                continue;
            }
            pthread_mutex_lock(&lock);
            atomic_fetch_add(&sleepers, 1);
            while ((job = JOB(atomic_load(&ticket))) == seen) pthread_cond_wait(&wake, &lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&lock);
            break;
        }
        seen = job;
        take_items(job);
    }
    return 0;
}

int pool_threads(void) { return num_workers + 1; }

int pool_start(int threads) {
    if (num_workers || threads <= 1) return num_workers;
    int want = threads - 1 > MAX_WORKERS ? MAX_WORKERS : threads - 1;
    for (int i = 0; i < want; i++) {
        pthread_t th;
        if (pthread_create(&th, 0, worker_main, 0) != 0) break;
        pthread_detach(th);
        num_workers++;
    }
    return num_workers;
}

void pool_run(int items, task_fn fn, void *ctx) {
    // one job at a time: the engine thread is the only caller
    if (num_workers == 0 || items <= 1 || items > 0xffff) {
        for (int i = 0; i < items; i++) fn(ctx, i);
        return;
    }
    job_fn = fn;
    job_ctx = ctx;
    atomic_store_explicit(&done, 0, memory_order_relaxed);
    uint32_t job = JOB(atomic_load(&ticket)) + 1;
    atomic_store_explicit(&ticket, ((uint64_t)job << 32) | (uint64_t)items, memory_order_release);
    if (atomic_load(&sleepers)) {
        pthread_mutex_lock(&lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&lock);
    }
    take_items(job);
    while (atomic_load_explicit(&done, memory_order_acquire) < items) __builtin_ia32_pause();
}
