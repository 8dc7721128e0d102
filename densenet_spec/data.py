"""Real data for training, prepared once in NumPy so that every framework sees the same batches.

Two sources, neither ever downloaded:
  digits         scikit-learn's bundled copy of the UCI handwritten digits (1797 images, 8 x 8,
                 values 0..16, 10 classes), split into train and test, stratified by class, with a
                 fixed seed (SPLIT_SEED) that does not depend on the training seed.
  fashion-mnist  the four standard idx files (gzipped or not) in a folder the user names:
                 train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
                 t10k-labels-idx1-ubyte (28 x 28, values 0..255, 10 classes).

Preparing a batch: pixels / max value (to [0, 1]), resized to image_size x image_size by bilinear
interpolation with half-pixel centres (align_corners=False; torch.nn.functional.interpolate's
`bilinear` and tf.image.resize's default, no antialiasing), then standardised with the training
split's pixel mean and standard deviation at native resolution. The resize is written with
gathers and elementwise arithmetic only (no BLAS), so it is bit-identical under any NumPy: the
framework workers prepare their batches with this same code from the same stored uint8 images.

Order: epoch e visits the training images in np.random.default_rng([seed, e]).permutation order,
in batches of `batch`; the last incomplete batch is dropped so every step has the same shape
(train-mode BatchNorm statistics depend on it). The order is computed here, in the spec
environment, and handed to the workers as an array.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densenet_spec.errors import (
    CountMismatchError,
    DataError,
    DataNotFoundError,
    EmptySplitError,
    IdxMagicError,
    LabelRangeError,
    TruncatedDataError,
)

DATASETS = ("digits", "fashion-mnist")
SPLIT_SEED = 0  # digits: the train/test split never changes with --seed
DIGITS_TEST_FRACTION = 0.2
RESIZE_METHOD = "bilinear, half-pixel centres (align_corners=False), no antialiasing"
DATA_FORMAT = "densenet-parity-data"
IDX_IMAGES, IDX_LABELS = 0x0803, 0x0801  # unsigned byte, 3 and 1 dimensions
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class RawData:
    """A data set as stored: uint8 images (N, H, W), int64 labels, before any resizing."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: int
    scale: float  # the largest pixel value: pixels / scale lie in [0, 1]

    def __post_init__(self):
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            check_split(f"{self.name} {split}", images, labels, self.classes)

    def mean_std(self) -> tuple[float, float]:
        """The training split's pixel mean and standard deviation in [0, 1] units."""
        x = self.train_images.astype(np.float64) / self.scale
        return float(x.mean()), float(x.std())


def check_split(what: str, images: np.ndarray, labels: np.ndarray, classes: int) -> None:
    """Named errors for an empty split, unequal counts and labels outside 0 .. classes - 1."""
    if len(images) != len(labels):
        raise CountMismatchError(f"{what}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise EmptySplitError(f"{what}: no examples")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabelRangeError(
            f"{what}: {int(bad.sum())} labels outside 0..{classes - 1} "
            f"(the first at index {i} is {int(labels[i])})"
        )


# ----------------------------------------------------------------------------------------
# Sources


def load_digits() -> RawData:
    """scikit-learn's bundled digits, split 80/20 per class with SPLIT_SEED."""
    from sklearn.datasets import load_digits as _sklearn_digits  # reads a file in the package

    d = _sklearn_digits()
    images = d.images.astype(np.uint8)  # values 0..16, exact
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(DIGITS_TEST_FRACTION * len(idx)))]] = True
    return RawData("digits", images[~test], labels[~test], images[test], labels[test], 10, 16.0)


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (EOFError, gzip.BadGzipFile) as e:
        raise TruncatedDataError(f"{path}: gzip stream is damaged or ends early ({e})") from None


