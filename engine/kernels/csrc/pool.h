// pool.c, for the kernels: run fn(ctx, i) for i in [0, items) on the calling thread and the pool's workers
// (started by pool_start, kernels.h). One job at a time: the engine thread is the only caller.
#pragma once
typedef void (*task_fn)(void *ctx, int item);
void pool_run(int items, task_fn fn, void *ctx);
int pool_threads(void);  // threads a job runs on, the caller included
