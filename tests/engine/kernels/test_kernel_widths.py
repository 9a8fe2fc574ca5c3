"""The C kernels at the vector widths this machine does not use natively, so that no width ships untested.

engine/kernels/csrc is written once in native-width vectors (vec.h: 16 lanes with AVX-512, 8 with AVX2, 4
without AVX, e.g. on ARM) and CHATSERVER_KERNEL_LANES forces another width at build time: wider than the
machine's, GCC splits each vector into several registers (slow, same arithmetic). Each other width must
pass the same kernel tests as the native build: matmuls from grid codes bit-identical to float32, the
ragged and blocked attention against SDPA, sampling against its torch definition, the runner's batch
invariance. (The 4-lane build found a real fault this way: GCC rewrote a * (q * d) as (a * d) * q.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.kernels.linear import strip_width
from tests.helpers.paths import REPO

pytestmark = [pytest.mark.slow]

KERNEL_TESTS = ["tests/engine/kernels/test_kernels.py", "tests/engine/kernels/test_sliding_window.py",
                "tests/engine/kernels/test_grid_weights.py", "tests/engine/model/test_runner.py",
                "tests/engine/model/test_families.py", "tests/engine/test_sampling.py",
                "tests/engine/model/test_gguf_codes.py"]
STRIP_OF_LANES = {16: 64, 8: 16, 4: 8}  # strip.h: columns of the matmuls' register block
NATIVE_LANES = {strip: lanes for lanes, strip in STRIP_OF_LANES.items()}[strip_width()]


def _run(lanes: int, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHATSERVER_KERNEL_LANES": str(lanes)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("lanes", sorted(set(STRIP_OF_LANES) - {NATIVE_LANES}))
def test_the_kernel_tests_pass_at_another_vector_width(lanes):
    built = _run(lanes, "-c", "from engine.kernels.linear import strip_width; print(strip_width())", timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert int(built.stdout.split()[-1]) == STRIP_OF_LANES[lanes]  # the width really is forced
    tests = _run(lanes, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_TESTS, timeout=1200)
    assert tests.returncode == 0, tests.stdout[-4000:]
    assert " passed" in tests.stdout.splitlines()[-1] and "skipped" not in tests.stdout.splitlines()[-1]


def test_a_bad_width_is_refused_with_a_clear_error():
    bad = _run(12, "-c", "from engine.kernels.linear import strip_width; strip_width()", timeout=120)
    assert bad.returncode != 0 and "CHATSERVER_KERNEL_LANES must be 4, 8 or 16" in bad.stderr
