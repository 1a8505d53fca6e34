"""Images in, class probabilities out: the path `kedge infer` takes, for one model or several.

Files are decoded and preprocessed on a small thread pool while the backend runs the
previous batch (OpenCV and the inference engines release the GIL, so the two
overlap). Results come back in input order. A file that cannot be used becomes a
`Failure` naming it and the problem; the rest go on.
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend
from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.checks.choice import choose
from kedge.runtime.envelope.gate import GATE_FIELDS, Check, bundle_envelope
from kedge.runtime.errors import ImageError, KedgeError, safe_name
from kedge.runtime.inputs.preprocess import INPUT_SHAPE, preprocess, read_bytes


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]
    backend: str
    form: str
    input_sha256: str = ""  # of the file's bytes, for the audit trail
    check: Check | None = None  # against the bundle's envelope; None: the bundle has none
    fallback: str = ""  # why the float form ran: no INT8 pair passed its golden check here ("" otherwise)

    @property
    def withheld(self) -> bool:
        """Outside the envelope: the class is not given (docs/envelope.md)."""
        return self.check is not None and not self.check.inside

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "probabilities": self.probabilities,
                "backend": self.backend, "form": self.form, "fallback": self.fallback}

    def gate(self) -> dict[str, Any]:
        """The envelope's fields of this reading (None where the bundle has no envelope)."""
        fields = dict.fromkeys(GATE_FIELDS) if self.check is None else self.check.as_dict()
        return {**fields, "withheld": self.withheld}


@dataclass(frozen=True)
class Failure:
    path: str
    problem: str


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


Decoded = tuple[np.ndarray, str] | str  # (tensor, sha256 of the bytes), or the problem


def decode_ahead(paths: Sequence[Path], workers: int, ahead: int,
                 reduced: bool = True) -> Iterator[tuple[Path, Decoded]]:
    """(path, (tensor, sha256)) or (path, problem) in input order, decoding up to `ahead`
    files in advance on `workers` threads (0: decode inline, one file at a time).
    `reduced=False` decodes large JPEGs in full (preprocessing v1's decode)."""
    if workers <= 0:
        for path in paths:
            yield path, _decode(path, reduced)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="kedge-decode") as pool:
        queue: deque[tuple[Path, Future[Decoded]]] = deque()
        remaining = iter(paths)
        for path in remaining:
            queue.append((path, pool.submit(_decode, path, reduced)))
            if len(queue) >= ahead:
                break
        while queue:
            path, future = queue.popleft()
            following = next(remaining, None)
            if following is not None:
                queue.append((following, pool.submit(_decode, following, reduced)))
            yield path, future.result()


def _decode(path: Path, reduced: bool = True) -> Decoded:
    try:
        data = read_bytes(path)
        return preprocess(data, str(path), reduced), hashlib.sha256(data).hexdigest()
    except ImageError as err:
        return err.problem
    except MemoryError:
        return "needs more memory than is free"
    except Exception as err:  # a decoder bug must cost one file, not the run; its text may quote file bytes
        return f"cannot be decoded ({type(err).__name__})"


def check_outputs(backend: Backend, bundle: Bundle) -> None:
    """Run one blank image through a freshly opened form: a model whose output does not
    match kedge.json's class list is refused at load, before any file is classified."""
    try:
        outputs = np.asarray(backend.infer(np.zeros((1, *INPUT_SHAPE), np.float32)))
    except Exception as err:  # the engines raise their own types for a graph that does not fit
        raise KedgeError(f"{bundle.path}: the model does not run on one {INPUT_SHAPE} image "
                         f"({type(err).__name__})") from None
    if outputs.shape != (1, len(bundle.classes)):
        raise KedgeError(f"{bundle.path}: the model gives outputs of shape {outputs.shape[1:]}, "
                         f"kedge.json lists {len(bundle.classes)} classes; refused")


def _kedge_version() -> str:
    import kedge

    return kedge.__version__


