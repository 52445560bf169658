"""Callbacks: Keras hook names, plus ``on_backward_end`` between backward and the optimizer step
and ``on_exception`` when an error or Ctrl-C ends a fit."""
from .averaging import EMA, SWA
from .backup import BackupAndRestore
from .base import HOOKS, Callback, CallbackList, LambdaCallback
from .checkpointing import ModelCheckpoint
from .gradients import GradientStats
from .history import History
from .liveplot import LivePlot
from .loggers import CSVLogger, TensorBoard
from .printing import ProgressPrinter
from .profiling import Profiler
from .progress import ProgressBar
from .pruning import OptunaPruning
from .schedulers import LearningRateScheduler, ReduceLROnPlateau, run_steps_per_epoch, run_total_steps, warmup_cosine
from .stopping import EarlyStopping, TerminateOnNaN
from .tracking import MLflowLogger, WandbLogger

__all__ = [
    "HOOKS", "Callback", "CallbackList", "LambdaCallback", "History", "ProgressPrinter", "ProgressBar",
    "EarlyStopping", "TerminateOnNaN", "ModelCheckpoint", "CSVLogger", "TensorBoard",
    "LearningRateScheduler", "ReduceLROnPlateau", "run_steps_per_epoch", "run_total_steps", "warmup_cosine",
    "EMA", "SWA", "MLflowLogger", "WandbLogger", "LivePlot", "Profiler", "GradientStats",
    "OptunaPruning", "BackupAndRestore",
]
