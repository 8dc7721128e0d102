"""The training data: digits split, idx reading with named errors, resize, order (NumPy only)."""

import gzip

import numpy as np
import pytest

from densenet_spec import data
from densenet_spec.case import make_case
from densenet_spec.config import get_preset
from densenet_spec.errors import (
    CountMismatchError,
    DataNotFoundError,
    EmptySplitError,
    IdxMagicError,
    LabelRangeError,
    TruncatedDataError,
)

pytest.importorskip("sklearn")


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder, n_train=12, n_test=6, gz=False, **override):
    rng = np.random.default_rng(0)
    files = {
        "train_images": idx_bytes(rng.integers(0, 256, (n_train, 28, 28)), data.IDX_IMAGES),
        "train_labels": idx_bytes(np.arange(n_train) % 10, data.IDX_LABELS),
        "test_images": idx_bytes(rng.integers(0, 256, (n_test, 28, 28)), data.IDX_IMAGES),
        "test_labels": idx_bytes(np.arange(n_test) % 10, data.IDX_LABELS),
        **override,
    }
    for key, raw in files.items():
        name = data.FASHION_FILES[key]
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


def test_digits_split_is_fixed_stratified_and_complete():
    a, b = data.load_digits(), data.load_digits()
    assert (len(a.train_labels), len(a.test_labels)) == (1438, 359)
    np.testing.assert_array_equal(a.test_images, b.test_images)
    assert set(np.bincount(a.test_labels)) <= {35, 36, 37}
    assert a.train_images.dtype == np.uint8 and a.train_images.max() == 16
    assert a.scale == 16.0 and a.classes == 10


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_reads_idx_files_plain_or_gzipped(tmp_path, gz):
    raw = data.load_fashion_mnist(write_fashion(tmp_path, gz=gz))
    assert raw.train_images.shape == (12, 28, 28) and raw.test_labels.tolist() == list(range(6))
    assert raw.scale == 255.0


def test_wrong_magic(tmp_path):
    bad = idx_bytes(np.zeros(12), data.IDX_IMAGES)  # an images magic on a labels file
    with pytest.raises(IdxMagicError, match="0x00000801"):
        data.load_fashion_mnist(write_fashion(tmp_path, train_labels=bad))


