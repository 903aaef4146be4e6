"""rayprof.affinity: core-set parsing, formatting, allocation, pinning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayprof.affinity import allocate, available_cores, format_cores, parse_cores, pin
from rayprof.errors import UserError

EIGHT = list(range(8))


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0-3", [0, 1, 2, 3]),
        ("0,2,4-5", [0, 2, 4, 5]),
        (" 4 - 7 ", [4, 5, 6, 7]),
        ("1, 3 ,5", [1, 3, 5]),
        ("3,1,1-2", [1, 2, 3]),
        ("5", [5]),
        ("all", EIGHT),
        ("ALL", EIGHT),
        (6, [6]),
        ([3, 1], [1, 3]),
        ((0, 7), [0, 7]),
        ("2-2", [2]),
    ],
)
def test_parse_forms(spec, expected):
    assert parse_cores(spec, EIGHT) == expected


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("3-1", "backwards"),
        ("a", "not a core number"),
        ("0-", "not a core number"),
        ("1,,2", "empty item"),
        ("", "empty core set"),
        ("  ", "empty core set"),
        ([], "empty core set"),
        ("8", "not available"),
        ("6-9", "cores 8-9 not available"),
        ([0, "1"], "integers"),
        (-1, "negative"),
        (True, "not a core set"),
        (1.5, "not a core set"),
    ],
)
def test_parse_errors(spec, problem):
    with pytest.raises(UserError) as err:
        parse_cores(spec, EIGHT, field="workers[2].cores")
    e = err.value
    assert e.field == "workers[2].cores"
    assert e.value == spec
    assert problem in e.problem
    assert "0-7" in e.fix  # names the machine's cores
    assert "all" in e.fix


def test_parse_auto_is_not_handled_here():
    with pytest.raises(ValueError, match="auto"):
        parse_cores("auto", EIGHT)


def test_parse_defaults_to_this_machine():
    assert parse_cores("all") == available_cores()
    first = available_cores()[0]
    assert parse_cores(str(first)) == [first]


def test_available_cores():
    cores = available_cores()
    assert cores == sorted(cores) and cores
    if hasattr(os, "sched_getaffinity"):
        assert cores == sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "cores, text",
    [
        ([0, 1, 2, 3, 6], "0-3,6"),
        ([6, 0, 2, 1, 3], "0-3,6"),
        ([4, 5], "4-5"),
        ([1, 3, 5], "1,3,5"),
        ([0, 0, 1], "0-1"),
        ([], ""),
        ([9], "9"),
    ],
)
def test_format(cores, text):
    assert format_cores(cores) == text


@pytest.mark.parametrize("cores", [[0], [0, 1, 2, 3, 6], [1, 3, 5, 6, 7, 10], list(range(64))])
def test_format_round_trip(cores):
    assert parse_cores(format_cores(cores), list(range(64))) == cores


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_allocate_disjoint_even_covering(n):
    sets = allocate(n, EIGHT)
    assert len(sets) == n
    flat = [c for s in sets for c in s]
    assert sorted(flat) == EIGHT  # covers, disjoint
    sizes = [len(s) for s in sets]
    assert max(sizes) - min(sizes) <= 1
    for s in sets:  # contiguous blocks
        assert s == list(range(s[0], s[-1] + 1))


def test_allocate_uneven_gives_extra_to_first():
    assert allocate(3, EIGHT) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_allocate_non_contiguous_available():
    assert allocate(2, [7, 1, 3, 5]) == [[1, 3], [5, 7]]


def test_allocate_shares_when_more_actors_than_cores():
    sets = allocate(5, [0, 1])
    assert sets == [[0], [1], [0], [1], [0]]


def test_allocate_per_actor():
    assert allocate(2, EIGHT, per_actor=2) == [[0, 1], [2, 3]]
    assert allocate(4, EIGHT, per_actor=2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # cores run out: wrap around, sharing only once disjoint sets are exhausted
    sets = allocate(5, EIGHT, per_actor=2)
    assert sets[:4] == [[0, 1], [2, 3], [4, 5], [6, 7]] and sets[4] == [0, 1]
    assert allocate(1, [0, 1], per_actor=4) == [[0, 1]]  # capped at what exists


def test_allocate_edges():
    assert allocate(0, EIGHT) == []
    with pytest.raises(ValueError):
        allocate(2, [])
    with pytest.raises(ValueError):
        allocate(-1, EIGHT)
    with pytest.raises(ValueError):
        allocate(2, EIGHT, per_actor=0)


_PIN_CHILD = """
import json, sys, torch, cv2
from rayprof.affinity import pin
got = pin(json.loads(sys.argv[1]))
print(json.dumps({"got": got, "threads": torch.get_num_threads(), "cv2": cv2.getNumThreads()}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux-only affinity")
def test_pin_in_subprocess():
    target = available_cores()[-1:]  # one core this process may use
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _PIN_CHILD, json.dumps(target)],
        capture_output=True, text=True, check=True, timeout=120, cwd=root, env=env,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["got"] == target
    assert result["threads"] == 1
    assert result["cv2"] == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux-only affinity")
def test_pin_in_process_restores():
    import cv2
    import torch

    original = os.sched_getaffinity(0)
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    target = sorted(original)[:1]
    try:
        assert pin(target) == target
        assert os.sched_getaffinity(0) == set(target)
        assert torch.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, original)
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def test_pin_empty():
    with pytest.raises(ValueError):
        pin([])


def test_pin_from_a_worker_thread_pins_the_whole_process():
    """A Ray actor runs its methods in a pool thread: pinning there must pin the process."""
    import subprocess
    import sys
    import textwrap

    from rayprof.affinity import available_cores

    if len(available_cores()) < 2:
        pytest.skip("needs two cores to tell a pinned set from the full one")
    code = textwrap.dedent("""
        import os, threading
        from rayprof.affinity import pin, process_cores
        t = threading.Thread(target=lambda: pin([0]))
        t.start(); t.join()
        print(sorted(os.sched_getaffinity(0)), process_cores())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[0]", "[0]"]
