"""Peak RSS of `kedge infer` on the largest inputs kedge accepts, one input per run.

The memory budget (docs/hardening.md): `kedge infer FILE` peaks at no more than
1.5 GB RSS on any single input within kedge's size limits, on the lean install
and a CPU backend. This script makes one input per family at those limits (a few
synthetic images of 200 megapixels, the largest junk file), runs `kedge infer` on
each in a fresh process with TensorFlow made unimportable, and prints the family,
the outcome and the peak RSS (the process's VmHWM, read as it exits).

    python docs/results/memory_budget.py --work /tmp/kedge-memory            # every family
    python docs/results/memory_budget.py --work /tmp/kedge-memory --only png-rgba16,dicom-deflated

Exit status 1 when a family peaks above the budget. It writes a few GB of images to
--work and takes minutes; it is a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

BUDGET_MIB = 1536  # 1.5 GB
SIDE = 14_142  # 14,142 x 14,142 = 199,996,164 pixels, just under kedge's 200 MP limit
TESTS = Path(__file__).resolve().parents[2] / "tests"  # docs/results/ is two below the repository

# Runs `kedge ARGS...` in-process with TensorFlow blocked (a lean install) and prints VmHWM as the
# process exits: the peak of this process only (ru_maxrss would include what the parent had at fork).
CHILD = """
import atexit, sys
[sys.modules.__setitem__(m, None) for m in ('tensorflow', 'tf_keras', 'keras')]
def peak():
    kib = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]
    sys.stderr.write(f'\\nvmhwm-kib {kib}\\n')
atexit.register(peak)
from kedge.cli import main
main(sys.argv[1:])
"""


def _image(channels: int, dtype: type, side: int = SIDE) -> np.ndarray:
    """A large image with structure (a gradient and stripes) that still compresses well."""
    peak = np.iinfo(dtype).max
    row = (np.arange(side, dtype=np.float64) / side * peak).astype(dtype)
    image = np.broadcast_to(row, (side, side)).copy()
    image[::97] = peak // 3
    return image if channels == 1 else np.ascontiguousarray(np.repeat(image[:, :, None], channels, axis=2))


def _encode(ext: str, channels: int, dtype: type, params: list[int] | None = None,
            side: int = SIDE) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import cv2

        ok, buffer = cv2.imencode(ext, _image(channels, dtype, side), params or [])
        assert ok, ext
        buffer.tofile(path)

    return write


def _dicom(deflated: bool, side: int = SIDE) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        sys.path.insert(0, str(TESTS))
        from imagegen import dicom  # the test suite's DICOM writer (pydicom)

        syntax = "1.2.840.10008.1.2.1.99" if deflated else "1.2.840.10008.1.2.1"
        path.write_bytes(dicom(_image(1, np.uint16, side), 16, window=(30000.0, 60000.0), syntax=syntax))

    return write


def _junk(path: Path) -> None:
    """The largest file kedge reads (MAX_FILE_BYTES): a PNG signature and header, then zeros."""
    import struct
    import zlib

    from kedge.runtime.inputs.limits import MAX_FILE_BYTES

    ihdr = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk)
        handle.write(bytes(MAX_FILE_BYTES - handle.tell()))  # real zeros, not a sparse file: read in full


FAMILIES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "png-grey8": ("png", _encode(".png", 1, np.uint8, [16, 1])),  # IMWRITE_PNG_COMPRESSION 1: quick
    "png-grey16": ("png", _encode(".png", 1, np.uint16, [16, 1])),
    "png-rgb8": ("png", _encode(".png", 3, np.uint8, [16, 1])),
    "png-rgba16": ("png", _encode(".png", 4, np.uint16, [16, 1])),
    "jpeg-rgb8": ("jpg", _encode(".jpg", 3, np.uint8, [1, 90])),
    "tiff-grey16": ("tif", _encode(".tif", 1, np.uint16, [259, 1])),  # uncompressed
    "tiff-rgb16": ("tif", _encode(".tif", 3, np.uint16, [259, 1])),
    "bmp-rgb8": ("bmp", _encode(".bmp", 3, np.uint8)),
    "dicom-native16": ("dcm", _dicom(deflated=False)),
    "dicom-deflated16": ("dcm", _dicom(deflated=True)),
    "junk-max-file": ("png", _junk),
    # the largest of each that the decode-memory limit (MAX_DECODE_BYTES) still accepts
    "png-rgb8-max": ("png", _encode(".png", 3, np.uint8, [16, 1], side=12_300)),
    "png-rgba16-max": ("png", _encode(".png", 4, np.uint16, [16, 1], side=7_650)),
    "tiff-grey16-max": ("tif", _encode(".tif", 1, np.uint16, [259, 1], side=13_370)),
    "bmp-rgb8-max": ("bmp", _encode(".bmp", 3, np.uint8, side=10_360)),
    "dicom-native16-max": ("dcm", _dicom(deflated=False, side=13_370)),
}


def measure(path: Path, model: str | None) -> tuple[int, float, str]:
    """(exit status, peak RSS in MiB, kedge's last stderr line) of `kedge infer path`."""
    argv = ["infer", str(path), "--quiet"] + (["--model", model] if model else [])
    result = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=1800)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    peak = next((int(line.split()[1]) / 1024 for line in reversed(lines) if line.startswith("vmhwm-kib")), -1.0)
    said = [line for line in lines if line.startswith("kedge: error:")] or [
        line for line in lines if not line.startswith("vmhwm-kib")]
    return result.returncode, peak, (said[0] if said else result.stdout.strip().splitlines()[-1])[:150]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="Folder for the generated inputs (default: a temporary one).")
    parser.add_argument("--only", help="Comma-separated families (default: all): " + ", ".join(FAMILIES))
    parser.add_argument("--model", help="Bundle to run (default: the models shipped with kedge).")
    parser.add_argument("--keep", action="store_true", help="Keep each input after measuring it.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kedge-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(FAMILIES)
    print(f"budget {BUDGET_MIB} MiB; inputs {SIDE} x {SIDE} px, -max ones the largest accepted; one `kedge infer` each")
    print(f"{'family':<20}{'file MiB':>9}{'exit':>6}{'peak MiB':>10}  within  outcome")
    over = []
    for name in names:
        ext, write = FAMILIES[name]
        path = work / f"{name}.{ext}"
        if not path.exists():
            write(path)
        size = path.stat().st_size / 2**20
        status, peak, said = measure(path, args.model)
        within = 0 <= peak <= BUDGET_MIB
        if not within:
            over.append(name)
        print(f"{name:<20}{size:>9.1f}{status:>6}{peak:>10.0f}  {'yes' if within else 'NO':<6}  {said}", flush=True)
        if not args.keep:
            os.unlink(path)
    print("over budget: " + (", ".join(over) if over else "none"))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
