"""A cluster started by scripts/cluster.sh (PostgreSQL, Redis, r1 and r2 with the default model, HAProxy) in a
temporary directory (CLUSTER_DIR), for tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.admin import ADMIN_TOKEN
from tests.helpers.paths import MODEL_CACHE, REPO

SCRIPT = REPO / "scripts" / "cluster.sh"


@dataclass
class Cluster:
    url: str  # HAProxy's, http://127.0.0.1:PORT
    dir: Path
    env: dict


def cluster_sh(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def routed_to(url: str, session_id: str) -> str:
    """The replica HAProxy sends an HTTP request with X-Session-Id to (its X-Replica header)."""
    req = urllib.request.Request(f"{url}/v1/models", headers={"X-Session-Id": session_id})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["X-Replica"]


def running_cluster():
    """For module fixtures: `yield from running_cluster()` runs `scripts/cluster.sh up 2` (admin token
    tests.helpers.admin.ADMIN_TOKEN), yields the Cluster and brings it down after. Fails, never skips, when
    it cannot start (the Debian packages postgresql, redis-server and haproxy missing, for instance)."""
    tmp = Path(tempfile.mkdtemp(prefix="test-cluster-"))
    tmp.chmod(0o755)  # run as root, PostgreSQL runs as the user postgres, which must reach its directory
    env = {**os.environ, "CLUSTER_DIR": str(tmp / "cluster"), "CLUSTER_PORT": "0"}
    try:
        up = cluster_sh(env, "up", "2", "--model-cache", str(MODEL_CACHE), "--admin-token", ADMIN_TOKEN,
                        "--log-level", "WARNING")
        if up.returncode != 0:
            pytest.fail(f"cluster.sh up failed ({up.returncode}):\n{up.stderr[-3000:]}")
        url = up.stdout.strip().splitlines()[-1].removeprefix("cluster ready on ")
        assert url.startswith("http://127.0.0.1:"), up.stdout
        yield Cluster(url, tmp / "cluster", env)
    finally:
        cluster_sh(env, "down", timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
