"""Where each image came from: a "source" (collection, site, scanner) per file.

Public knee sets mix collections, and a model can learn the collection (compression,
framing, resolution) instead of the bone. Splits, training weights, metrics, cards and
`kedge audit` therefore group images by source. A source comes from one of:

- a CSV file (`--sources FILE`) with a path column (relative to the data root) and a
  source column, both named by the user; `../shared/data/manifest.csv` works as is;
- a rule (`--source-rule`): `folder` (first folder under the data root), `format`
  (file format), `regex:PATTERN` (first group, else the whole match, of the path
  relative to the data root) or `dicom:Manufacturer,InstitutionName` (DICOM header
  fields, hashed: the values are never printed or stored).

Without either, every image has the source "all" and the card says that no
per-source check was possible.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.folders import (
    LabelledImage,
    file_format,
    read_split_sources,
)

UNKNOWN = "all"  # the one source of data without source information
RULES = ("folder", "format", "regex:PATTERN", "dicom:FIELD[,FIELD...]")


@dataclass(frozen=True)
class SourceSpec:
    """How to find sources: a file (with its column names) or a rule; neither means none."""

    file: Path | None = None
    path_column: str = "path"
    source_column: str = "source"
    rule: str | None = None

    @property
    def given(self) -> bool:
        return self.file is not None or self.rule is not None

    def describe(self) -> str:
        if self.file is not None:
            return f"file {self.file} (columns {self.path_column}, {self.source_column})"
        return f"rule {self.rule}" if self.rule else "none"

    def to_json(self) -> dict[str, str | None]:
        return {"file": str(self.file) if self.file else None, "path_column": self.path_column,
                "source_column": self.source_column, "rule": self.rule}


def make_spec(file: str | os.PathLike[str] | None, rule: str | None, path_column: str = "path",
              source_column: str = "source") -> SourceSpec:
    """Validate CLI input into a SourceSpec (one line on error)."""
    if file is not None and rule is not None:
        raise KedgeError("give --sources or --source-rule, not both")
    if rule is not None:
        _rule_function(rule)  # fails early on a bad rule
    return SourceSpec(Path(file) if file is not None else None, path_column, source_column, rule)


def assign_sources(paths: Sequence[Path], root: str | os.PathLike[str], spec: SourceSpec) -> list[str]:
    """One source name per path (paths lie under root)."""
    root = Path(root)
    if not spec.given:
        return [UNKNOWN] * len(paths)
    relative = [_relative(p, root) for p in paths]
    if spec.file is not None:
        table = _read_table(spec)
        return [_lookup(table, rel, spec.file) for rel in relative]
    assert spec.rule is not None
    function = _rule_function(spec.rule)
    return [function(path, rel) for path, rel in zip(paths, relative, strict=True)]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _read_table(spec: SourceSpec) -> dict[str, str]:
    assert spec.file is not None
    try:
        with open(spec.file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for column, option in ((spec.path_column, "--path-column"), (spec.source_column, "--source-column")):
                if column not in columns:
                    raise KedgeError(f"{spec.file}: no column {column!r} (columns: {', '.join(columns) or 'none'}); "
                                     f"name it with {option}")
            table: dict[str, str] = {}
            for row in reader:
                path, source = (row.get(spec.path_column) or "").strip(), (row.get(spec.source_column) or "").strip()
                if path and source:
                    table[Path(path).as_posix()] = source
    except OSError as err:
        raise KedgeError(f"{spec.file}: cannot read the sources file ({err.strerror or err})") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise KedgeError(f"{spec.file}: not a readable CSV file ({err})") from None
    if not table:
        raise KedgeError(f"{spec.file}: no row has both a path and a source")
    return table


def _lookup(table: dict[str, str], relative: str, file: Path) -> str:
    """Exact match first; else the one table path that ends with this path or that this
    path ends with (so a manifest written for a parent folder works for a subfolder)."""
    if relative in table:
        return table[relative]
    matches = {src for key, src in table.items()
               if key.endswith("/" + relative) or relative.endswith("/" + key)}
    if len(matches) == 1:
        return matches.pop()
    problem = "matches several rows with different sources" if matches else "has no row"
    raise KedgeError(f"{relative}: {problem} in the sources file {file}")


def _rule_function(rule: str) -> Callable[[Path, str], str]:
    kind, _, argument = rule.partition(":")
    if kind == "folder" and not argument:
        return lambda path, rel: rel.split("/")[0] if "/" in rel else UNKNOWN
    if kind == "format" and not argument:
        return lambda path, rel: file_format(path)
    if kind == "regex" and argument:
        try:
            pattern = re.compile(argument)
        except re.error as err:
            raise KedgeError(f"--source-rule {rule!r}: bad regular expression ({err})") from None

        def by_regex(path: Path, rel: str) -> str:
            found = pattern.search(rel)
            if not found:
                return "unmatched"
            return found.group(1) if pattern.groups and found.group(1) else found.group(0)

        return by_regex
    if kind == "dicom" and argument:
        fields = [f.strip() for f in argument.split(",") if f.strip()]
        if not fields or not all(re.fullmatch(r"[A-Za-z]+", f) for f in fields):
            raise KedgeError(f"--source-rule {rule!r}: give DICOM keywords, e.g. dicom:Manufacturer,InstitutionName")
        return lambda path, rel: dicom_source(path, fields)
    raise KedgeError(f"--source-rule {rule!r}: use one of {', '.join(RULES)}")


def dicom_source(path: Path, fields: Sequence[str]) -> str:
    """A hash of the named header fields: equal headers give equal sources, and no value
    is ever printed. A non-DICOM file gets the source "not-dicom"."""
    try:
        import pydicom
    except ImportError:
        raise KedgeError("--source-rule dicom needs pydicom: pip install 'kedge[dicom]'") from None
    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True, force=False)
    except Exception:  # noqa: BLE001 - any unreadable header is simply not a DICOM source
        return "not-dicom"
    values = "\x1f".join(str(getattr(header, f, "") or "") for f in fields)
    return "dicom-" + hashlib.sha256(values.encode("utf-8", "replace")).hexdigest()[:10]


def with_sources(items: Sequence[LabelledImage], root: str | os.PathLike[str], spec: SourceSpec,
                 recorded: dict[str, str] | None = None) -> list[LabelledImage]:
    """The items with their source set: from `spec` when given, else from `recorded`
    (a bundle's split.csv, relative path -> source), else "all"."""
    if spec.given:
        names = assign_sources([i.path for i in items], root, spec)
    elif recorded:
        names = [recorded.get(_relative(i.path, Path(root)), UNKNOWN) for i in items]
    else:
        names = [UNKNOWN] * len(items)
    return [replace(item, source=name) for item, name in zip(items, names, strict=True)]


def class_mix(items: Sequence[LabelledImage], classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """source -> class -> count, sources sorted."""
    mix: dict[str, dict[str, int]] = {}
    for item in items:
        mix.setdefault(item.source, {c: 0 for c in classes})[item.class_name] += 1
    return dict(sorted(mix.items()))


def mix_warnings(mix: dict[str, dict[str, int]]) -> list[str]:
    """What in the class mix lets a model learn the source instead of the bone."""
    if len(mix) < 2:
        return []
    warnings = []
    total = sum(sum(row.values()) for row in mix.values())
    overall: Counter[str] = Counter()
    for row in mix.values():
        overall.update(row)
    prior = max(overall.values()) / total
    by_source = sum(max(row.values()) for row in mix.values()) / total
    if by_source > prior + 1e-9:
        warnings.append(f"the source alone predicts the class better than the class prior "
                        f"({by_source:.1%} vs {prior:.1%}): a model can learn the source instead of the bone")
    for source, row in mix.items():
        present = [c for c, n in row.items() if n]
        if len(present) == 1:
            warnings.append(f"source {source} holds a single class ({present[0]}): a model can call every "
                            f"image of that source {present[0]}")
        else:
            for name in (c for c, n in row.items() if not n):
                warnings.append(f"source {source} has no {name} image")
    return warnings


def labelled_items(bundle: Bundle, data: str | os.PathLike[str], split: str | None, spec: SourceSpec,
                   split_manifest: str | os.PathLike[str] | None = None) -> list[LabelledImage]:
    """The labelled images of `data` for this bundle, limited to a split of its split.csv
    (or of `split_manifest`, another bundle's split.csv: to compare two models on one
    held-out split), with sources from `spec`, else from that split.csv."""
    items = bundle.labelled(data, split, split_manifest)
    recorded = read_split_sources(split_manifest) if split_manifest is not None else bundle.sources
    return with_sources(items, data, spec, recorded)
