"""Unpack NVIDIA TensorRT's type stubs (tensorrt-stubs) into a folder for mypy, repaired.

TensorRT cannot be installed without a GPU toolchain (SPEC section 2), so kedge's
TensorRT code is type-checked against `tensorrt-stubs`. The wheel is unpacked into
its own folder (MYPYPATH), not installed: installed, it leaves a bare `tensorrt`
namespace package that `import tensorrt` would find. Its generated stubs also have
a few lines that are not valid Python (a parameter named `in`, a parameter without
a default after ones with defaults, an import of `tensorrt_libs`); they are fixed here.

Usage: python .ci/trt_stubs.py WHEEL OUT_DIR
"""
import re
import shutil
import sys
import zipfile
from pathlib import Path

wheel, out = Path(sys.argv[1]), Path(sys.argv[2])
shutil.rmtree(out, ignore_errors=True)
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith(("tensorrt/", "tensorrt_bindings/")):
            archive.extract(name, out)
for stub in out.rglob("*.pyi"):
    text = stub.read_text(encoding="utf-8")
    text = re.sub(r"\bin: ", "in_: ", text)
    text = text.replace(", channel_axis: int)", ", channel_axis: int = 0)")
    text = text.replace("import tensorrt_libs as tensorrt_libs\n", "")
    stub.write_text(text, encoding="utf-8")
print(f"TensorRT stubs for mypy in {out}")
