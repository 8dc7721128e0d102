"""Named errors of densenet-convert: each says what in the file does not match and what would."""

from __future__ import annotations

from densenet_spec.errors import DenseNetError, UsageError


class ConvertError(DenseNetError, ValueError):
    """Base class of the converter's errors; nothing is written when one is raised."""


class UnknownFormatError(ConvertError):
    """A format name, or a file name whose format cannot be told (use --from / --to)."""


class NotADenseNetError(ConvertError):
    """The file holds tensors, but not a DenseNet's (a ResNet state_dict, an empty file, ...)."""


class UnknownLayoutError(ConvertError):
    """A DenseNet file with tensors or nesting the converter does not know (a deep stem, ...)."""


class UnrecognisedConfigError(ConvertError):
    """The tensors' shapes fit no DenseNetConfig (or not the one asked for with --preset)."""


class FormatCannotHoldError(ConvertError):
    """The target format's official model cannot express this config (growth rate, stem, ...)."""


class ExportTargetError(UsageError):
    """An export target (densenet-parity --frameworks onnx) was asked for a quantity, dtype or
    device its runtime cannot do: refused before any worker runs."""
