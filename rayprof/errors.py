"""Errors a user can cause, said in one line: the field, the value, the fix.

Every layer raises :class:`UserError` for bad input; the CLI prints its message and exits 2
without a traceback. Anything else that escapes is a bug or a failed run (exit 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