class Predictor:
    """A bundle opened on one (backend, form, precision), chosen by `choose`. The backend kind
    comes from the chosen pair, never from a display string; `options` are the backend's own
    (TensorRT's cuda_graph, the Triton server's url)."""

    def __init__(self, bundle: Bundle, backend: str = "auto", precision: str | None = None,
                 threads: int | None = None, allow_unverified: bool = False, **options: Any) -> None:
        self.bundle = bundle
        self.choice = choose(bundle, backend, precision, allow_unverified, threads, **options)
        self.runner = self.choice.pair.open(bundle, threads, **options).activate()
        try:  # a served model is checked too: its class count may not be the bundle's
            check_outputs(self.runner, bundle)
        except BaseException:
            self.runner.close()
            raise
        self.classes = bundle.classes
        self.envelope = bundle_envelope(bundle)  # image statistics only: the same for every form and backend

    @property
    def backend_name(self) -> str:
        return self.choice.pair.backend

    @property
    def description(self) -> str:
        """What runs, for the line on stderr: 'openvino onnx-int8 int8', or the Triton server."""
        return self.runner.label

    def predict(self, paths: Sequence[Path], batch_size: int = 8, workers: int | None = None,
                progress: Any = None, reduced: bool = True) -> Iterator[Prediction | Failure]:
        """Predictions and failures in input order; `progress` is called once per file."""
        if batch_size < 1:
            raise KedgeError(f"--batch-size {batch_size}: must be at least 1")
        workers = default_workers() if workers is None else workers
        pending: list[tuple[Path, Decoded]] = []
        for item in decode_ahead(paths, workers, ahead=2 * batch_size, reduced=reduced):
            pending.append(item)
            if sum(not isinstance(x, str) for _, x in pending) == batch_size:
                yield from self._flush(pending, progress)
                pending = []
        yield from self._flush(pending, progress)

    def _flush(self, pending: list[tuple[Path, Decoded]], progress: Any) -> Iterable[Prediction | Failure]:
        tensors = [x[0] for _, x in pending if not isinstance(x, str)]
        probabilities = iter(self.runner.infer(np.stack(tensors)) if tensors else [])
        checks = iter(self.envelope.check(np.stack(tensors)) if self.envelope is not None and tensors
                      else [None] * len(tensors))
        results: list[Prediction | Failure] = []
        for path, item in pending:
            if isinstance(item, str):
                results.append(Failure(safe_name(path), item))
            else:
                p = next(probabilities)
                results.append(Prediction(safe_name(path), self.classes[int(np.argmax(p))],
                                          {c: float(v) for c, v in zip(self.classes, p, strict=True)},
                                          self.backend_name, self.choice.form.name, item[1], next(checks),
                                          self.choice.reason if self.choice.fallback else ""))
            if progress is not None:
                progress()
        return results

    def audit_entry(self, prediction: Prediction) -> dict[str, Any]:
        """What the audit trail records for one reading (no pixels, no identifiers)."""
        return {"input_sha256": prediction.input_sha256, "model": self.bundle.name,
                "form": prediction.form, "form_sha256": self.form_sha256, "backend": prediction.backend,
                "precision": self.choice.pair.precision, "verified": self.choice.verified,
                "runtime": self.runtime_version(), "label": prediction.label,
                "probabilities": prediction.probabilities, "kedge": _kedge_version(), **prediction.gate()}

    @functools.cached_property
    def form_sha256(self) -> str | None:
        """sha256 of the file the form runs from (hashed once: an engine can be large)."""
        return self.runner.file_sha256()

    def runtime_version(self) -> str:
        return self.runner.runtime_version()

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Readings:
    """What `kedge infer` found: per image, one Prediction per model (in model order)."""

    models: list[str]
    classes: list[str]  # every model's classes, in first-seen order (the CSV columns)
    per_image: list[list[Prediction]]
    failures: list[Failure]
    unchecked: list[str] = field(default_factory=list)  # models whose bundle has no envelope
    fallbacks: list[str] = field(default_factory=list)  # one line per model that ran its float form, and why

    @property
    def withheld(self) -> int:
        """How many readings (image, model) were outside their model's envelope."""
        return sum(p.withheld for row in self.per_image for p in row)


