"""No machine path in kedge.json: training, export and parity record their folders by
name or relative to --data, and `kedge ship` makes portable any absolute path an older
bundle still carries, so no shipped kedge.json says where one machine keeps its data."""
from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from leanbundle import make_lean_bundle

from kedge.cli import main
from kedge.runtime.bundle.manifest import load_bundle, new_bundle

DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def machine_paths(manifest: dict[str, Any]) -> list[str]:
    return [s for s in strings(manifest) if s.startswith(("/", "~/")) or DRIVE.match(s)
            or re.search(r"(^|[\s(])(/work/|/home/|/tmp/|[A-Za-z]:\\)", s)]


def test_train_export_and_parity_record_no_machine_path(tf_keras, synthetic_data, tmp_path) -> None:
    data = tmp_path / "knees"  # given as an absolute path, the worst case
    for folder in sorted(p for p in synthetic_data.iterdir() if p.is_dir()):
        (data / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.png"))[:16]:
            shutil.copy(image, data / folder.name / image.name)
    (data / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # an unreadable image parity records
    with open(data / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "collection"])
        for image in sorted(data.rglob("*.png")):
            writer.writerow([image.relative_to(data).as_posix(), "A" if image.stem.endswith(("0", "2", "4")) else "B"])
    bundle = tmp_path / "cnn"
    run = CliRunner()
    trained = run.invoke(main, ["train", "knee-cnn", "--data", str(data), "--out", str(bundle), "--width", "0.125",
                                "--epochs", "2", "--patience", "0", "--quiet", "--sources", str(data / "manifest.csv"),
                                "--source-column", "collection"])
    assert trained.exit_code == 0, trained.output
    exported = run.invoke(main, ["export", str(bundle), "--int8", "--calib", str(data), "--calib-size", "24",
                                 "--calib-split", "train", "--data", str(data), "--quiet"])
    assert exported.exit_code in (0, 1), exported.output  # a 2-epoch model may fail the INT8 rule; it is recorded
    manifest = load_bundle(bundle).manifest
    assert machine_paths(manifest) == []
    assert str(tmp_path) not in json.dumps(manifest)
    training = manifest["training"]
    assert (training["data"], training["dataset"]["root"]) == ("knees", "knees")
    assert training["sources"]["file"] == "manifest.csv"  # relative to the data folder
    assert manifest["calibration"]["folder"] == "knees" and manifest["parity"]["data"] == "knees"
    assert manifest["parity"]["unreadable"][0]["path"] == "Normal/broken.png"
    card = run.invoke(main, ["card", str(bundle)])  # the card reads these fields
    assert card.exit_code == 0 and "images of knees (train split)" in card.output, card.output


OLD = "/work/shared/data"  # what an older kedge recorded: the exporting machine's folders


def test_ship_makes_the_paths_of_an_older_bundle_portable(synthetic_data, tmp_path) -> None:
    source = make_lean_bundle(tmp_path / "old", synthetic_data)
    manifest = {k: v for k, v in load_bundle(source).manifest.items() if k not in ("files", "schema")}
    manifest["model"]["options"] = {"weights": "/home/me/resnet50_notop.h5"}
    manifest["training"] = {"data": OLD, "sources": {"file": f"{OLD}/manifest.csv", "rule": None},
                            "dataset": {"root": OLD, "counts": {"test": {"Normal": 3}}}}
    manifest["calibration"] = {"folder": f"{OLD}/knee-3class", "method_choice": {"chosen_on": f"{OLD} (val split)"},
                               "tensorrt_keep_float": {"nodes": ["model/conv2d/Conv2D"]},
                               "cpu_keep_float": {"patterns": ["*/conv1_*"], "nodes": ["model/conv1_a"]}}
    manifest["parity"]["data"] = OLD
    rebuild = {"recipe": "kedge rebuild m --data ../shared/data", "commands": ["kedge train m --data ../shared/data"]}
    manifest["rebuild"] = rebuild  # a shipped bundle shipped again: its record names the default folders on purpose
    manifest["parity"]["unreadable"] = [{"path": f"{OLD}/knee-3class/Normal/bad.png", "problem": "truncated"}]
    manifest["metrics"] = {"test": {"failures": [{"path": "C:\\Users\\me\\data\\x.png", "problem": "unreadable"}]}}
    new_bundle(source, manifest)
    assert len(machine_paths(load_bundle(source).manifest)) >= 8  # the test's input really holds them

    shipped = tmp_path / "shipped"
    said = "collections A, B, C (../shared/data), as described there"  # the person's words, not a path
    result = CliRunner().invoke(main, ["ship", str(source), "--out", str(shipped), "--forms", "onnx-int8",
                                       "--data-source", said])
    assert result.exit_code == 0, result.output
    out = load_bundle(shipped).manifest
    assert machine_paths(out) == []
    assert "/work/" not in json.dumps(out) and "/home/" not in json.dumps(out)
    assert out["training"]["data"] == "data" and out["training"]["sources"]["file"] == "manifest.csv"
    assert out["calibration"]["folder"] == "knee-3class" and out["parity"]["data"] == "data"
    assert out["calibration"]["method_choice"]["chosen_on"] == "data (val split)"
    assert out["parity"]["unreadable"][0]["path"] == "knee-3class/Normal/bad.png"
    assert out["metrics"]["test"]["failures"][0]["path"] == "x.png"
    assert out["model"]["options"]["weights"] == "resnet50_notop.h5"
    assert out["card"]["training_data"]["folder"] == "data"
    assert out["calibration"]["tensorrt_keep_float"]["nodes"] == ["model/conv2d/Conv2D"]  # names, not paths
    assert out["calibration"]["cpu_keep_float"]["patterns"] == ["*/conv1_*"]  # node patterns, not paths
    assert out["card"]["training_data"]["source"] == said
    assert out["rebuild"] == rebuild
    assert out["files"] and all(not machine_paths({"k": k}) for k in out["files"])


@pytest.mark.parametrize("folder", ["resnet50-gru", "knee-cnn"])
def test_the_shipped_models_name_no_machine_path(folder) -> None:
    from kedge.runtime.bundle.shipped import MODELS_DIR

    if not (MODELS_DIR / folder / "kedge.json").is_file():
        pytest.skip(f"no shipped {folder}")
    assert machine_paths(load_bundle(MODELS_DIR / folder).manifest) == []
