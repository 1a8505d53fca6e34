"""The input wall's size limits: what every decoder (OpenCV's for PNG, JPEG, BMP and TIFF,
pydicom's for DICOM) refuses from a file's header, before it allocates anything.

One module owns them so that the image decoders and the DICOM decoder apply the same
numbers and say the same thing when they refuse.
"""
from __future__ import annotations

MAX_SIDE = 30_000
MAX_PIXELS = 200_000_000
MAX_FILE_BYTES = 512 << 20  # no radiograph is near 512 MiB; a bigger "image" is refused before it is read
# What one decode may hold at once: the file's bytes, the decoded image twice (OpenCV's
# decoders and pydicom hold a second full-size buffer while they work) and the grey copy.
# With the interpreter and a loaded model this keeps `kedge infer` under 1.5 GB on any
# input (docs/hardening.md, docs/results/memory_budget.py); a 200 MP 16-bit RGBA PNG of a few
# MB once took 3.2 GB.
MAX_DECODE_BYTES = 1 << 30


def size_problem(width: int, height: int) -> str | None:
    """Why an image of this declared size is refused before decoding, or None if it is fine."""
    if width <= 0 or height <= 0:
        return "zero size"
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        return f"over kedge's limit ({MAX_SIDE} a side, {MAX_PIXELS // 1_000_000} megapixels)"
    return None


def decode_memory_problem(what: str, need: int) -> str | None:
    """Why decoding `what`, which needs about `need` bytes at once, is refused; None if it fits."""
    if need <= MAX_DECODE_BYTES:
        return None
    return (f"image is {what}: decoding needs about {need >> 20} MiB, over kedge's limit of "
            f"{MAX_DECODE_BYTES >> 20} MiB")
