"""Shared test setup: no Ray usage stats, a private cache for the generated sample video."""

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rayprof-cache")
    old = os.environ.get("RAYPROF_CACHE")
    os.environ["RAYPROF_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("RAYPROF_CACHE", None)
    else:
        os.environ["RAYPROF_CACHE"] = old


@pytest.fixture(scope="session")
def small_video(tmp_path_factory):
    """A real 64-frame 160x120 MPEG-4 video written with OpenCV."""
    from rayprof.source import make_sample_video

    path = tmp_path_factory.mktemp("media") / "small.mp4"
    return make_sample_video(path, seconds=64 / 16, fps=16.0, width=160, height=120)
