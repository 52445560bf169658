"""torchfit: Keras' compile / fit / evaluate / predict for any PyTorch ``nn.Module``."""
from . import callbacks, distributed, inputs, metrics
from .callbacks import Callback, LambdaCallback
from .loop import StepResult
from .model import Model
from .plot import plot_history
from .summary import summary

__version__ = "0.1.0"

__all__ = ["Model", "summary", "Callback", "LambdaCallback", "StepResult", "plot_history", "callbacks", "distributed", "inputs", "metrics", "__version__"]
