"""The package's exception types.

Errors that mean "what you gave us cannot be used" (a bad argument, a corrupt file, a run folder in
another state, NaN in the data) derive from :class:`GlannError`; the ``glann`` command prints those as one
line and exits with status 2. Anything else is a bug and keeps its traceback (exit status 1).

Each concrete type also derives from the builtin a caller would catch without knowing this package
(``ValueError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class GlannError(Exception):
    """Base of the user-facing errors: the message names the argument, file or setting and what to do."""


class NonFiniteError(GlannError, ValueError):
    """An input holds NaN or Inf where a finite value is needed.

    Attributes:
        argument: the name of the offending argument (e.g. ``"queries"``, ``"grad"``).
        row: the lowest offending row (dimension 0 index) when the op knows it, else ``None``.
    """

    def __init__(self, message: str, *, argument: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.argument = argument
        self.row = row


class UsageError(GlannError, ValueError):
    """A call the object cannot serve as asked: an argument out of range, or a request the model cannot
    answer (e.g. sampling a GLO-only model through the IMLE mapping it does not have)."""


class ConfigError(GlannError, ValueError):
    """A training configuration field has a wrong type or value; the message names the field.

    Attributes:
        field: the :class:`~glann_ext.train.TrainConfig` field at fault (e.g. ``"batch_size"``) when the error
            is about one field's value, else ``None``.
        problem: then what is wrong with it, worded to follow the field's name (``"must be >= 2, got 0"``), so
            that the ``glann`` command can name its flag instead (``--batch-size must be >= 2, got 0``).
    """

    def __init__(self, message: str, *, field: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.problem = problem


class CheckpointError(GlannError, RuntimeError):
    """A checkpoint or model file cannot be used as it is (missing, incomplete, of another run or shape)."""


class RunFolderError(GlannError, RuntimeError):
    """A run folder is not in a state the command can work with (no run there, in use, another config)."""


class DivergedError(GlannError, RuntimeError):
    """Training produced a non-finite loss or state (a learning rate too high for the data): the run stops
    before any checkpoint or metrics row holds it, so the last checkpoint is the last good state."""
