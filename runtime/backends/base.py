"""The two interfaces every backend shares.

`Session`: a loaded model. It takes preprocessed images (N, 224, 224, 3) float32 and
returns class probabilities (N, classes) float32, and it is a context manager, so
its memory (a CUDA context, an ONNX Runtime session) is released at a known point.
Parity, evaluation, explanations and benchmarks only ever see this interface.

`Backend`: a plug-in (in the manner of Polygraphy's runners). It declares its
registry `name`, its `device` and the `forms` it can run, says whether it is usable
on this machine and which forms of a bundle it runs here, and opens lazily:
constructing one costs nothing, `activate()` loads the form, `infer()` runs a batch,
`deactivate()` releases it. Adding a runtime to kedge is one new file with a `Backend`
subclass plus one line in `kedge.runtime.backends.REGISTRY`; everything that runs a
model (infer, parity, the golden check, bench, explain, serve, `kedge info`) reaches it
through the registry. Two kinds of backend run unchecked (`checked` False) and only
when named: a parity `reference` (the Keras original, registered by kedge.train), and
a server whose file is not here (Triton).
"""
from __future__ import annotations

import abc
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kedge.runtime.bundle.forms import FORMS, Form
from kedge.runtime.errors import KedgeError

if TYPE_CHECKING:
    from kedge.runtime.bundle.manifest import Bundle


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
    `forms_in()` (which forms of a bundle it runs here), `precisions()` (run precisions
    a form offers here, e.g. bf16 on the FP32 file), `version()` (for audit trails and
    cache keys), `info()`/`describe()` (its `kedge info` line), `locate()` (the file to
    run) and `identity()` (what parity rows are bound to)."""

    name: ClassVar[str]
    title: ClassVar[str] = ""  # its name for people, on its `kedge info` line (default: `name`)
    device: ClassVar[str] = "cpu"
    forms: ClassVar[tuple[str, ...]] = ()  # form names of forms.FORMS, or a format ("onnx": every ONNX form)
    own_forms: ClassVar[tuple[Form, ...]] = ()  # forms outside that table it brings itself (a reference's original)
    checked: ClassVar[bool] = True  # parity and the golden check judge it; False: it runs only when named
    reference: ClassVar[bool] = False  # parity's reference: the others are compared against it, never it
    baseline: ClassVar[str] = ""  # its out-of-the-box setting, which bench times as precision "default"

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
    def runs(cls, spec: Form) -> bool:
        """It declares it runs this form, by name or by format ("onnx": every ONNX form)."""
        return spec.name in cls.forms or spec.format in cls.forms

    @classmethod
    def forms_in(cls, bundle: Bundle) -> list[Form]:
        """The forms of `bundle` this backend runs here: by default, those it `runs` that are
        files the bundle lists (in the order of the table of forms)."""
        return [f for f in FORMS.values() if cls.runs(f) and f.artifact is not None and bundle.has(f.artifact)]

    @classmethod
    def precisions(cls, form: Form) -> tuple[str, ...]:
        """Run precisions this backend offers for `form` on this machine."""
        return (form.precision,)

    @classmethod
    def version(cls) -> str:
        return "unknown"

    @classmethod
    def info(cls) -> dict[str, Any] | None:
        """What `kedge info` says of this backend: its version, or why it is not usable here."""
        problem = cls.problem()
        return {"version": None, "problem": problem} if problem else {"version": cls.version()}

    @classmethod
    def describe(cls, info: dict[str, Any] | None) -> str:
        """`info()` as the text of its `kedge info` line."""
        if info is None:
            return "not installed"
        return str(info["version"]) if info.get("version") else f"not available ({info.get('problem')})"

    def locate(self) -> Path:
        """The file this form runs from: the bundle's artifact, checked against its sha256."""
        if self.form.artifact is None:
            raise KedgeError(f"{self.name} cannot run {self.form.name}: it is not an ONNX file")
        return self.bundle.file(self.form.artifact)

    def identity(self) -> str:
        """What identifies the bytes this runs (parity rows and the per-machine cache are bound
        to it): the sha256 kedge.json records for the form's file."""
        key = self.form.artifact or ""
        return str(self.bundle.sha256(key) or self.bundle.artifacts.get(key, ""))

    def file_sha256(self) -> str | None:
        """sha256 of the file this runs, for the audit trail (recorded in kedge.json, else hashed)."""
        if self.form.artifact is not None and self.bundle.has(self.form.artifact):
            return self.bundle.sha256(self.form.artifact)
        from kedge.runtime.bundle.manifest import sha256_file

        return sha256_file(self.locate())

    def runtime_version(self) -> str:
        """What ran it, for the audit trail: the runtime and its version."""
        return self.version()

    def standing(self) -> str:
        """Why an unchecked backend (`checked` False) runs: the reason printed and audited."""
        return f"{self.label}: run as named (no parity or golden check applies to it)"

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
