"""What C libraries print: libpng, libjpeg, libtiff and OpenCV write warnings straight
to file descriptor 2 ("IHDR: CRC error", "Corrupt JPEG data: ..."), naming no file.

`native_stderr` points fd 2 at a temporary file while one decode runs and hands the
text back, so the caller can make it part of that file's one-line message (or drop
it). fd 2 belongs to the whole process, so captures are serialised with a lock; other
threads' Python output written meanwhile (a progress bar redraw, recognisable by its
carriage return) is dropped rather than blamed on the file.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()
_MAX_CAPTURE = 4096  # bytes kept from one decode: enough for any decoder message


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect, as stripped lines, what native code writes to fd 2 inside the block."""
    messages: list[str] = []
    with _LOCK, tempfile.TemporaryFile() as sink:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(_MAX_CAPTURE).decode("utf-8", "replace")
            messages.extend(line.strip() for line in text.split("\n") if line.strip() and "\r" not in line)


def one_line(messages: list[str], limit: int = 160) -> str:
    """Decoder messages joined into one short clause for an error line."""
    text = "; ".join(dict.fromkeys(messages))
    printable = "".join(c if c.isprintable() else " " for c in text)
    return printable if len(printable) <= limit else printable[: limit - 3] + "..."
