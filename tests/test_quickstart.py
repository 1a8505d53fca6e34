"""The closing summary of `make quickstart` (kedge/quickstart.py), on a lean bundle."""
from __future__ import annotations

import pytest

pytest.importorskip("onnx", reason="the lean test bundle is built with onnx")


def test_summary_says_where_what_and_next(tmp_path, synthetic_data) -> None:
    from leanbundle import make_lean_bundle

    from kedge.quickstart import summary

    bundle = make_lean_bundle(tmp_path / "qs", synthetic_data, int8=False)
    csv = tmp_path / "p.csv"
    csv.write_text("path,model,label,p_Normal\na.png,tiny,Osteopenia,0.1\nb.png,tiny,Normal,0.9\n"
                   "c.png,tiny,Osteopenia,0.2\n")
    text = summary(bundle, csv)
    assert f"bundle      {bundle}  (tiny: model.onnx)" in text
    assert "classified  3 Osteopenia images: Osteopenia 2, Normal 1" in text
    assert "next        kedge card" in text
