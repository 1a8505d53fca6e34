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
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from kedge.runtime.errors import ImageError

FULL_SCALE = 65535

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
    """A DICOM file's bytes to (grey uint16 image, full-scale value)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ImageError(name, "DICOM needs pydicom: pip install 'kedge[dicom]'") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as err:
        raise ImageError(name, f"DICOM cannot be read ({type(err).__name__})") from None
    _check_supported(ds, name)
    pixels = _stored_pixels(ds, name)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    low, high = _display_range(ds)
    if _has_voi(ds):
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
        low, high = _voi_output_range(ds)
    unit = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    if int(getattr(ds, "BitsStored", 16)) <= 8:  # 8-bit stays 8-bit, so it resizes exactly as an 8-bit PNG
        return np.round(unit * 255).astype(np.uint8), 255
    return np.round(unit * FULL_SCALE).astype(np.uint16), FULL_SCALE


def _check_supported(ds: Any, name: str | os.PathLike[str]) -> None:
    if "PixelData" not in ds:
        raise ImageError(name, "DICOM has no pixel data (not an image object)")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(name, f"multi-frame DICOM ({frames} frames) is not supported; export one frame")
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise ImageError(name, f"colour DICOM ({photometric or 'unknown photometric interpretation'}) is not "
                               "supported; radiographs are greyscale")


def _stored_pixels(ds: Any, name: str | os.PathLike[str]) -> np.ndarray:
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as err:  # no plugin for the syntax, or corrupt data: pydicom's error types vary by version
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
        if syntax in PLUGINS:
            raise ImageError(name, f"compressed DICOM needs a decoder plugin: pip install {PLUGINS[syntax]}") from None
        raise ImageError(name, f"DICOM pixel data cannot be decoded ({type(err).__name__})") from None
    if pixels.ndim != 2:
        raise ImageError(name, f"DICOM pixel data has shape {pixels.shape}, expected one 2-D frame")
    bits = int(getattr(ds, "BitsStored", pixels.dtype.itemsize * 8))
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:  # signed: sign-extend from BitsStored
        shift = 64 - bits
        return (pixels.astype(np.int64) << shift) >> shift
    return pixels.astype(np.int64) & ((1 << bits) - 1)


def _has_voi(ds: Any) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def _display_range(ds: Any) -> tuple[float, float]:
    """The range the modality LUT's output spans: the stored range through the rescale
    (or a Modality LUT Sequence's output bits). Windowing in pydicom writes into the
    same range, so it also scales windowed values."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float((1 << int(ds.ModalityLUTSequence[0].LUTDescriptor[2])) - 1)
    bits = int(getattr(ds, "BitsStored", 16))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _voi_output_range(ds: Any) -> tuple[float, float]:
    """A VOI LUT Sequence writes 0..2**(bits per entry)-1; windowing, the display range."""
    if "VOILUTSequence" in ds:
        return 0.0, float((1 << int(ds.VOILUTSequence[0].LUTDescriptor[2])) - 1)
    return _display_range(ds)
