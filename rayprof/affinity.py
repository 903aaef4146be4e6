"""CPU core sets: parse ``"0-3"`` / ``"0,2,4-5"`` / ``all``, allocate them to actors, pin a process.

The seed's ``utils.setup_cpu_affinity`` bound a worker with ``os.sched_setaffinity`` and set
``torch.set_num_threads``; :func:`pin` does the same and also caps OpenCV's thread pool, so a
pinned worker's decode, preprocessing and model threads all stay on its cores.

``"auto"`` is not a core set: the planner turns it into one per actor with :func:`allocate`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from .errors import UserError

__all__ = ["available_cores", "parse_cores", "format_cores", "allocate", "pin"]

_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")
#: Core ids accepted when the target machine is not known (planning for a remote node): syntax only.
ANY_CORE = list(range(4096))


def available_cores() -> list[int]:
    """The cores this process may run on (its affinity mask), sorted.

    ``os.sched_getaffinity`` exists on Linux; elsewhere every core the OS reports is assumed.
    """
    getaff = getattr(os, "sched_getaffinity", None)
    if getaff is not None:
        try:
            return sorted(getaff(0))
        except OSError:  # pragma: no cover - exotic kernels
            pass
    return list(range(os.cpu_count() or 1))


def _fix(available: Sequence[int], where: str = "this machine") -> str:
    return (
        f"{where} has cores {format_cores(available)}; use a range like "
        f"'{_example(available)}', a list like '0,2,4', or 'all'"
    )


def _example(available: Sequence[int]) -> str:
    cores = sorted(available)
    if len(cores) >= 2:
        return f"{cores[0]}-{cores[min(len(cores), 4) - 1]}"
    return str(cores[0]) if cores else "0"


def parse_cores(
    spec: str | int | Iterable[int],
    available: list[int] | None = None,
    field: str = "cores",
    where: str = "this machine",
) -> list[int]:
    """Parse a core set and check it against the machine's cores.

    Accepts ``"0-3"``, ``"0,2,4-5"`` (whitespace tolerated), ``"all"`` (every available core),
    an ``int`` or an iterable of ints. Returns the sorted, de-duplicated core list.

    Raises :class:`UserError` (naming ``field``) for bad syntax (``"a"``, ``"3-1"``), an empty set,
    or a core the machine does not have; :class:`ValueError` for ``"auto"``, which the planner
    must resolve with :func:`allocate` before calling this.
    """
    avail = sorted(available) if available is not None else available_cores()
    fix = _fix(avail, where) if available is not ANY_CORE else "use a range like '0-3', a list like '0,2,4', or 'all'"
    if isinstance(spec, bool):  # bool is an int: True is not core 1
        raise UserError(field, spec, "not a core set", fix)
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "auto":
            raise ValueError("parse_cores() does not resolve 'auto'; the planner allocates it")
        if text.lower() == "all":
            if not avail:  # pragma: no cover - a process always has a core
                raise UserError(field, spec, "no cores are available to this process", fix)
            return list(avail)
        cores: set[int] = set()
        parts = [p.strip() for p in text.split(",")]
        if not text or any(not p for p in parts):
            raise UserError(field, spec, "empty core set" if not text else "empty item", fix)
        for part in parts:
            m = _RANGE.match(part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if lo > hi:
                    raise UserError(
                        field, spec, f"range '{part}' runs backwards", f"write '{hi}-{lo}'; {fix}"
                    )
                cores.update(range(lo, hi + 1))
            elif part.isdigit():
                cores.add(int(part))
            else:
                raise UserError(field, spec, f"'{part}' is not a core number or range", fix)
    elif isinstance(spec, int):
        cores = {spec}
    else:
        try:
            items = list(spec)
        except TypeError:
            raise UserError(field, spec, "not a core set", fix) from None
        if any(isinstance(c, bool) or not isinstance(c, int) for c in items):
            raise UserError(field, spec, "core lists must hold integers", fix)
        cores = set(items)
    if not cores:
        raise UserError(field, spec, "empty core set", fix)
    negative = sorted(c for c in cores if c < 0)
    if negative:
        raise UserError(field, spec, f"core {negative[0]} is negative", fix)
    missing = sorted(cores - set(avail))
    if missing:
        what = "core" if len(missing) == 1 else "cores"
        raise UserError(
            field, spec, f"{what} {format_cores(missing)} not available on {where}", fix
        )
    return sorted(cores)


def format_cores(cores: Iterable[int]) -> str:
    """Compact form of a core set: ``[0, 1, 2, 3, 6]`` → ``"0-3,6"``; ``[]`` → ``""``."""
    items = sorted(set(cores))
    out: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if j == i else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)


def allocate(n: int, available: list[int], per_actor: int | None = None) -> list[list[int]]:
    """Core sets for ``n`` actors on one node (the ``auto`` policy).

    - Without ``per_actor``: disjoint contiguous blocks covering ``available``, sizes differing by
      at most one (the first ``len % n`` actors get the extra core).
    - With ``per_actor``: blocks of that size, disjoint while cores last; after that blocks wrap
      around (``available`` is used round-robin), so actors share cores only when they must.
    - When ``n > len(available)`` (and no ``per_actor``): one core each, round-robin — actors share.
    """
    if n < 0:
        raise ValueError(f"allocate(n={n}): n must be >= 0")
    cores = sorted(set(available))
    if n == 0:
        return []
    if not cores:
        raise ValueError("allocate(): no cores available")
    total = len(cores)
    if per_actor is not None:
        if per_actor < 1:
            raise ValueError(f"allocate(per_actor={per_actor}): must be >= 1")
        size = min(per_actor, total)
        return [
            sorted({cores[(i * size + k) % total] for k in range(size)}) for i in range(n)
        ]
    if n >= total:
        return [[cores[i % total]] for i in range(n)]
    base, extra = divmod(total, n)
    out: list[list[int]] = []
    start = 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append(cores[start : start + size])
        start += size
    return out


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the calling thread only
        return [0]


def process_cores() -> list[int]:
    """The affinity of the process's main thread (what ``taskset -p`` shows)."""
    try:
        return sorted(os.sched_getaffinity(os.getpid()))
    except AttributeError:  # pragma: no cover - not Linux
        return available_cores()


def pin(cores: list[int]) -> list[int]:
    """Pin this process to ``cores`` and size the thread pools to match.

    ``os.sched_setaffinity(0, cores)`` where the OS supports it (Linux), then
    ``torch.set_num_threads(len(cores))`` and ``cv2.setNumThreads(len(cores))``. Returns the
    affinity actually in force afterwards (the requested set on Linux; every core elsewhere).
    """
    if not cores:
        raise ValueError("pin(): empty core set")
    setaff = getattr(os, "sched_setaffinity", None)
    if setaff is not None:
        # sched_setaffinity(0) pins only the calling thread; a Ray actor runs its methods in a
        # pool thread, so pin every thread of the process (threads made later inherit the mask)
        for tid in _thread_ids():
            try:
                setaff(tid, set(cores))
            except (ProcessLookupError, PermissionError):  # a thread that just exited
                pass
        setaff(0, set(cores))
    n = len(set(cores))
    import torch  # lazy: parsing and allocation stay importable without torch

    torch.set_num_threads(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass
    return available_cores()
