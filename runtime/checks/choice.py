"""Which (backend, form, precision) a bundle runs on: `--backend`, `--precision` and `auto`.

A pair is used only when two checks passed: parity against the Keras original, recorded
at export for the exact file (runtime/checks/parity.py), and the bundle's golden set on THIS
machine (runtime/checks/golden.py). The second exists because the same file answers
differently on another CPU: 8-bit INT8 weights saturate on x86 CPUs without VNNI, and
parity recorded on the export machine cannot see that. The first time a bundle runs
on a machine, the candidate pairs run the golden set side by side, in interleaved
chunks whose times are also the speed measurement (so load hits them alike); the results are
cached in ~/.cache/kedge/auto/, keyed by the CPU and its INT8 features, the backends'
versions, the threads, the golden set and the sha256 of every file, so later runs
cost nothing and any change redoes them.

`auto` prefers the INT8 pairs; when none passes here it falls back to the bundle's
float form and says why (stderr and every JSON/CSV row). Among passing pairs it picks
the fastest, but pairs within TIE of the fastest count as equally fast and the first
in the registry's fixed order wins, so the pick (and so the answers) do not depend on
how busy the machine was while it measured.

A pair named explicitly (--backend/--precision) that failed either check, or was never
checked, is refused with one line unless --allow-unverified is given. Refusing, not
warning, because kedge's answers are read by scripts (--json/--csv) where a warning
on stderr goes unseen; the flag makes running an unchecked form a visible decision.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kedge.runtime.backends import Pair, backend_class, names, runnable_pairs
from kedge.runtime.backends.base import cache_root
from kedge.runtime.bundle.forms import FORMS, PRECISIONS, onnx_forms, options_that_make
from kedge.runtime.bundle.manifest import Bundle, atomic_write_json
from kedge.runtime.checks.parity import PASSED, UNCHECKED, status
from kedge.runtime.cpu import cpu_info
from kedge.runtime.errors import KedgeError

CHUNK = 8  # golden images per timed call: kedge infer's default batch size
# Idle time before each timed chunk. ONNX Runtime's worker threads spin for a while after a
# run; on 2 cores they slowed the next pair timed. Measured on the GRU's six pairs, interleaved:
# ONNX Runtime's INT8 pair timed 22.0 ms per image with no pause against 16.9 ms with only two
# pairs open, which let OpenVINO's (21.3 ms) win; `kedge bench`, one pair at a time, agrees with
# the paused figures (docs/results/2026-12-resnet50-gru-int8.md).
SETTLE_SECONDS = 0.02
TIE = 0.05  # pairs within 5 % of the fastest are equally fast (timing noise): the fixed order decides
FAST_PRECISION = "int8"


@dataclass
class Here:
    """One pair's checks on this machine: the golden set, and its speed (ms per image at
    batch CHUNK, the fastest golden chunk)."""

    passed: bool | None  # None: not checkable here (no golden set, or this OpenCV draws other pixels)
    detail: str
    ms: float | None = None
    golden: dict[str, Any] | None = None  # the GoldenResult, as JSON
    cached: bool = False  # read from the per-machine cache, not measured in this run


@dataclass(frozen=True)
class Choice:
    pair: Pair
    reason: str  # one line: why this pair, for the user and the audit trail
    verified: bool = True
    fallback: bool = False  # auto ran the float form because no INT8 pair passed its golden check here

    @property
    def form(self) -> Any:
        return self.pair.form


def choose(bundle: Bundle, backend: str = "auto", precision: str | None = None, allow_unverified: bool = False,
           threads: int | None = None, **options: Any) -> Choice:
    """Turn --backend/--precision into one pair of this bundle (see the module docstring).
    `options` are the backend's own, as `Pair.open` takes them."""
    if backend != "auto" and backend not in names():
        raise KedgeError(f"--backend {backend!r}: choose from auto, {', '.join(names())}")
    if precision is not None and precision not in PRECISIONS:
        raise KedgeError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if backend != "auto":
        cls = backend_class(backend)
        problem = cls.problem()
        if problem is not None:
            raise KedgeError(f"{f'--backend {backend}' if cls.checked or cls.reference else backend}: {problem}")
        if not cls.checked:
            return _as_named(bundle, backend, threads, options)
    candidates = [p for p in runnable_pairs(bundle, None if backend == "auto" else [backend])
                  if precision is None or p.precision == precision]
    if not candidates:
        raise KedgeError(_nothing_to_run(bundle, backend, precision))
    named = backend != "auto" or precision is not None
    recorded = [p for p in candidates if status(bundle, p)[0] == PASSED]
    if not recorded:
        return _unverified(bundle, candidates[0], named, allow_unverified)
    tiers = [[p for p in recorded if p.precision == FAST_PRECISION], [p for p in recorded
                                                                    if p.precision != FAST_PRECISION]]
    failed: list[tuple[Pair, Here]] = []
    for tier in (t for t in tiers if t):
        here = check_here(bundle, tier, threads)
        usable = [p for p in tier if here[p.key].passed is not False]
        failed += [(p, here[p.key]) for p in tier if here[p.key].passed is False]
        if usable:
            return _fastest(usable, here, failed, named)
    pair, result = failed[0]
    what = f"{pair} passed parity at export but FAILED its golden check on this machine: {result.detail}"
    if named and allow_unverified:
        return Choice(pair, f"UNVERIFIED, run because --allow-unverified was given: {what}", verified=False)
    hint = "pass --allow-unverified to run it anyway" if named else (
        "no pair of this bundle is checked to answer right here; see `kedge verify " + str(bundle.path) + "`")
    raise KedgeError(f"{bundle.path}: {what}; {hint}")


