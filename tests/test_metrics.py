"""Metrics against values worked out by hand."""
from __future__ import annotations

import math

import pytest

from kedge.runtime.reports.metrics import classification_report, confusion_matrix, wilson_interval


def test_wilson_interval_known_values() -> None:
    # 8/10: centre (0.8 + z^2/20)/(1 + z^2/10); published value (0.490, 0.943)
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.161, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_report_by_hand() -> None:
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0]
    report = classification_report(y_true, y_pred, ["N", "P", "O"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert report["accuracy"] == pytest.approx(5 / 8)
    # class N: precision 2/3, recall 2/3; P: 1/2, 1/2; O: 2/3, 2/3
    assert report["per_class"]["N"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["P"]["recall"] == pytest.approx(1 / 2)
    assert report["per_class"]["O"]["support"] == 3
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_class_never_predicted_scores_zero() -> None:
    report = classification_report([0, 1, 1], [0, 0, 0], ["a", "b"])
    assert report["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert confusion_matrix([0, 1, 1], [0, 0, 0], 2).tolist() == [[1, 0], [2, 0]]
