"""Sources: from a CSV file (named columns, tail matching), from rules, from DICOM
headers (hashed, never printed), and the class-mix warnings of `kedge dataset`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kedge.cli import main
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.folders import LabelledImage, scan_labelled
from kedge.runtime.inputs.sources import class_mix, make_spec, mix_warnings, with_sources

CLASSES = ["Normal", "Osteoporosis"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    import cv2

    from kedge.runtime.checks.synthetic import class_density, knee_radiograph

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for tree_name, files in (("small", ["N1.png", "OS1.png"]), ("full", ["N2.jpg", "OS2.jpg", "OS3.jpg"])):
        for name in files:
            cls = "Normal" if name.startswith("N") else "Osteoporosis"
            (root / tree_name / cls).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / tree_name / cls / name), knee_radiograph(class_density(cls), rng, 64))
    return root


def test_several_class_trees_and_rules(tree: Path) -> None:
    items = scan_labelled(tree, CLASSES)
    assert [i.path.relative_to(tree).as_posix() for i in items] == [
        "full/Normal/N2.jpg", "small/Normal/N1.png", "full/Osteoporosis/OS2.jpg", "full/Osteoporosis/OS3.jpg",
        "small/Osteoporosis/OS1.png"]
    assert [i.source for i in with_sources(items, tree, make_spec(None, "folder"))] == [
        "full", "small", "full", "full", "small"]
    assert {i.source for i in with_sources(items, tree, make_spec(None, "format"))} == {"jpeg", "png"}
    by_regex = with_sources(items, tree, make_spec(None, r"regex:/(N|OS)\d"))
    assert [i.source for i in by_regex] == ["N", "N", "OS", "OS", "OS"]
    assert {i.source for i in with_sources(items, tree, make_spec(None, None))} == {"all"}


def test_sources_file_with_named_columns_and_tail_matching(tree: Path, tmp_path: Path) -> None:
    table = tmp_path / "manifest.csv"
    rows = ["file,site"] + [f"data/{p},{'X' if 'full' in p else 'Y'}" for p in (
        "full/Normal/N2.jpg", "small/Normal/N1.png", "full/Osteoporosis/OS2.jpg", "full/Osteoporosis/OS3.jpg",
        "small/Osteoporosis/OS1.png")]
    table.write_text("\n".join(rows) + "\n")
    spec = make_spec(table, None, "file", "site")
    items = with_sources(scan_labelled(tree, CLASSES), tree, spec)  # paths in the file carry a "data/" prefix
    assert [i.source for i in items] == ["X", "Y", "X", "X", "Y"]
    # the subfolder as data root still matches by the unique tail
    assert {i.source for i in with_sources(scan_labelled(tree / "full", CLASSES), tree / "full", spec)} == {"X"}
    with pytest.raises(KedgeError, match="no column 'source'.*--source-column"):
        with_sources(scan_labelled(tree, CLASSES), tree, make_spec(table, None, "file", "source"))
    table.write_text("file,site\ndata/full/Normal/N2.jpg,X\n")
    with pytest.raises(KedgeError, match="small/Normal/N1.png: has no row in the sources file"):
        with_sources(scan_labelled(tree, CLASSES), tree, spec)


@pytest.mark.parametrize("rule,problem", [("regex:(", "bad regular expression"), ("scanner", "use one of"),
                                          ("dicom:Patient Name", "DICOM keywords")])
def test_bad_rules_are_one_line(rule: str, problem: str) -> None:
    with pytest.raises(KedgeError, match=problem):
        make_spec(None, rule)
    with pytest.raises(KedgeError, match="not both"):
        make_spec("x.csv", "folder")


def test_dicom_source_is_a_hash_and_never_the_value(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from test_dicom import PATIENT, dicom, knee

    secret = "St Elsewhere Knee Clinic"
    for name, institution in (("a.dcm", secret), ("b.dcm", secret), ("c.dcm", "Other Hospital")):
        import pydicom

        path = tmp_path / "Normal" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(dicom(knee(12), 12))
        ds = pydicom.dcmread(path)
        ds.InstitutionName = institution
        ds.save_as(path)
    (tmp_path / "Osteoporosis").mkdir()
    (tmp_path / "Osteoporosis" / "d.dcm").write_bytes(dicom(knee(12), 12))
    items = with_sources(scan_labelled(tmp_path, CLASSES), tmp_path, make_spec(None, "dicom:InstitutionName"))
    names = [i.source for i in items]
    assert names[0] == names[1] != names[2] and all(n.startswith("dicom-") for n in names)
    result = CliRunner().invoke(main, ["dataset", str(tmp_path), "--classes", ",".join(CLASSES), "--source-rule",
                                       "dicom:InstitutionName", "--json"])
    assert secret not in result.output and PATIENT[1] not in result.output and "Other Hospital" not in result.output


def test_mix_warnings() -> None:
    def items(source: str, counts: dict[str, int]) -> list[LabelledImage]:
        return [LabelledImage(Path(f"{source}{c}{i}.png"), CLASSES.index(c), c, source)
                for c, n in counts.items() for i in range(n)]

    confounded = class_mix(items("A", {"Normal": 9, "Osteoporosis": 1}) + items("B", {"Normal": 1, "Osteoporosis": 9})
                           + items("C", {"Normal": 5}), CLASSES)
    warnings = mix_warnings(confounded)
    assert any("source alone predicts the class better than the class prior (92.0% vs 60.0%)" in w for w in warnings)
    assert any("source C holds a single class (Normal)" in w for w in warnings)
    balanced = class_mix(items("A", {"Normal": 5, "Osteoporosis": 5}) + items("B", {"Normal": 5, "Osteoporosis": 5}),
                         CLASSES)
    assert mix_warnings(balanced) == []


def test_dataset_command_shows_the_mix_per_source(tree: Path) -> None:
    result = CliRunner().invoke(main, ["dataset", str(tree), "--classes", ",".join(CLASSES), "--source-rule", "folder",
                                       "--split", "0.34,0.33,0.33", "--json"])
    report = json.loads(result.output)
    assert report["class_mix_by_source"] == {"full": {"Normal": 1, "Osteoporosis": 2},
                                             "small": {"Normal": 1, "Osteoporosis": 1}}
