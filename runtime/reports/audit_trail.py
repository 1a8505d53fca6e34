"""The audit trail: one JSON line per automated reading, appended and fsynced.

Each line says what was read (sha256 of the input bytes, never pixels or DICOM
identifiers), by what (model, sha256 of the form's file, backend, precision and
runtime version, kedge version), when (UTC), and the answer. A line is written with
one `write` on a file opened for appending and then fsynced, so a crash or a kill
can lose at most the reading in flight, never truncate or corrupt an earlier line.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import stat
from pathlib import Path
from typing import Any

from kedge.runtime.errors import KedgeError


class AuditLog:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open non-blocking (a FIFO with no reader would block the open forever) and keep
        only a regular file: a FIFO, device or socket as the trail is refused."""
        self.path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            self._refuse_unless_regular(os.stat(self.path))
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                           | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as err:
            raise KedgeError(f"{self.path}: cannot open the audit file ({err.strerror or err})") from None
        try:
            self._refuse_unless_regular(os.fstat(self._fd))  # swapped in between stat and open
        except KedgeError:
            self.close()
            raise

    def _refuse_unless_regular(self, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise KedgeError(f"{self.path}: the audit file is not a regular file (a FIFO, device or socket); refused")

    def record(self, entry: dict[str, Any]) -> None:
        """Append one reading; returns once it is on disk."""
        if self._fd is None:
            raise KedgeError(f"{self.path}: audit file already closed")
        line = {"time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                **entry}
        data = (json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(self._fd)
        except OSError as err:
            raise KedgeError(f"{self.path}: could not write the audit line ({err})") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
