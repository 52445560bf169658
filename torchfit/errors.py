"""Exceptions torchfit raises for bad input and failed steps.

Each message names the problem and the fix; the original exception, where there
is one, stays chained (``raise ... from exc``).
"""

# The name torchfit is published under on the package index (the import name stays ``torchfit``):
# plain "torchfit" there is an unrelated project. Install hints are built from it.
DISTRIBUTION = "torchfit-keras"


def install_hint(extra: str) -> str:
    """The pip command that installs torchfit with an optional extra, quoted for any shell.

    >>> install_hint("plot")
    'pip install "torchfit-keras[plot]"'
    """
    return f'pip install "{DISTRIBUTION}[{extra}]"'


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
