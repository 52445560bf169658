"""Exceptions torchfit raises for bad input and failed steps.

Each message names the problem and the fix; the original exception, where there
is one, stays chained (``raise ... from exc``).
"""


class NotCompiledError(RuntimeError):
    """fit/evaluate/predict was called before ``compile``."""


class BatchFormatError(TypeError):
    """A loader yielded something other than ``(x, y)``."""


class StepError(RuntimeError):
    """A train/eval/predict step raised; the message says which epoch and batch."""


class MetricError(RuntimeError):
    """A metric raised while updating or computing; the message names the metric."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: not a torchfit checkpoint, an entry missing or of the wrong type,
    saved from a different net or optimizer, bytes that do not match its digest; or, when saving,
    a value (a callback's state, a history figure) that no checkpoint can hold. The message names
    the file and the entry; nothing was changed."""
