"""Named errors: every way a user can hand us something wrong has its own class.

Only the standard library is used here, so the environment bootstrap can import it.
"""

from __future__ import annotations


class DenseNetError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(DenseNetError, ValueError):
    """A DenseNetConfig field is out of range (k <= 0, empty blocks, theta outside (0, 1], ...)."""


class UnknownPresetError(DenseNetError, KeyError):
    """A preset name that is not in PRESETS."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class InputShapeError(DenseNetError, ValueError):
    """An input batch of the wrong rank, channel count or too small an image."""


class WeightFileError(DenseNetError, ValueError):
    """A weight file that cannot be used for this model."""


class NotAWeightFileError(WeightFileError):
    """The file is missing, truncated, not safetensors, or lacks our metadata."""


class WeightKeysError(WeightFileError):
    """Names or shapes in a weight file do not match the model; lists every offender."""

    def __init__(self, missing=(), unexpected=(), misshaped=()):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.misshaped = dict(sorted(dict(misshaped).items()))  # name -> (got, expected)
        parts = []
        if self.missing:
            parts.append(f"missing keys: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys: {', '.join(self.unexpected)}")
        if self.misshaped:
            shown = "; ".join(
                f"{name} has shape {tuple(got)}, expected {tuple(want)}"
                for name, (got, want) in self.misshaped.items()
            )
            parts.append(f"mis-shaped keys: {shown}")
        super().__init__("weights do not match the model: " + " | ".join(parts))


class WeightDtypeError(WeightFileError):
    """Tensors of a dtype other than the one the model runs in."""


class ConfigMismatchError(WeightFileError):
    """The config stored in a weight file differs from the model's config."""

    def __init__(self, differences: dict):
        self.differences = differences  # field -> (in file, in model)
        shown = "; ".join(f"{k}: file has {a!r}, model has {b!r}" for k, (a, b) in differences.items())
        super().__init__(f"weight file was written for another config: {shown}")


class DeviceUnavailableError(DenseNetError, RuntimeError):
    """The requested device (gpu, tpu) is not present for this framework."""


class EnvironmentSetupError(DenseNetError, RuntimeError):
    """A framework's virtual environment could not be created or is broken."""


class UnknownFrameworkError(DenseNetError, ValueError):
    """A framework name that the registry (densenet_spec.frameworks) does not have."""


class UnknownVariantError(DenseNetError, ValueError):
    """A model variant other than densenet_spec.frameworks.VARIANTS."""
