"""The one exception type that the CLI turns into a one-line message.

Anything a user can cause (a bad file, a missing folder, a wrong option) raises
KedgeError with a message that already names the file and the problem, so the CLI
can print it as is and exit non-zero, with no traceback.
"""
from __future__ import annotations

import os
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe_name(path: str | os.PathLike[str] | bytes) -> str:
    """A file name fit for one line of output: bytes that are not UTF-8 shown as \\xNN
    and control characters (a newline in a name) as \\n, \\x1b and so on, so a name
    can neither split an error over two lines nor be silently altered."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class KedgeError(Exception):
    """A user-facing error; str(err) is the whole one-line message."""


class ImageError(KedgeError):
    """An input image that cannot be used: the message starts with its (safely printed) path."""

    def __init__(self, source: str | os.PathLike[str], problem: str):
        self.source = safe_name(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


def first_line(err: BaseException) -> str:
    """An exception's first line for a one-line error (its type's name when it has no message)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
