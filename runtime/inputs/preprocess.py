"""The one preprocessing function: an image file in, the model's input tensor out.

Training, evaluation, calibration, parity and inference all call `preprocess`, so a
model never sees different pixels in different places. Only numpy and OpenCV are used.

The contract (PREPROCESS_VERSION "2"):

1. Decode PNG, JPEG, BMP or TIFF with OpenCV, keeping the stored bit depth. EXIF
   orientation is not applied: the pixels are used as stored, as in training. A JPEG
   whose shorter side is at least 2 x 672 px is decoded at 1/2, 1/4 or 1/8 scale
   from its DCT coefficients (the largest that keeps both sides >= 672 px), straight
   to grey (version 2; version 1 always decoded in full). On the 30 full-resolution
   radiographs with a 224 px twin this moves the tensor by 0.00019 on average (at
   most 0.00039 for one image), against 0.0053 between a full-resolution file and its
   twin; images under 1344 px a side and non-JPEGs are unchanged, so version-1
   bundles read the same inputs.
2. Convert to one grey channel: colour with OpenCV's BT.601 weights
   (0.299 R + 0.587 G + 0.114 B); an alpha channel is ignored.
3. Resize to 224x224, ignoring aspect ratio (as both papers do). Shrinking uses
   cv2.INTER_AREA (pixel-area averaging, which anti-aliases, so a full-resolution
   radiograph and its 224-pixel copy give nearly the same tensor); enlarging uses
   cv2.INTER_LINEAR. Resizing happens on the stored integers, which keeps it
   deterministic.
4. Scale to float32 in [0, 1] by the image's real full-scale value: 255 for 8-bit;
   for 16-bit, 2**bits - 1 where bits is the PNG sBIT depth when the file declares
   one, else the smallest of 8, 10, 12, 14, 16 bits that holds the image's maximum
   (a 12-bit detector image saved as 16-bit PNG is not darkened 16-fold).
5. Replicate the grey channel three times: shape (224, 224, 3), NHWC.

Normalisation that a backbone needs (ImageNet mean subtraction) is not done here: it
lives inside the model graph, so every exported form carries it.
Any change to the steps above must bump PREPROCESS_VERSION (the golden test fails).
"""
from __future__ import annotations

import os
import stat

import cv2
import numpy as np

from kedge.runtime.errors import ImageError
from kedge.runtime.inputs.imageheader import read_header
from kedge.runtime.inputs.limits import MAX_FILE_BYTES, decode_memory_problem, size_problem
from kedge.runtime.inputs.nativeio import native_stderr, one_line

PREPROCESS_VERSION = "2"
INPUT_SIZE = 224
INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)
INTERPOLATION = "INTER_AREA when shrinking, INTER_LINEAR when enlarging"
DECODABLE = ("png", "jpeg", "bmp", "tiff")
# JPEG decoding at reduced scale (libjpeg's DCT scaling, through OpenCV): a 2000 px
# radiograph decodes at 1/2 size in under half the full decode's time. Both sides must
# stay at least three times the model input before INTER_AREA takes over: at twice,
# one borderline radiograph changed class under the ResNet50-GRU (measured).
REDUCED_MIN_SIDE = 3 * INPUT_SIZE
REDUCED_GREY = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                8: cv2.IMREAD_REDUCED_GRAYSCALE_8}

# OpenCV logs decoder problems ("[ERROR:...] imdecode_") on stderr; kedge reports the
# problem itself, in one line, so keep OpenCV's own log silent. (libpng and libjpeg
# print to fd 2 directly: `native_stderr` captures those per file.)
# The call moved between OpenCV releases: cv2.utils.logging in 5.x, cv2.setLogLevel in 4.x.
_cv_logging = getattr(cv2.utils, "logging", None)
if _cv_logging is not None:
    _cv_logging.setLogLevel(_cv_logging.LOG_LEVEL_SILENT)
