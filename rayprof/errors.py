"""Errors a user can cause, said in one line: the field, the value, the fix.

Every layer raises :class:`UserError` for bad input; the CLI prints its message and exits 2
without a traceback. Anything else that escapes is a bug or a failed run (exit 1).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input: which field, which value, what is wrong, how to fix it.

    Rendered as one line::

        workers[0].model.name = 'resnet5': not a torchvision classification model; use resnet50 (...)
    """

    exit_code = 2

    def __init__(self, field: str, value: object, problem: str, fix: str):
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.field} = {self.value!r}: {self.problem}; {self.fix}"


def did_you_mean(value: str, choices: Iterable[str], limit: int = 3) -> str:
    """' (did you mean 'x'?)' or '' — for unknown names and keys."""
    matches = difflib.get_close_matches(str(value), list(choices), n=limit, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def check_output_folder(field: str, path: str) -> Path:
    """A folder to write to on this machine (it need not exist yet); a :class:`UserError` if it
    is empty, is a file, lies under a file or cannot be written. Nothing is created here."""
    if not str(path).strip():
        raise UserError(field, path, "is empty", "give the folder to write to (it is created if missing)")
    out = Path(path).expanduser()
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"lies under {str(p)!r}, which is a file"
                raise UserError(field, path, f"{what}, not a folder", "give a folder path (it is created if missing)")
            if not os.access(p, os.W_OK | os.X_OK):
                raise UserError(field, path, f"{str(p)!r} is not writable", "choose a folder you may write to")
            break
    return out
