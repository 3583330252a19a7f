"""Every error edgeft raises on purpose.

Each one carries a one-line message that says what went wrong and what to do, and
the process exit code the CLI uses for it. The CLI prints ``error: <message>`` and
exits; it never shows a traceback for these.
"""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when the message is empty), at most
    ``limit`` characters: what a one-line error may quote of a library's failure."""
    return ((str(error).strip().splitlines() or [type(error).__name__])[0])[:limit]


class EdgeftError(Exception):
    """Base class: a user-facing failure with a one-line message."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(EdgeftError):
    """Bad input (exit code 2): an option, a data folder, a run directory or a model edgeft cannot use as given."""

    exit_code = 2


class NotAvailableError(EdgeftError):
    """Something needed is neither installed nor found: pretrained weights, an optional dependency (exit code 3)."""

    exit_code = 3


class UsageError(InputError):
    """An option or combination of options that cannot work."""


class DatasetError(InputError):
    """The data directory cannot be used (missing, fewer than two classes, empty class)."""


class WeightsNotFoundError(NotAvailableError):
    """Pretrained weights were asked for but are neither local nor downloadable."""


class UnknownBackboneError(UsageError):
    """The backbone name is not in the registry."""


class RunDirError(InputError):
    """A run directory is missing, incomplete, corrupted, or would be overwritten."""


class MissingDependencyError(NotAvailableError):
    """An optional dependency needed for this command is not installed."""


class AccuracyTargetError(EdgeftError):
    """A run finished but missed an accuracy bar it was asked to meet."""

    exit_code = 4


class QuantizationError(InputError):
    """A model (or one of its layers) cannot be quantized as asked."""


class CalibrationError(InputError):
    """No usable calibration data for post-training integer quantization."""


class ExportError(EdgeftError):
    """A conversion to a deployment format failed."""

    exit_code = 5


class OutputMatchError(EdgeftError):
    """An exported artifact lost more accuracy against Keras than allowed (--max-drop)."""

    exit_code = 6


class ModelFileError(InputError):
    """A model file is missing, corrupted, or cannot be loaded by the runtime."""


class TargetError(EdgeftError):
    """A benchmark target is unknown, unreachable, or failed."""

    exit_code = 7


class ImageError(UsageError):
    """An image that cannot be classified: unreadable or empty file, wrong array type or shape."""


class OutputLockedError(EdgeftError):
    """Another edgeft process is writing the same output folder."""

    exit_code = 2


class OutputWriteError(EdgeftError):
    """An output could not be written: disk full, read-only file system, or no permission."""

    exit_code = 8


class WeightsFileError(UsageError):
    """A ``--weights`` file that is not a Keras weight file, or whose shapes do not fit the backbone."""


class CorruptModelError(ModelFileError):
    """A model file that no runtime can read: not a TFLite flatbuffer or ONNX protobuf, truncated, or damaged."""

    exit_code = 10


class EvalMismatchError(UsageError):
    """An evaluation set whose classes do not fit a model's outputs (count differs, names cannot be mapped)."""