def _as_named(bundle: Bundle, backend: str, threads: int | None, options: dict[str, Any]) -> Choice:
    """A backend no check covers (parity's reference, a server) runs its one form as named;
    --precision does not apply to it. Where the bundle holds none of its forms, its own form
    is opened anyway, so that loading it says what is missing (e.g. a model.keras left out)."""
    cls = backend_class(backend)
    held = cls.forms_in(bundle) or list(cls.own_forms)
    if not held:
        raise KedgeError(_nothing_to_run(bundle, backend, None))
    pair = Pair(backend, held[0], cls.precisions(held[0])[0])
    return Choice(pair, pair.open(bundle, threads, **options).standing())


def _unverified(bundle: Bundle, first: Pair, named: bool, allow_unverified: bool) -> Choice:
    state, detail = status(bundle, first)
    what = f"{first} {'FAILED parity' if state != UNCHECKED else 'was never parity-checked'}: {detail}"
    if state == UNCHECKED and not named:  # the detail ends with the `kedge parity` hint the message ends with
        what = f"{first} was never parity-checked ({detail.split('; run `kedge parity')[0]})"
    if not (named and allow_unverified):
        hint = ("pass --allow-unverified to run it anyway" if named else
                f"run `kedge parity {bundle.path} --data DIR --split test`, or name a pair with --backend/"
                "--precision and --allow-unverified")
        prefix = "" if named else "no (backend, form) pair passed parity; "
        raise KedgeError(f"{bundle.path}: {prefix}{what}; {hint}")
    return Choice(first, f"UNVERIFIED, run because --allow-unverified was given: {what}", verified=False)


def _fastest(usable: list[Pair], here: dict[str, Here], failed: list[tuple[Pair, Here]], named: bool) -> Choice:
    """The pick among pairs that passed here, and the one line that says why."""
    fallback = ""
    if failed and all(p.precision == FAST_PRECISION for p, _ in failed) and usable[0].precision != FAST_PRECISION:
        worst = failed[0]
        fallback = (f"FALLBACK to the float form: no {FAST_PRECISION.upper()} pair passed its golden check on this "
                    f"machine ({worst[0]}: {worst[1].detail}); ")
    unchecked = [p for p in usable if here[p.key].passed is None]
    checked = "passed parity and its golden check here" if not unchecked else \
        f"passed parity (NOT checked on this machine: {here[unchecked[0].key].detail})"
    if len(usable) == 1:
        only = usable[0]
        why = "requested" if named else "the only pair that " + checked
        return Choice(only, f"{fallback}{why}", verified=not unchecked, fallback=bool(fallback))
    ms = {p.key: float(here[p.key].ms or 0.0) for p in usable}
    best_ms = min(ms.values())
    best = next(p for p in usable if ms[p.key] <= best_ms * (1 + TIE))  # fixed order among near-equals
    others = ", ".join(f"{p} {ms[p.key]:.1f} ms" for p in usable if p is not best)
    when = "measured earlier on this machine" if all(here[p.key].cached for p in usable) else "measured just now"
    return Choice(best, f"{fallback}fastest of {len(usable)} pairs that {checked}"
                        f"{' among those requested' if named else ''}: "
                        f"{ms[best.key]:.1f} ms per image at batch {CHUNK}, "
                        f"pairs within {TIE:.0%} of the fastest count as equal (others: {others}; {when})",
                  verified=not unchecked, fallback=bool(fallback))


