"""The one exception type that the CLI turns into a one-line message.

Anything a user can cause (a bad file, a missing folder, a wrong option) raises
KedgeError with a message that already names the file and the problem, so the CLI
can print it as is and exit non-zero, with no traceback.
"""
from __future__ import annotations

import os


class KedgeError(Exception):
    """A user-facing error; str(err) is the whole one-line message."""


class ImageError(KedgeError):
    """An input image that cannot be used: the message starts with its path."""

    def __init__(self, source: str | os.PathLike[str], problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
