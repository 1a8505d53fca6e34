"""Images an input gate must refuse, made on the spot: what `kedge envelope --report` and
the tests measure the envelope with.

Two families:
- gross input errors built from real radiographs (their decoded grey image):
  inverted polarity (as from a misread MONOCHROME1), rotated 90 degrees, and a
  quarter-size corner crop (half the width and half the height);
- non-radiographs: photographs that installed packages ship (matplotlib's sample
  images, when matplotlib is installed), OpenCV-drawn scenes, a plot rendered by
  matplotlib (or drawn with OpenCV without it), rendered text (a "scanned report")
  and uniform noise.

Every image is returned as encoded PNG or JPEG bytes, so it goes through the one
`preprocess` a user's file goes through. Nothing is written to disk.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from kedge.runtime.inputs.preprocess import decode_grey, to_model_input

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def inverted(grey: np.ndarray, full_scale: int) -> np.ndarray:
    return (full_scale - grey.astype(np.int64)).astype(grey.dtype)


def rotated(grey: np.ndarray, full_scale: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(grey))


def corner_crop(grey: np.ndarray, corner: str) -> np.ndarray:
    """A quarter of the image: half its height and half its width, at one corner."""
    height, width = grey.shape
    rows = slice(0, height // 2) if corner.startswith("top") else slice(height - height // 2, height)
    cols = slice(0, width // 2) if corner.endswith("left") else slice(width - width // 2, width)
    return np.ascontiguousarray(grey[rows, cols])


def gross_errors(data: bytes, name: str) -> Iterator[tuple[str, np.ndarray]]:
    """(family, model input) for each gross input error made from one radiograph's bytes:
    inverted, rotated-90 and the four quarter-size corner crops."""
    grey, full_scale = decode_grey(data, name)
    yield "inverted", to_model_input(inverted(grey, full_scale), full_scale)
    yield "rotated-90", to_model_input(rotated(grey, full_scale), full_scale)
    for corner in CORNERS:
        yield "corner-crop", to_model_input(corner_crop(grey, corner), full_scale)


def _png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def drawn_scenes(count: int = 6, seed: int = 0, size: int = 480) -> list[tuple[str, bytes]]:
    """OpenCV-drawn colour scenes: sky and ground, a house, a sun, trees, shapes."""
    rng = np.random.default_rng(seed)
    scenes = []
    for index in range(count):
        image = np.zeros((size, size, 3), np.uint8)
        horizon = int(rng.integers(size // 3, 2 * size // 3))
        image[:horizon] = (int(rng.integers(150, 255)), int(rng.integers(100, 200)), int(rng.integers(40, 120)))
        image[horizon:] = (int(rng.integers(20, 90)), int(rng.integers(100, 200)), int(rng.integers(20, 90)))
        cv2.circle(image, (int(rng.integers(40, size - 40)), int(rng.integers(30, horizon))), 30,
                   (40, 220, 255), -1)
        x = int(rng.integers(20, size // 2))
        cv2.rectangle(image, (x, horizon - 120), (x + 150, horizon + 20), (60, 60, int(rng.integers(120, 230))), -1)
        roof = np.array([[x - 10, horizon - 120], [x + 75, horizon - 190], [x + 160, horizon - 120]], np.int32)
        cv2.fillPoly(image, [roof], (30, 30, 120))
        for _ in range(int(rng.integers(2, 6))):
            tx = int(rng.integers(0, size))
            cv2.rectangle(image, (tx, horizon - 40), (tx + 10, horizon + 30), (20, 60, 90), -1)
            cv2.circle(image, (tx + 5, horizon - 55), 28, (30, int(rng.integers(100, 180)), 30), -1)
        for _ in range(int(rng.integers(3, 9))):
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            cv2.ellipse(image, centre, (int(rng.integers(5, 60)), int(rng.integers(5, 60))),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1)
        scenes.append((f"drawn-scene-{index}", _png(image)))
    return scenes


def text_pages(count: int = 3, seed: int = 0) -> list[tuple[str, bytes]]:
    """Rendered text on a white page, as a scanned report would look."""
    rng = np.random.default_rng(seed)
    words = ("patient", "knee", "radiograph", "bone", "density", "report", "findings", "impression", "normal",
             "joint", "space", "no", "fracture", "seen", "clinical", "history", "pain", "left", "right", "view")
    pages = []
    for index in range(count):
        page = np.full((1100, 850), 245, np.uint8)
        cv2.putText(page, "RADIOLOGY REPORT", (60, 90), cv2.FONT_HERSHEY_DUPLEX, 1.4, 10, 2)
        y = 160
        while y < 1040:
            line = " ".join(str(w) for w in rng.choice(words, int(rng.integers(4, 9))))
            cv2.putText(page, line, (60, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 20, 1)
            y += int(rng.integers(30, 44))
        noise = rng.normal(0, 4, page.shape)
        pages.append((f"text-page-{index}", _png(np.clip(page + noise, 0, 255).astype(np.uint8))))
    return pages


def noise_images(count: int = 3, seed: int = 0) -> list[tuple[str, bytes]]:
    """Uniform noise, grey and colour."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        shape = (320, 320) if index % 2 == 0 else (320, 320, 3)
        images.append((f"uniform-noise-{index}", _png(rng.integers(0, 256, shape, dtype=np.uint8))))
    return images