def classify(bundles: Sequence[Bundle], paths: Sequence[Path], backend: str = "auto", precision: str | None = None,
             threads: int | None = None, batch_size: int = 8, workers: int | None = None,
             options: dict[str, Any] | None = None, allow_unverified: bool = False, reduced: bool = True,
             audit: Any = None, progress: Any = None, log: Any = None) -> Readings:
    """Every image through every bundle, one model at a time (one model's memory at once).
    `options` are the backend's (Predictor); `log` gets one line per model saying what runs
    and why; `audit` is an AuditLog."""
    results: list[list[Prediction | Failure]] = []
    fallbacks: list[str] = []
    unchecked = []
    for bundle in bundles:
        with Predictor(bundle, backend, precision, threads, allow_unverified, **(options or {})) as predictor:
            if log is not None:
                log(f"{bundle.name}: {predictor.description} ({predictor.choice.reason})")
            if predictor.choice.fallback:
                fallbacks.append(f"{bundle.name}: {predictor.description}: {predictor.choice.reason}")
            if predictor.envelope is None:
                unchecked.append(bundle.name)
            found = []
            for result in predictor.predict(paths, batch_size, workers, progress=progress, reduced=reduced):
                if audit is not None and isinstance(result, Prediction):
                    audit.record(predictor.audit_entry(result))
                found.append(result)
            results.append(found)
    failures = [r for r in results[0] if isinstance(r, Failure)]  # decoding failures are the same for every model
    per_image = [[r for r in row if isinstance(r, Prediction)] for row in zip(*results, strict=True)]
    return Readings([b.name for b in bundles], list(dict.fromkeys(c for b in bundles for c in b.classes)),
                    [row for row in per_image if row], failures, unchecked, fallbacks)


GATE_COLUMNS = ("inside", "envelope_percentile", "envelope_distance", "nearest_source", "withheld")


def render(readings: Readings, fmt: str, show_outside: bool = False) -> str:
    """The readings as `json`, `csv` or `text` (one line per image, every model's answer).

    A reading outside its model's envelope never gives its class; its probabilities
    only with `show_outside`."""
    import csv
    import io
    import json

    rows = [(p, name) for row in readings.per_image for p, name in zip(row, readings.models, strict=True)]
    if fmt == "json":
        return json.dumps([{**p.as_dict(), "model": name, **p.gate(), **_withheld(p, show_outside)}
                           for p, name in rows], indent=2, default=str)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "model", "label", *(f"p_{c}" for c in readings.classes), "backend", "form",
                         "fallback", *GATE_COLUMNS])
        for p, name in rows:
            shown = {**p.as_dict(), **_withheld(p, show_outside)}
            probabilities = shown["probabilities"] or {}
            gate = {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v)
                    for k, v in p.gate().items()}
            writer.writerow([p.path, name, shown["label"] or "", *(f"{probabilities[c]:.6f}" if c in probabilities
                                                                  else "" for c in readings.classes),
                             p.backend, p.form, p.fallback, *(gate[k] for k in GATE_COLUMNS)])
        return out.getvalue().rstrip("\n")
    lines = []
    for row in readings.per_image:
        answers = [_text_answer(p, name, show_outside) for p, name in zip(row, readings.models, strict=True)]
        if len(row) == 1:
            lines.append(f"{row[0].path}: {answers[0]}")
        else:
            lines.append(f"{row[0].path}: " + "; ".join(a if p.withheld else f"{name} {a}"
                                                        for p, name, a in zip(row, readings.models, answers,
                                                                              strict=True)))
    return "\n".join(lines)


def _withheld(p: Prediction, show_outside: bool) -> dict[str, Any]:
    """What an output row says instead of the answer of a reading outside the envelope."""
    if not p.withheld:
        return {}
    return {"label": None, "probabilities": p.probabilities if show_outside else None}


def _text_answer(p: Prediction, model: str, show_outside: bool) -> str:
    probabilities = "  ".join(f"{c} {v:.3f}" for c, v in p.probabilities.items())
    if p.check is None or not p.withheld:
        return f"{p.label}  ({probabilities})"
    shown = f" [probabilities, shown on request: {probabilities}]" if show_outside else ""
    return (f"{model}: outside the images this model was validated on (distance at {p.check.describe()}); "
            f"answer withheld{shown}")
