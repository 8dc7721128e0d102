"""Framework-free core of densenet-parity: config, canonical names, weight file, oracle, harness.

Importing the package loads only the standard library; numpy-backed modules are imported explicitly
(densenet_spec.params, .weightfile, .reference, ...), so the environment bootstrap can run first.
"""

from densenet_spec.config import PRESETS, DenseNetConfig, get_preset
from densenet_spec.errors import (
    ConfigError,
    ConfigMismatchError,
    DenseNetError,
    DeviceUnavailableError,
    InputShapeError,
    NotAWeightFileError,
    UnknownPresetError,
    WeightDtypeError,
    WeightFileError,
    WeightKeysError,
)

__all__ = [
    "PRESETS",
    "DenseNetConfig",
    "get_preset",
    "ConfigError",
    "ConfigMismatchError",
    "DenseNetError",
    "DeviceUnavailableError",
    "InputShapeError",
    "NotAWeightFileError",
    "UnknownPresetError",
    "WeightDtypeError",
    "WeightFileError",
    "WeightKeysError",
]
