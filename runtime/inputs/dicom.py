"""DICOM radiographs into the same grey image the other formats give (pydicom, the
[dicom] extra).

Display pipeline, in the order DICOM PS3.3 C.7.6.3.1.2 prescribes:
1. pixels masked/sign-extended to BitsStored;
2. modality LUT (RescaleSlope/RescaleIntercept, or a Modality LUT Sequence);
3. VOI LUT (a VOI LUT Sequence, else the first WindowCenter/WindowWidth); without
   either, the stored range 0..2**BitsStored-1 maps to black..white;
4. MONOCHROME1 inverted last, so white is always dense bone.
The result is scaled to 16-bit (8-bit when BitsStored <= 8) and handed to the shared
resize/scale step.

Only single-frame greyscale images are read. Nothing from the header except the
pixel-describing attributes is used, and no error message ever quotes a header
value: patient identifiers never reach a log or a terminal.

The decoder is a wall: everything pydicom, numpy or zlib may raise becomes one line
naming the file and the kind of problem (never the exception's text, which can quote
header bytes); pydicom's warnings are swallowed and its logger silenced. Sizes
(rows x columns x frames x bytes) are checked against the image limits before the
pixel data is decoded, and a deflated body is inflated in bounded steps first, so a
small file cannot claim gigabytes. Non-finite or nonsensical rescale and window
values are refused instead of producing NaN pixels.
"""
from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from kedge.runtime.errors import ImageError
from kedge.runtime.inputs.limits import MAX_PIXELS, decode_memory_problem, size_problem

FULL_SCALE = 65535
DEFLATED = b"1.2.840.10008.1.2.1.99"
MAX_BYTES = 2 * MAX_PIXELS + (16 << 20)  # 16-bit pixels at the pixel limit, plus room for the header
_INFLATE_STEP = 1 << 20
_BAND_PIXELS = 1 << 20  # pixels per band of the display pipeline: about 30 MB of temporaries
INFLATE_SECONDS = 30  # a 400 MiB body inflates in about 2 s; far past that, something is wrong
_LOCK = threading.Lock()  # warnings filters are process-wide: one DICOM decode at a time

# pydicom logs parse problems, sometimes with raw header bytes: never let them through.
_pydicom_log = logging.getLogger("pydicom")
_pydicom_log.addHandler(logging.NullHandler())
_pydicom_log.propagate = False
_pydicom_log.setLevel(logging.CRITICAL + 1)

# Transfer syntaxes pydicom decodes only with a plugin, and the plugin to install.
PLUGINS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (JPEG baseline)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg (JPEG extended)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg (JPEG lossless)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg (JPEG lossless SV1)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (JPEG-LS lossless)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (JPEG-LS near-lossless)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg (JPEG 2000 lossless)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg (HTJ2K lossless)",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg (HTJ2K)",
}


