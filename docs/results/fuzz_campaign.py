"""A seeded fuzz campaign against kedge's input walls, larger than tests/test_fuzz.py's.

Each seed makes the test suite's families afresh (tests/test_fuzz.py: mutated
PNG/JPEG/BMP/TIFF, DICOM variants, tampered bundles, random manifest edits) plus the
families of issue 21: deflated DICOMs with a pad byte, large deflated DICOMs, a
rescale slope or intercept alone, junk after a PNG or JPEG signature, images whose
decode passes the memory limit, bundles with links, loops, FIFOs or control
characters in class names, and served tensors with NaN, Inf or out-of-range values.
Every input runs in a worker process with a per-input time limit; the worker's
peak RSS (VmHWM, reset per family through /proc/self/clear_refs) is reported.

    python docs/results/fuzz_campaign.py --seeds 2101-2125            # about 10,000 inputs
    python docs/results/fuzz_campaign.py --seeds 7 --families images,dicom

Per family: inputs, refused, tracebacks (an exception other than kedge's one-line
errors), hangs (over the time limit), crashes (a worker killed by a signal), header
leaks (the planted patient ID in any output), tampered bundles accepted, peak RSS.
Exit status 1 when any of those counts is not 0.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"  # docs/results/ is two below the repository
FAMILIES = ("images", "dicom", "junk", "bundles", "tensors")
PER_INPUT_S = 20
COUNTS = ("inputs", "refused", "tracebacks", "hangs", "crashes", "leaks", "accepted_tampered")


class Hang(Exception):
    """An input outlived PER_INPUT_S."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def _peak_mib() -> float:
    with open("/proc/self/status") as status:
        kib = [line.split()[1] for line in status if line.startswith("VmHWM:")][0]
    return int(kib) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # "5" resets VmHWM to the current RSS
        handle.write("5")


# ---------------------------------------------------------------- inputs, per family


def _images(seed: int, rng) -> Iterator[tuple[str, bytes]]:
    import test_fuzz

    test_fuzz.SEED = seed
    yield from test_fuzz.image_family(rng).items()


def _dicoms(seed: int, rng) -> Iterator[tuple[str, bytes]]:
    import numpy as np
    import test_fuzz
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from imagegen import dicom

    test_fuzz.SEED = seed
    yield from test_fuzz.dicom_family(rng).items()
    side = int(rng.integers(990, 1010))  # odd-length deflate streams get pydicom's pad byte
    stored = rng.integers(0, 4096, (side, side)).astype(np.uint16)
    yield f"deflated-padded-{side}.dcm", dicom(stored, 12, syntax=DeflatedExplicitVRLittleEndian,
                                               patient=test_fuzz.PATIENT)
    big = int(rng.integers(3000, 6000))
    yield f"deflated-large-{big}.dcm", dicom(np.zeros((big, big), np.uint16), 16,
                                             syntax=DeflatedExplicitVRLittleEndian, patient=test_fuzz.PATIENT)
    base = test_fuzz._dataset(dicom(stored[:64, :64], 12, patient=test_fuzz.PATIENT))
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        setattr(base, keyword, float(rng.choice([-1.0, 2.0, 500.0])))
        yield f"{keyword}-alone.dcm", test_fuzz._save(base)
        delattr(base, keyword)


def _junk(seed: int, rng) -> Iterator[tuple[str, bytes]]:
    import test_fuzz

    from imagegen import png_chunk

    for i in range(8):
        size = int(rng.integers(1 << 20, 24 << 20))
        yield f"png-zeros-{i}.png", test_fuzz.PNG_HEAD + bytes(size)
        yield f"jpeg-fill-{i}.jpg", b"\xff\xd8" + b"\xff" * size
    for colour, depth in ((6, 16), (2, 16), (2, 8), (4, 16)):  # declared huge: refused from the header
        side = int(rng.integers(12_000, 14_142))
        ihdr = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0)
        yield f"declared-{colour}-{depth}.png", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(
            b"IDAT", zlib.compress(bytes(4096))) + png_chunk(b"IEND", b"")


