"""A seeded fuzz campaign against kedge's input walls (KEDGE_FUZZ_SEED picks another campaign).

Families: mutated PNG/JPEG/BMP/TIFF (bit flips, cuts, overwritten runs, huge declared
sizes, BigTIFF), DICOM variants (WindowWidth 0, text in NumberOfFrames/RescaleSlope,
infinite intercept, empty VOILUTSequence, corrupt and oversized deflate, truncation,
unknown VR, huge dimensions, bit flips), a FIFO, odd file names, and corrupted bundles.
Every DICOM carries a planted patient ID that must never be printed.

What must hold: every input is decoded or refused with one line naming it; no
traceback, no hang, no header value and no bare decoder message on stderr; the good
files still get their rows; no tampered bundle is ever used.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="needs the [dicom] extra")
pytest.importorskip("onnx", reason="the lean test bundle is built with onnx")

from leanbundle import make_lean_bundle  # noqa: E402

from imagegen import dicom, encode, pattern, png_chunk  # noqa: E402
from kedge.runtime.errors import ImageError, safe_name  # noqa: E402
from kedge.runtime.inputs.preprocess import preprocess  # noqa: E402

SEED = int(os.environ.get("KEDGE_FUZZ_SEED", "1313"))
MARKER = "KFZ7731"  # planted as PatientID and in PatientName: must appear in no output
PATIENT = (f"{MARKER}^Jo", f"{MARKER}-ID")


# ---------------------------------------------------------------- images


def _bigtiff(width: int, height: int) -> bytes:
    """A BigTIFF header claiming width x height 8-bit grey, with a little pixel data."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 16, 1, 256), (277, 3, 1, 1), (278, 4, 1, height), (279, 16, 1, width * height)]
    ifd = struct.pack("<Q", len(entries)) + b"".join(struct.pack("<HHQQ", *e) for e in entries) + bytes(8)
    head = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd
    return head + bytes(256 - len(head)) + bytes(min(width * height, 4096))


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = rng.integers(0, 5)
    if kind == 0:  # flip a few bits anywhere
        for _ in range(rng.integers(1, 8)):
            buf[rng.integers(0, len(buf))] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # cut short
        del buf[rng.integers(1, len(buf)):]
    elif kind == 2:  # cut, then an end marker (the half JPEG that libjpeg "recovers")
        del buf[rng.integers(len(buf) // 4, len(buf)):]
        buf += b"\xff\xd9"
    elif kind == 3:  # overwrite a run with random bytes, header included
        start = int(rng.integers(0, min(len(buf), 64)))
        buf[start:start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    else:  # flip bits in the first 64 bytes (signatures, sizes, CRCs)
        for _ in range(rng.integers(1, 4)):
            buf[rng.integers(0, min(len(buf), 64))] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf)


def image_family(rng: np.random.Generator) -> dict[str, bytes]:
    grey = pattern(72, 96, seed=SEED)
    bases = {"png": encode(grey, ".png"), "png16": encode(pattern(72, 96, 4095, SEED), ".png"),
             "jpg": encode(grey, ".jpg", [1, 90]), "bmp": encode(grey, ".bmp"), "tif": encode(grey, ".tif")}
    files = {f"ok-{k}.{k.rstrip('16')}": v for k, v in bases.items()}
    for kind, data in bases.items():
        for i in range(36):
            files[f"mut-{kind}-{i:02d}.{kind.rstrip('16')}"] = _mutate(data, rng)
    jpeg = bases["jpg"]
    files["half.jpg"] = jpeg[: len(jpeg) // 2] + b"\xff\xd9"
    files["bigtiff.tif"] = _bigtiff(22000, 22000)
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    files["huge.png"] = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + bases["png"][33:]
    return files


# ---------------------------------------------------------------- DICOM


def _raw(data: bytes, group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """Replace one explicit-VR element's value bytes (even length), or VR, as a broken writer would."""
    tag = struct.pack("<HH", group, element)
    at = data.index(tag + vr, 132)
    (length,) = struct.unpack("<H", data[at + 6:at + 8])
    value = value + b" " * (len(value) % 2)
    return data[:at] + tag + vr + struct.pack("<H", len(value)) + value + data[at + 8 + length:]


def _dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _save(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_family(rng: np.random.Generator) -> dict[str, bytes]:
    from pydicom.sequence import Sequence
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stored = pattern(64, 64, 4095, SEED).astype(np.uint16)
    base = dicom(stored, 12, slope=1.0, intercept=0.0, window=(2048.0, 4096.0), patient=PATIENT)
    files = {"ok.dcm": base, "ok-no-extension": base}
    text = {"ww0": (0x0028, 0x1051, b"DS", b"0"), "ww-neg": (0x0028, 0x1051, b"DS", b"-5"),
            "ww-nan": (0x0028, 0x1051, b"DS", b"nan"), "wc-text": (0x0028, 0x1050, b"DS", MARKER.encode()),
            "slope-text": (0x0028, 0x1053, b"DS", MARKER.encode()), "slope-0": (0x0028, 0x1053, b"DS", b"0"),
            "intercept-inf": (0x0028, 0x1052, b"DS", b"-inf"), "intercept-nan": (0x0028, 0x1052, b"DS", b"nan"),
            "rows-huge": (0x0028, 0x0010, b"US", struct.pack("<H", 60000)),
            "rows-0": (0x0028, 0x0010, b"US", struct.pack("<H", 0)),
            "bits-40": (0x0028, 0x0101, b"US", struct.pack("<H", 40)),
            "photometric": (0x0028, 0x0004, b"CS", MARKER.encode()),
            "unknown-vr": (0x0010, 0x0020, b"LO", None)}
    for name, (group, element, vr, value) in text.items():
        if value is None:
            at = base.index(struct.pack("<HH", group, element) + vr, 132)
            files[f"{name}.dcm"] = base[:at + 4] + b"\x00\x07" + base[at + 6:]  # VR bytes no reader knows
        else:
            files[f"{name}.dcm"] = _raw(base, group, element, vr, value)
    frames = _dataset(base)
    frames.NumberOfFrames = 2
    files["frames-text.dcm"] = _raw(_save(frames), 0x0028, 0x0008, b"IS", MARKER.encode())
    empty = _dataset(base)
    empty.VOILUTSequence = Sequence([])
    files["voi-empty.dcm"] = _save(empty)
    deflated = _dataset(base)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    files["deflated.dcm"] = _save(deflated)
    body = bytearray(files["deflated.dcm"])
    files["deflated-cut.dcm"] = bytes(body[: len(body) - int(rng.integers(10, 400))])
    for at in rng.integers(400, len(body), 6):  # raw deflate has no checksum: this may still inflate
        body[at] ^= 0xFF
    files["deflated-flipped.dcm"] = bytes(body)
    bomb = _dataset(dicom(np.zeros((64, 64), np.uint16), 16, patient=PATIENT))
    bomb.Rows = bomb.Columns = 15000  # claims 450 MB of pixels (the inflate limit has its own test)
    bomb.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    files["deflate-bomb.dcm"] = _save(bomb)
    for i in range(25):
        files[f"cut-{i:02d}.dcm"] = base[: int(rng.integers(100, len(base)))]
    for i in range(45):
        buf = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(128, min(len(buf), 900)))] ^= 1 << int(rng.integers(0, 8))
        files[f"flip-{i:02d}.dcm"] = bytes(buf)
    return files


# ---------------------------------------------------------------- the checks


@pytest.fixture(scope="module")
def campaign() -> dict[str, bytes]:
    rng = np.random.default_rng(SEED)
    return {**image_family(rng), **dicom_family(rng)}


def test_every_input_is_decoded_or_refused_in_one_line(campaign, capfd) -> None:
    problems, refused = [], set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, data in campaign.items():
            try:
                tensor = preprocess(data, name)
            except ImageError as err:
                refused.add(name)
                text = str(err)
                if "\n" in text or not text.startswith(f"{name}: ") or MARKER in text:
                    problems.append(f"{name}: bad message {text!r}")
                continue
            except Exception as err:  # the wall was breached
                problems.append(f"{name}: {type(err).__name__} escaped")
                continue
            if tensor.shape != (224, 224, 3) or not np.isfinite(tensor).all():
                problems.append(f"{name}: accepted but gave a bad tensor")
    printed = capfd.readouterr()
    assert not problems, "\n".join(problems)
    assert printed.err == "" and printed.out == "", "decoder output printed bare"
    assert not [str(w.message) for w in caught]
    must_refuse = {"half.jpg", "bigtiff.tif", "huge.png", "ww0.dcm", "ww-neg.dcm", "ww-nan.dcm", "wc-text.dcm",
                   "slope-text.dcm", "slope-0.dcm", "intercept-inf.dcm", "intercept-nan.dcm", "rows-huge.dcm",
                   "rows-0.dcm", "bits-40.dcm", "photometric.dcm", "unknown-vr.dcm", "frames-text.dcm",
                   "voi-empty.dcm", "deflated-cut.dcm", "deflate-bomb.dcm"}
    assert must_refuse <= refused, sorted(must_refuse - refused)
    assert not {n for n in campaign if n.startswith("ok")} & refused
    assert len(refused) > len(campaign) // 3  # the mutations really are hostile


def test_cli_keeps_the_good_rows_and_names_every_failure(campaign, tmp_path, synthetic_data) -> None:
    bundle = make_lean_bundle(tmp_path / "tiny", synthetic_data, int8=False)
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for name, data in campaign.items():
        (folder / name).write_bytes(data)
        paths.append(str(folder / name))
    good = campaign["ok-png.png"]
    for odd in ("new\nline.png", "\x1b[31mred.png", os.fsdecode(b"latin-\xe9.png")):
        (folder / odd).write_bytes(good)
        paths.append(str(folder / odd))
    (folder / "bad\nname.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    paths.append(str(folder / "bad\nname.png"))
    os.mkfifo(folder / "x.png")
    paths.append(str(folder / "x.png"))
    try:
        result = subprocess.run([sys.executable, "-m", "kedge.cli", "infer", *paths, "--model", str(bundle),
                                 "--precision", "fp32", "--json", "--quiet"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("kedge infer hung on the fuzz inputs")
    out, err = result.stdout.decode(), result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 1
    assert "Traceback" not in err and MARKER not in out + err
    names = {safe_name(p) for p in paths}
    lines = err.splitlines()
    summary = [line for line in lines if line.endswith("file(s) could not be classified")]
    notice = [line for line in lines if line.endswith("no input check is possible: it answers for any image "
                                                      "(fit one with `kedge envelope`)")]  # said once: no envelope
    errors = [line for line in lines if line not in summary + notice]
    assert len(summary) == 1 and len(notice) == 1
    unnamed = [line for line in errors if not line.startswith("kedge: error: ")
               or line[len("kedge: error: "):].split(": ")[0] not in names]
    assert not unnamed, unnamed[:5]
    rows = json.loads(out)
    assert {row["path"] for row in rows} | {line[len("kedge: error: "):].split(": ")[0] for line in errors} \
        == names  # every file accounted for, once
    for odd in ("new\\nline.png", "\\x1b[31mred.png", "latin-\\xe9.png", "ok-png.png", "ok.dcm",
                "ok-no-extension"):
        assert any(row["path"].endswith(odd) for row in rows), odd
    assert any(line.startswith(f"kedge: error: {safe_name(folder / 'x.png')}: not a regular file") for line in errors)


# ---------------------------------------------------------------- bundles


def _edit(manifest: dict, path: tuple, value: object = KeyError) -> dict:
    """A copy of the manifest with the value at `path` replaced (or deleted, by default)."""
    copy = json.loads(json.dumps(manifest))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copy


def tampered_bundles(base: Path, other: Path, rng: np.random.Generator) -> dict[str, Path]:
    """Bundles that must all be refused, written beside `base` (a valid fp32 lean bundle)."""
    manifest = json.loads((base / "kedge.json").read_text())
    model_sha = manifest["files"]["model.onnx"]
    other_sha = json.loads((other / "kedge.json").read_text())["files"]["model.onnx"]
    edits: dict[str, dict | str] = {}
    for path in [("schema",), ("model",), ("model", "name"), ("model", "classes"), ("input",), ("preprocessing",),
                 ("preprocessing", "version"), ("input", "shape"), ("files", "model.onnx")]:
        edits["missing-" + "-".join(path)] = _edit(manifest, path)
    for path, value in [(("schema",), True), (("schema",), "1"), (("schema",), 1.0), (("model",), []),
                        (("model", "name"), 5), (("model", "name"), "../x"), (("model", "classes"), "Normal"),
                        (("model", "classes"), [1, 2, 3]), (("model", "classes"), ["A"]),
                        (("model", "classes"), ["Normal", "normal", "Osteoporosis"]),
                        (("model", "classes"), ["A", "B", "C", "D"]), (("model", "classes"), ["A", "B"]),
                        (("model", "classes"), ["Normal\nkedge: forged", "Osteopenia", "Osteoporosis"]),
                        (("model", "classes"), ["\x1b[31mNormal", "Osteopenia", "Osteoporosis"]),
                        (("input",), "image"), (("input", "shape"), [None, 128, 128, 3]),
                        (("preprocessing",), None), (("preprocessing", "version"), "99"),
                        (("preprocessing", "version"), 2), (("files",), []), (("files", "model.onnx"), ""),
                        (("files", "model.onnx"), 5), (("files", "model.onnx"), "0" * 64),
                        (("artifacts",), ["model.onnx"]), (("artifacts", "onnx_fp32"), 7),
                        (("artifacts", "onnx_fp32"), "/etc/passwd"),
                        (("artifacts", "onnx_fp32"), str(other / "model.onnx")),
                        (("artifacts", "onnx_fp32"), "../other/model.onnx"),
                        (("artifacts", "onnx_fp32"), "missing.onnx"), (("artifacts", "onnx_fp32"), ""),
                        (("engines",), {"x": "/dev/zero"}), (("parity",), "passed")]:
        edits[f"bad-{'-'.join(path)}-{str(value)[:20]}"] = _edit(manifest, path, value)
    edits["other-listed-outside"] = {**_edit(manifest, ("artifacts", "onnx_fp32"), "../other/model.onnx"),
                                     "files": {**manifest["files"], "../other/model.onnx": other_sha}}
    text = json.dumps(manifest)
    edits["deep-nesting"] = text[:-1] + ', "x": ' + "[" * 100000 + "]" * 100000 + "}"
    edits["duplicate-key"] = text[:-1] + ', "model": {"name": "evil", "classes": ["A", "B", "C"]}}'
    edits["not-json"] = text[: len(text) // 2]
    edits["not-object"] = "[1, 2, 3]"
    edits["not-utf8"] = "\udcff"
    bundles = {}
    for i, (name, content) in enumerate(edits.items()):
        folder = base.parent / f"t{i:03d}"
        shutil.copytree(base, folder)
        body = content if isinstance(content, str) else json.dumps(content)
        (folder / "kedge.json").write_bytes(body.encode("utf-8", "surrogateescape"))
        bundles[name] = folder
    for name, change in [("flip-model", "flip"), ("flip-model-no-sha", "flip-drop"),
                         ("flip-model-empty-sha", "flip-empty"), ("symlink-out", "symlink")]:
        folder = base.parent / f"f-{name}"
        shutil.copytree(base, folder)
        data = bytearray((folder / "model.onnx").read_bytes())
        data[int(rng.integers(len(data) // 2, len(data)))] ^= 0x01
        edited = manifest
        if change == "symlink":
            (folder / "model.onnx").unlink()
            (folder / "model.onnx").symlink_to(other / "model.onnx")
            edited = _edit(manifest, ("files", "model.onnx"), other_sha)
        else:
            (folder / "model.onnx").write_bytes(bytes(data))
            if change == "flip-drop":
                edited = _edit(manifest, ("files", "model.onnx"))
            elif change == "flip-empty":
                edited = _edit(manifest, ("files", "model.onnx"), "")
        (folder / "kedge.json").write_text(json.dumps(edited))
        bundles[name] = folder
    assert model_sha != other_sha
    return bundles


def _infer(bundle: Path, image: Path):
    from click.testing import CliRunner

    from kedge.cli import main

    return CliRunner().invoke(main, ["infer", str(image), "--model", str(bundle), "--json", "--quiet",
                                     "--precision", "fp32"])


def test_no_tampered_bundle_is_used(tmp_path, synthetic_data) -> None:
    rng = np.random.default_rng(SEED)
    base = make_lean_bundle(tmp_path / "base", synthetic_data, int8=False)
    other = make_lean_bundle(tmp_path / "other", synthetic_data, int8=False)
    from leanbundle import tiny_onnx  # a different model in the other bundle, listed with its own sha256

    tiny_onnx(other / "model.onnx", seed=1)
    from kedge.runtime.bundle.manifest import load_bundle, new_bundle

    new_bundle(other, {k: v for k, v in load_bundle(other).manifest.items() if k not in ("files", "schema")})
    image = tmp_path / "knee.png"
    image.write_bytes(encode(pattern(64, 64, seed=SEED), ".png"))
    control = _infer(base, image)
    assert control.exit_code == 0, control.output
    accepted, broken = [], []
    bundles = tampered_bundles(base, other, rng)
    for name, folder in bundles.items():
        result = _infer(folder, image)
        if result.exit_code == 0:
            accepted.append(name)
        lines = result.stderr.splitlines()
        if not isinstance(result.exception, SystemExit) or len(lines) != 1 or \
                not lines[0].startswith("kedge: error: ") or result.stdout:
            broken.append(f"{name}: {result.exception!r} {result.stderr[-300:]!r}")
    assert not accepted, accepted
    assert not broken, "\n".join(broken)
    assert len(bundles) >= 45


def test_random_manifest_mutations_never_give_a_traceback(tmp_path, synthetic_data) -> None:
    rng = np.random.default_rng(SEED + 1)
    base = make_lean_bundle(tmp_path / "base", synthetic_data, int8=False)
    image = tmp_path / "knee.png"
    image.write_bytes(encode(pattern(64, 64, seed=SEED), ".png"))
    text = (base / "kedge.json").read_bytes()
    broken = []
    for i in range(60):
        data = bytearray(text)
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        (base / "kedge.json").write_bytes(bytes(data))
        result = _infer(base, image)
        if result.exit_code not in (0, 1) or not isinstance(result.exception, (SystemExit, type(None))) or \
                any(not line.startswith("kedge: ") for line in result.stderr.splitlines()):
            broken.append(f"{i}: {result.exception!r} {result.stderr[-300:]!r}")
    assert not broken, "\n".join(broken)


def test_deflated_dicom_is_inflated_in_bounded_steps(monkeypatch) -> None:
    """A deflated body past the limit is refused once the limit is passed, not inflated whole."""
    from kedge.runtime.inputs import dicom as dicom_module

    monkeypatch.setattr(dicom_module, "MAX_BYTES", 4 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = deflated_dicom(packer.compress(bytes(64 << 20)) + packer.flush())  # 64 MiB of zeros in about 64 KB
    with pytest.raises(ImageError, match="inflates past"):
        dicom_module.decode_dicom(data, "bomb.dcm")


# ---------------------------------------------------------------- hangs and memory (issue 21)


def status_kib(field: str) -> str:
    """Python source for one /proc/self/status figure of the running process, in KiB."""
    return f"[line.split()[1] for line in open('/proc/self/status') if line.startswith('{field}:')][0]"


def bounded(code: str, seconds: float, max_mib: float | None = None, *args: str) -> str:
    """Run `code` in a fresh interpreter; fail if it outlives `seconds`, dies, or (with
    `max_mib`) peaks above that RSS. Returns its stdout, whose last line is the peak."""
    # VmHWM, not ru_maxrss: Linux carries a forked parent's high-water mark across exec into ru_maxrss
    probe = f"\nprint('peak-kib', {status_kib('VmHWM')})"
    try:
        result = subprocess.run([sys.executable, "-c", code + probe, *args], capture_output=True, text=True,
                                timeout=seconds, cwd=Path(__file__).parent)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {seconds} s (a hang)")
    assert result.returncode == 0, result.stderr[-2000:]
    peak_mib = int(result.stdout.split()[-1]) / 1024
    if max_mib is not None:
        assert peak_mib <= max_mib, f"peak RSS {peak_mib:.0f} MiB, limit {max_mib} MiB"
    return result.stdout


def deflated_dicom(blob: bytes) -> bytes:
    """The smallest file kedge treats as Deflated Explicit VR: preamble, DICM, the
    transfer-syntax element, then `blob` as the body."""
    from kedge.runtime.inputs.dicom import DEFLATED

    syntax = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(DEFLATED)) + DEFLATED
    meta = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(syntax)) + syntax
    return bytes(128) + b"DICM" + meta + blob


def test_deflated_dicom_with_a_pad_byte_after_the_stream_does_not_hang(tmp_path) -> None:
    """pydicom pads the deflated body to an even length; the byte after the stream's end
    stays in zlib's unconsumed_tail, which once made the inflate loop spin forever."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = tmp_path / "padded.dcm"
    path.write_bytes(deflated_dicom(packer.compress(bytes(3 << 20)) + packer.flush() + b"\x00"))
    code = ("import sys\nfrom kedge.runtime.inputs.dicom import _check_deflated_size\n"
            "_check_deflated_size(open(sys.argv[1], 'rb').read(), 'padded.dcm')")
    bounded(code, 30, None, str(path))


def test_an_oversized_manifest_is_refused_before_it_is_read(tmp_path) -> None:
    """A 1 GiB sparse kedge.json: refused from its size, in a few MiB and well under a second's work."""
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big" / "kedge.json", "wb") as handle:
        handle.truncate(1 << 30)
    code = ("import sys\nfrom kedge.runtime.bundle.manifest import load_bundle\n"
            "from kedge.runtime.errors import KedgeError\n"
            "try:\n    load_bundle(sys.argv[1])\nexcept KedgeError as err:\n    print(err)\n")
    out = bounded(code, 20, 200, str(tmp_path / "big"))
    assert "manifest is over 8 MiB" in out


def _one_line_refusal(bundle: Path, image: Path, expected: str) -> None:
    result = _infer(bundle, image)
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("kedge: error: ") and expected in lines[0], lines


def test_links_loops_and_fifos_in_a_bundle_are_one_line_errors(tmp_path, synthetic_data) -> None:
    base = make_lean_bundle(tmp_path / "base", synthetic_data, int8=False)
    image = tmp_path / "knee.png"
    image.write_bytes(encode(pattern(64, 64, seed=SEED), ".png"))
    loop = Path(shutil.copytree(base, tmp_path / "loop"))
    (loop / "model.onnx").unlink()
    (loop / "model.onnx").symlink_to("other.onnx")
    (loop / "other.onnx").symlink_to("model.onnx")
    _one_line_refusal(loop, image, "symlink loop")
    linked = Path(shutil.copytree(base, tmp_path / "linked"))
    (linked / "kedge.json").rename(tmp_path / "outside.json")
    (linked / "kedge.json").symlink_to(tmp_path / "outside.json")
    _one_line_refusal(linked, image, "leads outside the bundle")
    fifo = Path(shutil.copytree(base, tmp_path / "fifo"))
    (fifo / "model.onnx").unlink()
    os.mkfifo(fifo / "model.onnx")
    _one_line_refusal(fifo, image, "not a regular file")
    manifest_fifo = Path(shutil.copytree(base, tmp_path / "manifest-fifo"))
    (manifest_fifo / "kedge.json").unlink()
    os.mkfifo(manifest_fifo / "kedge.json")
    _one_line_refusal(manifest_fifo, image, "not a regular file")


PNG_HEAD = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))


@pytest.mark.parametrize("head, size", [(PNG_HEAD, 200 << 20), (b"\xff\xd8", 100 << 20)],
                         ids=["png-zeros", "jpeg-fill"])
def test_the_header_reader_does_not_walk_junk_byte_by_byte(tmp_path, head, size) -> None:
    """A valid signature then hundreds of MiB of zeros (PNG) or 0xFF fill (JPEG): refused
    within a CPU-second of work (byte by byte, this took 14 s and 21 s)."""
    path = tmp_path / "junk"
    path.write_bytes(head + (b"\xff" if head.startswith(b"\xff") else b"\x00") * (size - len(head)))
    code = ("import sys, time\nfrom kedge.runtime.inputs.preprocess import preprocess\n"
            "from kedge.runtime.errors import ImageError\nstart = time.process_time()\n"
            "try:\n    preprocess(sys.argv[1])\nexcept ImageError as err:\n"
            "    print(err)\nprint('cpu-s', time.process_time() - start)")
    out = bounded(code, 60, None, str(path)).splitlines()
    assert float(out[1].split()[1]) < 2.0, out
    assert "truncated or corrupt image header" in out[0]


def test_a_large_deflated_dicom_peaks_near_its_pixels(tmp_path) -> None:
    """A 6000 x 6000 16-bit deflated DICOM (a few hundred KB on disk): the decode peaks at
    most 5 bytes a pixel above the interpreter (the stored pixels and the output, 2 each,
    plus about 1 for pydicom's copies) and a 64 MiB margin; int64 and float64 copies of
    the whole image once made it about 30 bytes a pixel (8.95 GB at 14,000 x 14,000)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    side = 6000
    stored = np.zeros((side, side), np.uint16)
    stored[::97] = 4000
    path = tmp_path / "big.dcm"
    path.write_bytes(dicom(stored, 16, syntax=DeflatedExplicitVRLittleEndian, patient=PATIENT))
    del stored
    code = ("import sys\nimport pydicom\nfrom kedge.runtime.inputs.preprocess import preprocess\n"
            f"print('base-kib', {status_kib('VmRSS')})\nprint(preprocess(sys.argv[1]).shape)")
    out = bounded(code, 60, None, str(path)).split()
    above_mib = (int(out[-1]) - int(out[1])) / 1024
    assert above_mib <= (5 * side * side >> 20) + 64, f"{above_mib:.0f} MiB above the interpreter"


def test_an_audit_trail_that_is_a_fifo_is_refused_not_waited_on(tmp_path, synthetic_data) -> None:
    bundle = make_lean_bundle(tmp_path / "tiny", synthetic_data, int8=False)
    image = tmp_path / "knee.png"
    image.write_bytes(encode(pattern(64, 64, seed=SEED), ".png"))
    os.mkfifo(tmp_path / "trail.jsonl")
    try:
        result = subprocess.run([sys.executable, "-m", "kedge.cli", "infer", str(image), "--model", str(bundle),
                                 "--precision", "fp32", "--quiet", "--audit", str(tmp_path / "trail.jsonl")],
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("kedge infer --audit FIFO hung")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"kedge: error: {tmp_path / 'trail.jsonl'}: the audit file is not a "
                                          "regular file (a FIFO, device or socket); refused"]


def test_a_class_name_with_a_control_character_is_refused_for_training() -> None:
    """The bundle would refuse it when loaded: refuse it before training, not after."""
    from kedge.runtime.errors import KedgeError
    from kedge.runtime.inputs.folders import parse_classes

    with pytest.raises(KedgeError, match="control character"):
        parse_classes("Normal,\x1b[31mOsteoporosis")


@pytest.mark.parametrize("kind", ["png-rgba16", "dicom-native16"])
def test_an_image_whose_decode_would_pass_the_memory_limit_is_refused_first(tmp_path, kind) -> None:
    """A 16-bit RGBA PNG holds 8 bytes a pixel once decoded (a 200 MP one of a few MB took
    3.2 GB). With the decode limit lowered to 32 MiB in the child, a 2600 x 2600 one
    (about 108 MiB to decode) and a 16-bit DICOM of that size (about 39 MiB with its
    file and output) are refused from their headers, before the pixels are decoded."""
    side = 2600
    image = np.broadcast_to(np.arange(side, dtype=np.uint16) * 25, (side, side))
    if kind == "png-rgba16":
        data = encode(np.ascontiguousarray(np.repeat(image[:, :, None], 4, axis=2)), ".png", [16, 1])
    else:
        data = dicom(np.ascontiguousarray(image), 16, patient=PATIENT)
    path = tmp_path / "big"
    path.write_bytes(data)
    code = ("import sys\nfrom kedge.runtime.inputs import preprocess as p\n"
            "from kedge.runtime.errors import ImageError\n"
            "import kedge.runtime.inputs.limits\nkedge.runtime.inputs.limits.MAX_DECODE_BYTES = 32 << 20\n"
            f"print('base-kib', {status_kib('VmRSS')})\n"
            "try:\n    p.preprocess(sys.argv[1])\nexcept ImageError as err:\n    print(err)\n")
    out = bounded(code, 60, None, str(path)).splitlines()
    above_mib = (int(out[-1].split()[1]) - int(out[0].split()[1])) / 1024
    assert "decoding needs about" in out[1] and "over kedge's limit of 32 MiB" in out[1], out
    if kind == "png-rgba16":
        assert above_mib < 48, f"{above_mib:.0f} MiB above the interpreter"


@pytest.mark.slow
def test_seeded_campaign(tmp_path) -> None:
    """docs/results/fuzz_campaign.py on KEDGE_FUZZ_SEEDS (default three seeds, about 1,400 inputs;
    its docstring gives the 10,000-input run): no traceback, hang, crash, leak or accepted
    tampered input in any family."""
    seeds = os.environ.get("KEDGE_FUZZ_SEEDS", "31-33")
    campaign = Path(__file__).resolve().parents[1] / "docs" / "results" / "fuzz_campaign.py"
    try:
        result = subprocess.run([sys.executable, str(campaign), "--seeds", seeds, "--work", str(tmp_path)],
                                capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        pytest.fail("the campaign outlived an hour")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_a_png_chunk_longer_than_its_file_is_refused_before_opencv_allocates_it(tmp_path) -> None:
    """One flipped bit made a 5 KB PNG's IDAT claim 2 GiB, and OpenCV 5 allocated it before
    reading (the 10,000-input campaign found it: 2 GB peak). Refused from the header now,
    within a 64 MiB margin over the interpreter."""
    png = bytearray(encode(pattern(72, 96, seed=SEED), ".png"))
    at = png.index(b"IDAT") - 4
    png[at:at + 4] = struct.pack(">I", struct.unpack(">I", png[at:at + 4])[0] | 0x80000000)
    path = tmp_path / "long-idat.png"
    path.write_bytes(bytes(png))
    code = ("import sys\nfrom kedge.runtime.inputs.preprocess import preprocess\n"
            "from kedge.runtime.errors import ImageError\n"
            f"print('base-kib', {status_kib('VmRSS')})\n"
            "try:\n    preprocess(sys.argv[1])\nexcept ImageError as err:\n    print(err)\n")
    out = bounded(code, 30, None, str(path)).splitlines()
    above_mib = (int(out[-1].split()[1]) - int(out[0].split()[1])) / 1024
    assert above_mib < 64, f"{above_mib:.0f} MiB above the interpreter"
    assert "a PNG IDAT chunk runs past the end of the file" in out[1], out
