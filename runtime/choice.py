"""Which (backend, form, precision) a bundle runs on: `--backend`, `--precision` and `auto`.

`auto` picks the fastest pair that PASSED parity for this bundle, never one that
failed or was never checked. Speed is measured, not assumed: each verified pair runs
a few batch-1 inferences (a short measurement, like TensorRT's timing cache), and the
result is cached per machine and bundle in ~/.cache/kedge/auto/, keyed by the CPU,
the backends' versions, the threads and the sha256 of every candidate file, so the
measurement happens once and is redone when any of them changes.

A pair named explicitly (--backend/--precision) that failed parity or was never
checked is refused with one line unless --allow-unverified is given. Refusing, not
warning, because kedge's answers are read by scripts (--json/--csv) where a warning
on stderr goes unseen; the flag makes running an unchecked form a visible decision.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.backends import backend_class, names
from kedge.runtime.backends.base import cache_root
from kedge.runtime.bundle import Bundle, atomic_write_json
from kedge.runtime.errors import KedgeError
from kedge.runtime.forms import FORMS, PRECISIONS, Pair, runnable_pairs
from kedge.runtime.parity import PASSED, UNCHECKED, status

TIMED_RUNS = 10  # batch-1 inferences per pair after 3 warm-up runs: enough to rank forms 1.3x apart


@dataclass(frozen=True)
class Choice:
    pair: Pair
    reason: str  # one line: why this pair, for the user and the audit trail
    verified: bool = True

    @property
    def form(self) -> Any:
        return self.pair.form


def choose(bundle: Bundle, backend: str = "auto", precision: str | None = None, allow_unverified: bool = False,
           threads: int | None = None) -> Choice:
    """Turn --backend/--precision into one pair of this bundle (see the module docstring)."""
    if backend != "auto" and backend not in names():
        raise KedgeError(f"--backend {backend!r}: choose from auto, {', '.join(names())}")
    if precision is not None and precision not in PRECISIONS:
        raise KedgeError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if backend != "auto":
        problem = backend_class(backend).problem()
        if problem is not None:
            raise KedgeError(f"--backend {backend}: {problem}")
    candidates = [p for p in runnable_pairs(bundle, None if backend == "auto" else [backend])
                  if precision is None or p.precision == precision]
    if not candidates:
        raise KedgeError(_nothing_to_run(bundle, backend, precision))
    verified = [p for p in candidates if status(bundle, p.key)[0] == PASSED]
    named = backend != "auto" or precision is not None
    if not verified:
        first = candidates[0]
        state, detail = status(bundle, first.key)
        what = f"{first} {'FAILED parity' if state != UNCHECKED else 'was never parity-checked'}: {detail}"
        if state == UNCHECKED and not named:  # the detail is the `kedge parity` hint that the message ends with
            what = f"{first} was never parity-checked"
        if not (named and allow_unverified):
            hint = ("pass --allow-unverified to run it anyway" if named else
                    f"run `kedge parity {bundle.path} --data DIR --split test`, or name a pair with --backend/"
                    "--precision and --allow-unverified")
            prefix = "" if named else "no (backend, form) pair passed parity; "
            raise KedgeError(f"{bundle.path}: {prefix}{what}; {hint}")
        return Choice(first, f"UNVERIFIED, run because --allow-unverified was given: {what}", verified=False)
    if len(verified) == 1:
        only = verified[0]
        why = "requested" if named else "the only pair that passed parity here"
        return Choice(only, f"{why}; parity {status(bundle, only.key)[1]}")
    timings, cached = measure(bundle, verified, threads)
    ranked = sorted(verified, key=lambda p: timings[p.key])
    best, runner_up = ranked[0], ranked[1]
    return Choice(best, f"fastest of {len(verified)} pairs that passed parity"
                        f"{' among those requested' if named else ''}, {timings[best.key]:.1f} ms at batch 1 "
                        f"(next {runner_up} {timings[runner_up.key]:.1f} ms; "
                        f"{'measured earlier on this machine' if cached else 'measured just now'})")


def _nothing_to_run(bundle: Bundle, backend: str, precision: str | None) -> str:
    if precision is not None and not any(f.precision == precision and f.artifact in bundle.manifest.get(
            "artifacts", {}) for f in FORMS.values()) and precision != "bf16":
        flag = {"fp32": "", "fp16": " --fp16", "int8": " --int8 --calib DIR"}[precision]
        return f"{bundle.path}: no {precision} ONNX form; make it with `kedge export {bundle.path}{flag}`"
    if backend == "tensorrt":
        what = f"{precision} engine" if precision else "engine"
        hint = f" --{precision}" if precision and precision not in ("fp32", "bf16") else ""
        return f"{bundle.path}: no {what} for this device; build one with `kedge export {bundle.path} --engine{hint}`"
    who = "any backend usable here" if backend == "auto" else backend
    return f"{bundle.path}: {who} cannot run {precision or 'any form'} from the forms this bundle holds"


def measure(bundle: Bundle, pairs: list[Pair], threads: int | None) -> tuple[dict[str, float], bool]:
    """Median batch-1 milliseconds of each pair, from the per-machine cache when the key matches."""
    from kedge.runtime.info import cpu_info

    cpu = cpu_info()
    key = {"cpu": cpu["model"], "cores": cpu["cores"], "flags": sorted(k for k, v in cpu["int8_features"].items() if v),
           "backends": {p.backend: backend_class(p.backend).version() for p in pairs}, "threads": threads,
           "pairs": {p.key: form_identity(bundle, p) for p in pairs}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_root() / "auto" / f"{bundle.name}-{digest}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key and set(saved.get("ms", {})) == set(key["pairs"]):
            return {k: float(v) for k, v in saved["ms"].items()}, True
    except (OSError, ValueError):
        pass
    batch = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    timings = {}
    for p in pairs:
        with p.open(bundle, threads) as runner:
            for _ in range(3):
                runner.infer(batch)
            runs = []
            for _ in range(TIMED_RUNS):
                start = time.perf_counter()
                runner.infer(batch)
                runs.append((time.perf_counter() - start) * 1000)
        timings[p.key] = float(np.median(runs))
    with contextlib.suppress(OSError):  # a read-only home: measure again next time rather than fail
        atomic_write_json(path, {"key": key, "ms": timings,
                                 "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return timings, False


def form_identity(bundle: Bundle, pair: Pair) -> str:
    """What identifies the file a pair runs: the sha256 kedge.json records for an ONNX form;
    for an engine, its file name and the sha256 of the ONNX it was built from."""
    if pair.form.artifact is not None:
        relative = bundle.manifest.get("artifacts", {}).get(pair.form.artifact, "")
        return str(bundle.manifest.get("files", {}).get(relative, relative))
    runner = pair.open(bundle)
    path = Path(runner.locate())
    from kedge.runtime.engines import read_sidecar

    return f"{path.name}:{read_sidecar(path).source_onnx_sha256}"