def _decode_all(family: str, seed: int, report: dict) -> None:
    """Preprocess every input of an image family in this process, each under the time limit."""
    import numpy as np
    import test_fuzz

    from kedge.runtime.errors import ImageError
    from kedge.runtime.inputs.preprocess import preprocess

    rng = np.random.default_rng(seed)
    source = {"images": _images, "dicom": _dicoms, "junk": _junk}[family]
    for name, data in source(seed, rng):
        report["inputs"] += 1
        signal.setitimer(signal.ITIMER_REAL, PER_INPUT_S)
        try:
            preprocess(data, name)
        except ImageError as err:
            report["refused"] += 1
            text = str(err)
            if test_fuzz.MARKER in text:
                report["leaks"] += 1
            if "\n" in text or not text.startswith(f"{name}: "):
                report["tracebacks"] += 1
                report.setdefault("examples", []).append(f"{name}: bad message")
        except Hang:
            report["hangs"] += 1
            report.setdefault("examples", []).append(f"{name}: hang")
        except Exception as err:
            report["tracebacks"] += 1
            report.setdefault("examples", []).append(f"{name}: {type(err).__name__}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _bundles(seed: int, report: dict, work: Path) -> None:
    """Tampered bundles (must all be refused in one line) and random manifest edits (one-line
    errors or a normal answer), through `kedge infer` in this process."""
    import numpy as np
    import test_fuzz
    from leanbundle import make_lean_bundle, tiny_onnx

    from imagegen import encode, pattern
    from kedge.runtime.bundle.manifest import load_bundle, new_bundle

    rng = np.random.default_rng(seed)
    data = work / "data"
    if not data.exists():
        from kedge.runtime.checks.synthetic import write_dataset

        write_dataset(data, per_class=4, seed=0)
    root = work / f"seed-{seed}"
    base = make_lean_bundle(root / "base", data, int8=False, parity=True)
    other = make_lean_bundle(root / "other", data, int8=False, parity=False)
    tiny_onnx(other / "model.onnx", seed=1)
    new_bundle(other, {k: v for k, v in load_bundle(other).manifest.items() if k not in ("files", "schema")})
    image = root / "knee.png"
    image.write_bytes(encode(pattern(64, 64, seed=seed), ".png"))
    tampered = test_fuzz.tampered_bundles(base, other, rng)
    for name, kind in (("loop", "loop"), ("manifest-link", "link"), ("model-fifo", "fifo")):
        folder = Path(shutil.copytree(base, root / name))
        if kind == "loop":
            (folder / "model.onnx").unlink()
            (folder / "model.onnx").symlink_to("x.onnx")
            (folder / "x.onnx").symlink_to("model.onnx")
        elif kind == "link":
            (folder / "kedge.json").rename(root / f"{name}.json")
            (folder / "kedge.json").symlink_to(root / f"{name}.json")
        else:
            (folder / "model.onnx").unlink()
            os.mkfifo(folder / "model.onnx")
        tampered[name] = folder
    runs = [(name, folder, True) for name, folder in tampered.items()]
    text = (base / "kedge.json").read_bytes()
    for i in range(60):
        edited = Path(shutil.copytree(base, root / f"m{i:03d}"))
        mutated = bytearray(text)
        for _ in range(int(rng.integers(1, 6))):
            mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
        (edited / "kedge.json").write_bytes(bytes(mutated))
        runs.append((f"mutated-{i}", edited, False))
    for name, folder, must_refuse in runs:
        report["inputs"] += 1
        signal.setitimer(signal.ITIMER_REAL, PER_INPUT_S)
        try:
            result = test_fuzz._infer(folder, image)
        except Hang:
            report["hangs"] += 1
            report.setdefault("examples", []).append(f"{name}: hang")
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        lines = result.stderr.splitlines()
        if result.exit_code != 0:
            report["refused"] += 1
        elif must_refuse:
            report["accepted_tampered"] += 1
            report.setdefault("examples", []).append(f"{name}: accepted")
        if not isinstance(result.exception, (SystemExit, type(None))) or any(
                not line.startswith("kedge: ") for line in lines) or len(lines) > 1:
            report["tracebacks"] += 1
            report.setdefault("examples", []).append(f"{name}: {result.exception!r}")
    shutil.rmtree(root, ignore_errors=True)


def _tensors(seed: int, report: dict) -> None:
    """What `kedge serve`'s model function does with hostile tensors (a stand-in model)."""
    import numpy as np

    from kedge.runtime.errors import KedgeError
    from kedge.runtime.serve import _infer_function

    class Runner:
        def infer(self, batch):
            return np.full((len(batch), 3), 1 / 3, np.float32)

    infer = _infer_function(Runner())
    rng = np.random.default_rng(seed)
    for _ in range(40):
        batch = rng.random((int(rng.integers(1, 5)), 224, 224, 3), dtype=np.float32)
        bad = rng.random() < 0.75
        if bad:
            flat = batch.reshape(-1)
            flat[rng.integers(0, flat.size, int(rng.integers(1, 50)))] = rng.choice(
                [np.nan, np.inf, -np.inf, 1.5, -0.01, 255.0])
        report["inputs"] += 1
        try:
            infer(batch)
        except KedgeError:
            report["refused"] += 1
            continue
        if bad:
            report["accepted_tampered"] += 1  # a hostile tensor answered
            report.setdefault("examples", []).append("tensor answered")


def worker(family: str, seed: int, work: Path) -> None:
    sys.path.insert(0, str(TESTS))
    signal.signal(signal.SIGALRM, _alarm)
    report = dict.fromkeys(COUNTS, 0)
    _reset_peak()
    start = time.monotonic()
    if family in ("images", "dicom", "junk"):
        _decode_all(family, seed, report)
    elif family == "bundles":
        _bundles(seed, report, work)
    else:
        _tensors(seed, report)
    report.update(peak_mib=_peak_mib(), seconds=time.monotonic() - start)
    print(json.dumps(report))


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="2101-2125", help="e.g. 7 or 2101-2125 or 1,5,9")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--work", type=Path, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--worker", nargs=2, metavar=("FAMILY", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kedge-fuzz-"))
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), work)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    families = args.families.split(",")
    totals = {f: dict.fromkeys(COUNTS, 0) | {"peak_mib": 0.0, "seconds": 0.0, "examples": []} for f in families}
    seeds = _seeds(args.seeds)
    for seed in seeds:
        for family in families:
            total = totals[family]
            try:
                done = subprocess.run([sys.executable, __file__, "--work", str(work), "--worker", family, str(seed)],
                                      capture_output=True, text=True, timeout=1800, env={**os.environ,
                                                                                         "KEDGE_CACHE": str(work)})
            except subprocess.TimeoutExpired:
                total["hangs"] += 1
                total["examples"].append(f"seed {seed}: worker timed out")
                continue
            if done.returncode < 0 or not done.stdout.strip():
                total["crashes"] += 1
                total["examples"].append(f"seed {seed}: worker exit {done.returncode} {done.stderr[-300:]!r}")
                continue
            part = json.loads(done.stdout.strip().splitlines()[-1])
            for key in COUNTS:
                total[key] += part[key]
            total["peak_mib"] = max(total["peak_mib"], part["peak_mib"])
            total["seconds"] += part["seconds"]
            total["examples"] += part.get("examples", [])[:3]
        print(f"seed {seed} done: {sum(t['inputs'] for t in totals.values())} inputs so far", file=sys.stderr,
              flush=True)
    print(f"seeds {args.seeds} ({len(seeds)}); per-input limit {PER_INPUT_S} s")
    print(f"{'family':<10}" + "".join(f"{k:>18}" for k in (*COUNTS, "peak_mib", "seconds")))
    for family, total in totals.items():
        print(f"{family:<10}" + "".join(f"{total[k]:>18}" for k in COUNTS)
              + f"{total['peak_mib']:>18.0f}{total['seconds']:>18.0f}")
    bad = [f for f, t in totals.items() if any(t[k] for k in COUNTS[2:])]
    print(f"all: {sum(t['inputs'] for t in totals.values())} inputs; problems in: {', '.join(bad) or 'none'}")
    for family in bad:
        print(f"  {family}: {totals[family]['examples'][:10]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
