"""The canonical weight file: safetensors plus a config, so every file describes itself.

Metadata: format = "densenet-parity", format_version, config (JSON), dtype. Tensors use the
canonical names and layout of params.param_specs. Writing is atomic (temp file, then rename),
so a crash never leaves a half-written file behind; reading validates everything.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as _safetensors_bytes

from densenet_spec.config import DenseNetConfig
from densenet_spec.errors import (
    ConfigMismatchError,
    NotAWeightFileError,
    WeightDtypeError,
    WeightKeysError,
)
from densenet_spec.params import param_specs

FORMAT = "densenet-parity"
FORMAT_VERSION = "1"
DTYPES = ("float32", "float64")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_tensors(tensors: dict, config: DenseNetConfig, dtype: str | None = None) -> str:
    """Validate names, shapes and dtype against the config; return the common dtype name."""
    specs = {s.name: s.shape for s in param_specs(config)}
    missing = [n for n in specs if n not in tensors]
    unexpected = [n for n in tensors if n not in specs]
    misshaped = {
        n: (tuple(np.shape(t)), specs[n])
        for n, t in tensors.items()
        if n in specs and tuple(np.shape(t)) != specs[n]
    }
    if missing or unexpected or misshaped:
        raise WeightKeysError(missing, unexpected, misshaped)
    found = {str(np.asarray(t).dtype) for t in tensors.values()}
    bad = found - set(DTYPES)
    if bad or len(found) != 1:
        raise WeightDtypeError(
            f"weights must all be one of {DTYPES}, found dtypes {sorted(found)}"
        )
    (got,) = found
    if dtype is not None and got != np.dtype(dtype).name:
        raise WeightDtypeError(f"weights are {got}, the model runs in {np.dtype(dtype).name}")
    return got


def save_weights(path, tensors: dict, config: DenseNetConfig) -> None:
    """Write canonical tensors and their config to `path`, atomically."""
    dtype = check_tensors(tensors, config)
    arrays = {n: np.ascontiguousarray(tensors[n]) for n in (s.name for s in param_specs(config))}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "dtype": dtype,
    }
    atomic_write_bytes(path, _safetensors_bytes(arrays, metadata=metadata))


def read_metadata(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NotAWeightFileError(f"{path}: no such weight file")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise NotAWeightFileError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise NotAWeightFileError(f"{path}: safetensors file without densenet-parity metadata")
    if meta.get("format_version") != FORMAT_VERSION:
        raise NotAWeightFileError(
            f"{path}: format version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION!r}"
        )
    return meta


def load_weights(path, config: DenseNetConfig | None = None, dtype: str | None = None):
    """Read and validate a weight file; return (tensors, config).

    With `config`, the file's config must equal it (ConfigMismatchError lists the fields);
    with `dtype`, every tensor must have it (WeightDtypeError). Names and shapes are always
    checked against the config (WeightKeysError lists missing, unexpected, mis-shaped keys).
    """
    meta = read_metadata(path)
    try:
        file_config = DenseNetConfig.from_json(meta["config"])
    except Exception as e:
        raise NotAWeightFileError(f"{path}: config in metadata is unreadable ({e})") from None
    if config is not None and file_config != config:
        raise ConfigMismatchError(file_config.differences(config))
    try:
        with safe_open(str(path), framework="np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise NotAWeightFileError(f"{path}: tensor data unreadable ({e})") from None
    check_tensors(tensors, file_config, dtype)
    return tensors, file_config