def read_idx(path, magic: int) -> np.ndarray:
    """One idx file (the MNIST format): 0x00 0x00 type ndim, ndim big-endian uint32 sizes, data."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise TruncatedDataError(f"{path}: {len(data)} bytes, shorter than the idx magic")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise IdxMagicError(
            f"{path}: idx magic 0x{got:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IDX_IMAGES else 'labels'}, unsigned bytes)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TruncatedDataError(f"{path}: {len(data)} bytes, the header alone needs {header}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(data) - header < size:
        raise TruncatedDataError(
            f"{path}: header says {' x '.join(map(str, dims))} = {size} bytes of data, "
            f"the file holds {len(data) - header}"
        )
    if len(data) - header > size:
        raise DataError(
            f"{path}: {len(data) - header - size} bytes after the data its header describes"
        )
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataNotFoundError(
        f"{folder}: no {stem} or {stem}.gz (Fashion-MNIST needs "
        f"{', '.join(FASHION_FILES.values())}; nothing is downloaded)"
    )


def load_fashion_mnist(folder) -> RawData:
    """The four Fashion-MNIST idx files from `folder`, gzipped or not."""
    if folder is None:
        raise DataNotFoundError("fashion-mnist needs --data-dir, the folder with its idx files")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"{folder}: no such folder")
    arrays = {}
    for key, stem in FASHION_FILES.items():
        magic = IDX_IMAGES if key.endswith("images") else IDX_LABELS
        arrays[key] = read_idx(_find(folder, stem), magic)
    return RawData(
        "fashion-mnist",
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
        10,
        255.0,
    )


def load(name: str, data_dir=None) -> RawData:
    if name == "digits":
        return load_digits()
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------------------
# Preparing batches (runs in every environment: NumPy only, bit-identical under any version)


def _axis_weights(n_in: int, n_out: int):
    """Source rows i0, i1 and weight a of each output row: out = (1 - a) * x[i0] + a * x[i1]."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)  # half-pixel centres, clamped at the border as torch does
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) float64 -> (N, size, size) by bilinear interpolation (see RESIZE_METHOD)."""
    n, h, w = images.shape
    if (h, w) == (size, size):
        return images.copy()
    i0, i1, a = _axis_weights(h, size)
    x = images[:, i0, :] * (1.0 - a)[None, :, None] + images[:, i1, :] * a[None, :, None]
    j0, j1, b = _axis_weights(w, size)
    return x[:, :, j0] * (1.0 - b)[None, None, :] + x[:, :, j1] * b[None, None, :]


@dataclass(frozen=True)
class Preprocess:
    """What turns stored uint8 images into a batch: every field goes into the job file."""

    image_size: int
    scale: float
    mean: float
    std: float

    def __call__(self, images: np.ndarray, dtype: str = "float64") -> np.ndarray:
        """(N, H, W) uint8 -> (N, 1, size, size) NCHW, computed in float64, then cast."""
        x = resize(images.astype(np.float64) / self.scale, self.image_size)
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(x[:, None], dtype=dtype)


def preprocess_for(raw: RawData, image_size: int) -> Preprocess:
    mean, std = raw.mean_std()
    return Preprocess(image_size, raw.scale, mean, std)


def steps_per_epoch(n_train: int, batch: int) -> int:
    if batch > n_train:
        raise EmptySplitError(f"batch {batch} is larger than the training split ({n_train} images)")
    return n_train // batch


def epoch_order(n_train: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """(steps_per_epoch, batch) training indices of epoch `epoch` (0-based); the rest dropped."""
    spe = steps_per_epoch(n_train, batch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_train)
    return perm[: spe * batch].reshape(spe, batch).astype(np.int64)


def training_batches(
    raw: RawData, pre: Preprocess, *, batch: int, steps: int, seed: int, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """The first `steps` training batches of a densenet-train run with this seed, in its order
    (epoch after epoch): inputs (steps, batch, 1, size, size) and labels (steps, batch)."""
    n = len(raw.train_labels)
    epochs = -(-steps // steps_per_epoch(n, batch))
    idx = np.zeros((0, batch), np.int64)
    idx = np.concatenate([idx] + [epoch_order(n, batch, seed, e) for e in range(epochs)])[:steps]
    x = np.empty((steps, batch, 1, pre.image_size, pre.image_size), dtype=dtype)
    for k, i in enumerate(idx):
        x[k] = pre(raw.train_images[i], dtype)
    return x, raw.train_labels[idx].astype(np.int64)


def data_metadata(raw: RawData, pre: Preprocess) -> dict:
    return {
        "format": DATA_FORMAT,
        "name": raw.name,
        "classes": raw.classes,
        "preprocess": json.dumps(vars(pre)),
        "resize": RESIZE_METHOD,
        "train": str(len(raw.train_labels)),
        "test": str(len(raw.test_labels)),
    }


def save_data(path, raw: RawData, pre: Preprocess) -> None:
    """The stored images (uint8) and labels, with the preprocessing in the metadata, atomically."""
    from safetensors.numpy import save

    from densenet_spec.weightfile import atomic_write_bytes

    arrays = {
        "train_images": np.ascontiguousarray(raw.train_images),
        "train_labels": np.ascontiguousarray(raw.train_labels, dtype=np.int64),
        "test_images": np.ascontiguousarray(raw.test_images),
        "test_labels": np.ascontiguousarray(raw.test_labels, dtype=np.int64),
    }
    meta = {k: str(v) for k, v in data_metadata(raw, pre).items()}
    atomic_write_bytes(path, save(arrays, metadata=meta))


def load_data(path) -> tuple[RawData, Preprocess]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise DataError(f"{path}: not a readable data file ({e})") from None
    if meta.get("format") != DATA_FORMAT:
        raise DataError(f"{path}: not a {DATA_FORMAT} file")
    raw = RawData(name=meta["name"], classes=int(meta["classes"]), scale=0.0, **arrays)
    pre = Preprocess(**json.loads(meta["preprocess"]))
    raw.scale = pre.scale
    return raw, pre