def decode_dicom(data: bytes, name: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """A DICOM file's bytes to (grey uint16 image, full-scale value), or one ImageError."""
    try:
        import pydicom
    except ImportError:
        raise ImageError(name, "DICOM needs pydicom: pip install 'kedge[dicom]'") from None
    with _LOCK, warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            inflated = _check_deflated_size(data, name)
            # pydicom holds the inflated body and a copy of its pixels
            too_big = decode_memory_problem(f"a deflated DICOM of {inflated >> 20} MiB", len(data) + 2 * inflated)
            if too_big:
                raise ImageError(name, too_big)
            ds = pydicom.dcmread(io.BytesIO(data))
            return _display(ds, name, len(data))
        except ImageError:
            raise
        except MemoryError:
            raise ImageError(name, "DICOM needs more memory than is free") from None
        except Exception as err:  # pydicom, numpy and zlib raise many types; their text may quote header bytes
            raise ImageError(name, f"DICOM cannot be read ({type(err).__name__})") from None


def _check_deflated_size(data: bytes, name: str | os.PathLike[str]) -> int:
    """Inflate a Deflated Explicit VR body in 1 MiB steps, discarding the output, and
    refuse it once it passes MAX_BYTES (pydicom would inflate it all at once). Returns
    the inflated size (0 for any other transfer syntax).

    The loop ends at the stream's end (`eof`): bytes after it (pydicom pads the body
    to an even length) stay in `unconsumed_tail` forever, so waiting for the tail to
    empty would spin. Steps and wall time are bounded too, as a last guard: this runs
    under the module lock, so a spin here would stall every other file's decode."""
    meta = data[132:132 + 12]
    if len(meta) < 12 or meta[:4] != b"\x02\x00\x00\x00":
        return 0  # no group length: pydicom decides (and the wall catches what it raises)
    body = 132 + 12 + int.from_bytes(meta[8:12], "little")
    if DEFLATED not in data[132:body]:
        return 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    tail, total = data[body:], 0
    deadline = time.monotonic() + INFLATE_SECONDS
    for _ in range(MAX_BYTES // _INFLATE_STEP + 2):  # each step but the last yields a full 1 MiB
        try:
            out = inflater.decompress(tail, _INFLATE_STEP)
        except zlib.error:
            raise ImageError(name, "DICOM deflated data is corrupt") from None
        total += len(out)
        tail = inflater.unconsumed_tail
        if total > MAX_BYTES:
            raise ImageError(name, f"DICOM deflated data inflates past kedge's limit ({MAX_BYTES >> 20} MiB)")
        if inflater.eof or not (out or tail):
            break
        if time.monotonic() > deadline:
            raise ImageError(name, f"DICOM deflated data takes over {INFLATE_SECONDS} s to inflate; refused")
    if not inflater.eof:
        raise ImageError(name, "DICOM deflated data is cut short")
    return total


def _display(ds: Any, name: str | os.PathLike[str], file_bytes: int = 0) -> tuple[np.ndarray, int]:
    """The PS3.3 display pipeline (module docstring) on a parsed dataset, a band of rows
    at a time into the output array: int64 and float64 copies of a whole 200 MP image
    once took 9 GB. Peak memory is the stored pixels, one inflated body while pydicom
    parses it, the output (1 or 2 bytes a pixel) and one band's temporaries."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _check_supported(ds, name)
    bits = _integer(ds, "BitsStored", 16, name, 1, 32)
    pixels = _stored_pixels(ds, name)
    ds.buffer = None  # pydicom keeps the whole inflated body for lazy reads; the pixels are all kedge needs
    _check_luts(ds, name)
    low, high = _voi_output_range(ds, name, bits) if _has_voi(ds) else _display_range(ds, name, bits)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ImageError(name, "DICOM pixel values are not finite after rescaling and windowing")
    full_scale = 255 if bits <= 8 else FULL_SCALE  # 8-bit stays 8-bit, so it resizes exactly as an 8-bit PNG
    out_type = np.dtype(np.uint8 if bits <= 8 else np.uint16)
    need = file_bytes + pixels.nbytes + pixels.size * out_type.itemsize
    too_big = decode_memory_problem(f"a DICOM of {pixels.shape[1]}x{pixels.shape[0]} pixels", need)
    if too_big:
        raise ImageError(name, too_big)
    out = np.empty(pixels.shape, out_type)
    inverted = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    band = max(1, _BAND_PIXELS // max(1, pixels.shape[1]))
    for top in range(0, pixels.shape[0], band):
        values = apply_modality_lut(_masked(pixels[top:top + band], ds, bits), ds).astype(np.float64)
        if _has_voi(ds):
            values = apply_voi_lut(values, ds, index=0).astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageError(name, "DICOM pixel values are not finite after rescaling and windowing")
        unit = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
        if inverted:
            unit = 1.0 - unit
        out[top:top + band] = np.round(unit * full_scale)
    return out, full_scale


def _number(ds: Any, keyword: str, default: float, name: str | os.PathLike[str]) -> float:
    """A numeric attribute's first value as a finite float; the keyword, never the value, in errors."""
    if keyword not in ds or ds[keyword].value in (None, ""):
        return default
    value = ds[keyword].value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # pydicom's MultiValue
        value = value[0] if len(value) else default
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageError(name, f"DICOM {keyword} is not a number") from None
    if not math.isfinite(number):
        raise ImageError(name, f"DICOM {keyword} is not finite")
    return number


def _integer(ds: Any, keyword: str, default: int, name: str | os.PathLike[str], low: int, high: int) -> int:
    number = _number(ds, keyword, default, name)
    if number != int(number) or not low <= number <= high:
        raise ImageError(name, f"DICOM {keyword} is out of range ({low}..{high})")
    return int(number)


def _check_supported(ds: Any, name: str | os.PathLike[str]) -> None:
    """Refuse what kedge does not read, and anything too big, before any pixel is decoded."""
    if "PixelData" not in ds:
        raise ImageError(name, "DICOM has no pixel data (not an image object)")
    if _integer(ds, "NumberOfFrames", 1, name, 0, 1 << 31) > 1:
        raise ImageError(name, "multi-frame DICOM is not supported; export one frame")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or _integer(ds, "SamplesPerPixel", 1, name, 1, 4) != 1:
        raise ImageError(name, "colour DICOM is not supported; radiographs are greyscale")
    rows = _integer(ds, "Rows", 0, name, 0, 1 << 16)
    columns = _integer(ds, "Columns", 0, name, 0, 1 << 16)
    allocated = _integer(ds, "BitsAllocated", 16, name, 1, 64)
    problem = size_problem(columns, rows)
    if problem or rows * columns * ((allocated + 7) // 8) > MAX_BYTES:
        raise ImageError(name, f"DICOM image size is {problem or 'over kedge limit'}")
    if _integer(ds, "BitsStored", allocated, name, 1, allocated) > 32:
        raise ImageError(name, "DICOM BitsStored is out of range (1..32)")


def _check_luts(ds: Any, name: str | os.PathLike[str]) -> None:
    """Rescale and window values pydicom would apply: finite, and a window at least 1 wide
    (PS3.3 C.11.2.1.2); LUT sequences non-empty with a usable descriptor."""
    if ("RescaleSlope" in ds) != ("RescaleIntercept" in ds):  # pydicom rescales only with both: never half
        raise ImageError(name, "DICOM has only one of RescaleSlope and RescaleIntercept; refused")
    if _number(ds, "RescaleSlope", 1.0, name) == 0:
        raise ImageError(name, "DICOM RescaleSlope is 0")
    _number(ds, "RescaleIntercept", 0.0, name)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        _number(ds, "WindowCenter", 0.0, name)
        if _number(ds, "WindowWidth", 1.0, name) < 1:
            raise ImageError(name, "DICOM WindowWidth is below 1")
    for keyword in ("ModalityLUTSequence", "VOILUTSequence"):
        if keyword in ds:
            _lut_bits(ds, keyword, name)


def _lut_bits(ds: Any, keyword: str, name: str | os.PathLike[str]) -> int:
    """Bits per entry of a LUT sequence's first item, checked (1..16) along with its data."""
    sequence = ds[keyword].value
    if not sequence:
        raise ImageError(name, f"DICOM {keyword} is empty")
    item = sequence[0]
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or len(descriptor) != 3 or "LUTData" not in item:
        raise ImageError(name, f"DICOM {keyword} has no usable LUT descriptor or data")
    bits = int(descriptor[2])
    if not 1 <= bits <= 16:
        raise ImageError(name, f"DICOM {keyword} entry size is out of range (1..16 bits)")
    return bits


def _stored_pixels(ds: Any, name: str | os.PathLike[str]) -> np.ndarray:
    """The stored pixels, as a read-only view of pydicom's PixelData where the syntax
    allows (no second full-size copy)."""
    from pydicom.pixels import pixel_array

    try:
        pixels = np.asarray(pixel_array(ds, view_only=True))
    except Exception as err:  # no plugin for the syntax, or corrupt data: pydicom's error types vary by version
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
        if syntax in PLUGINS:
            raise ImageError(name, f"compressed DICOM needs a decoder plugin: pip install {PLUGINS[syntax]}") from None
        raise ImageError(name, f"DICOM pixel data cannot be decoded ({type(err).__name__})") from None
    if pixels.ndim != 2:
        raise ImageError(name, "DICOM pixel data is not one 2-D frame")
    return pixels


def _masked(pixels: np.ndarray, ds: Any, bits: int) -> np.ndarray:
    """A band of stored pixels masked to BitsStored, or sign-extended from it when signed."""
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        shift = 64 - bits
        return (pixels.astype(np.int64) << shift) >> shift
    return pixels.astype(np.int64) & ((1 << bits) - 1)


def _has_voi(ds: Any) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def _display_range(ds: Any, name: str | os.PathLike[str], bits: int) -> tuple[float, float]:
    """The range the modality LUT's output spans: the stored range through the rescale
    (or a Modality LUT Sequence's output bits). Windowing in pydicom writes into the
    same range, so it also scales windowed values."""
    if "ModalityLUTSequence" in ds:
        return 0.0, float((1 << _lut_bits(ds, "ModalityLUTSequence", name)) - 1)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    slope = _number(ds, "RescaleSlope", 1.0, name)
    intercept = _number(ds, "RescaleIntercept", 0.0, name)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _voi_output_range(ds: Any, name: str | os.PathLike[str], bits: int) -> tuple[float, float]:
    """A VOI LUT Sequence writes 0..2**(bits per entry)-1; windowing, the display range."""
    if "VOILUTSequence" in ds:
        return 0.0, float((1 << _lut_bits(ds, "VOILUTSequence", name)) - 1)
    return _display_range(ds, name, bits)
