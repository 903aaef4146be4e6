"""The ``rayprof`` command as a user runs it: the console script next to this Python, else
``python -m rayprof.cli`` (a checkout run with ``PYTHONPATH``, no install)."""

import sys
from pathlib import Path


def rayprof_cmd() -> list[str]:
    script = Path(sys.executable).with_name("rayprof")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rayprof.cli"]
