"""Callbacks: Keras hook names, plus ``on_backward_end`` between backward and the optimizer step."""
from .base import HOOKS, Callback, CallbackList, LambdaCallback
from .checkpointing import ModelCheckpoint
from .history import History
from .loggers import CSVLogger, TensorBoard
from .printing import ProgressPrinter
from .progress import ProgressBar
from .schedulers import LearningRateScheduler, ReduceLROnPlateau
from .stopping import EarlyStopping, TerminateOnNaN

__all__ = [
    "HOOKS", "Callback", "CallbackList", "LambdaCallback", "History", "ProgressPrinter", "ProgressBar",
    "EarlyStopping", "TerminateOnNaN", "ModelCheckpoint", "CSVLogger", "TensorBoard",
    "LearningRateScheduler", "ReduceLROnPlateau",
]