def _nothing_to_run(bundle: Bundle, backend: str, precision: str | None) -> str:
    options = options_that_make(precision) if precision is not None else None  # None: no file is at it (bf16)
    if options is not None and not any(f.precision == precision and bundle.has(str(f.artifact))
                                       for f in onnx_forms()):
        hint = f" {options}" if options else ""
        return f"{bundle.path}: no {precision} ONNX form; make it with `kedge export {bundle.path}{hint}`"
    if backend == "tensorrt":
        what = f"{precision} engine" if precision else "engine"
        options = options_that_make(precision or "fp32", engine=True) or options_that_make("fp32", True)
        return f"{bundle.path}: no {what} for this device; build one with `kedge export {bundle.path} {options}`"
    who = "any backend usable here" if backend == "auto" else backend
    return f"{bundle.path}: {who} cannot run {precision or 'any form'} from the forms this bundle holds"


def machine_key(bundle: Bundle, pairs: Sequence[Pair], threads: int | None) -> dict[str, Any]:
    """What a per-machine result depends on: the CPU and its INT8 features, the backends'
    versions, the threads, how speed is timed and the bundle's golden set."""
    cpu = cpu_info()
    golden = bundle.golden
    return {"cpu": cpu["model"], "cores": cpu["cores"],
            "flags": sorted(k for k, v in cpu["int8_features"].items() if v),
            "backends": {b: backend_class(b).version() for b in sorted({p.backend for p in pairs})},
            "threads": threads, "timing": {"chunk": CHUNK, "settle_seconds": SETTLE_SECONDS},
            "golden": hashlib.sha256(json.dumps(golden, sort_keys=True).encode()).hexdigest() if golden else None}


def _cache_path(bundle: Bundle, key: dict[str, Any]) -> Any:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / "auto" / f"{bundle.name}-{digest}.json"


