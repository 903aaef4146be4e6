"""One local Ray per test module (each start costs seconds on 2 cores)."""

import pytest


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    # address="local": a Ray of our own, even where another `ray start --head` runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
