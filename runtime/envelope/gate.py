"""The input envelope: is an image like the images a model was validated on?

A classifier answers whatever it is given: a photograph, a plot or a scanned report
gets a confident diagnosis. The envelope is a small description, stored in the
bundle (envelope.json), of the images of the sources the model was validated on, and
a distance from it. An image further away than the distance that keeps ~95 % of
those sources' validation images inside is "outside": `kedge infer` withholds the
answer.

What it describes: simple statistics of the PREPROCESSED image (what every form of
the model receives): a 16x16 thumbnail, a 32-bin intensity histogram and
gradient and Laplacian energies at two scales. They are standardised, projected on
their first principal components (fitted on the validated sources' training
images) and whitened, so the distance is a Mahalanobis distance. The model's own
features were measured against these statistics and caught fewer non-radiographs
(issue 19: 4 of 8 against 8 of 8); the statistics also keep the gate independent of
the exported form, so FP32, FP16, INT8, TensorRT and Triton all gate alike and
parity is unaffected.

What it does not promise: an image inside is like the validation images, nothing
more. It does not say the answer is right, and it does not catch a wrong label or a
subtle difference (collection A's images are knees and mostly fall inside).

numpy and OpenCV only: it runs on the lean install.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kedge.runtime.errors import KedgeError
from kedge.runtime.reports.metrics import wilson_interval

ENVELOPE_KIND = "kedge-envelope"
ENVELOPE_VERSION = 1
FEATURES_VERSION = "1"
ARTIFACT = "envelope"  # the key in kedge.json's artifacts
FILE_NAME = "envelope.json"
THUMBNAIL = 16
HISTOGRAM_BINS = 32
ENERGIES = ("grad_x", "grad_y", "laplacian", "grad_x_coarse", "grad_y_coarse", "laplacian_coarse")
FEATURE_LENGTH = THUMBNAIL * THUMBNAIL + HISTOGRAM_BINS + len(ENERGIES)
COMPONENTS = 20
KEEP = 0.95  # share of the validated sources' validation images the threshold keeps inside
MAX_ENVELOPE_BYTES = 1 << 20
UNKNOWN_SOURCE = "all"  # the one source of a model trained without sources (runtime.inputs.sources.UNKNOWN)
_DIGITS = 6  # significant digits stored; the threshold is set with the stored numbers


def image_features(x: np.ndarray) -> np.ndarray:
    """Statistics of one preprocessed image ((224, 224, 3) or (224, 224), values in [0, 1]).

    The thumbnail holds the layout (a knee's shape and orientation), the histogram the
    exposure and polarity, the energies the texture and edges (noise, text and
    drawings have far more of both than a radiograph). Energies are logs: they span
    orders of magnitude."""
    grey = np.asarray(x, np.float32)
    if grey.ndim == 3:
        grey = grey[:, :, 0]
    thumb = cv2.resize(grey, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).ravel()
    hist = np.histogram(grey, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0].astype(np.float32) / grey.size
    coarse = cv2.resize(grey, (grey.shape[1] // 4, grey.shape[0] // 4), interpolation=cv2.INTER_AREA)
    energies = [*_energies(grey), *_energies(coarse)]
    return np.concatenate([thumb, hist, np.log(np.asarray(energies, np.float32) + 1e-6)]).astype(np.float64)


def _energies(grey: np.ndarray) -> tuple[float, float, float]:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
    return float(np.mean(gx * gx)), float(np.mean(gy * gy)), float(np.mean(lap * lap))


def batch_features(batch: np.ndarray) -> np.ndarray:
    """image_features for each image of a (n, 224, 224, 3) batch: (n, FEATURE_LENGTH)."""
    return np.stack([image_features(x) for x in batch]) if len(batch) else np.zeros((0, FEATURE_LENGTH))


GATE_FIELDS = ("inside", "envelope_distance", "envelope_threshold", "envelope_percentile", "nearest_source")


@dataclass(frozen=True)
class Check:
    """One image against one envelope."""

    inside: bool
    distance: float
    percentile: float  # of the distance among the validation images' (100: beyond all of them)
    nearest_source: str  # the validated source whose centroid is nearest
    threshold: float  # the envelope's limit on the distance

    def as_dict(self) -> dict[str, Any]:
        return {"inside": self.inside, "envelope_distance": round(self.distance, 4),
                "envelope_threshold": round(self.threshold, 4), "envelope_percentile": round(self.percentile, 1),
                "nearest_source": self.nearest_source}

    def describe(self) -> str:
        """'the 99.9th percentile'; beyond every validation image, also how far beyond the limit."""
        beyond = f", {self.distance / self.threshold:.1f} times the limit" if self.percentile >= 100 else ""
        return f"the {ordinal(self.percentile)} percentile{beyond}"


def ordinal(value: float) -> str:
    """99.9 -> '99.9th', 1 -> '1st', 42 -> '42nd'."""
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    whole = int(float(text)) if "." not in text else None
    if whole is not None and whole % 100 not in (11, 12, 13):
        return text + {1: "st", 2: "nd", 3: "rd"}.get(whole % 10, "th")
    return text + "th"


@dataclass
class Envelope:
    """The fitted envelope: distance = |whiten(project(standardise(features)))|."""

    mean: np.ndarray  # (F,) feature means on the fitting images
    scale: np.ndarray  # (F,) feature standard deviations (floored)
    components: np.ndarray  # (k, F) principal axes of the standardised features
    spread: np.ndarray  # (k,) standard deviation along each axis (whitening)
    threshold: float
    validation: np.ndarray  # sorted distances of the validation images (the percentile table)
    centroids: dict[str, np.ndarray]  # validated source -> mean whitened scores of its fitting images
    record: dict[str, Any]  # everything else stored in the file (provenance, held-out shares)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(n, F) features -> (n, k) whitened principal scores."""
        return ((np.atleast_2d(features) - self.mean) / self.scale) @ self.components.T / self.spread

    def distances(self, features: np.ndarray) -> np.ndarray:
        return np.sqrt((self.scores(features) ** 2).sum(axis=1))

    def check_features(self, features: np.ndarray) -> list[Check]:
        scores = self.scores(features)
        distances = np.sqrt((scores ** 2).sum(axis=1))
        names = list(self.centroids)
        centres = np.stack([self.centroids[n] for n in names])
        nearest = ((scores[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        ranks = np.searchsorted(self.validation, distances, side="right")
        return [Check(bool(d <= self.threshold), float(d), 100.0 * float(r) / len(self.validation), names[i],
                      self.threshold)
                for d, r, i in zip(distances, ranks, nearest, strict=True)]

    def check(self, batch: np.ndarray) -> list[Check]:
        """One Check per preprocessed image of a (n, 224, 224, 3) batch."""
        return self.check_features(batch_features(batch))

    @property
    def validated(self) -> list[str]:
        return list(self.centroids)

    def to_json(self) -> dict[str, Any]:
        return {"kind": ENVELOPE_KIND, "version": ENVELOPE_VERSION, **self.record,
                "features": {"version": FEATURES_VERSION, "thumbnail": THUMBNAIL,
                             "histogram_bins": HISTOGRAM_BINS, "energies": list(ENERGIES),
                             "length": FEATURE_LENGTH},
                "threshold": _round(self.threshold), "keep": self.record.get("keep", KEEP),
                "validation_distances": [_round(v) for v in self.validation],
                "mean": _rounded(self.mean), "scale": _rounded(self.scale),
                "components": [_rounded(row) for row in self.components], "spread": _rounded(self.spread),
                "centroids": {name: _rounded(c) for name, c in self.centroids.items()}}


def _round(value: float) -> float:
    return float(f"{value:.{_DIGITS}g}")


def _stored(values: np.ndarray) -> np.ndarray:
    """The values as envelope.json stores them (_DIGITS significant digits)."""
    array = np.asarray(values, np.float64)
    return np.array([_round(v) for v in array.ravel()]).reshape(array.shape)


def _rounded(values: np.ndarray) -> list[float]:
    return [float(v) for v in _stored(values).ravel()]


def fit(train: np.ndarray, train_sources: Sequence[str], val: np.ndarray, validated: Sequence[str],
        components: int = COMPONENTS, keep: float = KEEP, record: dict[str, Any] | None = None) -> Envelope:
    """Fit on the validated sources' training features; threshold on their validation features.

    `train` and `val` hold only images of validated sources. The parameters are
    rounded as stored before the threshold is chosen, so the file reproduces it."""
    train, val = np.asarray(train, np.float64), np.asarray(val, np.float64)
    if len(train) < 3 or len(val) < 2:
        raise KedgeError(f"the envelope needs at least 3 training and 2 validation images of the validated sources "
                         f"({', '.join(validated)}); found {len(train)} and {len(val)}")
    k = max(1, min(components, len(train) - 1, train.shape[1]))
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    scale = np.maximum(std, max(float(np.median(std)) * 0.1, 1e-6))  # a constant feature must not blow up
    _, singular, axes = np.linalg.svd((train - mean) / scale, full_matrices=False)
    spread = np.maximum(singular[:k] / math.sqrt(len(train) - 1), 1e-9)
    draft = Envelope(_stored(mean), _stored(scale), _stored(axes[:k]), _stored(spread), 0.0, np.zeros(1), {}, {})
    scores = draft.scores(train)
    sources = np.asarray(train_sources)
    centroids = {name: scores[sources == name].mean(axis=0) for name in validated if (sources == name).any()}
    if not centroids:
        raise KedgeError(f"no training image of the validated sources ({', '.join(validated)})")
    distances = np.sort(draft.distances(val))
    threshold = float(np.quantile(distances, keep))
    envelope = Envelope(draft.mean, draft.scale, draft.components, draft.spread, threshold, distances, centroids,
                        {**(record or {}), "keep": keep})
    return load_json(envelope.to_json(), "<fit>")


def load_json(data: Any, where: str | os.PathLike[str]) -> Envelope:
    """An Envelope from parsed JSON; anything malformed is one line naming `where`."""
    def fail(problem: str) -> KedgeError:
        return KedgeError(f"{where}: {problem}")

    if not isinstance(data, dict) or data.get("kind") != ENVELOPE_KIND:
        raise fail("not a kedge envelope file")
    if data.get("version") != ENVELOPE_VERSION:
        raise fail(f"envelope version {str(data.get('version'))[:20]!r} is not one this kedge reads "
                   f"({ENVELOPE_VERSION})")
    if (data.get("features") or {}).get("version") != FEATURES_VERSION:
        raise fail(f"envelope features version is not {FEATURES_VERSION}; refit it with `kedge envelope`")
    try:
        mean = _vector(data["mean"], FEATURE_LENGTH)
        scale = _vector(data["scale"], FEATURE_LENGTH)
        components = np.asarray(data["components"], np.float64)
        k = components.shape[0] if components.ndim == 2 else 0
        if components.ndim != 2 or components.shape[1] != FEATURE_LENGTH or not 1 <= k <= FEATURE_LENGTH:
            raise ValueError("components")
        spread = _vector(data["spread"], k)
        threshold = float(data["threshold"])
        validation = np.sort(_vector(data["validation_distances"], None))
        centroids = {str(name): _vector(c, k) for name, c in dict(data["centroids"]).items()}
    except (KeyError, TypeError, ValueError) as err:
        raise fail(f"malformed envelope ({err.args[0] if err.args else type(err).__name__})") from None
    if (scale <= 0).any() or (spread <= 0).any() or not math.isfinite(threshold) or not len(validation) \
            or not centroids or not np.isfinite(components).all():
        raise fail("malformed envelope (non-positive scale, no validation distances or no source)")
    known = {"mean", "scale", "components", "spread", "threshold", "validation_distances", "centroids",
             "kind", "version", "features"}
    record = {key: value for key, value in data.items() if key not in known}
    return Envelope(mean, scale, components, spread, threshold, validation, centroids, record)


def _vector(values: Any, length: int | None) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.ndim != 1 or (length is not None and len(array) != length) or not np.isfinite(array).all():
        raise ValueError(f"expected {length or 'some'} finite numbers")
    return array


def dumps(envelope: Envelope) -> str:
    """envelope.json's text: one line per key, each array on its line (small, and diffs by key)."""
    data = envelope.to_json()
    body = ",\n".join(f" {json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}" for key, value in data.items())
    return "{\n" + body + "\n}\n"


def read_envelope(path: str | os.PathLike[str]) -> Envelope:
    try:
        if os.path.getsize(path) > MAX_ENVELOPE_BYTES:
            raise KedgeError(f"{path}: envelope file is over {MAX_ENVELOPE_BYTES >> 20} MiB; refused")
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise KedgeError(f"{path}: cannot read the envelope ({type(err).__name__})") from None
    return load_json(data, path)


def bundle_envelope(bundle: Any) -> Envelope | None:
    """The bundle's envelope (sha256 checked), or None for a bundle made without one."""
    if not bundle.has(ARTIFACT):
        return None
    return read_envelope(bundle.file(ARTIFACT))


def wilson_lower(proportion: float, n: int) -> float:
    """The 95 % Wilson lower bound of a proportion measured on n images."""
    return wilson_interval(proportion * n, n)[0] if n else math.nan


def validated_sources(test: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 19's rule, per source of a bundle's test metrics: validated when the 95 %
    Wilson lower bound of its balanced accuracy (taken over its n test images) lies
    above chance. Returns source -> {validated, balanced_accuracy, lower, chance, n}."""
    rows: dict[str, dict[str, Any]] = {}
    by_source = test.get("by_source") or {}
    if not by_source and "balanced_accuracy" in test and test.get("per_class"):  # trained without sources
        by_source = {UNKNOWN_SOURCE: {**test, "chance": 1 / len(test["per_class"])}}
    for name, row in by_source.items():
        balanced, n, chance = row.get("balanced_accuracy"), int(row.get("n") or 0), row.get("chance")
        if not isinstance(balanced, (int, float)) or math.isnan(balanced) or not n or chance is None:
            rows[name] = {"validated": False, "n": n, "why": "no balanced accuracy on the test split"}
            continue
        lower = wilson_lower(float(balanced), n)
        rows[name] = {"validated": bool(lower > chance), "balanced_accuracy": round(float(balanced), 4),
                      "lower": round(lower, 4), "chance": chance, "n": n,
                      "why": f"balanced accuracy {balanced:.3f}, 95 % Wilson lower bound {lower:.3f} "
                             f"{'above' if lower > chance else 'not above'} chance {chance:.2f} (n={n})"}
    return rows


def card_lines(summary: dict[str, Any] | None) -> list[str]:
    """The model card's section on the envelope (kedge.json's "envelope" table)."""
    if not summary:
        return ["", "Input envelope", "  none: no input check; the model answers for any image (`kedge envelope`)"]
    rule = summary.get("rule") or {}
    by_rule = [name for name, ok in rule.items() if ok]
    fitted, threshold = summary.get("fitted_on") or {}, summary.get("thresholded_on") or {}
    held = "; ".join(f"{name}{'' if row['validated'] else ' (unvalidated)'} {row['splits']}: {row['outside']} of "
                     f"{row['n']} outside ({row['outside_share']:.0%})"
                     for name, row in (summary.get("held_out") or {}).items())
    return ["", "Input envelope (kedge infer withholds answers outside it; docs/envelope.md)",
            f"  validated on   {', '.join(summary['validated'])} ({summary.get('validated_by')}"
            + (f"; the per-source rule alone: {', '.join(by_rule) or 'none'})" if rule else ")"),
            f"  describes      {summary.get('features')}, {summary.get('components')} components; fitted on "
            f"{fitted.get('n')} train images, threshold keeps {summary.get('keep', KEEP):.0%} of {threshold.get('n')} "
            "validation images",
            f"  held out       {held}",
            "  promises       it catches images unlike the validation images (photographs, plots, inverted or rotated "
            "films), not wrong labels within them"]
