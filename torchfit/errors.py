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
    """A file is not a torchfit checkpoint, or was saved from a different net or optimizer."""
