import os
import sys

# Before torch loads libgomp: OpenMP workers sleep as soon as a torch operation ends instead of
# spinning for a while. Most of a step runs on the engine's own kernel pool (engine/kernels/csrc/pool.c);
# spinning OpenMP threads take its second core away after every torch op (measured: batch-16
# decode step 41 -> 36 ms, the LM head alone 7.7 -> 5.1 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from chatserver.cli import main

sys.exit(main())
