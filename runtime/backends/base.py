"""The two interfaces every backend shares.

`Session`: a loaded model. It takes preprocessed images (N, 224, 224, 3) float32 and
returns class probabilities (N, classes) float32, and it is a context manager, so
its memory (a CUDA context, an ONNX Runtime session) is released at a known point.
Parity, evaluation, explanations and benchmarks only ever see this interface.

`Backend`: a plug-in (in the manner of Polygraphy's runners). It declares its
registry `name`, its `device` and the `forms` it can run, says whether it is usable
on this machine, and opens lazily: constructing one costs nothing, `activate()`
loads the form, `infer()` runs a batch, `deactivate()` releases it. Adding a runtime
to kedge is one new file with a `Backend` subclass plus one line in
`kedge.runtime.backends.REGISTRY`.
"""
from __future__ import annotations

import abc
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kedge.runtime.errors import KedgeError

if TYPE_CHECKING:
    from kedge.runtime.bundle import Bundle
    from kedge.runtime.forms import Form


class Session(abc.ABC):
    """A loaded model form. `name` says what it is, e.g. 'onnxruntime:cpu onnx-int8'."""

    name: str = "session"

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of model inputs."""

    def close(self) -> None:  # noqa: B027 (most sessions have something to release, not all)
        """Release what load took; safe to call twice."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


EVERY_ONNX_FORM = ("onnx",)  # for backends that read any ONNX: the format of every ONNX row of forms.FORMS


class Backend(abc.ABC):
    """One (backend, form, precision) of one bundle, opened lazily.

    Subclasses set `name`, `device` and `forms`, implement `open()` (returning a
    `Session`), and may override `problem()` (why this machine cannot use it),
    `precisions()` (run precisions a form offers here, e.g. bf16 on the FP32 file),
    `version()` (for audit trails and cache keys) and `locate()` (the file to run)."""

    name: ClassVar[str]
    device: ClassVar[str] = "cpu"
    forms: ClassVar[tuple[str, ...]] = ()  # form names of forms.FORMS, or a format ("onnx": every ONNX form)

    def __init__(self, bundle: Bundle, form: Form, precision: str | None = None, threads: int | None = None,
                 **options: Any) -> None:
        self.bundle = bundle
        self.form = form
        self.precision = precision or form.precision
        self.threads = threads
        self.options = options
        self._session: Session | None = None

    # --- what the plug-in declares --------------------------------------------------------

    @staticmethod
    def runtime() -> Any:
        """Import the runtime library: a one-line KedgeError saying how to install it when missing."""
        return None

    @classmethod
    def problem(cls) -> str | None:
        """None when this machine can run the backend, else one line saying what is missing."""
        try:
            cls.runtime()
        except KedgeError as err:
            return str(err)
        return None

    @classmethod
    def precisions(cls, form: Form) -> tuple[str, ...]:
        """Run precisions this backend offers for `form` on this machine."""
        return (form.precision,)

    @classmethod
    def version(cls) -> str:
        return "unknown"

    def locate(self) -> Path:
        """The file this form runs from: the bundle's artifact, checked against its sha256."""
        if self.form.artifact is None:
            raise KedgeError(f"{self.name} cannot run {self.form.name}: it is not an ONNX file")
        return self.bundle.file(self.form.artifact)

    @abc.abstractmethod
    def open(self) -> Session:
        """Load the form (called by `activate`)."""

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """What ran, for people: 'openvino onnx-fp32 bf16'."""
        return f"{self.name} {self.form.name} {self.precision}"

    @property
    def active(self) -> bool:
        return self._session is not None

    def activate(self) -> Backend:
        if self._session is None:
            self._session = self.open()
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            self.activate()
        assert self._session is not None
        return self._session.infer(batch)

    def deactivate(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    close = deactivate

    @property
    def session(self) -> Session | None:
        return self._session

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch)

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()


def cache_root() -> Path:
    """Where kedge keeps per-machine caches: $KEDGE_CACHE, else $XDG_CACHE_HOME/kedge or ~/.cache/kedge."""
    explicit = os.environ.get("KEDGE_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kedge"
