"""The canonical weight file: safetensors plus a config, so every file describes itself.

Metadata: format = "densenet-parity", format_version, config (JSON), dtype. Tensors use the
canonical names and layout of params.param_specs. Writing is atomic (temp file, then rename),
so a crash never leaves a half-written file behind; reading validates everything, values included:
a file with NaN or infinite entries or a negative running variance is refused (WeightValuesError)
unless the reader asks for it with check_values=False (to inspect a diverged run).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as _safetensors_bytes

from densenet_spec.config import DenseNetConfig
from densenet_spec.errors import (
    ConfigError,
    ConfigMismatchError,
    NotAWeightFileError,
    WeightDtypeError,
    WeightKeysError,
    WeightValuesError,
)
from densenet_spec.params import param_specs

FORMAT = "densenet-parity"
FORMAT_VERSION = "1"
DTYPES = ("float32", "float64")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove temp files that a killed writer of `path` left behind (its process is gone)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+\.tmp$")
    for other in path.parent.iterdir():
        m = pattern.match(other.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                other.unlink()
            except OSError:
                pass


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    The temp file is `.<name>.<pid>.<random>.tmp`: removed on any failure, and by a later write
    once its writer's process is gone (a killed save). A replaced file keeps its permission
    bits; a new one gets the umask's default, as open() would give it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    _remove_stale_temps(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
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
        raise WeightDtypeError(f"weights must all be one of {DTYPES}, found dtypes {sorted(found)}")
    (got,) = found
    if dtype is not None and got != np.dtype(dtype).name:
        raise WeightDtypeError(f"weights are {got}, the model runs in {np.dtype(dtype).name}")
    return got


def _check_values(tensors: dict, path="weights") -> None:
    """Refuse NaN or infinite entries and negative running variances, listing every offender:
    each makes every output of the model NaN (or silently wrong), far from the cause."""
    nonfinite = [n for n, t in tensors.items() if not np.all(np.isfinite(t))]
    negative = [
        n for n, t in tensors.items() if n.endswith(".running_var") and np.any(np.asarray(t) < 0)
    ]
    parts = []
    if nonfinite:
        parts.append(f"NaN or infinite entries in {', '.join(nonfinite)}")
    if negative:
        parts.append(f"negative running variance in {', '.join(negative)}")
    if parts:
        raise WeightValuesError(
            f"{path}: {'; '.join(parts)} (a diverged run? load_weights(..., check_values=False) "
            "reads it anyway)"
        )


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
    if path.is_dir():
        raise NotAWeightFileError(f"{path}: is a directory, not a weight file")
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
            f"{path}: format version {meta.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION!r}"
        )
    return meta


def load_weights(
    path,
    config: DenseNetConfig | None = None,
    dtype: str | None = None,
    *,
    check_values: bool = True,
):
    """Read and validate a weight file; return (tensors, config).

    With `config`, the file's config must equal it (ConfigMismatchError lists the fields);
    with `dtype`, every tensor must have it (WeightDtypeError). Names and shapes are always
    checked against the config (WeightKeysError lists missing, unexpected, mis-shaped keys),
    values unless check_values=False (WeightValuesError: NaN, Inf, negative running variance).
    """
    meta = read_metadata(path)
    if "config" not in meta:
        raise NotAWeightFileError(f"{path}: densenet-parity metadata without a config")
    try:
        file_config = DenseNetConfig.from_json(meta["config"])
    except ConfigError as e:
        raise NotAWeightFileError(f"{path}: config in metadata is unusable: {e}") from None
    if config is not None and file_config != config:
        raise ConfigMismatchError(file_config.differences(config))
    try:
        with safe_open(str(path), framework="np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise NotAWeightFileError(f"{path}: tensor data unreadable ({e})") from None
    check_tensors(tensors, file_config, dtype)
    if check_values:
        _check_values(tensors, path)
    return tensors, file_config
