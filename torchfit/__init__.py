"""torchfit: Keras' compile / fit / evaluate / predict for any PyTorch ``nn.Module``."""
from . import callbacks, distributed, evaluation, formatting, inputs, metrics
from .callbacks import Callback, LambdaCallback
from .experiments import CrossValidation, cross_validate
from .loop import StepResult
from .lr_finder import lr_find, plot_lr_find
from .model import Model
from .plot import plot_history
from .seeding import seed_everything
from .summary import summary

__version__ = "0.1.0"

__all__ = ["Model", "summary", "Callback", "LambdaCallback", "StepResult", "plot_history", "lr_find",
           "plot_lr_find", "seed_everything", "cross_validate", "CrossValidation", "callbacks", "distributed",
           "evaluation", "formatting", "inputs", "metrics",
           "__version__"]
