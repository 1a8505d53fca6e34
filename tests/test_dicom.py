"""DICOM input: built here with pydicom from generated images, compared with the PNG
each was made from (tensor within 1e-3, same prediction)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="needs the [dicom] extra")

from imagegen import PATIENT, dicom  # noqa: E402
from kedge.runtime.errors import ImageError  # noqa: E402
from kedge.runtime.inputs.preprocess import preprocess, to_model_input  # noqa: E402

TOLERANCE = 1e-3  # max |dx| between a DICOM's tensor and its PNG source's (windowing rounds to 1/4096)


def knee(bits: int, seed: int = 0) -> np.ndarray:
    """A grey knee-like pattern spanning most of a `bits`-bit range (uint16, or uint8 for 8 bits)."""
    from kedge.runtime.checks.synthetic import knee_radiograph

    grey = knee_radiograph(0.5, np.random.default_rng(seed), size=320).astype(np.float64) / 255.0
    peak = (1 << bits) - 1
    values = np.round(0.02 * peak + grey * 0.96 * peak)
    return values.astype(np.uint8 if bits == 8 else np.uint16)


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_monochrome2_matches_its_png(bits: int) -> None:
    image = knee(bits)
    stored = image if bits == 8 else image.astype(np.uint16)
    difference = np.abs(preprocess(dicom(stored, bits)) - preprocess(png(image)))
    assert difference.max() <= TOLERANCE


@pytest.mark.parametrize("bits", [12, 16])
def test_monochrome1_is_inverted_after_windowing(bits: int) -> None:
    image = knee(bits, seed=1)
    peak = (1 << bits) - 1
    stored = (peak - image.astype(np.int64)).astype(np.uint16)  # MONOCHROME1: low values are white
    full_window = (peak / 2 + 0.5, peak + 1.0)  # the whole range, DICOM's linear window
    for data in (dicom(stored, bits, "MONOCHROME1"), dicom(stored, bits, "MONOCHROME1", window=full_window)):
        assert np.abs(preprocess(data) - preprocess(png(image))).max() <= TOLERANCE


def test_rescale_and_a_narrow_window() -> None:
    image = knee(12, seed=2).astype(np.float64)
    stored = image.astype(np.uint16)
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 4000.0
    hu = stored * slope + intercept
    # DICOM PS3.3 C.11.2.1.2 linear window, by hand: the reference the DICOM must match
    expected = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    reference = to_model_input(np.round(expected * 65535).astype(np.uint16), 65535)
    got = preprocess(dicom(stored, 12, slope=slope, intercept=intercept, window=(center, width)))
    assert np.abs(got - reference).max() <= TOLERANCE
    assert np.abs(got - preprocess(png(stored))).max() > 0.05  # the window really changed the picture


def test_bits_stored_masks_the_unused_high_bits() -> None:
    image = knee(12, seed=3)
    dirty = image | np.uint16(0xA000)  # overlay bits above BitsStored
    assert np.array_equal(preprocess(dicom(dirty, 12)), preprocess(dicom(image, 12)))


@pytest.mark.parametrize("kwargs,message", [
    ({"frames": 2}, "multi-frame DICOM is not supported"),
    ({"samples": 3, "photometric": "RGB"}, "colour DICOM is not supported"),
    ({"syntax": "1.2.840.10008.1.2.4.90"}, "compressed DICOM needs a decoder plugin: pip install pylibjpeg "
                                           "pylibjpeg-openjpeg"),
])
def test_unsupported_dicoms_are_refused_in_one_line(kwargs, message) -> None:
    image = knee(12)
    if kwargs.get("samples") == 3:
        image = np.stack([image] * 3, axis=-1)
    data = dicom(image, 12, **kwargs) if "syntax" not in kwargs else _encapsulated(image, kwargs["syntax"])
    with pytest.raises(ImageError) as err:
        preprocess(data, "scan.dcm")
    text = str(err.value)
    assert text.startswith(f"scan.dcm: {message}") and "\n" not in text
    assert not any(p in text for p in PATIENT)


def _encapsulated(image: np.ndarray, syntax: str) -> bytes:
    """A DICOM declaring a compressed syntax, with encapsulated (not decodable here) pixel data."""
    from pydicom.encaps import encapsulate
    from pydicom.filereader import dcmread

    ds = dcmread(io.BytesIO(dicom(image, 12)))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_and_png_give_the_same_prediction_and_no_identifier_leaks(tmp_path, synthetic_data) -> None:
    from leanbundle import make_lean_bundle

    bundle = make_lean_bundle(tmp_path / "tiny", synthetic_data)
    image = knee(16, seed=4)
    stored = (65535 - image.astype(np.int64)).astype(np.uint16)  # a MONOCHROME1 16-bit radiograph
    (tmp_path / "knee.png").write_bytes(png(image))
    (tmp_path / "knee").write_bytes(dicom(stored, 16, "MONOCHROME1", window=(32768.0, 65536.0)))  # no extension
    audit = tmp_path / "audit.jsonl"
    result = subprocess.run([sys.executable, "-m", "kedge.cli", "infer", str(tmp_path / "knee.png"),
                             str(tmp_path / "knee"), "--model", str(bundle), "--precision", "fp32", "--json",
                             "--audit", str(audit)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from_png, from_dicom = json.loads(result.stdout)
    assert from_png["label"] == from_dicom["label"]
    assert np.allclose(list(from_png["probabilities"].values()), list(from_dicom["probabilities"].values()),
                       atol=1e-3)
    for text in (result.stdout, result.stderr, audit.read_text()):
        assert not any(p in text for p in PATIENT)


def test_folder_scans_find_extensionless_dicoms_by_their_marker(tmp_path) -> None:
    from kedge.runtime.inputs.folders import expand_inputs

    (tmp_path / "IM0001").write_bytes(dicom(knee(12), 12))
    (tmp_path / "README").write_bytes(b"not an image, no marker" * 10)
    (tmp_path / "knee.png").write_bytes(png(knee(8)))
    os.mkfifo(tmp_path / "IM0002")  # never opened by a scan
    assert [p.name for p in expand_inputs([tmp_path])] == ["IM0001", "knee.png"]


@pytest.mark.parametrize("present", ["RescaleSlope", "RescaleIntercept"])
def test_a_rescale_slope_or_intercept_alone_is_refused(present) -> None:
    """pydicom rescales only when both are present; kedge once applied one alone to the
    display range (a slope of -1 alone made every image white, classified without a word)."""
    from pydicom.filereader import dcmread

    ds = dcmread(io.BytesIO(dicom(knee(12), 12)))
    setattr(ds, present, -1.0 if present == "RescaleSlope" else 500.0)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageError, match="^scan.dcm: DICOM has only one of RescaleSlope and RescaleIntercept"):
        preprocess(buffer.getvalue(), "scan.dcm")


def test_the_display_pipeline_gives_the_same_pixels_band_by_band(monkeypatch) -> None:
    """The pipeline runs on bands of rows to bound its memory: bands of 7 rows give the
    same image as one band, with rescale, window and MONOCHROME1 inversion."""
    from kedge.runtime.inputs import dicom as dicom_module

    data = dicom(knee(12, seed=4), 12, "MONOCHROME1", slope=2.0, intercept=-100.0, window=(3000.0, 5000.0))
    whole, scale = dicom_module.decode_dicom(data, "scan.dcm")
    monkeypatch.setattr(dicom_module, "_BAND_PIXELS", 7 * whole.shape[1])
    banded, banded_scale = dicom_module.decode_dicom(data, "scan.dcm")
    assert banded_scale == scale and np.array_equal(banded, whole) and len(np.unique(whole)) > 100
