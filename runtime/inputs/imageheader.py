"""Read an image's format and pixel size from its header, before decoding it.

Why: OpenCV decodes whatever it is given, so a 100000x100000 PNG of a few kilobytes
would allocate tens of gigabytes before anything could object. Reading the header
first lets kedge refuse such files with a clear message, and tells "not an image"
apart from "a broken PNG". The runtime's JPEG fast path also needs the size up front.

The JPEG marker walk looks at the first HEADER_WINDOW bytes only and skips runs of
fill bytes in one step; the PNG chunk walk stops at the first chunk whose type is
not four letters and walks at most MAX_PNG_CHUNKS chunks: a signature followed by a
gigabyte of junk once took 70 s of byte-by-byte Python. (TIFF reads its IFD at the
offset the header gives, at most 4096 entries.)
"""
from __future__ import annotations

import re
import struct
from typing import NamedTuple


class Header(NamedTuple):
    format: str  # "png", "jpeg", "bmp", "tiff", "dicom"
    width: int | None  # None where the header does not say (DICOM; a TIFF without the tags is refused)
    height: int | None
    significant_bits: int | None = None  # PNG sBIT, where present
    channels: int = 4  # as OpenCV decodes it; where the header does not say, the most (for the memory check)
    sample_bytes: int = 2


HEADER_WINDOW = 4 << 20  # bytes the JPEG walk may look at: real headers end within a few hundred KB
MAX_PNG_CHUNKS = 1 << 18  # libpng writes 8 KiB IDATs: a 512 MiB PNG has about 65,000 chunks
_FILL = re.compile(rb"\xff+")
_CHUNK_TYPE = re.compile(rb"[A-Za-z]{4}")
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def read_header(data: bytes) -> Header | None:
    """Return the header of a PNG, JPEG, BMP, TIFF or DICOM file, or None if unknown.

    Raises ValueError when the signature matches but the header is cut short.
    """
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data.startswith(b"BM") and len(data) >= 26:
            return _bmp(data)
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff(data)
        if data[128:132] == b"DICM":
            return Header("dicom", None, None)
    except (struct.error, IndexError) as err:
        raise ValueError("the header is cut short") from err
    return None


_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}  # colour type -> OpenCV's channels (palette: BGRA if tRNS)


def _png(data: bytes) -> Header:
    """Size, channels and sBIT from IHDR and the chunks before IDAT. Every chunk's
    declared length is checked against the file: OpenCV 5 allocates a chunk's declared
    length before reading it (one flipped bit in a 5 KB file's IDAT length cost 2 GiB).
    At most MAX_PNG_CHUNKS chunks are walked, 8 bytes each."""
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    sbit = None
    pos, before_idat = 8, True
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 8 > len(data):
            break
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if not _CHUNK_TYPE.fullmatch(kind):  # PNG chunk types are four ASCII letters; libpng refuses others
            raise ValueError("bad PNG chunk type")
        if pos + 12 + length > len(data):
            raise ValueError(f"a PNG {kind.decode()} chunk runs past the end of the file")
        before_idat = before_idat and kind != b"IDAT"
        if kind == b"sBIT" and length >= 1 and before_idat:
            sbit = max(data[pos + 8 : pos + 8 + min(length, 4)])  # one byte per channel, at most 4
        if kind == b"IEND":
            break
        pos += 12 + length
    else:
        raise ValueError(f"over {MAX_PNG_CHUNKS} PNG chunks")
    return Header("png", width, height, sbit, _PNG_CHANNELS.get(colour, 4), 2 if depth == 16 else 1)


def _jpeg(data: bytes) -> Header:
    pos = 2
    end = min(len(data), HEADER_WINDOW)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise ValueError("bad JPEG marker")
        fill = _FILL.match(data, pos, end)
        assert fill is not None
        if fill.end() - pos > 1:  # fill bytes before a marker: skip the run at once
            pos = fill.end() - 1
            continue
        marker = data[pos + 1]
        if marker in (0x01,) or 0xD0 <= marker <= 0xD9:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            return Header("jpeg", width, height, None, 1 if components == 1 else 3, 2 if precision > 8 else 1)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ValueError("no JPEG frame header" + (f" in the first {HEADER_WINDOW >> 20} MiB" if end < len(data) else ""))


def _bmp(data: bytes) -> Header:
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bits = struct.unpack("<HHHH", data[18:26])
    else:
        width, height, _, bits = struct.unpack("<iiHH", data[18:30])
    return Header("bmp", abs(width), abs(height), None, 4 if bits == 32 else 3, 1)


def _tiff(data: bytes) -> Header:
    """Width and height from the first IFD, of a classic TIFF or a BigTIFF (64-bit offsets)."""
    endian = "<" if data[:2] == b"II" else ">"
    if data[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: 8-byte offset and count, 20-byte entries
        (ifd,) = struct.unpack(endian + "Q", data[8:16])
        (count,) = struct.unpack(endian + "Q", data[ifd : ifd + 8])
        first, entry_size, value_at, value_kinds = ifd + 8, 20, 12, {3: "H", 4: "I", 16: "Q"}
    else:
        (ifd,) = struct.unpack(endian + "I", data[4:8])
        (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
        first, entry_size, value_at, value_kinds = ifd + 2, 12, 8, {3: "H", 4: "I"}
    size: dict[int, int] = {}
    for i in range(min(count, 4096)):
        entry = data[first + entry_size * i : first + entry_size * (i + 1)]
        tag, kind = struct.unpack(endian + "HH", entry[:4])
        if tag in (256, 257, 258, 277) and kind in value_kinds:
            fmt = endian + value_kinds[kind]
            size[tag] = struct.unpack(fmt, entry[value_at : value_at + struct.calcsize(fmt)])[0]
    samples = size.get(277, 1)
    bits = size.get(258, 16) if samples == 1 else 16  # several BitsPerSample are stored elsewhere: assume 16
    return Header("tiff", size.get(256), size.get(257), None, min(samples, 4), 2 if bits > 8 else 1)