def plot_images(seed: int = 0) -> list[tuple[str, bytes]]:
    """A training-curve plot: rendered by matplotlib when installed, else drawn with OpenCV."""
    rng = np.random.default_rng(seed)
    epochs = np.arange(1, 31)
    loss = 1.2 * np.exp(-epochs / 8) + 0.2 + rng.normal(0, 0.03, len(epochs))
    accuracy = 1 - loss / 1.6
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return [("plot-opencv", _png(_opencv_plot(loss, accuracy)))]
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    axes.plot(epochs, loss, label="loss")
    axes.plot(epochs, accuracy, label="accuracy")
    axes.set_xlabel("epoch")
    axes.legend()
    axes.grid(True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return [("plot-matplotlib", buffer.getvalue()), ("plot-opencv", _png(_opencv_plot(loss, accuracy)))]


def _opencv_plot(*series: np.ndarray) -> np.ndarray:
    image = np.full((400, 600, 3), 255, np.uint8)
    cv2.line(image, (50, 350), (580, 350), (0, 0, 0), 2)
    cv2.line(image, (50, 350), (50, 20), (0, 0, 0), 2)
    for colour, values in zip(((200, 80, 0), (0, 120, 230)), series, strict=False):
        xs = np.linspace(60, 570, len(values))
        ys = 340 - (values - values.min()) / (np.ptp(values) + 1e-9) * 300
        points = np.stack([xs, ys], axis=1).astype(np.int32)
        cv2.polylines(image, [points], False, colour, 2)
    cv2.putText(image, "epoch", (280, 390), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1)
    return image


def photographs() -> list[tuple[str, bytes]]:
    """Photographs that installed packages ship (matplotlib's sample data); [] without them."""
    try:
        from matplotlib import cbook
    except ImportError:
        return []
    found = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        try:
            path = cbook.get_sample_data(name, asfileobj=False)
            with open(str(path), "rb") as handle:
                found.append((f"photo-{name}", handle.read()))
        except (OSError, ValueError):
            continue
    return found


NON_RADIOGRAPHS: dict[str, Callable[[], list[tuple[str, bytes]]]] = {
    "photograph": photographs, "drawn scene": drawn_scenes, "plot": plot_images, "scanned text": text_pages,
    "noise": noise_images}


def non_radiographs() -> list[tuple[str, str, bytes]]:
    """(kind, name, encoded bytes) of every non-radiograph available here."""
    return [(kind, name, data) for kind, make in NON_RADIOGRAPHS.items() for name, data in make()]
