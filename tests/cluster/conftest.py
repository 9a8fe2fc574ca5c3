"""Each module of these tests gets a cluster of its own from scripts/cluster.sh (tests/helpers/cluster.py)."""

import pytest

from tests.helpers.cluster import running_cluster


@pytest.fixture(scope="module")
def cluster():
    yield from running_cluster()
