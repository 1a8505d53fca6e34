"""Regenerate export/trt_operators.json's operator table from onnx-tensorrt's docs/operators.md.

Usage: python .ci/trt_operators.py OPERATORS_MD TRT_KEY SOURCE_TEXT MAX_OPSET
(e.g. `git show release/10.3-GA:docs/operators.md > ops.md` in an onnx-tensorrt clone,
then `python .ci/trt_operators.py ops.md 10.3 "onnx-tensorrt release/10.3-GA ..." 20`).
Only the chosen version's `operators`, `source` and `max_opset` are replaced; the
attribute rules (kedge's reading of the importer's restrictions) are kept.
"""
import json
import re
import sys
from pathlib import Path

table, key, source, max_opset = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
operators = {}
for line in table.read_text(encoding="utf-8").splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 2 or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", cells[0]) or cells[0] == "Operator":
        continue
    supported = cells[1].split()[0] == "Y" if cells[1] else False
    types = [t.strip() for t in cells[2].split(",") if t.strip()] if len(cells) > 2 else []
    restrictions = cells[3].replace("\\.", ".") if len(cells) > 3 else ""
    operators[cells[0]] = {"supported": supported, **({"types": types} if types else {}),
                           **({"restrictions": restrictions} if restrictions else {})}
data_path = Path(__file__).resolve().parent.parent / "export" / "trt_operators.json"
data = json.loads(data_path.read_text(encoding="utf-8"))
data["tensorrt"][key] = {**data["tensorrt"].get(key, {}), "source": source, "max_opset": max_opset,
                         "operators": operators}
data_path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
print(f"{data_path}: TensorRT {key}: {len(operators)} operators")
