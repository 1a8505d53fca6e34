"""Small deterministic test images, encoded in memory (no real radiograph is ever used)."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def pattern(height: int, width: int, peak: int = 255, seed: int = 0) -> np.ndarray:
    """A gradient plus rings plus seeded noise: exercises resizing in both directions."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rings = 0.5 + 0.5 * np.sin(np.hypot(x - width / 2, y - height / 3) / 6.0)
    base = 0.45 * x / width + 0.35 * rings + 0.2 * np.random.default_rng(seed).random((height, width))
    dtype = np.uint8 if peak <= 255 else np.uint16
    return np.round(base / base.max() * peak).astype(dtype)


def encode(image: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params or [])
    assert ok, f"could not encode {ext}"
    return buffer.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def with_sbit(png: bytes, bits: int) -> bytes:
    """Insert a PNG sBIT chunk (significant bits) right after IHDR."""
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + png_chunk(b"sBIT", bytes([bits])) + png[ihdr_end:]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming any size, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


PATIENT = ("Doe^Jane", "PID-998877")


def dicom(stored: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2", *, slope: float | None = None,
          intercept: float | None = None, window: tuple[float, float] | None = None, frames: int = 1,
          samples: int = 1, syntax: str = "1.2.840.10008.1.2.1", patient: tuple[str, str] = PATIENT) -> bytes:
    """A DICOM file (pydicom, the [dicom] extra) holding `stored`, with a patient name and ID
    that must never appear in kedge's output."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID = patient
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(np.stack([stored] * frames) if frames > 1 else stored).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
