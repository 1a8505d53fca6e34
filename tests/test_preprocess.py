"""The single preprocessing function: formats, bit depth, determinism, golden output, bad input."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from imagegen import encode, pattern, png_header_only, with_sbit
from kedge.runtime.errors import ImageError
from kedge.runtime.inputs.imageheader import read_header
from kedge.runtime.inputs.preprocess import INPUT_SHAPE, PREPROCESS_VERSION, preprocess


def check_tensor(x: np.ndarray) -> None:
    assert x.shape == INPUT_SHAPE and x.dtype == np.float32 and x.flags.c_contiguous
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.array_equal(x[:, :, 0], x[:, :, 1]) and np.array_equal(x[:, :, 0], x[:, :, 2])


# Golden checksums: sha256 of the float32 output bytes. A change here means the model
# would see different pixels: bump PREPROCESS_VERSION and say why in the change.
GOLDEN = {
    "png8_grey_300x260": "340b405783233b381739ff7f4c9d3d963352d5c633419fc48869264044da4230",
    "png16_12bit_500x400": "d0839040a97d6360542b94e8ed9ffad8f3a58e1feed1c6d8d850f515292c7191",
    "bmp_rgb_180x200": "1c60dd91ce850ab17d0cd5bf2cf3dca2397bc118483f17759fae1b03b57d134a",
    "tiff_rgba_640x480": "44ac8c0153c0def687edd62a1956f359cd5be2bb2bd4020454ce3518cd5f5650",
}


def golden_inputs() -> dict[str, bytes]:
    return {
        "png8_grey_300x260": encode(pattern(260, 300), ".png"),
        "png16_12bit_500x400": encode(pattern(400, 500, peak=4095), ".png"),
        "bmp_rgb_180x200": encode(cv2.merge([pattern(200, 180, seed=s) for s in (1, 2, 3)]), ".bmp"),
        "tiff_rgba_640x480": encode(cv2.merge([pattern(480, 640, seed=s) for s in (4, 5, 6, 7)]), ".tiff"),
    }


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_checksum(name: str) -> None:
    assert PREPROCESS_VERSION == "2"
    x = preprocess(golden_inputs()[name])
    check_tensor(x)
    assert hashlib.sha256(x.tobytes()).hexdigest() == GOLDEN[name]


def test_deterministic_and_path_equals_bytes(tmp_path) -> None:
    data = encode(pattern(700, 900), ".jpg")
    path = tmp_path / "knee.jpg"
    path.write_bytes(data)
    first = preprocess(path)
    assert np.array_equal(first, preprocess(str(path)))
    assert np.array_equal(first, preprocess(data))


FORMAT_CHANNELS = [(ext, c) for ext in (".png", ".jpg", ".bmp", ".tiff") for c in (1, 3, 4) if (ext, c) != (".jpg", 4)]


@pytest.mark.parametrize("ext,channels", FORMAT_CHANNELS)
def test_formats_and_channels(ext: str, channels: int) -> None:
    grey = pattern(250, 310)
    image = grey if channels == 1 else cv2.merge([grey] * channels)
    x = preprocess(encode(image, ext))
    check_tensor(x)
    reference = preprocess(encode(grey, ".png"))  # same grey content, lossless
    tolerance = 0.05 if ext == ".jpg" else 1e-6  # JPEG is lossy
    assert np.abs(x - reference).mean() < tolerance


def test_colour_uses_bt601_weights() -> None:
    red = np.zeros((224, 224, 3), np.uint8)
    red[:, :, 2] = 255  # OpenCV is BGR
    assert preprocess(encode(red, ".png"))[0, 0, 0] == pytest.approx(0.299, abs=1 / 255)


def test_16bit_scaled_by_real_depth_not_cut_to_8_bits() -> None:
    ten_bit = np.tile(np.linspace(0, 1023, 224).round().astype(np.uint16), (224, 1))
    x = preprocess(encode(ten_bit, ".png"))
    assert x.max() == pytest.approx(1.0)  # full scale 1023, not 65535
    assert len(np.unique(x)) > 200  # kept more than 8 bits of levels
    assert np.allclose(x[0, :, 0], ten_bit[0] / 1023.0, atol=1e-6)


def test_16bit_full_range_and_8bit_agree() -> None:
    eight = pattern(300, 300)
    sixteen = eight.astype(np.uint16) * 257  # same picture, 16-bit full scale
    assert np.abs(preprocess(encode(eight, ".png")) - preprocess(encode(sixteen, ".png"))).max() < 1 / 255


def test_png_sbit_declares_depth() -> None:
    twelve = pattern(224, 224, peak=1000)  # a dark 12-bit image: its maximum alone suggests 10 bits
    plain = preprocess(encode(twelve, ".png"))
    declared = preprocess(with_sbit(encode(twelve, ".png"), 12))
    assert plain.max() == pytest.approx(1000 / 1023)
    assert declared.max() == pytest.approx(1000 / 4095)


def test_shrinking_is_area_averaged() -> None:
    stripes = np.zeros((2240, 2240), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes alias badly without area averaging
    x = preprocess(encode(stripes, ".png"))
    assert np.allclose(x, 128 / 255, atol=1 / 255)


def test_full_resolution_matches_small_copy() -> None:
    big = cv2.resize(pattern(224, 224), (1792, 2016), interpolation=cv2.INTER_CUBIC)
    small = cv2.resize(big, (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(preprocess(encode(big, ".png")) - preprocess(encode(small, ".png"))).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("ext,fmt", [(".png", "png"), (".jpg", "jpeg"), (".bmp", "bmp"), (".tiff", "tiff")])
def test_header_reports_size(ext: str, fmt: str) -> None:
    header = read_header(encode(pattern(123, 457), ext))
    assert header is not None and (header.format, header.width, header.height) == (fmt, 457, 123)


# --- bad input: always an ImageError naming the file and the problem ---------------------


def expect_error(source, path_text: str, problem: str) -> None:
    with pytest.raises(ImageError) as info:
        preprocess(source)
    message = str(info.value)
    assert message.startswith(path_text) and problem in message and "\n" not in message


def test_missing_file(tmp_path) -> None:
    expect_error(tmp_path / "nope.png", str(tmp_path / "nope.png"), "file not found")


def test_folder_instead_of_file(tmp_path) -> None:
    expect_error(tmp_path, str(tmp_path), "is a folder")


def test_empty_file(tmp_path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    expect_error(tmp_path / "empty.png", str(tmp_path / "empty.png"), "empty file")


def test_not_an_image(tmp_path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    expect_error(tmp_path / "notes.jpg", str(tmp_path / "notes.jpg"), "not an image kedge can read")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tiff"])
def test_truncated(tmp_path, ext: str) -> None:
    data = encode(pattern(300, 300), ext)
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, str(path), "truncated or corrupt")


def test_truncated_inside_header(tmp_path) -> None:
    path = tmp_path / "stub.png"
    path.write_bytes(encode(pattern(50, 50), ".png")[:20])
    expect_error(path, str(path), "truncated or corrupt image header")


def test_absurd_dimensions_refused_before_decoding(tmp_path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    expect_error(path, str(path), "100000x100000 pixels, over kedge's limit")


def test_zero_size(tmp_path) -> None:
    path = tmp_path / "zero.png"
    path.write_bytes(png_header_only(0, 10))
    expect_error(path, str(path), "zero size")


def test_float_tiff_refused(tmp_path) -> None:
    path = tmp_path / "float.tiff"
    path.write_bytes(encode(np.ones((64, 64), np.float32), ".tiff"))
    expect_error(path, str(path), "float32 pixels are not supported")


def test_dicom_named_not_yet_supported() -> None:
    expect_error(b"\0" * 128 + b"DICM" + b"\0" * 64, "<bytes>", "DICOM has no pixel data")
