"""``python -m tests.support.signal_at MOMENT SIGNAL ARGS…``: the ``rayprof`` command with ARGS,
in this process, sending itself SIGNAL (``SIGINT``, ``SIGTERM``, or several joined by ``+``, one
after another) at a moment too short to aim at from outside:

- ``startup``: at the pre-flight checks (``rayprof run``: before the worker exists; ``rayprof
  submit``: on the checks' thread, while the embedded Ray starts);
- ``finish``: once every worker has ended, as the driver builds the run's index (the last step
  before the final manifest).

The signal is real (``os.kill`` of this process), so it reaches rayprof's handlers as a user's
Ctrl-C or a scheduler's SIGTERM would; the run itself goes on unchanged.
"""

import os
import signal
import sys

from rayprof import cli, driver, index

PATCHED = {"startup": (driver, "preflight"), "finish": (index, "build")}


def main() -> None:
    moment, name, *args = sys.argv[1:]
    module, attr = PATCHED[moment]
    real = getattr(module, attr)

    def signalled(*a, **kw):
        for sig in name.split("+"):
            os.kill(os.getpid(), getattr(signal, sig))
        return real(*a, **kw)

    setattr(module, attr, signalled)
    sys.argv = ["rayprof", *args]
    cli.main()


if __name__ == "__main__":
    main()