def check_here(bundle: Bundle, pairs: Sequence[Pair], threads: int | None = None) -> dict[str, Here]:
    """Each pair's golden check and speed on this machine, from the per-machine
    cache when its key and the pair's file match, else measured now (and cached)."""
    path, key, identities, saved = _cached(bundle, pairs, threads)
    results = {k: v for k, v in _from_cache(pairs, identities, saved).items()
               if v.ms is not None or len(pairs) == 1 or v.passed is False}
    todo = [p for p in pairs if p.key not in results]
    if todo:
        results.update(_measure(bundle, todo, threads, timed=len(pairs) > 1))
        saved.update({k: {"identity": identities[k], "passed": r.passed, "detail": r.detail, "ms": r.ms,
                          "golden": r.golden}
                      for k, r in results.items()})
        with contextlib.suppress(OSError):  # a read-only home: check again next time rather than fail
            atomic_write_json(path, {"key": key, "pairs": saved, "at": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds")})
    return results


def _cached(bundle: Bundle, pairs: Sequence[Pair], threads: int | None) -> tuple[Any, dict[str, Any], dict[str, str],
                                                                               dict[str, Any]]:
    """(cache file, its key, each pair's file identity, the cached entries by pair key)."""
    key = machine_key(bundle, pairs, threads)
    path = _cache_path(bundle, key)
    identities = {p.key: p.identity(bundle) for p in pairs}
    saved: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if loaded.get("key") == key:
            saved = {k: v for k, v in loaded.get("pairs", {}).items() if isinstance(v, dict)}
    return path, key, identities, saved


def _from_cache(pairs: Sequence[Pair], identities: dict[str, str], saved: dict[str, Any]) -> dict[str, Here]:
    return {p.key: Here(entry.get("passed"), str(entry.get("detail", "")), entry.get("ms"), entry.get("golden"),
                        cached=True)
            for p in pairs if (entry := saved.get(p.key)) and entry.get("identity") == identities[p.key]}


def checked_here(bundle: Bundle, pairs: Sequence[Pair], threads: int | None = None) -> dict[str, Here]:
    """What this machine's cache already knows of these pairs (nothing is run): for
    `kedge info`, which must stay quick."""
    _, _, identities, saved = _cached(bundle, pairs, threads)
    return _from_cache(pairs, identities, saved)


def _measure(bundle: Bundle, pairs: Sequence[Pair], threads: int | None, timed: bool) -> dict[str, Here]:
    """Open the pairs together and run the golden set through them in interleaved chunks of
    CHUNK images: the outputs are the golden check, and the chunk times (the fastest of
    them, per image) are the speed measurement, so one pass does both and a change of load
    hits every pair alike. Without a golden set, synthetic chunks are timed instead."""
    from tqdm import tqdm

    from kedge.runtime.checks.golden import GoldenBatch

    golden = bundle.golden
    batch = GoldenBatch(golden) if golden else None
    tensors = batch.tensors if batch is not None else \
        np.random.default_rng(0).random((2 * CHUNK, 224, 224, 3), dtype=np.float32)
    chunks = [tensors[i:i + CHUNK] for i in range(0, len(tensors), CHUNK)]
    outputs: dict[str, list[np.ndarray]] = {p.key: [] for p in pairs}
    seconds: dict[str, list[float]] = {p.key: [] for p in pairs}
    with contextlib.ExitStack() as stack:
        sessions = {}
        for p in tqdm(pairs, desc=f"{bundle.name}: first use here, loading {len(pairs)} pairs", unit="pair",
                      leave=False, disable=None):
            sessions[p.key] = stack.enter_context(p.open(bundle, threads))
            sessions[p.key].infer(tensors[:1])  # warm-up: first-run allocations are not the pair's speed
        for chunk in tqdm(chunks, desc=f"{bundle.name}: golden check and timing", unit="chunk", leave=False,
                          disable=None):
            for key, session in sessions.items():
                if timed:
                    time.sleep(SETTLE_SECONDS)
                start = time.perf_counter()
                outputs[key].append(np.asarray(session.infer(chunk)))
                seconds[key].append((time.perf_counter() - start) / len(chunk))
    results: dict[str, Here] = {}
    for p in pairs:
        if batch is None:
            results[p.key] = Here(None, "the bundle has no golden set (`kedge golden BUNDLE` where it was exported)")
        else:
            results[p.key] = _golden_check(bundle, p, np.concatenate(outputs[p.key]), batch)
        if timed:
            results[p.key].ms = 1000 * min(seconds[p.key])
    return results


def _golden_check(bundle: Bundle, pair: Pair, outputs: np.ndarray, batch: Any) -> Here:
    from kedge.runtime.bundle.engines import source_form_of
    from kedge.runtime.checks.golden import compare_form, stored_for

    golden = batch.golden
    source = source_form_of(bundle, pair)
    target = source or pair.form.name
    source_sha = bundle.sha256(FORMS[target].artifact or "")
    if not batch.same_pixels.any():  # not a verdict on the form: this OpenCV draws other pixels
        return Here(None, "the golden images could not be drawn again here (another OpenCV build drew other "
                          "pixels), so this machine cannot check the form")
    missing = stored_for(golden, target, source_sha)
    if missing:  # a golden set that cannot judge this file: the file is not the one that was checked
        return Here(False, f"cannot be checked here: {missing}")
    result = compare_form(golden, pair.form.name, pair.precision, outputs, batch.same_pixels, source)
    if result is None:  # stored_for above already said so; kept for the type
        return Here(False, f"cannot be checked here: the golden set stores nothing for {target}")
    return Here(result.passed, result.detail(golden["reference"]), golden=dataclasses.asdict(result))
