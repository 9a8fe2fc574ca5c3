// engine/csrc/pool.c: run fn(ctx, i) for i in [0, items) on the calling thread and the pool's workers.
#pragma once
typedef void (*task_fn)(void *ctx, int item);
int pool_start(int threads);  // total threads including the caller; returns workers started
void pool_run(int items, task_fn fn, void *ctx);
int pool_threads(void);  // threads a job runs on, the caller included