elif hasattr(cv2, "setLogLevel"):
    cv2.setLogLevel(0)  # LOG_LEVEL_SILENT


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a whole regular file, turning OS errors into a one-line ImageError.

    A FIFO, device or socket named like an image is refused from stat, before it is
    opened (opening a FIFO would block forever); the file is then opened non-blocking
    and checked again, so one swapped in meanwhile is refused too. So is a file over
    MAX_FILE_BYTES."""
    try:
        _check_regular(os.stat(path), path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            _check_regular(os.fstat(handle.fileno()), path)
            return handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as err:
        raise ImageError(path, f"cannot be read ({err.strerror or type(err).__name__})") from None


def _check_regular(info: os.stat_result, path: str | os.PathLike[str]) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(path, "is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(path, "not a regular file (a FIFO, device or socket), refused")
    if info.st_size > MAX_FILE_BYTES:
        raise ImageError(path, f"file is over kedge's limit of {MAX_FILE_BYTES >> 20} MiB")


def decode_grey(data: bytes, name: str | os.PathLike[str] = "<bytes>",
                reduced: bool = True) -> tuple[np.ndarray, int]:
    """Decode image bytes to one grey channel.

    Returns the grey image (uint8 or uint16, as stored) and its full-scale value. A
    large JPEG is decoded at 1/2, 1/4 or 1/8 scale straight from its DCT coefficients
    (`jpeg_reduction`), unless `reduced` is False (the full decode, kept for checks).
    """
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        header = read_header(data)
    except ValueError as err:
        raise ImageError(name, f"truncated or corrupt image header ({err})") from None
    if header is None:
        raise ImageError(name, "not an image kedge can read (expected PNG, JPEG, BMP, TIFF or DICOM)")
    if header.format == "dicom":
        from kedge.runtime.inputs.dicom import decode_dicom

        return decode_dicom(data, name)
    if header.format not in DECODABLE:
        raise ImageError(name, f"{header.format.upper()} files are not supported yet")
    if header.width is None or header.height is None:
        raise ImageError(name, f"{header.format.upper()} header gives no image size; refused unsized")
    problem = size_problem(header.width, header.height)
    if problem:
        raise ImageError(name, f"image is {header.width}x{header.height} pixels, {problem}")
    factor = jpeg_reduction(header.width, header.height) if reduced and header.format == "jpeg" else 1
    channels = 1 if factor > 1 else header.channels  # reduced JPEGs decode straight to grey
    pixels = header.width * header.height // (factor * factor)
    need = len(data) + 2 * pixels * channels * header.sample_bytes + (pixels * header.sample_bytes if channels > 1
                                                                       else 0)
    too_big = decode_memory_problem(f"{header.width}x{header.height} pixels of {channels} "
                                    f"{8 * header.sample_bytes}-bit channels", need)
    if too_big:
        raise ImageError(name, too_big)
    flags = REDUCED_GREY[factor] | cv2.IMREAD_IGNORE_ORIENTATION if factor > 1 else cv2.IMREAD_UNCHANGED
    with native_stderr() as messages:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    said = f": {one_line(messages)}" if messages else ""
    if image is None or image.size == 0:
        raise ImageError(name, f"{header.format.upper()} cannot be decoded (truncated or corrupt{said})")
    if header.format == "jpeg" and messages:  # libjpeg guessed at damaged data: refuse, never classify it
        raise ImageError(name, f"JPEG data is corrupt, refused{said}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(name, f"{image.dtype} pixels are not supported (8- or 16-bit integers only)")
    grey = _to_grey(image)
    return grey, _full_scale(grey, header.significant_bits)


def jpeg_reduction(width: int | None, height: int | None) -> int:
    """The DCT scale-down (1, 2, 4 or 8) for a JPEG of this size: the largest that keeps
    both sides at least REDUCED_MIN_SIDE pixels, so INTER_AREA still has room to average."""
    if not width or not height:
        return 1
    return next((k for k in (8, 4, 2) if min(width, height) // k >= REDUCED_MIN_SIDE), 1)


def _to_grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1 or channels == 2:  # grey, or grey + alpha
        return np.ascontiguousarray(image[:, :, 0])
    code = cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY
    return cv2.cvtColor(image, code)


def _full_scale(grey: np.ndarray, significant_bits: int | None) -> int:
    if grey.dtype == np.uint8:
        return 255
    if significant_bits and 8 <= significant_bits <= 16:
        return 2**significant_bits - 1
    peak = int(grey.max())
    bits = next(b for b in (8, 10, 12, 14, 16) if peak < 2**b)
    return 2**bits - 1


def to_model_input(grey: np.ndarray, full_scale: int) -> np.ndarray:
    """Resize a grey image to 224x224 and scale it to a (224, 224, 3) float32 tensor."""
    height, width = grey.shape
    shrinking = width >= INPUT_SIZE and height >= INPUT_SIZE
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    small = cv2.resize(grey, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation)
    scaled = np.clip(small.astype(np.float32) / np.float32(full_scale), 0.0, 1.0)
    return np.ascontiguousarray(np.repeat(scaled[:, :, None], 3, axis=2))


def preprocess(source: str | os.PathLike[str] | bytes, name: str | None = None, reduced: bool = True) -> np.ndarray:
    """Turn an image file (a path, or its bytes) into the model input: (224, 224, 3) float32 in [0, 1].

    Raises ImageError naming the file and the problem for anything unusable.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "<bytes>"
    else:
        data, label = read_bytes(source), name or str(source)
    grey, full_scale = decode_grey(data, label, reduced)
    return to_model_input(grey, full_scale)
