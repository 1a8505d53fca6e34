"""The backend registry, and the one thing it opens: a `Pair` (backend, form, precision).

Registry name -> the `Backend` plug-in class that runs forms. Entries are
"module:Class" strings so that importing the registry loads no runtime (TensorRT,
OpenVINO and ONNX Runtime are each imported only when used). To add a backend, write
one module with a `Backend` subclass (see base.py) and add one line here, or call
`register()` (a test does this with a toy backend). Packages add theirs through the
`kedge.backends` entry point, and parity references that `auto` never picks through
`kedge.references`: kedge.train registers the Keras original that way. A reference is
imported only when named (`--backend keras`, parity), so choosing, inferring and
`--help` never load the training side.

Everything that runs a model goes through here: `auto` and --backend (checks/choice.py),
parity, the golden check, bench, explain, serve and `kedge info` all take their pairs
from `runnable_pairs` or `pair` and open them with `Pair.open`.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from kedge.runtime.backends.base import Backend
from kedge.runtime.bundle.forms import FORMS, Form
from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.errors import KedgeError

ENTRY_POINTS = "kedge.backends"  # the entry-point group other packages declare backends under
REFERENCE_ENTRY_POINTS = "kedge.references"  # ... and parity references, which `auto` never runs


def _declared(group: str) -> dict[str, str]:
    """The backends installed packages declare under an entry-point group, as "module:Class"
    paths (nothing is imported until one is used)."""
    from importlib.metadata import entry_points

    return {entry.name: entry.value for entry in entry_points(group=group)}


REGISTRY: dict[str, str | type[Backend]] = {
    "tensorrt": "kedge.runtime.backends.tensorrt:TensorRT",
    "openvino": "kedge.runtime.backends.openvino:OpenVINO",
    "onnxruntime": "kedge.runtime.backends.onnxruntime:OnnxRuntime",
    "triton": "kedge.runtime.backends.triton:Triton",
}
REFERENCES = frozenset(name for name in _declared(REFERENCE_ENTRY_POINTS) if name not in REGISTRY)
REGISTRY.update({name: path for group in (ENTRY_POINTS, REFERENCE_ENTRY_POINTS)
                 for name, path in _declared(group).items() if name not in REGISTRY})


def register(name: str, backend: str | type[Backend]) -> None:
    """Add (or replace) a backend: a `Backend` subclass or its "module:Class" path."""
    REGISTRY[name] = backend


def names() -> list[str]:
    return list(REGISTRY)


def backend_class(name: str) -> type[Backend]:
    entry = REGISTRY.get(name)
    if entry is None:
        raise KedgeError(f"--backend {name!r}: choose from auto, {', '.join(REGISTRY)}")
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = getattr(import_module(module), attribute)
        REGISTRY[name] = entry
    assert isinstance(entry, type) and issubclass(entry, Backend)
    return entry


@dataclass(frozen=True)
class Pair:
    """What runs: a registered backend, a form of the bundle, and the precision it runs at.
    Parity rows, golden checks, bench rows and `auto`'s choice are all keyed by it."""

    backend: str
    form: Form
    precision: str

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.form.name}/{self.precision}"

    def __str__(self) -> str:
        return f"{self.backend} {self.form.name} {self.precision}"

    def identity(self, bundle: Bundle) -> str:
        """What identifies the bytes this pair runs (see `Backend.identity`)."""
        return self.open(bundle).identity()

    def open(self, bundle: Bundle, threads: int | None = None, **options: Any) -> Backend:
        """The backend for this pair, not yet loaded (use it in a `with`, or `activate()`).
        `options` are the backend's own (e.g. TensorRT's cuda_graph, Triton's url)."""
        return backend_class(self.backend)(bundle, self.form, self.precision, threads, **options)


def form_of(backend: str, name: str) -> Form:
    """A form by name: from the table of forms, or one the backend brings itself (`own_forms`)."""
    spec = FORMS.get(name) or next((f for f in backend_class(backend).own_forms if f.name == name), None)
    if spec is None:
        raise KedgeError(f"unknown form {name!r}: choose from {', '.join(FORMS)}")
    return spec


def pair(backend: str, form_name: str, precision: str | None = None) -> Pair:
    spec = form_of(backend, form_name)
    return Pair(backend, spec, precision or spec.precision)


def backends_for(spec: Form) -> list[str]:
    """Registered backends that declare they run `spec` (whether or not usable here)."""
    return [n for n in names() if backend_class(n).runs(spec)]


def runnable_pairs(bundle: Bundle, backends: list[str] | None = None) -> list[Pair]:
    """Every (backend, form, precision) this machine can run from the forms the bundle holds,
    in registry order. Without `backends`, only the checked ones (parity and the golden check
    judge them): a reference or a server runs only when named."""
    pairs: list[Pair] = []
    for name in backends or [n for n in names() if n not in REFERENCES]:  # never imported unless named
        cls = backend_class(name)
        if cls.problem() is not None or (backends is None and not cls.checked):
            continue
        pairs.extend(Pair(name, spec, p) for spec in cls.forms_in(bundle) for p in cls.precisions(spec))
    return pairs
