"""``python -m tests.support.driver_imports ARGS``: the ``rayprof`` CLI with ARGS, run in this
process, which says on exit (last line of stderr) which of torch and torchvision the driver
imported: ``driver imported: -`` when neither."""

import atexit
import sys


def _report() -> None:
    mods = [m for m in ("torch", "torchvision") if m in sys.modules]
    sys.stderr.write(f"driver imported: {','.join(mods) or '-'}\n")


if __name__ == "__main__":
    atexit.register(_report)
    from rayprof.cli import main

    sys.argv = ["rayprof", *sys.argv[1:]]
    main()
