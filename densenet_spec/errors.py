"""Named errors: every way a user can hand us something wrong has its own class.

Only the standard library is used here, so the environment bootstrap can import it.
"""

from __future__ import annotations


class DenseNetError(Exception):
    """Base class of every error this project raises on purpose."""

    # TensorFlow's autograph re-raises an error from inside a user's tf.function as its own type
    # only when its __init__ is Exception's; otherwise users would catch a StagingError.
    __init__ = Exception.__init__


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
        shown = "; ".join(
            f"{k}: file has {a!r}, model has {b!r}" for k, (a, b) in differences.items()
        )
        super().__init__(f"weight file was written for another config: {shown}")


class DeviceUnavailableError(DenseNetError, RuntimeError):
    """The requested device (gpu, tpu) is not present for this framework."""


class EnvironmentSetupError(DenseNetError, RuntimeError):
    """A framework's virtual environment could not be created or is broken."""


class UnknownFrameworkError(DenseNetError, ValueError):
    """A framework name that the registry (densenet_spec.frameworks) does not have."""


class UnknownVariantError(DenseNetError, ValueError):
    """A model variant other than densenet_spec.frameworks.VARIANTS."""


# Training on real data (densenet_spec.data, densenet_spec.training, densenet-train).


class DataError(DenseNetError, ValueError):
    """A data set that cannot be used for training."""


class DataNotFoundError(DataError):
    """A data folder or one of its files is missing (nothing is ever downloaded)."""


class IdxMagicError(DataError):
    """A file whose first four bytes are not the idx magic of the expected kind."""


class TruncatedDataError(DataError):
    """An idx file shorter than its header says (or a gzip stream that ends early)."""


class CountMismatchError(DataError):
    """An image file and its label file hold different numbers of examples."""


class LabelRangeError(DataError):
    """Labels outside 0 .. classes - 1."""


class EmptySplitError(DataError):
    """A train or test split with no examples, or too few for one batch."""


class TrainingOptionError(DenseNetError, ValueError):
    """A densenet-train flag out of range or inconsistent with another (named in the message)."""


class CheckpointError(DenseNetError, ValueError):
    """A checkpoint folder that is missing, unreadable or not a densenet-parity checkpoint."""


class ResumeMismatchError(CheckpointError):
    """--resume with settings that change the run's trajectory (batch, seed, data, lr, ...)."""


class OptimizerStateError(CheckpointError):
    """Momentum buffers whose names, shapes or dtype do not match the model's trainable tensors."""


class WeightValuesError(WeightFileError):
    """Tensors no model can use: NaN or infinite entries, or a negative running variance."""


class UsageError(DenseNetError, ValueError):
    """A command-line argument out of range or unusable (names the option)."""


class WorkerResultError(DenseNetError, ValueError):
    """A framework worker's result file is missing, unreadable, incomplete or mis-shaped."""


class LabelError(DenseNetError, ValueError):
    """Training labels that are not integer class indices in range, one per image."""


class DTypeError(DenseNetError, TypeError):
    """A model or input dtype the spec does not run in (float32 and float64 only)."""


def exit_code(run, *args) -> int:
    """The exit status of a worker process that runs run(*args): 0; 2 for a DenseNetError, its
    message on stderr (a named refusal the parent reports as it is); 1 for anything else, with
    the traceback."""
    import sys
    import traceback

    try:
        run(*args)
    except DenseNetError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    return 0
