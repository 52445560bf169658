"""Callbacks: Keras hook names, plus ``on_backward_end`` between backward and the optimizer step."""
from .base import HOOKS, Callback, CallbackList, LambdaCallback
from .history import History
from .printing import ProgressPrinter

__all__ = ["HOOKS", "Callback", "CallbackList", "LambdaCallback", "History", "ProgressPrinter"]