def test_truncated_file_and_gzip(tmp_path):
    good = idx_bytes(np.zeros((6, 28, 28)), data.IDX_IMAGES)
    with pytest.raises(TruncatedDataError, match="4704 bytes of data"):
        data.load_fashion_mnist(write_fashion(tmp_path, test_images=good[:-10]))
    for f in tmp_path.iterdir():
        f.unlink()
    write_fashion(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(TruncatedDataError):
        data.load_fashion_mnist(tmp_path)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00")
    with pytest.raises(TruncatedDataError, match="shorter than the idx magic"):
        data.read_idx(short, data.IDX_IMAGES)


def test_count_mismatch_and_label_range_and_empty_split(tmp_path):
    with pytest.raises(CountMismatchError, match="12 images but 11 labels"):
        data.load_fashion_mnist(
            write_fashion(tmp_path, train_labels=idx_bytes(np.zeros(11), data.IDX_LABELS))
        )
    with pytest.raises(LabelRangeError, match="outside 0..9"):
        data.load_fashion_mnist(
            write_fashion(tmp_path, test_labels=idx_bytes(np.full(6, 10), data.IDX_LABELS))
        )
    with pytest.raises(EmptySplitError, match="test: no examples"):
        data.load_fashion_mnist(write_fashion(tmp_path, n_test=0))
    with pytest.raises(EmptySplitError, match="larger than the training split"):
        data.steps_per_epoch(12, 13)


def test_missing_data_is_never_downloaded(tmp_path):
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        data.load("fashion-mnist", None)
    with pytest.raises(DataNotFoundError, match="no such folder"):
        data.load("fashion-mnist", tmp_path / "nope")
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte"):
        data.load("fashion-mnist", tmp_path)


def test_resize_is_half_pixel_bilinear():
    row = np.array([[[0.0, 1.0]] * 2])  # (1, 2, 2): columns 0 and 1
    out = data.resize(row, 4)
    # align_corners=False: output centres at 0.25, 0.75, 1.25, 1.75 input pixels, clamped
    np.testing.assert_allclose(out[0, 0], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_array_equal(
        data.resize(np.full((2, 8, 8), 3.0), 32), np.full((2, 32, 32), 3.0)
    )
    x = np.random.default_rng(0).random((3, 8, 8))
    np.testing.assert_array_equal(data.resize(x, 8), x)
    # downscaling by 2 averages each 2x2 block (no antialiasing needed at exactly 1/2)
    np.testing.assert_allclose(data.resize(x, 4), x.reshape(3, 4, 2, 4, 2).mean(axis=(2, 4)))


def test_preprocess_standardises_and_order_is_seeded():
    raw = data.load_digits()
    pre = data.preprocess_for(raw, 8)
    x = pre(raw.train_images, "float64")
    assert x.shape == (1438, 1, 8, 8)
    assert abs(x.mean()) < 1e-12 and abs(x.std() - 1) < 1e-12
    assert pre(raw.train_images[:4], "float32").dtype == np.float32
    a = data.epoch_order(1438, 64, seed=3, epoch=0)
    assert a.shape == (22, 64) and len(set(a.ravel())) == 22 * 64
    np.testing.assert_array_equal(a, data.epoch_order(1438, 64, seed=3, epoch=0))
    assert not np.array_equal(a, data.epoch_order(1438, 64, seed=3, epoch=1))
    assert not np.array_equal(a, data.epoch_order(1438, 64, seed=4, epoch=0))


def test_data_file_round_trip(tmp_path):
    raw = data.load_digits()
    pre = data.preprocess_for(raw, 16)
    data.save_data(tmp_path / "d.safetensors", raw, pre)
    raw2, pre2 = data.load_data(tmp_path / "d.safetensors")
    assert pre2 == pre and raw2.name == "digits"
    np.testing.assert_array_equal(raw2.test_images, raw.test_images)


def test_training_batches_are_densenet_train_order_across_an_epoch():
    """densenet-parity --data: batch k is the k-th batch of densenet-train with the same seed
    (run_job's order[k // spe][k % spe]), across the epoch boundary (1438 // 256 = 5 per epoch)."""
    raw = data.load_digits()
    pre = data.preprocess_for(raw, 12)
    x, y = data.training_batches(raw, pre, batch=256, steps=7, seed=3, dtype="float32")
    assert x.shape == (7, 256, 1, 12, 12) and x.dtype == np.float32 and y.shape == (7, 256)
    orders = [data.epoch_order(1438, 256, seed=3, epoch=e) for e in (0, 1)]
    for k in range(7):
        idx = orders[k // 5][k % 5]
        np.testing.assert_array_equal(x[k], pre(raw.train_images[idx], "float32"))
        np.testing.assert_array_equal(y[k], raw.train_labels[idx])
    assert not np.array_equal(x[5], x[0])  # epoch 1 is reshuffled, not epoch 0 again


def test_parity_data_option_sets_channels_classes_and_batches():
    from densenet_spec import cli
    from densenet_spec.errors import ConfigError, DataNotFoundError, UsageError

    args = cli.parse_args(["--preset", "tiny", "--data", "digits", "--steps", "3", "--batch", "4"])
    prepared = cli.prepare(args)
    assert (prepared.config.in_channels, prepared.config.num_classes) == (1, 10)
    bx, by = prepared.batches
    assert bx.shape == (3, 4, 1, prepared.size, prepared.size) and by.shape == (3, 4)
    case = make_case(prepared.config, batch=4, image_size=prepared.size, steps=3, batches=(bx, by))
    np.testing.assert_array_equal(case.x, bx[0])
    np.testing.assert_array_equal(case.step_x, bx)
    np.testing.assert_array_equal(case.step_y, by)
    without = cli.prepare(cli.parse_args(["--preset", "tiny", "--steps", "3", "--batch", "4"]))
    assert without.batches is None and without.config.in_channels == 3
    with pytest.raises(UsageError, match="--data-dir"):
        cli.prepare(cli.parse_args(["--data", "digits", "--data-dir", "/tmp"]))
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        cli.prepare(cli.parse_args(["--data", "fashion-mnist"]))
    with pytest.raises(ConfigError, match="1 and 10"):
        cli.data_config(args, get_preset("tiny"), weights=object())
